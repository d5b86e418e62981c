import numpy as np
import pytest

from blob_model import blob_image
from spinedet.runtime.boxes import iom
from spinedet.runtime.detector import SpineDetector
from spinedet.runtime.tiling import cut_tile, inner_edge_mask, plan_tiles, resize, tile_origins


@pytest.mark.parametrize("length, tile, overlap", [(128, 128, 32), (129, 128, 32), (500, 128, 32), (1000, 512, 64)])
def test_tiles_cover_the_image_with_the_overlap(length, tile, overlap):
    starts = tile_origins(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] + tile >= length
    if len(starts) > 1:
        assert starts[-1] + tile == length
        assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_small_image_is_one_zero_padded_tile():
    image = np.ones((50, 60), np.float32)
    assert plan_tiles(image.shape, (128, 128), 32) == [(0, 0)]
    tile = cut_tile(image, (0, 0), (128, 128))
    assert tile.shape == (128, 128) and tile[:50, :60].all() and not tile[50:].any() and not tile[:, 60:].any()


def test_boxes_on_inner_tile_edges_are_dropped():
    boxes = np.array([[0, 10, 10, 20], [50, 50, 60, 60], [120, 10, 128, 20]])
    # tile at x0 = 100 inside a 300-px-wide image: both its left and right edges are inner edges
    keep = inner_edge_mask(boxes, (0, 100), (128, 128), (128, 300))
    assert keep.tolist() == [False, True, False]
    # the first tile's left edge is the image border: a box there is kept
    assert inner_edge_mask(boxes, (0, 0), (128, 128), (128, 300)).tolist() == [True, True, False]


def test_resize_preserves_mean_and_positions():
    image = blob_image((100, 100), [(30.0, 60.0)], sigma=4, background=0, amplitude=1)
    half = resize(image, (50, 50))
    assert half.shape == (50, 50)
    peak = np.unravel_index(np.argmax(half), half.shape)
    assert abs((peak[1] + 0.5) * 2 - 30) <= 2 and abs((peak[0] + 0.5) * 2 - 60) <= 2
    assert half.mean() == pytest.approx(image.mean(), rel=0.05)
    double = resize(image, (200, 200))
    assert double.mean() == pytest.approx(image.mean(), rel=0.02)


def centres(spines):
    return np.array([[(s.mean_box[0] + s.mean_box[2]) / 2, (s.mean_box[1] + s.mean_box[3]) / 2] for s in spines])


def test_large_image_is_tiled_and_spines_on_tile_borders_are_found_once(blob_model):
    truth = [(20, 20), (110, 64), (118, 200), (260, 128), (390, 30), (480, 280), (200, 210)]
    image = blob_image((300, 500), truth, background=100, amplitude=1000, sigma=2.0)
    result = SpineDetector(blob_model, batch=4).detect(image)
    assert len(result.spines) == len(truth)
    found = centres(result.spines)
    for x, y in truth:
        assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) < 4


def test_rescaled_input_gives_boxes_in_input_pixels(blob_model):
    # pixel size 0.05 µm: twice the model's resolution, so the image is halved before inference
    truth = [(40, 50), (150, 160)]
    image = blob_image((240, 240), truth, sigma=4.0)
    result = SpineDetector(blob_model).detect(image, voxel_size=(0.5, 0.05, 0.05))
    found = centres(result.spines)
    assert len(found) == 2
    for x, y in truth:
        assert np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) < 5
    widths = [s.mean_box[2] - s.mean_box[0] for s in result.spines]
    assert widths == pytest.approx([24, 24], abs=1)  # the model's 12-px boxes, scaled back by 2


def test_more_spines_than_k_are_found_through_tiling(blob_model):
    # the test model returns K = 20 boxes per tile; 48 spines need several tiles
    truth = [(x, y) for x in range(20, 400, 50) for y in range(20, 300, 50)]
    image = blob_image((300, 400), truth, sigma=2.0)
    result = SpineDetector(blob_model).detect(image)
    assert len(result.spines) == len(truth) == 48
    found = centres(result.spines)
    assert max(np.min(np.hypot(found[:, 0] - x, found[:, 1] - y)) for x, y in truth) < 4
    assert iom(np.array([s.mean_box for s in result.spines]), np.array([s.mean_box for s in result.spines])
               ).sum() == pytest.approx(48)  # no duplicates


def test_tiled_stacks_are_run_a_slice_at_a_time(blob_model):
    """Slices that need several tiles: one slice's tiles per call, not ``batch`` slices' worth."""
    truth = [(20, 20), (260, 128), (480, 280)]
    stack = np.stack([blob_image((300, 500), truth, sigma=2.0)] * 3)
    detector = SpineDetector(blob_model, batch=4)
    tiles_per_slice = len(plan_tiles((300, 500), detector.card.input_size, detector.card.tile_overlap_px))
    assert tiles_per_slice > 4 and detector.slices_per_call((300, 500), None) == 1
    assert detector.slices_per_call(detector.card.input_size, None) == 4
    calls, run = [], detector.backend.run
    detector.backend.run = lambda batch: calls.append(len(batch)) or run(batch)
    progress = []
    result = detector.detect(stack, progress=lambda done, total: progress.append(done))
    assert progress == [1, 2, 3]
    assert max(calls) <= 4 and sum(calls) == 3 * tiles_per_slice
    assert len(result.spines) == len(truth) and all(s.z_first == 0 and s.z_last == 2 for s in result.spines)
