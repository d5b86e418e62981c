"""Post-processing and tracking alone: a 60-slice stack with the model's full 80 raw boxes per slice.

The model always returns K = 80 boxes, whatever the image holds, so this is
the per-stack cost of everything after inference.  The paper quotes 0.01 s
per tracked detection; the target here is the whole stack in well under 50 ms.
"""

import numpy as np
import pytest

from spinedet.runtime.postprocess import filter_detections
from spinedet.runtime.spines import box_fluorescence
from spinedet.runtime.tracking import SliceTracker

SLICES, K, SPINES, SIZE = 60, 80, 26, 512


def raw_model_output(seed=0):
    """Per slice ``(boxes (80, 4), scores (80,))`` like a detector's: real spines with duplicates plus junk."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(30, SIZE - 30, (SPINES, 2))
    sizes = rng.uniform(10, 26, (SPINES, 2))
    z_first = rng.integers(0, SLICES - 3, SPINES)
    z_last = np.minimum(z_first + rng.integers(2, 12, SPINES), SLICES - 1)
    out = []
    for z in range(SLICES):
        boxes, scores = [], []
        for c, s, a, b in zip(centres, sizes, z_first, z_last):
            if a <= z <= b:
                for _ in range(rng.integers(1, 3)):  # a detection and sometimes a duplicate
                    jitter = rng.normal(0, 1.0, 4)
                    boxes.append([c[0] - s[0] / 2, c[1] - s[1] / 2, c[0] + s[0] / 2, c[1] + s[1] / 2] + jitter)
                    scores.append(rng.uniform(0.55, 0.99))
        while len(boxes) < K:
            x, y = rng.uniform(0, SIZE - 30, 2)
            w, h = rng.uniform(5, 60, 2)
            boxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(0.0, 0.5))  # below the threshold, yet part of every NMS
        out.append((np.array(boxes[:K]), np.array(scores[:K])))
    return out


def postprocess_and_track(raw, images=None):
    tracker = SliceTracker()
    tracks = []
    for z, (boxes, scores) in enumerate(raw):
        boxes, scores = filter_detections(boxes, scores, 0.5, 2000.0, 0.5)
        values = box_fluorescence(images[z], boxes) if images is not None else None
        tracks += tracker.add_slice(z, boxes, scores, values)
    return tracks + tracker.finish()


@pytest.fixture(scope="module")
def raw():
    return raw_model_output()


def test_postprocess_and_track_60_slices(benchmark, raw):
    tracks = benchmark(postprocess_and_track, raw)
    assert 0.8 * SPINES <= len(tracks) <= 1.5 * SPINES
    benchmark.extra_info["spines"] = len(tracks)
    benchmark.extra_info["detections"] = sum(len(t.z) for t in tracks)


def test_postprocess_track_and_measure_fluorescence_60_slices(benchmark, raw):
    images = np.random.default_rng(1).integers(0, 4000, (SLICES, SIZE, SIZE)).astype(np.uint16)
    tracks = benchmark(postprocess_and_track, raw, images)
    benchmark.extra_info["spines"] = len(tracks)


def dendrite_slices(seed=0):
    """``(SLICES, SIZE, SIZE)`` uint16: three 1 µm-wide shafts across the field (0.1 µm/px), spine heads on them,
    puncta between them, Poisson noise: what the shaft attachment check looks at."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    base = np.full((SIZE, SIZE), 20.0)
    for k in range(3):
        a, b = rng.uniform(-0.5, 0.5), rng.uniform(80, SIZE - 80)
        base[np.abs(yy - (a * xx + b)) < 5 * np.sqrt(1 + a * a)] += 200  # 10 px = 1 µm wide
    for x, y in rng.uniform(0, SIZE, (60, 2)):
        base += 150 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 3.0 ** 2))
    return rng.poisson(np.broadcast_to(base, (SLICES, SIZE, SIZE))).astype(np.uint16)


def test_shaft_check_60_slices(benchmark, raw):
    """The attachment check (runtime/attachment.py) on each slice's boxes above 0.5: its cost per stack."""
    from spinedet.runtime.attachment import attached

    images = dendrite_slices()
    kept = [filter_detections(boxes, scores, 0.5, 2000.0, 0.5) for boxes, scores in raw]

    def check():
        return sum(int(attached(image, boxes, 0.1).sum()) for image, (boxes, _) in zip(images, kept))

    attached_boxes = benchmark(check)
    benchmark.extra_info["boxes"] = sum(len(b) for b, _ in kept)
    benchmark.extra_info["attached"] = attached_boxes
