"""Training data: in-memory samples, the data sources and weighted sampling across them.

A :class:`Sample` is one 2D training image, already normalised the way the
runtime normalises (``spinedet.runtime.contract.intensity_range`` over the
whole stack, then ``normalise``), with its ground-truth boxes.  Sources:

``synthetic``
    slices of stacks from :func:`spinedet.training.synth.make_stack`,
    generated on the fly from seeds (nothing is stored);
``real2d-mdg``
    the 200 train / 15 val real 2D images in ``../shared/data/real2d-mdg``
    via :func:`spinedet.training.labels.load_real2d_mdg`, read at run time
    and skipped with a warning when the folder (or the loader) is absent.

:class:`MixedSampler` draws training samples from several sources with
given weights from one numpy Generator, so a seed fixes the sequence.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spinedet.runtime.boxes import as_boxes
from spinedet.runtime.context import neighbour_projection, reach_slices
from spinedet.runtime.contract import ModelCard, intensity_range, normalise
from spinedet.runtime.tables import BoxTable

#: ``../shared/data`` next to the repository (override with SPINEDET_DATA).
DEFAULT_DATA_ROOT = Path(__file__).resolve().parents[1].parent / "shared" / "data"

SYNTHETIC = "synthetic"
REAL2D_MDG = "real2d-mdg"


def data_root() -> Path:
    """Where the real data lives: ``$SPINEDET_DATA`` or ``../shared/data`` beside the repository."""
    env = os.environ.get("SPINEDET_DATA")
    return Path(env) if env else DEFAULT_DATA_ROOT


@dataclass
class Sample:
    """One training/validation image: ``image`` (H, W) float32 in 0..1, ``boxes`` (N, 4) float32 pixels.

    ``negatives`` (M, 4) pixels, optional: where spine look-alikes that are
    not spines lie (hard negatives for crop placement; never labels).
    ``context`` (H, W), optional: the slice's depth context, the maximum
    projection of its neighbours (:mod:`spinedet.runtime.context`); None for
    a lone 2D image, whose context is the image itself.
    """

    image: np.ndarray
    boxes: np.ndarray
    source: str = ""
    name: str = ""
    negatives: np.ndarray | None = None
    context: np.ndarray | None = None

    def model_input(self, channels: int) -> np.ndarray:
        """The image as a model with ``channels`` inputs takes it: ``(H, W)``, or ``(2, H, W)`` with its context."""
        return model_input(self.image, self.context, channels)


def model_input(image: np.ndarray, context: np.ndarray | None, channels: int) -> np.ndarray:
    """``image`` (H, W) for a one-channel model, else ``(2, H, W)``: the image and its context (itself if None)."""
    if channels == 1:
        return image
    return np.stack([image, image if context is None else context])


def stack_inputs(stack: "ValStack", depth_context_um: float) -> list:
    """Model inputs for every slice of a validation stack (see :func:`model_input`)."""
    if depth_context_um <= 0:
        return list(stack.image)
    reach = reach_slices(depth_context_um, stack.voxel_size[0])
    return [model_input(image, neighbour_projection(stack.image, k, reach), 2) for k, image in enumerate(stack.image)]


@dataclass
class ValStack:
    """A validation stack for F1-3D: ``image`` (Z, H, W) float32 normalised, ``table`` its ground truth."""

    name: str
    image: np.ndarray
    table: BoxTable
    voxel_size: tuple = (1.0, 0.1, 0.1)
    negatives: list | None = None  # per slice (M, 4) pixels: spine look-alikes (see Sample)


def _card(low_percentile: float, high_percentile: float) -> ModelCard:
    return ModelCard(low_percentile=low_percentile, high_percentile=high_percentile)


def normalise_stack(image, low_percentile: float = 1.0, high_percentile: float = 99.8) -> np.ndarray:
    """A stack (Z, H, W) or one image (H, W) as float32 0..1, exactly as the runtime normalises it.

    The intensity range is taken over the whole stack (every slice shares
    it), with the runtime's own functions.
    """
    image = np.asarray(image)
    slices = image if image.ndim == 3 else image[None]
    low, high = intensity_range(slices, _card(low_percentile, high_percentile))
    return normalise(image, low, high)


def samples_from_stack(image_norm: np.ndarray, table: BoxTable, source: str, name: str,
                       empty_slices: bool = True, negatives: list | None = None,
                       context_reach: int | None = None) -> list[Sample]:
    """One :class:`Sample` per slice of a normalised stack; ``empty_slices=False`` drops slices without spines.

    ``negatives``: optional per-slice hard-negative boxes (see :class:`Sample`).
    ``context_reach``: give each sample its depth context, the maximum
    projection of the slices within this many slices (None: no context).
    """
    out = []
    for z in range(image_norm.shape[0]):
        boxes = as_boxes(table.boxes[table.z == z], np.float32)
        if len(boxes) or empty_slices:
            context = None if context_reach is None else neighbour_projection(image_norm, z, context_reach)
            out.append(Sample(image_norm[z], boxes, source, f"{name}[{z}]",
                              None if negatives is None else negatives[z], context))
    return out


# --------------------------------------------------------------------------- synthetic


def synthetic_stacks(count: int, seed: int, shape=(20, 512, 512), low_percentile: float = 1.0,
                     high_percentile: float = 99.8, **overrides) -> list[ValStack]:
    """``count`` synthetic stacks from seeds ``[seed, i]``, normalised; ``overrides`` go to ``make_stack``."""
    from spinedet.training.synth import distractor_boxes, make_stack

    stacks = []
    for i in range(count):
        stack = make_stack(np.random.default_rng([seed, i]), tuple(shape), **overrides)
        image = normalise_stack(stack.image, low_percentile, high_percentile)
        stacks.append(ValStack(f"synth_{seed}_{i:03d}", image, stack.table, tuple(stack.voxel_size),
                               distractor_boxes(stack)))
    return stacks


def synthetic_samples(count: int, seed: int, shape=(20, 512, 512), low_percentile: float = 1.0,
                      high_percentile: float = 99.8, empty_slices: bool = True, **overrides) -> list[Sample]:
    """The slices of ``count`` synthetic stacks as samples (source ``synthetic``)."""
    out = []
    for stack in synthetic_stacks(count, seed, shape, low_percentile, high_percentile, **overrides):
        out += samples_from_stack(stack.image, stack.table, SYNTHETIC, stack.name, empty_slices, stack.negatives)
    return out


# --------------------------------------------------------------------------- real data


def real2d_samples(split: str, root=None, low_percentile: float = 1.0, high_percentile: float = 99.8,
                   warn: bool = True) -> list[Sample]:
    """The real2d-mdg ``split`` ("train" or "val") as samples, or ``[]`` with a warning when unavailable."""
    folder = Path(root) if root is not None else data_root() / REAL2D_MDG
    if not folder.is_dir():
        if warn:
            warnings.warn(f"real data folder {folder} is absent: skipping source {REAL2D_MDG}", stacklevel=2)
        return []
    try:
        from spinedet.training.labels import load_real2d_mdg, read_grey_image
    except ImportError as exc:
        if warn:
            warnings.warn(f"cannot load {REAL2D_MDG} ({exc}): skipping it", stacklevel=2)
        return []
    out = []
    for item in load_real2d_mdg(folder, split):
        image = read_grey_image(item.path)
        out.append(Sample(normalise_stack(image, low_percentile, high_percentile), as_boxes(item.boxes, np.float32),
                          REAL2D_MDG, f"{split}/{Path(item.path).name}"))
    return out


# --------------------------------------------------------------------------- sampling


class MixedSampler:
    """Draws samples from several sources: a source by weight, then a sample uniformly within it.

    ``sources``: name -> list of samples (empty sources are ignored);
    ``weights``: name -> relative weight (missing names weigh 1).
    """

    def __init__(self, sources: dict, weights: dict | None = None):
        weights = weights or {}
        self.names = [n for n, s in sources.items() if len(s) and weights.get(n, 1.0) > 0]
        if not self.names:
            raise ValueError("no training samples: every source is empty")
        self.sources = {n: sources[n] for n in self.names}
        w = np.array([float(weights.get(n, 1.0)) for n in self.names])
        self.probabilities = w / w.sum()

    def draw(self, rng: np.random.Generator) -> Sample:
        k = int(rng.choice(len(self.names), p=self.probabilities)) if len(self.names) > 1 else 0
        pool = self.sources[self.names[k]]
        return pool[int(rng.integers(len(pool)))]

    def __len__(self) -> int:
        return sum(len(s) for s in self.sources.values())
