"""In-place data augmentation for training slices: numpy on ``(image float32 in 0..1, boxes Nx4)``.

Images are ``(H, W)`` or ``(C, H, W)`` (a slice and its depth context,
:mod:`spinedet.runtime.context`); every channel gets the same geometry and
intensity changes.

The paper's recipe (section *Network training*): the eight dihedral
orientations (90° rotation, vertical and horizontal flips), then Gaussian
white noise and Gaussian blur, each with probability 0.5.  On top of it:

* pixel-size jitter (random rescale) and random crops, so one model sees
  spines over a range of sizes and trains on small tiles on a CPU;
* intensity jitter (gain, offset, gamma) and coarse quantisation, so dim and
  bright slices and 8-bit and 16-bit stacks all look familiar after the
  runtime's per-stack normalisation.

Images are expected already normalised by
:func:`spinedet.runtime.contract.normalise` and are clipped back to 0..1,
as the runtime would give them.  All randomness comes from the
``numpy.random.Generator`` passed in, so a seed fixes everything.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spinedet.runtime.boxes import as_boxes


@dataclass
class AugmentConfig:
    """Probabilities and ranges of every augmentation (defaults: the training defaults).

    crop: side of the square training crop in pixels (None: keep the whole image;
        a smaller image is padded with background).
    p_box_centred: probability that the crop is placed around a random box rather than uniformly.
    p_negative_centred: probability that the crop is placed around a random *negative* box
        (a spine look-alike that is not a spine: a hard negative) where the sample lists any;
        tried before ``p_box_centred``.
    p_rescale, scale_range: probability and range (log-uniform) of the pixel-size jitter.
    dihedral: apply one of the 8 orientations uniformly.
    p_noise, noise_sigma: Gaussian white noise (sigma uniform in range, 0..1 units).
    p_blur, blur_sigma: Gaussian blur (sigma in pixels).
    p_intensity, gain, offset, gamma: intensity jitter ``clip(gain * x ** gamma + offset)``.
    p_quantise, levels: quantise to a random number of grey levels (dim 8-bit stacks).
    min_box_fraction: a box cut by the crop is kept if this fraction of its area remains.
    p_flat_context: for a ``(2, H, W)`` image, probability that the depth context is replaced by
        the slice itself, as for a lone 2D image, so the model also works without neighbours.
    """

    crop: int | None = 256
    p_box_centred: float = 0.5
    p_negative_centred: float = 0.25
    p_rescale: float = 0.5
    scale_range: tuple = (0.75, 1.33)
    dihedral: bool = True
    p_noise: float = 0.5
    noise_sigma: tuple = (0.01, 0.08)
    p_blur: float = 0.5
    blur_sigma: tuple = (0.5, 1.5)
    p_intensity: float = 0.8
    gain: tuple = (0.6, 1.4)
    offset: tuple = (-0.05, 0.05)
    gamma: tuple = (0.6, 1.6)
    p_quantise: float = 0.2
    levels: tuple = (12, 256)
    min_box_fraction: float = 0.5
    p_flat_context: float = 0.2

    @classmethod
    def none(cls, crop: int | None = None) -> "AugmentConfig":
        """No augmentation at all (optionally still cropping)."""
        return cls(crop=crop, p_box_centred=0.0, p_negative_centred=0.0, p_rescale=0.0, dihedral=False,
                   p_noise=0.0, p_blur=0.0, p_intensity=0.0, p_quantise=0.0, p_flat_context=0.0)


# --------------------------------------------------------------------------- geometry


def dihedral(image: np.ndarray, boxes, k: int):
    """Orientation ``k`` in 0..7 of the dihedral group: bit 0 transpose, bit 1 flip x, bit 2 flip y.

    Boxes follow the image exactly (continuous pixel coordinates, a pixel
    spans ``[i, i+1)``).
    """
    image = np.asarray(image)
    b = as_boxes(boxes, np.float32).copy()
    if k & 1:
        image = image.swapaxes(-1, -2)
        b = b[:, [1, 0, 3, 2]]
    h, w = image.shape[-2:]
    if k & 2:
        image = image[..., ::-1]
        b[:, [0, 2]] = w - b[:, [2, 0]]
    if k & 4:
        image = image[..., ::-1, :]
        b[:, [1, 3]] = h - b[:, [3, 1]]
    return np.ascontiguousarray(image), b


def rescale(image: np.ndarray, boxes, scale: float):
    """Resample ``image`` by ``scale`` (bilinear, antialiased when shrinking); boxes scale with it."""
    import torch
    import torch.nn.functional as F

    h, w = image.shape[-2:]
    nh, nw = max(1, int(round(h * scale))), max(1, int(round(w * scale)))
    if (nh, nw) == (h, w):
        return image, as_boxes(boxes, np.float32)
    t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).reshape(1, -1, h, w)
    out = F.interpolate(t, size=(nh, nw), mode="bilinear", align_corners=False, antialias=scale < 1)
    b = as_boxes(boxes, np.float32) * np.array([nw / w, nh / h, nw / w, nh / h], dtype=np.float32)
    return out.reshape(image.shape[:-2] + (nh, nw)).numpy(), b


def crop(image: np.ndarray, boxes, y0: int, x0: int, size: int, min_box_fraction: float = 0.5):
    """The ``size`` x ``size`` window at ``(y0, x0)`` (zero padded outside the image) and its boxes.

    Boxes are clipped to the window; a box keeps its place if at least
    ``min_box_fraction`` of its area stays inside, else it is dropped.
    """
    h, w = image.shape[-2:]
    out = np.zeros(image.shape[:-2] + (size, size), dtype=np.float32)
    ys, xs = max(0, y0), max(0, x0)
    ye, xe = min(h, y0 + size), min(w, x0 + size)
    if ye > ys and xe > xs:
        out[..., ys - y0:ye - y0, xs - x0:xe - x0] = image[..., ys:ye, xs:xe]
    b = as_boxes(boxes, np.float32) - np.array([x0, y0, x0, y0], dtype=np.float32)
    area = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    clipped = np.clip(b, 0, size)
    inner = np.clip(clipped[:, 2] - clipped[:, 0], 0, None) * np.clip(clipped[:, 3] - clipped[:, 1], 0, None)
    keep = (inner > 0) & (inner >= min_box_fraction * np.maximum(area, 1e-9))
    keep &= (clipped[:, 2] - clipped[:, 0] >= 1) & (clipped[:, 3] - clipped[:, 1] >= 1)
    return out, clipped[keep]


def _window_around(box, size: int, h: int, w: int, rng: np.random.Generator) -> tuple[int, int]:
    """``(y0, x0)`` of a random ``size`` window that contains ``box`` (as far as the image allows)."""
    x0b, y0b, x1b, y1b = box
    y_lo, y_hi = int(np.ceil(y1b)) - size, int(np.floor(y0b))
    x_lo, x_hi = int(np.ceil(x1b)) - size, int(np.floor(x0b))
    y_lo, y_hi = max(y_lo, min(0, h - size)), min(y_hi, max(0, h - size))
    x_lo, x_hi = max(x_lo, min(0, w - size)), min(x_hi, max(0, w - size))
    y0 = int(rng.integers(min(y_lo, y_hi), max(y_lo, y_hi) + 1))
    x0 = int(rng.integers(min(x_lo, x_hi), max(x_lo, x_hi) + 1))
    return y0, x0


def random_crop(image: np.ndarray, boxes, size: int, rng: np.random.Generator, p_box_centred: float = 0.5,
                min_box_fraction: float = 0.5, negatives=None, p_negative_centred: float = 0.0):
    """A random ``size`` square and its boxes.

    With probability ``p_negative_centred`` (only where ``negatives`` (M, 4)
    lists any) it contains a random negative box, else with probability
    ``p_box_centred`` a random box, else it is placed uniformly.
    """
    h, w = image.shape[-2:]
    b = as_boxes(boxes, np.float32)
    neg = as_boxes([] if negatives is None else negatives, np.float32)
    if len(neg) and p_negative_centred > 0 and rng.random() < p_negative_centred:
        y0, x0 = _window_around(neg[rng.integers(len(neg))], size, h, w, rng)
    elif len(b) and rng.random() < p_box_centred:
        y0, x0 = _window_around(b[rng.integers(len(b))], size, h, w, rng)
    else:
        y0 = int(rng.integers(0, h - size + 1)) if h > size else -int(rng.integers(0, size - h + 1))
        x0 = int(rng.integers(0, w - size + 1)) if w > size else -int(rng.integers(0, size - w + 1))
    return crop(image, b, y0, x0, size, min_box_fraction)


# --------------------------------------------------------------------------- intensity


def gaussian_kernel(sigma: float) -> np.ndarray:
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return (k / k.sum()).astype(np.float32)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes (sigma in pixels) with reflected borders."""
    k = gaussian_kernel(sigma)
    r = len(k) // 2
    out = np.asarray(image, dtype=np.float32)
    for axis in (out.ndim - 2, out.ndim - 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        p = np.pad(out, pad, mode="reflect" if out.shape[axis] > r else "edge")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        window = [slice(None)] * out.ndim
        for i, weight in enumerate(k):
            window[axis] = slice(i, i + n)
            acc += weight * p[tuple(window)]
        out = acc
    return out


def add_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return image + rng.normal(0.0, sigma, size=image.shape).astype(np.float32)


def intensity_jitter(image: np.ndarray, gain: float, offset: float, gamma: float) -> np.ndarray:
    """``gain * x ** gamma + offset`` (x clipped to >= 0 first)."""
    return np.float32(gain) * np.power(np.clip(image, 0, None), np.float32(gamma)) + np.float32(offset)


def quantise(image: np.ndarray, levels: int) -> np.ndarray:
    """Round 0..1 intensities to ``levels`` grey levels."""
    n = max(2, int(levels)) - 1
    return np.round(np.clip(image, 0, 1) * n) / np.float32(n)


def _uniform(rng, lo_hi) -> float:
    lo, hi = lo_hi
    return float(rng.uniform(lo, hi))


def augment(image, boxes, rng: np.random.Generator, config: AugmentConfig | None = None, negatives=None):
    """One random augmentation of ``(image, boxes)``; returns new ``(image float32, boxes float32 (M, 4))``.

    image: ``(H, W)`` or ``(C, H, W)``; a ``(2, H, W)`` slice with depth
    context first loses its context with probability ``config.p_flat_context``.

    Order: rescale, crop, orientation, intensity jitter, quantisation, blur,
    noise, clip to 0..1.  The result depends only on the inputs and the
    state of ``rng``.  ``negatives`` (M, 4): hard-negative boxes that only
    steer where the crop goes (``config.p_negative_centred``).
    """
    cfg = config or AugmentConfig()
    image = np.asarray(image, dtype=np.float32)
    b = as_boxes(boxes, np.float32)
    if image.ndim == 3 and len(image) == 2 and cfg.p_flat_context and rng.random() < cfg.p_flat_context:
        image = np.stack([image[0], image[0]])
    draws = rng.random(6)
    if draws[0] < cfg.p_rescale:
        lo, hi = np.log(cfg.scale_range[0]), np.log(cfg.scale_range[1])
        neg = as_boxes([] if negatives is None else negatives, np.float32)
        image, both = rescale(image, np.concatenate([b, neg]), float(np.exp(rng.uniform(lo, hi))))
        b, negatives = both[:len(b)], (None if negatives is None else both[len(b):])
    if cfg.crop is not None:
        image, b = random_crop(image, b, cfg.crop, rng, cfg.p_box_centred, cfg.min_box_fraction,
                               negatives, cfg.p_negative_centred)
    if cfg.dihedral:
        image, b = dihedral(image, b, int(rng.integers(8)))
    if draws[1] < cfg.p_intensity:
        image = intensity_jitter(image, _uniform(rng, cfg.gain), _uniform(rng, cfg.offset),
                                 float(np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1])))))
    if draws[2] < cfg.p_quantise:
        image = quantise(image, int(np.exp(rng.uniform(np.log(cfg.levels[0]), np.log(cfg.levels[1])))))
    if draws[3] < cfg.p_blur:
        image = gaussian_blur(image, _uniform(rng, cfg.blur_sigma))
    if draws[4] < cfg.p_noise:
        image = add_noise(image, _uniform(rng, cfg.noise_sigma), rng)
    image = np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)
    return np.ascontiguousarray(image), b.astype(np.float32)
