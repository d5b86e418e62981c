import numpy as np
import pytest

from spinedet.runtime.boxes import box_area, greedy_pairs, iom, iom_nms, iou
from spinedet.runtime.postprocess import filter_detections, max_area_pixels


def test_iom_of_nested_box_is_one_while_iou_is_small():
    outer, inner = [[0, 0, 10, 10]], [[2, 2, 4, 4]]
    assert iom(outer, inner)[0, 0] == pytest.approx(1.0)
    assert iou(outer, inner)[0, 0] == pytest.approx(4 / 100)


def test_iom_partial_and_disjoint_and_degenerate():
    a = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 5, 9]])
    b = np.array([[5, 0, 25, 10]])  # 10x20 box overlapping the first by 5x10
    m = iom(a, b)
    assert m.shape == (3, 1)
    assert m[0, 0] == pytest.approx(50 / 100)
    assert m[1, 0] == 0.0
    assert m[2, 0] == 0.0  # zero-area box
    np.testing.assert_allclose(iom(b, a), m.T)
    assert box_area(a).tolist() == [100, 100, 0]


def test_iom_nms_keeps_most_confident_of_duplicates():
    boxes = [[0, 0, 10, 10], [1, 1, 9, 9], [50, 50, 60, 60], [0, 0, 10, 4]]
    scores = [0.7, 0.9, 0.8, 0.6]
    kept = iom_nms(boxes, scores, 0.5)
    assert kept.tolist() == [1, 2]  # box 0 and 3 lie inside box 1's neighbourhood (IoM > 0.5)


def test_iom_nms_threshold_is_strictly_greater():
    boxes = [[0, 0, 10, 10], [5, 0, 15, 10]]  # IoM exactly 0.5
    assert sorted(iom_nms(boxes, [0.9, 0.8], 0.5).tolist()) == [0, 1]
    assert iom_nms(boxes, [0.9, 0.8], 0.49).tolist() == [0]


def test_greedy_pairs_takes_best_pairs_first_one_to_one():
    sim = np.array([[0.9, 0.8], [0.85, 0.1]])
    rows, cols = greedy_pairs(sim, 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0)]  # row 1 wants col 0 too, col 1 is 0.1 for it
    rows, cols = greedy_pairs(np.array([[0.6, 0.9], [0.7, 0.2]]), 0.5)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 1), (1, 0)]


def test_filter_detections_threshold_area_cap_and_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 60, 60], [30, 30, 40, 40], [70, 70, 80, 80]])
    scores = np.array([0.9, 0.8, 0.95, 0.5, 0.51])
    b, s = filter_detections(boxes, scores, score_threshold=0.5, max_area_px=2000)
    # 60x60 = 3600 px is over the cap, 0.5 is not > 0.5, box 1 is a duplicate of box 0
    assert b.tolist() == [[0, 0, 10, 10], [70, 70, 80, 80]]
    assert s.tolist() == [0.9, 0.51]


def test_area_cap_in_pixels_follows_pixel_size():
    assert max_area_pixels(20.0, 0.1) == pytest.approx(2000)
    assert max_area_pixels(20.0, 0.2) == pytest.approx(500)
