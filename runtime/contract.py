"""The model contract: what an ONNX spine detector takes and returns.

This module is the one place that defines it; the exporter, the trainer and
every backend follow it.

Input
    ``images``: float32, shape ``[B, C, H, W]``.  ``B`` (the batch of slices)
    may be dynamic; ``H`` and ``W`` are the model's fixed input size in
    pixels.  ``C`` is 1 (the slice) or, for a model with depth context, 2
    (the slice and the maximum projection of its neighbours within
    ``depth_context_um``; see :mod:`spinedet.runtime.context`).  Each channel
    is normalised with :func:`normalise` using the intensity range its stack
    gives (see :func:`intensity_range`), so 0 is background and 1 is bright
    dendrite, whatever the bit depth.
Outputs
    ``boxes``: float32, ``[B, K, 4]`` as ``(x_min, y_min, x_max, y_max)`` in
    input pixels; ``scores``: float32, ``[B, K]`` in [0, 1].  ``K`` is fixed
    (80 in the paper); unused entries have score 0.  Thresholds, the area cap
    and IoM-NMS are *not* in the graph: the runtime applies them in numpy.

The model card is a JSON file beside the ONNX file with the same stem
(``spines.onnx`` -> ``spines.json``); :class:`ModelCard` lists its fields.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .errors import SpineDetError

INPUT_NAME = "images"
OUTPUT_NAMES = ("boxes", "scores")
CARD_FORMAT = 1


@dataclass(frozen=True)
class ModelCard:
    """What the runtime must know about a model to use it correctly.

    input_size: ``(height, width)`` of the model input in pixels.
    pixel_size_um: the pixel size (µm) the model was trained at; inputs whose
        pixel size differs by more than ``rescale_tolerance`` (relative) are
        resampled to it.
    low_percentile, high_percentile: the normalisation (see :func:`normalise`).
    max_detections: K, the fixed number of boxes per slice.
    tile_overlap_px: overlap in model pixels between tiles of large images;
        must exceed the largest spine.
    score_threshold: a spine counts when its most confident box scores above
        this (in a single image: a box counts when it does).  0.5 is the
        paper's; a model's own operating point, chosen on calibration data
        (``spine-validate --calibrate``), may differ.
    link_threshold: boxes above this build the tracks across slices, so the
        faint slices of a confident spine extend it in z (the paper's 0.5).
        None: the same as score_threshold (every box must pass it).
    shaft_distance_um: the runtime drops boxes farther than this (µm) from every
        large bright structure of their slice's depth context
        (:mod:`~spinedet.runtime.attachment`); None: no such check (the paper's rule).
    depth_context_um: > 0: the model's second input channel is the maximum projection of the
        slices within this many µm above and below each slice; 0: one channel, the slice.
    metrics: measured validation metrics, free form, reported verbatim.
    export: how the graph was made (source checkpoint, proposals per slice, opset), free form.
    """

    input_size: tuple[int, int] = (512, 512)
    pixel_size_um: float = 0.1
    low_percentile: float = 1.0
    high_percentile: float = 99.8
    max_detections: int = 80
    tile_overlap_px: int = 64
    rescale_tolerance: float = 0.25
    score_threshold: float = 0.5
    link_threshold: float | None = None
    shaft_distance_um: float | None = None
    depth_context_um: float = 0.0
    name: str = "unnamed"
    precision: str = "fp32"
    metrics: dict = field(default_factory=dict)
    export: dict = field(default_factory=dict)
    format: int = CARD_FORMAT

    @property
    def channels(self) -> int:
        """``C`` of the model input: 2 with depth context, else 1."""
        return 2 if self.depth_context_um > 0 else 1

    def to_json(self) -> str:
        data = asdict(self)
        data["input_size"] = list(self.input_size)
        return json.dumps(data, indent=2, sort_keys=True)


def card_path(model_path) -> Path:
    """Where the card of ``model_path`` lives: same folder and stem, ``.json``."""
    return Path(model_path).with_suffix(".json")


def load_card(model_path) -> ModelCard:
    """Read the model card beside ``model_path``; raise SpineDetError if it is missing or wrong."""
    path = card_path(model_path)
    if not path.is_file():
        raise SpineDetError(f"no model card {path.name} beside the model file", model_path)
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpineDetError(f"model card is not valid JSON ({exc})", path) from None
    if not isinstance(data, dict):
        raise SpineDetError("model card is not a JSON object", path)
    known = set(ModelCard.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpineDetError(f"model card has unknown fields {unknown}", path)
    if data.get("format", CARD_FORMAT) != CARD_FORMAT:
        raise SpineDetError(f"model card format {data.get('format')} is not {CARD_FORMAT}", path)
    try:
        card = ModelCard(**{**data, "input_size": tuple(int(v) for v in data.get("input_size", (512, 512)))})
        _check_card(card)
    except (TypeError, ValueError) as exc:
        raise SpineDetError(f"model card is invalid ({exc})", path) from None
    return card


def _check_card(card: ModelCard) -> None:
    h, w = card.input_size
    if h < 32 or w < 32:
        raise ValueError(f"input_size {card.input_size} is smaller than 32 px")
    if not card.pixel_size_um > 0:
        raise ValueError("pixel_size_um must be positive")
    if not 0 <= card.low_percentile < card.high_percentile <= 100:
        raise ValueError("need 0 <= low_percentile < high_percentile <= 100")
    if card.max_detections < 1:
        raise ValueError("max_detections must be at least 1")
    if not 0 <= card.tile_overlap_px < min(h, w) // 2:
        raise ValueError("tile_overlap_px must be below half the input size")
    if not 0 <= card.score_threshold < 1:
        raise ValueError("score_threshold must be in [0, 1)")
    if card.link_threshold is not None and not 0 <= card.link_threshold <= card.score_threshold:
        raise ValueError("link_threshold must be in [0, score_threshold]")
    if card.shaft_distance_um is not None and not 0 <= card.shaft_distance_um <= 100:
        raise ValueError("shaft_distance_um must be between 0 and 100 µm, or null")
    if not 0 <= card.depth_context_um <= 10:
        raise ValueError("depth_context_um must be between 0 and 10 µm")


def intensity_range(slices, card: ModelCard, max_pixels: int = 2_000_000) -> tuple[float, float]:
    """The ``(low, high)`` intensities that map to 0 and 1 for a whole stack.

    ``slices`` is a sequence of 2D arrays (a stack or a single image).  The
    percentiles named by the card are taken over at most ``max_pixels``
    pixels sampled evenly from up to 16 slices, so a stack of any size costs
    the same.  A constant stack gives ``high == low``.
    """
    n = len(slices)
    picks = np.unique(np.linspace(0, n - 1, num=min(n, 16)).round().astype(int))
    per_slice = max(1, max_pixels // len(picks))
    samples = []
    for z in picks:
        flat = np.asarray(slices[z]).reshape(-1)
        step = max(1, flat.size // per_slice)
        samples.append(flat[::step].astype(np.float32))
    sample = np.concatenate(samples)
    require_finite(sample)
    low, high = np.percentile(sample, [card.low_percentile, card.high_percentile])
    if high <= low:  # mostly constant: fall back to the full range
        low, high = float(sample.min()), float(sample.max())
    return float(low), float(high)


def require_finite(pixels) -> None:
    """Raise SpineDetError if an array of pixels holds NaN or infinity (floating-point data only)."""
    pixels = np.asarray(pixels)
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        bad = int(np.count_nonzero(~np.isfinite(pixels)))
        raise SpineDetError(f"{bad} of {pixels.size:,} pixels read are NaN or infinite (padding from registration?): "
                            f"replace them with a number, such as 0 or the background, first")


def normalise(image, low: float, high: float) -> np.ndarray:
    """Map intensities ``low..high`` to 0..1 (clipped), as float32 of the same shape."""
    image = np.asarray(image, dtype=np.float32)
    if high <= low:
        return np.zeros(image.shape, dtype=np.float32)
    out = (image - np.float32(low)) * np.float32(1.0 / (high - low))
    return np.clip(out, 0.0, 1.0, out=out)
