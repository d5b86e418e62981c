"""The spine detection pipeline as a library: load a model once, detect in many stacks.

Data flows one way: slices -> (rescale, normalise, tile) -> batches ->
backend -> raw boxes -> post-processing -> tracker -> :class:`Spine` records.

>>> detector = SpineDetector()                      # the shipped default model
>>> result = detector.detect(stack, voxel_size=(0.5, 0.1, 0.1))   # (z, y, x) µm
>>> for spine in result.spines: ...

For a microscope that delivers slices one by one, :meth:`SpineDetector.stream`
returns a :class:`SliceStream`: feed it slices as they arrive and it hands
back each spine as soon as its track closes.

Nothing here prints or keeps global state; every user-caused failure is a
:class:`~spinedet.runtime.errors.SpineDetError`.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from . import contract
from .attachment import attached
from .backends import auto_device, open_backend
from .context import neighbour_projection, reach_slices
from .errors import SpineDetError
from .postprocess import MAX_AREA_UM2, NMS_IOM, filter_detections, link_threshold_for, max_area_pixels
from .spines import Spine, box_fluorescence, spine_from_track
from .stacks import Stack
from .tables import BoxTable
from .tiling import cut_tile, inner_edge_mask, plan_tiles, resize, scaled_shape
from .tracking import LINK_IOM, MAX_MISSES, SliceTracker, tracks_to_table
from .voxels import VoxelSize, as_voxel_size, assumptions, check_scale, rescale_factor

#: the shipped model, fp16, onnxruntime flavour: what GPUs run by default through onnxruntime (``cuda``, ``tensorrt``)
DEFAULT_MODEL_NAME = "spinedet_default.onnx"
#: the shipped model's tensorrt flavour (the same weights in plain ops), what ``device="trt"`` runs by default
DEFAULT_TRT_MODEL_NAME = "spinedet_default_trt.onnx"
#: the shipped model quantised to int8 (static QDQ, onnxruntime's CPU provider): what ``device="cpu"`` runs by
#: default where it is shipped (``spine-export --int8``; models/README.md says how it was made and measured)
DEFAULT_INT8_MODEL_NAME = "spinedet_default_int8.onnx"
MIN_SIDE_PX = 16  # in model pixels: anything smaller cannot hold a spine
#: slices (or tiles) per inference call unless told otherwise
DEFAULT_BATCH = 8
#: slices a stream waits for, when not given an intensity range, to estimate one (see SliceStream)
RANGE_WARMUP_SLICES = 8


def shipped_model_path(name: str = DEFAULT_MODEL_NAME) -> Path:
    """Where the shipped model file ``name`` (one of the ``DEFAULT_*_MODEL_NAME``) lies in ``spinedet.models``."""
    return Path(str(resources.files("spinedet.models") / name))


def default_model_path(device: str = "cpu") -> Path:
    """The fastest model shipped in ``spinedet.models`` for ``device``.

    ``"trt"``: the tensorrt flavour; ``"cpu"`` (and ``"auto"`` where that means the CPU): the int8 model
    where it is shipped, else the fp16 one; ``"cuda"``, ``"tensorrt"``: the fp16 onnxruntime flavour.
    """
    if device == "trt":
        return shipped_model_path(DEFAULT_TRT_MODEL_NAME)
    if device == "cpu" or (device == "auto" and auto_device() == "cpu"):
        int8 = shipped_model_path(DEFAULT_INT8_MODEL_NAME)
        if int8.is_file():
            return int8
    return shipped_model_path(DEFAULT_MODEL_NAME)


def model_tiles(images, card: contract.ModelCard, pixel_size_um: float | None, intensity_range, contexts=None):
    """The model inputs of 2D images, as :meth:`SpineDetector.raw_detections` makes them.

    images: sequence of ``(Y, X)`` raw slices of one stack; contexts: each image's raw neighbour projection
    (None: each image is its own context).  Rescaled to the card's pixel size, normalised with
    ``intensity_range`` (low, high), padded and tiled.  Returns ``(tiles, owners, plans)``: the ``(C, H, W)``
    float32 tiles; per tile ``(image index, (y, x) origin)``; per image ``(scaled shape, tile origins,
    (x scale, y scale))``.
    """
    factor = rescale_factor(pixel_size_um, card)
    tiles, owners = [], []
    plans = []
    for k, image in enumerate(images):
        image = np.asarray(image)
        if image.ndim != 2:
            raise SpineDetError(f"expected 2D slices, got shape {image.shape}")
        shape = scaled_shape(image.shape, factor)
        if min(shape) < MIN_SIDE_PX:
            raise SpineDetError(f"image is {image.shape[1]}x{image.shape[0]} px"
                                f"{' after rescaling' if factor != 1.0 else ''}: smaller than a spine")
        channels = [image]
        if card.channels > 1:
            context = image if contexts is None else np.asarray(contexts[k])
            if context.shape != image.shape:
                raise SpineDetError(f"depth context of shape {context.shape} for a slice of shape {image.shape}")
            channels.append(context)
        model_channels = []
        for channel in channels:
            channel = contract.normalise(channel, *intensity_range)
            model_channels.append(resize(channel, shape) if factor != 1.0 else channel)
        origins = plan_tiles(shape, card.input_size, card.tile_overlap_px)
        plans.append((shape, origins, (shape[1] / image.shape[1], shape[0] / image.shape[0])))
        for origin in origins:
            tiles.append(np.stack([cut_tile(channel, origin, card.input_size) for channel in model_channels]))
            owners.append((k, origin))
    return tiles, owners, plans


@dataclass
class DetectionResult:
    """What :meth:`SpineDetector.detect` found in one stack.

    spines: the 3D spines, by id.  table: one row per spine per detected slice.
    shape: ``(Z, Y, X)`` of the input.  voxel_size: as used (µm).
    intensity_range: raw intensities mapped to 0 and 1 for the model.
    timings: seconds spent per stage (read, infer, postprocess, track).
    mip: True if detection ran on the maximum-intensity projection.
    projection: the ``(Y, X)`` maximum-intensity projection, if asked for.
    context_slices: slices above and below each slice in its depth context
        (None: the model takes no depth context).
    notes: what the run had to assume (an unknown pixel size, say), one sentence each.
    detached: the boxes the shaft check removed that scored above the score
        threshold, as ``(z, box (4,) pixels, score)``: what would otherwise
        have confirmed a spine (for the overlay and the summary).
    """

    spines: list
    table: BoxTable
    shape: tuple
    voxel_size: VoxelSize
    intensity_range: tuple
    timings: dict = field(default_factory=dict)
    mip: bool = False
    projection: np.ndarray | None = None
    context_slices: int | None = None
    notes: list = field(default_factory=list)
    detached: list = field(default_factory=list)

    @property
    def mode(self) -> str:
        """``"maximum projection"`` (``mip``), ``"single image"`` (one slice: boxes, no tracking through z)
        or ``"3D tracking"``."""
        if self.mip:
            return "maximum projection"
        return "single image" if self.shape[0] == 1 else "3D tracking"


class _Clock:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


class SpineDetector:
    """A loaded spine detection model plus the pipeline settings.

    model: path of an ONNX model with its card beside it (default: the
        fastest shipped model for ``device``, :func:`default_model_path`).  device: ``cpu``, ``cuda``,
        ``tensorrt`` (onnxruntime's providers), ``trt`` (native TensorRT engine) or ``auto``.
    batch: slices (or tiles) per inference call.  threads: CPU threads for
        inference (None: all).  score_threshold: a spine is reported when its
        best box scores above it (None: the model card's, 0.5 unless the
        model was calibrated).  link_threshold: boxes above it are tracked
        (None: the card's; at most score_threshold).  max_area_um2 (µm²) and
        nms_iom are the paper's post-processing; link_iom and max_misses its
        tracker.  shaft_distance_um: a box farther than this (µm) from every
        large bright structure of its slice's depth context is dropped before
        tracking (:mod:`~spinedet.runtime.attachment`); None: the card's
        (no check where the card names none); ``math.inf``: no check.
    """

    def __init__(self, model=None, device: str = "cpu", batch: int = DEFAULT_BATCH, threads: int | None = None,
                 score_threshold: float | None = None, max_area_um2: float | None = MAX_AREA_UM2,
                 nms_iom: float = NMS_IOM, link_iom: float = LINK_IOM, max_misses: int = MAX_MISSES,
                 link_threshold: float | None = None, shaft_distance_um: float | None = None):
        self.model_path = Path(model) if model is not None else default_model_path(device)
        if not self.model_path.is_file():
            hint = " (no default model is shipped in this install; pass a model file)" if model is None else ""
            raise SpineDetError(f"no such model file{hint}", self.model_path)
        if batch < 1:
            raise SpineDetError(f"batch must be at least 1, got {batch}")
        if max_area_um2 is not None and not max_area_um2 > 0:
            raise SpineDetError(f"maximum spine area must be positive µm², got {max_area_um2}")
        self.card = contract.load_card(self.model_path)
        if score_threshold is None:
            score_threshold = self.card.score_threshold
        if not 0 <= score_threshold < 1:
            raise SpineDetError(f"score threshold must be in [0, 1), got {score_threshold}")
        if link_threshold is None:
            link_threshold = self.card.link_threshold
        if link_threshold is not None and not 0 <= link_threshold < 1:
            raise SpineDetError(f"link threshold must be in [0, 1), got {link_threshold}")
        self.backend = open_backend(self.model_path, self.card, device, threads, batch_max=max(batch, 1))
        self.batch = int(batch)
        self.score_threshold = float(score_threshold)
        self.link_threshold = link_threshold_for(score_threshold, link_threshold)
        self.max_area_um2 = max_area_um2
        self.nms_iom = float(nms_iom)
        self.link_iom = float(link_iom)
        self.max_misses = int(max_misses)
        if shaft_distance_um is None:
            shaft_distance_um = self.card.shaft_distance_um
        if shaft_distance_um is not None and not shaft_distance_um >= 0:
            raise SpineDetError(f"shaft distance must be at least 0 µm, got {shaft_distance_um}")
        #: µm; None: no shaft attachment check
        self.shaft_distance_um = None if shaft_distance_um in (None, math.inf) else float(shaft_distance_um)

    def close(self) -> None:
        """Release the backend (GPU memory; a TensorRT-RTX runtime cache is saved); the detector is not used after."""
        self.backend.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- 2D ---------------------------------------------------------------------------------------------------------

    def raw_detections(self, images, pixel_size_um: float | None, intensity_range, contexts=None) -> list:
        """The model's boxes for each 2D image, in that image's pixels, before post-processing.

        images: sequence of ``(Y, X)`` raw slices of one stack.  Handles
        rescaling, normalisation with ``intensity_range`` (low, high), padding
        and tiling.  contexts: for a model with depth context, each image's
        neighbour projection ``(Y, X)``, raw like the image
        (:mod:`~spinedet.runtime.context`); None: each image is its own
        context (a lone 2D image).  A one-channel model ignores them.
        Returns one ``(boxes (M, 4), scores (M,))`` per image.
        """
        for image in images:  # a slice the range was not sampled from may still hold NaN
            contract.require_finite(image)
        tiles, owners, plans = model_tiles(images, self.card, pixel_size_um, intensity_range, contexts)
        raw_boxes, raw_scores = self._run_tiles(tiles)
        per_image = [([], []) for _ in images]
        for (k, origin), boxes, scores in zip(owners, raw_boxes, raw_scores):
            shape, origins, (sx, sy) = plans[k]
            if len(origins) > 1:
                keep = inner_edge_mask(boxes, origin, self.card.input_size, shape)
                boxes, scores = boxes[keep], scores[keep]
            boxes = boxes.astype(np.float64) + [origin[1], origin[0], origin[1], origin[0]]
            per_image[k][0].append(boxes / [sx, sy, sx, sy])
            per_image[k][1].append(scores.astype(np.float64))
        return [(np.concatenate(b), np.concatenate(s)) for b, s in per_image]

    def slices_per_call(self, slice_shape, pixel_size_um: float | None) -> int:
        """How many slices of ``slice_shape`` (Y, X) pixels go into one :meth:`raw_detections` call.

        ``batch`` slices when each fits one model input; when slices are
        tiled, as many as keep about ``batch`` tiles in memory at once (at
        least one slice), so a 2048 x 2048 stack holds one slice's tiles,
        not ``batch`` slices' worth.
        """
        shape = scaled_shape(slice_shape, rescale_factor(pixel_size_um, self.card))
        tiles = len(plan_tiles(shape, self.card.input_size, self.card.tile_overlap_px))
        return max(1, self.batch // tiles)

    def _run_tiles(self, tiles):
        boxes, scores = [], []
        for start in range(0, len(tiles), self.batch):
            batch = np.stack(tiles[start:start + self.batch])  # [B, C, H, W]
            b, s = self.backend.run(batch)
            boxes.extend(b)
            scores.extend(s)
        return boxes, scores

    def postprocess(self, boxes, scores, pixel_size_um: float | None, context=None, detached=None):
        """Link threshold, area cap, IoM-NMS and shaft attachment for one slice's raw boxes: the boxes the tracker sees.

        context: the raw ``(Y, X)`` image the attachment check looks at (the
        slice's depth context, or the slice); None: no attachment check.
        detached: a list that receives ``(box, score)`` of each box the check
        removed that scored above :attr:`score_threshold`.
        """
        pixel = pixel_size_um or self.card.pixel_size_um
        cap = None
        if self.max_area_um2 is not None:
            cap = max_area_pixels(self.max_area_um2, pixel)
        boxes, scores = filter_detections(boxes, scores, self.link_threshold, cap, self.nms_iom)
        if context is not None and self.shaft_distance_um is not None and len(boxes):
            keep = attached(context, boxes, pixel, self.shaft_distance_um)
            if detached is not None:
                detached += [(b, float(v)) for b, v in zip(boxes[~keep], scores[~keep]) if v > self.score_threshold]
            boxes, scores = boxes[keep], scores[keep]
        return boxes, scores

    def tracker(self) -> SliceTracker:
        """A fresh tracker with this detector's settings (tracks need a box above score_threshold)."""
        return SliceTracker(self.link_iom, self.max_misses, self.score_threshold)

    def detections(self, images, pixel_size_um: float | None, intensity_range, contexts=None,
                   shaft_images=None, detached=None) -> list:
        """Each 2D image's boxes above the link threshold: :meth:`raw_detections`, then :meth:`postprocess`.

        shaft_images: what the shaft check looks at for each image (raw
        ``(Y, X)``, or None for no check; see :meth:`shaft_reach`); default:
        its context, else the image.  detached: a list per image that
        receives what :meth:`postprocess` reports.
        Returns one ``(boxes (N, 4) pixels, scores (N,))`` per image, by
        decreasing score.  Of a lone image, the spines are the boxes above
        :attr:`score_threshold`; in a stack, the tracker decides.
        """
        raw = self.raw_detections(images, pixel_size_um, intensity_range, contexts)
        if shaft_images is None:
            shaft_images = images if contexts is None else contexts
        if detached is None:
            detached = [None] * len(images)
        return [self.postprocess(boxes, scores, pixel_size_um, shaft_image, lost)
                for shaft_image, (boxes, scores), lost in zip(shaft_images, raw, detached)]

    def context_reach(self, z_step_um: float | None) -> int | None:
        """Slices on each side in a slice's depth context at ``z_step_um`` (None: the model takes none)."""
        if self.card.channels == 1:
            return None
        return reach_slices(self.card.depth_context_um, z_step_um)

    def shaft_reach(self, z_step_um: float | None) -> int | None:
        """Slices on each side of a slice the shaft check projects: the model's depth context (one slice for a
        slice-only model); None: no check.

        Slices farther apart than the model's depth context (2 µm for the
        shipped model's 1.5 µm) get no check: a head's shaft is then often in
        no slice the check could look at (on six synthetic stacks at 2 and
        3 µm steps the check lowered F1-3D by 0.01, against +0.005 at 1.5 µm).
        """
        if self.shaft_distance_um is None:
            return None
        reach = self.context_reach(z_step_um)
        if reach is None:
            return 1
        return reach if reach > 0 else None

    def slice_detections(self, stack, voxel_size=None) -> list:
        """Post-processed ``(boxes, scores)`` of every slice of ``stack``, as :meth:`detect` finds them before tracking.

        The boxes are those above the link threshold (see :meth:`tracker`).

        stack, voxel_size: as for :meth:`detect`.
        """
        slices, z_index, voxel = self._as_slices(stack, voxel_size)
        found = self._each_slice(slices, z_index, voxel, self.intensity_range(slices), _Clock())
        return [(boxes, scores) for _, _, boxes, scores in found]

    def _each_slice(self, slices, z_index, voxel: VoxelSize, intensity_range, clock, progress=None, detached=None):
        """Yield ``(z, raw slice, boxes, scores)`` slice by slice, top first, post-processed.

        detached: a list that receives ``(z, box, score)`` of the confident boxes the shaft check removed.
        """
        reach, shaft_reach = self.context_reach(voxel.z_um), self.shaft_reach(voxel.z_um)
        if len(slices) == 1 and self.shaft_distance_um is not None:
            shaft_reach = 0  # a lone image (or a projection) is its own context, whatever the z-step
        step = self.slices_per_call(np.shape(slices[0]), voxel.x_um)
        for start in range(0, len(slices), step):
            stop = min(start + step, len(slices))
            with clock("read"):
                chunk = [np.asarray(slices[k]) for k in range(start, stop)]
                contexts = None if reach is None else [neighbour_projection(slices, k, reach)
                                                       for k in range(start, stop)]
                if shaft_reach is None:
                    shaft_images = [None] * len(chunk)
                elif shaft_reach == reach:
                    shaft_images = contexts
                else:
                    shaft_images = [neighbour_projection(slices, k, shaft_reach) for k in range(start, stop)]
            with clock("infer"):
                raw = self.raw_detections(chunk, voxel.x_um, intensity_range, contexts)
            for offset, (image, (boxes, scores)) in enumerate(zip(chunk, raw)):
                z = z_index[start + offset]
                with clock("postprocess"):
                    lost = [] if detached is not None else None
                    boxes, scores = self.postprocess(boxes, scores, voxel.x_um, shaft_images[offset], lost)
                    if lost:
                        detached += [(z, box, score) for box, score in lost]
                yield z, image, boxes, scores
            if progress is not None:
                progress(stop, len(slices))

    def intensity_range(self, slices) -> tuple[float, float]:
        """The raw ``(low, high)`` that map to 0 and 1 for a whole stack (the card's percentiles).

        Raises SpineDetError for a blank stack (every pixel the same), where
        there is nothing to detect and any answer would be made up.
        """
        low, high = contract.intensity_range(slices, self.card)
        if high <= low:
            raise SpineDetError(f"image is blank: every pixel is {low:g}")
        return low, high

    # --- 3D ---------------------------------------------------------------------------------------------------------

    def detect(self, stack, voxel_size=None, mip: bool = False, projection: bool = False,
               progress=None) -> DetectionResult:
        """Detect and track spines in a whole stack.

        stack: a ``(Z, Y, X)`` or ``(Y, X)`` array, or a :class:`Stack` from
        :func:`~spinedet.runtime.stacks.open_stack`.  voxel_size: ``(z, y, x)``
        in µm or a VoxelSize (default: the Stack's own, else unknown, in which
        case the model's pixel size is assumed).  mip: detect on the
        maximum-intensity projection (fast; z ranges are then 0).
        projection: also return the maximum-intensity projection (for overlays).
        progress: optional callable ``progress(done_slices, total_slices)``.
        """
        slices, z_index, voxel = self._as_slices(stack, voxel_size)
        shape = (len(slices),) + tuple(slices.shape[1:] if isinstance(slices, Stack) else np.shape(slices[0]))
        check_scale(voxel, shape[1:], self.card)  # before any work: an absurd size is refused at once
        clock = _Clock()
        with clock("read"):
            low, high = self.intensity_range(slices)
            maximum = None
            if mip:
                maximum = max_projection(slices)
                slices, z_index = [maximum], [0]
        stream = SliceStream(self, voxel, (low, high))
        spines, detached = [], []
        for z, image, boxes, scores in self._each_slice(slices, z_index, voxel, (low, high), clock, progress,
                                                        detached):
            if projection and not mip:
                with clock("read"):
                    maximum = image.copy() if maximum is None else np.maximum(maximum, image, out=maximum)
            with clock("track"):
                spines += stream.add_detections(z, image, boxes, scores)
        with clock("track"):
            spines += stream.finish()
        spines.sort(key=lambda s: s.spine_id)
        context = self.context_reach(voxel.z_um)
        if mip and context is not None:
            context = 0  # the projection is its own context
        notes = assumptions(voxel, self.card, 1 if mip else len(slices))
        if self.shaft_distance_um is not None and not mip and len(slices) > 1 and self.shaft_reach(voxel.z_um) is None:
            notes.append(f"no shaft check: slices {voxel.z_um:g} µm apart are farther than the model's depth context "
                         f"({self.card.depth_context_um:g} µm), so a spine's dendrite may lie in no slice it sees")
        return DetectionResult(spines, tracks_to_table(spines), shape, voxel, (low, high), clock.seconds, mip,
                               maximum if (projection or mip) else None, context, notes, detached)

    def stream(self, voxel_size=None, intensity_range=None, warmup_slices: int = RANGE_WARMUP_SLICES) -> "SliceStream":
        """A :class:`SliceStream` for slices that arrive one at a time (top slice first).

        intensity_range: raw ``(low, high)`` mapped to 0..1 for the whole stack
        (e.g. :meth:`intensity_range` of a previous stack of the same field);
        with it the stream finds what :meth:`detect` finds with that range.
        Default: estimated from the first ``warmup_slices`` non-blank slices,
        which are searched only once they have all arrived.
        """
        return SliceStream(self, as_voxel_size(voxel_size), intensity_range, warmup_slices)

    def _as_slices(self, stack, voxel_size):
        if isinstance(stack, Stack):
            voxel = stack.voxel_size if voxel_size is None else as_voxel_size(voxel_size)
            return stack, stack.z_index, voxel
        array = np.asarray(stack)
        if array.ndim == 2:
            array = array[None]
        if array.ndim != 3:
            raise SpineDetError(f"expected a (Z, Y, X) stack or a (Y, X) image, got shape {array.shape}")
        if array.size == 0:
            raise SpineDetError(f"image is empty (shape {array.shape})")
        if array.dtype.kind not in "uif":
            raise SpineDetError(f"unsupported pixel type {array.dtype}")
        return array, list(range(len(array))), as_voxel_size(voxel_size)


def max_projection(slices) -> np.ndarray:
    """Maximum-intensity projection ``(Y, X)`` of a sequence of slices, read one at a time."""
    return neighbour_projection(slices, 0, len(slices))


class SliceStream:
    """Detection and tracking for slices that arrive one by one.

    :meth:`add_slice` takes one raw slice and returns the spines whose tracks
    have closed; :meth:`finish` closes the rest.  Spine ids are stable from
    the moment a spine is confirmed (a box above the score threshold).  A
    model with depth context needs the slices below a slice before it can
    search it, and the shaft check projects at least one slice each side, so
    detection runs :attr:`lag` slices behind the newest slice (0 for a
    slice-only model without the check).

    The intensity range (raw values mapped to 0 and 1 for the model) is fixed
    for the whole stack.  Given (``intensity_range``), the stream finds
    exactly what :meth:`SpineDetector.detect` finds with the same range, slice
    for slice.  Otherwise it is estimated, with the card's percentiles, from
    the first ``warmup_slices`` slices that are not blank; nothing is searched
    until they have arrived, and the result can differ from ``detect()``,
    which samples the whole stack (:attr:`intensity_range` tells what was used).
    """

    def __init__(self, detector: SpineDetector, voxel_size: VoxelSize, intensity_range=None,
                 warmup_slices: int = RANGE_WARMUP_SLICES):
        if warmup_slices < 1:
            raise SpineDetError(f"warmup_slices must be at least 1, got {warmup_slices}")
        if intensity_range is not None:
            low, high = (float(v) for v in intensity_range)
            if not high > low:
                raise SpineDetError(f"intensity range must be (low, high) with high > low, got {intensity_range!r}")
            intensity_range = (low, high)
        self.detector = detector
        self.voxel_size = voxel_size
        self.intensity_range = intensity_range
        self.warmup_slices = int(warmup_slices)
        self.tracker = detector.tracker()
        self._reach = detector.context_reach(voxel_size.z_um)
        self._shaft_reach = detector.shaft_reach(voxel_size.z_um)
        self.lag = max(self._reach or 0, self._shaft_reach or 0)
        #: ``(z, box, score)`` of the confident boxes the shaft check removed so far (see DetectionResult.detached)
        self.detached: list = []
        self._received: list[tuple[int, np.ndarray]] = []  # recent (z, slice): the waiting ones and their context
        self._waiting = 0  # how many of the newest received slices are not searched yet
        self._next_z = 0

    def add_slice(self, image, z: int | None = None) -> list[Spine]:
        """Take one raw ``(Y, X)`` slice (slice number ``z``, default: the next); return the spines that closed."""
        image = np.asarray(image)
        if image.ndim != 2 or image.size == 0:
            raise SpineDetError(f"expected a 2D slice, got shape {image.shape}")
        z = self._next_z if z is None else int(z)
        if self._received and z <= self._received[-1][0]:
            raise SpineDetError(f"slices must arrive in increasing z order (got {z} after {self._received[-1][0]})")
        if self._next_z == 0 and not self._received:  # the first slice: refuse an unusable voxel size at once
            check_scale(self.voxel_size, image.shape, self.detector.card)
        self._next_z = z + 1
        self._received.append((z, image))
        self._waiting += 1
        return self._search(final=False)

    def add_detections(self, z: int, image, boxes, scores) -> list[Spine]:
        """Track one slice's post-processed detections (found elsewhere); ``image``: the raw slice (fluorescence)."""
        values = box_fluorescence(np.asarray(image), boxes)
        self._next_z = max(self._next_z, z + 1)
        return self._spines(self.tracker.add_slice(z, boxes, scores, values))

    def finish(self) -> list[Spine]:
        """Search the slices still waiting and close all open tracks: the stack has ended."""
        closed = self._search(final=True)
        return closed + self._spines(self.tracker.finish())

    def _search(self, final: bool) -> list[Spine]:
        """Detect in every waiting slice whose neighbours below have arrived (all of them if ``final``)."""
        if self.intensity_range is None and not self._estimate_range(final):
            return []
        closed = []
        newest = self._received[-1][0] if self._received else 0
        while self._waiting:
            z, image = self._received[len(self._received) - self._waiting]
            if not final and newest - z < self.lag:
                break
            self._waiting -= 1
            closed += self._search_slice(z, image)
            # keep only what the next waiting slice's context can still use
            keep_from = z + 1 - self.lag
            self._received = [(zz, im) for zz, im in self._received if zz >= keep_from]
        return closed

    def _estimate_range(self, final: bool) -> bool:
        """Fix the intensity range from the first non-blank slices once enough have arrived; False: wait."""
        shown = [im for _, im in self._received if np.ptp(im) > 0]  # blank slices (shutter closed) have no contrast
        if len(shown) < self.warmup_slices and not final:
            return False
        if shown:
            self.intensity_range = contract.intensity_range(shown, self.detector.card)
        return True

    def _search_slice(self, z: int, image) -> list[Spine]:
        if self.intensity_range is None:  # the whole stack was blank: nothing to find
            return self.add_detections(z, image, np.zeros((0, 4)), np.zeros(0))
        def around(reach):
            return None if reach is None else [max_projection([im for zz, im in self._received
                                                               if abs(zz - z) <= reach])]

        contexts = around(self._reach)
        shaft_images = [None] if self._shaft_reach is None else around(self._shaft_reach)
        lost = []
        (boxes, scores), = self.detector.detections([image], self.voxel_size.x_um, self.intensity_range, contexts,
                                                    shaft_images, [lost])
        self.detached += [(z, box, score) for box, score in lost]
        return self.add_detections(z, image, boxes, scores)

    def _spines(self, tracks) -> list[Spine]:
        return [spine_from_track(t, self.voxel_size.z_um, self.voxel_size.x_um) for t in tracks]
