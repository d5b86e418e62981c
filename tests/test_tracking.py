import numpy as np
import pytest

from spinedet.runtime.tracking import SliceTracker, track_slices

A = [10, 10, 20, 20]
B = [50, 50, 62, 60]
NONE = (np.zeros((0, 4)), np.zeros(0))


def slices(*rows):
    """Each argument is a list of boxes present on that slice (score 0.9)."""
    return [(np.array(r, dtype=float).reshape(-1, 4), np.full(len(r), 0.9)) for r in rows]


def spans(table):
    return {int(i): table.z[table.spine_id == i].tolist() for i in np.unique(table.spine_id)}


def test_one_spine_through_consecutive_slices():
    table = track_slices(slices([A], [A], [A]))
    assert spans(table) == {1: [0, 1, 2]}


def test_gap_of_one_slice_keeps_the_track():
    table = track_slices(slices([A], [A], [], [A], [A]))
    assert spans(table) == {1: [0, 1, 3, 4]}


def test_gap_of_two_slices_ends_the_track_and_starts_a_new_spine():
    table = track_slices(slices([A], [A], [], [], [A]))
    assert spans(table) == {1: [0, 1], 2: [4]}


def test_unmatched_boxes_start_new_spines_and_shifted_box_links():
    shifted = [12, 11, 22, 21]  # IoM with A = 64/100
    far = [14, 16, 24, 26]  # IoM with A = 24/100: not the same spine
    table = track_slices(slices([A, B], [shifted, B], [far]))
    assert spans(table) == {1: [0, 1], 2: [0, 1], 3: [2]}


def test_highest_iom_pairs_win():
    # two boxes in the next slice compete for one track: the better overlap links
    near = [11, 10, 21, 20]  # IoM 0.9
    half = [15, 10, 25, 20]  # IoM 0.5
    table = track_slices(slices([A], [half, near]))
    assert table.boxes[(table.spine_id == 1) & (table.z == 1)].tolist() == [near]
    assert spans(table) == {1: [0, 1], 2: [1]}


def test_track_compares_with_its_last_detected_box():
    drifting = [A, [14, 10, 24, 20], [18, 10, 28, 20], [22, 10, 32, 20]]  # each step IoM 0.6, first-last 0
    table = track_slices(slices(*[[b] for b in drifting]))
    assert spans(table) == {1: [0, 1, 2, 3]}


def test_streaming_reports_tracks_as_they_close():
    tracker = SliceTracker()
    assert tracker.add_slice(0, [A], [0.9]) == []
    assert tracker.add_slice(1, [A, B], [0.9, 0.8]) == []
    assert tracker.add_slice(2, [B], [0.8]) == []  # A missed once: still open
    closed = tracker.add_slice(3, [B], [0.8])  # A missed twice: closes now
    assert [(t.spine_id, t.z) for t in closed] == [(1, [0, 1])]
    rest = tracker.finish()
    assert [(t.spine_id, t.z) for t in rest] == [(2, [1, 2, 3])]


def test_streaming_skipped_slice_numbers_count_as_misses():
    tracker = SliceTracker()
    tracker.add_slice(0, [A], [0.9])
    closed = tracker.add_slice(3, [A], [0.9])  # slices 1 and 2 never arrived
    assert [t.z for t in closed] == [[0]]


def test_streaming_refuses_slices_out_of_order():
    tracker = SliceTracker()
    tracker.add_slice(5, [A], [0.9])
    with pytest.raises(ValueError):
        tracker.add_slice(5, [A], [0.9])


def test_values_travel_with_the_track():
    tracker = SliceTracker()
    tracker.add_slice(0, [A, B], [0.9, 0.8], values=[[1.0, 0.1], [2.0, 0.2]])
    tracker.add_slice(1, [B], [0.8], values=[[3.0, 0.3]])
    tracks = {t.spine_id: t for t in tracker.finish()}
    assert np.asarray(tracks[2].values).tolist() == [[2.0, 0.2], [3.0, 0.3]]


def scored(*rows):
    """Each argument lists the ``(box, score)`` pairs present on that slice."""
    return [(np.array([b for b, _ in r], dtype=float).reshape(-1, 4), np.array([s for _, s in r], dtype=float))
            for r in rows]


def test_a_track_needs_one_box_above_the_peak_score():
    # A is faint, then clear, then faint again: one spine through all three slices;
    # B is faint throughout: no spine
    table = track_slices(scored([(A, 0.6), (B, 0.6)], [(A, 0.9), (B, 0.7)], [(A, 0.6)]), min_peak_score=0.85)
    assert spans(table) == {1: [0, 1, 2]}
    assert table.score.tolist() == [0.6, 0.9, 0.6]
    # without the rule every track is a spine, ids in order of appearance
    assert spans(track_slices(scored([(A, 0.6), (B, 0.6)], [(A, 0.9), (B, 0.7)], [(A, 0.6)]))) == {
        1: [0, 1, 2], 2: [0, 1]}


def test_spine_ids_count_confirmed_tracks_only():
    # B appears first but stays faint; A is confirmed in slice 1 and gets id 1, C in slice 2 gets id 2
    C = [80, 80, 90, 90]
    table = track_slices(scored([(B, 0.6)], [(A, 0.9), (B, 0.6)], [(A, 0.9), (C, 0.95)]), min_peak_score=0.85)
    assert spans(table) == {1: [1, 2], 2: [2]}


def test_streaming_drops_tracks_that_were_never_confirmed():
    tracker = SliceTracker(min_peak_score=0.85)
    assert tracker.add_slice(0, [A, B], [0.6, 0.6]) == []
    assert tracker.add_slice(1, [A], [0.9]) == []
    assert tracker.add_slice(2, np.zeros((0, 4)), np.zeros(0)) == []  # B closes here, never confirmed
    closed = tracker.add_slice(3, np.zeros((0, 4)), np.zeros(0))  # A closes here
    assert [(t.spine_id, t.z) for t in closed] == [(1, [0, 1])]
    assert tracker.finish() == []
