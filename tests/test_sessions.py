"""Spines over days: registration, linking, states, streaming, spine-track, spine-eval sessions, synthetic series."""

import csv
import json
import math

import imagecodecs
import numpy as np
import pytest
import tifffile
from scipy import ndimage
from typer.testing import CliRunner

from blob_model import blob_image
from spinedet.runtime.cli import eval_app
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.evaluate_sessions import link_scores, score_series
from spinedet.runtime.session_reports import OBSERVATION_COLUMNS, TRACK_COLUMNS, read_series
from spinedet.runtime.sessions import (MIN_QUALITY, Registration, SessionSpines, add_session, link, register,
                                       registration_image, session_summary, start_series, track_sessions,
                                       track_states)
from spinedet.runtime.tables import BoxTable, boxes_csv_text
from spinedet.runtime.track_cli import app as track_app
from spinedet.training.synth import make_stack
from spinedet.training.synth.files import write_series
from spinedet.training.synth.series import make_series

# bright, well sampled series: most spines visible, registration well posed
BRIGHT = dict(pixel_size_um=0.1, z_step_um=0.5, signal_photons=150.0, spines_per_um=0.6, dendrite_count=3,
              psf_sigma_z_um=0.8)
VOXEL = (0.5, 0.1, 0.1)


@pytest.fixture(scope="module")
def series():
    """Three sessions of one field, 12 x 192 x 192, shifted by up to 3 µm (1 µm in z) and turned by up to 1°."""
    return make_series(1, (12, 192, 192), sessions=3, max_shift_um=(1.0, 3.0, 3.0), max_rotation_deg=1.0, **BRIGHT)


def grid_points(shape, voxel):
    """A grid of points (z, y, x µm) across a stack, away from its edges."""
    z, y, x = (np.linspace(0.2, 0.8, 3) * n * v for n, v in zip(shape, voxel))
    return np.stack(np.meshgrid(z, y, x, indexing="ij"), axis=-1).reshape(-1, 3)


def truth_spines(series, k, drop=()):
    """Session k's ground-truth spines as 'detections': their box centroids, ids = persistent ids + 1."""
    centroids = {i: c for i, c in series.box_centroids(k).items() if i not in drop}
    ids = np.array(sorted(centroids), dtype=np.int64)
    return SessionSpines(ids + 1, np.array([centroids[i] for i in ids]).reshape(-1, 3), np.ones(len(ids)),
                         np.zeros((len(ids), 4)), series.sessions[k].image.shape, series.voxel_size)


# --- registration -------------------------------------------------------------------------------------------------

def test_registration_recovers_a_known_subvoxel_shift(series):
    volume = registration_image(series.sessions[0].image)
    moved = ndimage.shift(volume, (0.4, 7.3, -11.6), order=3, mode="nearest")   # slices, rows, columns
    r = register(volume, moved, VOXEL, max_rotation_deg=0)
    # a point p of `moved` is p - d in `volume`
    assert r.shift_um[1:] == pytest.approx((-0.73, 1.16), abs=0.15 * 0.1)           # within 0.15 px
    assert r.shift_um[0] == pytest.approx(-0.4 * 0.5, abs=0.15 * 0.5)                # within 0.15 slice
    # overlap: (1 - 7.3/192) (1 - 11.6/192) of the plane times (1 - 0.4/12) of the depth
    assert r.rotation_deg == 0 and r.quality > 0.95 and r.overlap == pytest.approx(0.874, abs=0.01)


def test_registration_of_a_synthetic_series_is_within_a_voxel(series):
    """Sessions differ (spines lost and gained, sizes, noise, background), so less precise than a pure shift."""
    reference = registration_image(series.sessions[0].image)
    for k in (1, 2):
        r = register(reference, registration_image(series.sessions[k].image), series.voxel_size)
        truth = series.registration(k)
        points = grid_points(series.sessions[0].image.shape, series.voxel_size)
        error = np.abs(r.apply(points) - truth.apply(points))
        assert np.hypot(error[:, 1], error[:, 2]).max() < 0.2          # µm: within two pixels everywhere
        assert error[:, 0].max() < 0.5                                  # µm: within a slice
        assert r.rotation_deg == pytest.approx(truth.rotation_deg, abs=0.25)
        assert r.quality > 0.8


def test_registration_maps_compose_and_invert():
    a = Registration((0.3, 1.0, -2.0), 1.5, (10.0, 12.0))
    b = Registration((-0.1, 0.5, 0.7), -0.4, (10.0, 12.0))
    points = np.array([[1.0, 2.0, 3.0], [4.0, 20.0, 1.0]])
    assert np.allclose(a.invert(a.apply(points)), points)
    assert np.allclose(a.then(b).apply(points), b.apply(a.apply(points)))
    c = Registration((0.0, 0.2, 0.1), 0.7, (6.0, 9.0))                # other centre (another stack size)
    assert np.allclose(a.then(c).apply(points), c.apply(a.apply(points)))
    turn = Registration((0, 0, 0), 90.0, (0.0, 0.0))                  # x towards y: (y, x) = (0, 1) -> (1, 0)
    assert np.allclose(turn.apply([[0.0, 0.0, 1.0]]), [[0.0, 1.0, 0.0]])


def test_different_fields_are_not_registered():
    a = make_stack(1, (10, 128, 128), **BRIGHT).image
    b = make_stack(2, (10, 128, 128), **BRIGHT).image
    r = register(registration_image(a), registration_image(b), VOXEL)
    assert r.quality < MIN_QUALITY
    empty = SessionSpines(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 4)), a.shape, VOXEL)
    with pytest.raises(SpineDetError, match="share too little") as info:
        add_session(start_series(empty, a, "day 1"), empty, b, "day 2")
    assert "\n" not in str(info.value) and "day 2" in str(info.value) and "day 1" in str(info.value)


# --- linking ------------------------------------------------------------------------------------------------------

def test_link_is_one_to_one_minimal_and_respects_the_maximum_distance():
    tracks = np.array([[0, 0, 0.0], [0, 0, 1.0]])
    spines = np.array([[0, 0, 0.9], [0, 0, 1.9], [0, 0, 9.0]])
    # greedy nearest-first would give track 1 the spine at 0.9 (0.1 away) and leave track 0 with 1.9 (too far)
    rows, cols = link(tracks, spines, max_distance_um=1.0)
    assert sorted(zip(rows.tolist(), cols.tolist())) == [(0, 0), (1, 1)]
    rows, cols = link(tracks, spines, max_distance_um=0.5)
    assert list(zip(rows.tolist(), cols.tolist())) == [(1, 0)]
    assert link(tracks, np.zeros((0, 3)))[0].size == 0
    # depth counts by z_weight: 1.6 µm deeper is 0.8 µm at the default weight 0.5
    assert link([[1.0, 0, 0]], [[2.6, 0, 0]], 1.0)[0].size == 1
    assert link([[1.0, 0, 0]], [[2.6, 0, 0]], 1.0, z_weight=1.0)[0].size == 0


def test_linking_follows_every_spine_through_drifts_of_several_um(series):
    """Ground-truth centroids as detections: after registration every spine keeps its persistent id."""
    n = len(series.sessions)
    assert np.abs(series.shift_um[1:, 1:]).max() > 2.0        # the field moved by several µm
    tracked = track_sessions([truth_spines(series, k) for k in range(n)], [s.image for s in series.sessions])
    for k in range(n - 1):
        before = dict(zip(tracked.sessions[k].spine_id.tolist(), tracked.tracks[k].tolist()))
        after = dict(zip(tracked.sessions[k + 1].spine_id.tolist(), tracked.tracks[k + 1].tolist()))
        shared = set(before) & set(after)
        assert len(shared) >= 10
        assert all(before[i] == after[i] for i in shared)                      # the same spine, the same track
        assert not (set(before.values()) & {after[i] for i in set(after) - shared})   # nothing else joined
    # and the registrations agree with the truth
    for k in range(1, n):
        assert np.allclose(tracked.registrations[k].shift_um[1:], series.registration(k).shift_um[1:], atol=0.15)


def test_a_missed_detection_keeps_its_identity_within_the_gap(series):
    stacks = [s.image for s in series.sessions]
    common = set(series.box_centroids(0)) & set(series.box_centroids(1)) & set(series.box_centroids(2))
    centre = np.array(series.sessions[0].image.shape) * series.voxel_size / 2
    missed = min(common, key=lambda i: np.linalg.norm((series.box_centroids(1)[i] - centre) / [0.5, 1, 1]))

    def track_of(tracked, k, spine):
        ids = tracked.sessions[k].spine_id.tolist()
        return int(tracked.tracks[k][ids.index(spine + 1)])

    sessions = [truth_spines(series, 0), truth_spines(series, 1, drop={missed}), truth_spines(series, 2)]
    kept = track_sessions(sessions, stacks, max_gap=1)
    assert track_of(kept, 0, missed) == track_of(kept, 2, missed)
    assert kept.presence()[track_of(kept, 0, missed) - 1].tolist() == [True, False, True]
    assert kept.states()[track_of(kept, 0, missed) - 1] == "stable"
    split = track_sessions(sessions, stacks, max_gap=0)
    assert track_of(split, 0, missed) != track_of(split, 2, missed)


def test_states_and_summary_of_a_hand_made_series():
    present = np.array([[1, 1, 1, 1],    # stable
                        [1, 0, 1, 1],    # stable, missed once
                        [0, 1, 1, 1],    # gained in session 1
                        [1, 1, 0, 0],    # lost from session 2 on
                        [0, 0, 1, 0],    # transient
                        [1, 1, 1, 1]],   # its place left session 2's view
                       dtype=bool)
    visible = np.ones_like(present)
    visible[5, 2] = False
    assert track_states(present, visible) == ["stable", "stable", "gained", "lost", "transient", "partial"]
    rows = session_summary(present, visible)
    assert [r["count"] for r in rows] == [3, 4, 4, 3]
    assert [r["detected"] for r in rows] == [3, 3, 4, 3]
    assert [r["gained"] for r in rows] == [None, 1, 1, 0]
    assert [r["lost"] for r in rows] == [None, 0, 1, 1]
    assert [r["survival"] for r in rows] == pytest.approx([1.0, 1.0, 2 / 3, 2 / 3])
    assert rows[0]["turnover"] is None
    assert [r["turnover"] for r in rows[1:]] == pytest.approx([1 / 7, 2 / 8, 1 / 7])


def test_adding_a_session_equals_the_batch_run_and_redoes_nothing(series, monkeypatch):
    import spinedet.runtime.sessions as sessions_module

    n = len(series.sessions)
    spines = [truth_spines(series, k, drop={3} if k == 1 else ()) for k in range(n)]
    stacks = [s.image for s in series.sessions]
    batch = track_sessions(spines, stacks)
    calls = []
    real = sessions_module.register
    monkeypatch.setattr(sessions_module, "register", lambda *a, **k: calls.append(1) or real(*a, **k))
    first_two = track_sessions(spines[:2], stacks[:2])
    before = [t.copy() for t in first_two.tracks]
    calls.clear()
    streamed = add_session(first_two, spines[2], stacks[2])
    assert len(calls) == 1                                           # only the new session was registered
    assert all(np.array_equal(a, b) for a, b in zip(first_two.tracks, before))   # the old result is unchanged
    assert streamed.n_tracks == batch.n_tracks
    assert all(np.array_equal(a, b) for a, b in zip(streamed.tracks, batch.tracks))
    assert all(np.allclose(a, b) for a, b in zip(streamed.positions, batch.positions))
    assert streamed.registrations == batch.registrations
    assert streamed.states() == batch.states() and streamed.summary() == batch.summary()


def test_chained_registration_maps_into_the_first_session(series):
    n = len(series.sessions)
    tracked = track_sessions([truth_spines(series, k) for k in range(n)], [s.image for s in series.sessions],
                             reference="previous")
    assert [r.reference for r in tracked.registrations] == [None, 0, 1]
    points = grid_points(series.sessions[0].image.shape, series.voxel_size)
    error = np.abs(tracked.registrations[2].apply(points) - series.registration(2).apply(points))
    assert np.hypot(error[:, 1], error[:, 2]).max() < 0.2 and error[:, 0].max() < 0.6


def test_library_refuses_bad_series(series):
    one = truth_spines(series, 0)
    with pytest.raises(SpineDetError, match="at least two sessions"):
        track_sessions([one], [series.sessions[0].image])
    other = SessionSpines(one.spine_id, one.position_um, one.fluorescence, one.boxes, one.shape, (0.5, 0.12, 0.12))
    with pytest.raises(SpineDetError, match="voxel size"):
        track_sessions([one, other], [series.sessions[0].image] * 2)
    with pytest.raises(SpineDetError, match="max-gap"):
        track_sessions([one, one], [series.sessions[0].image] * 2, max_gap=-1)


# --- spine-track --------------------------------------------------------------------------------------------------

# a field of blobs (x, y px; slices first..last) that the blob model finds; session k moves it by SHIFTS[k]
FIELD = [(30, 30), (60, 28), (95, 35), (35, 70), (70, 64), (100, 80), (40, 100), (80, 105), (58, 47), (22, 52)]
SHIFTS = [(0, 0.0, 0.0), (1, 4.6, -6.3), (0, -5.2, 3.8)]    # slices, rows, columns
LOST_IN_2, GAINED_IN_1 = 4, (85, 52)                         # FIELD[4] is gone in session 2; a new one from 1 on


def blob_session(k, size=128, depth=10):
    dz, dy, dx = SHIFTS[k]
    centres = [c for i, c in enumerate(FIELD) if not (k == 2 and i == LOST_IN_2)] + ([GAINED_IN_1] if k else [])
    moved = [(x + dx, y + dy) for x, y in centres]
    stack = [blob_image((size, size), moved if 3 + dz <= z <= 6 + dz else [], sigma=2.0, noise=3, seed=10 * k + z)
             for z in range(depth)]
    return np.stack(stack).astype(np.uint16)


def write_tiff(path, image, pixel_um=0.1, z_um=0.5):
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / pixel_um, 1 / pixel_um),
                     metadata={"spacing": z_um, "unit": "um", "axes": "ZYX" if image.ndim == 3 else "YX"})
    return path


@pytest.fixture
def blob_series(tmp_path):
    return [write_tiff(tmp_path / f"day{k + 1}.tif", blob_session(k)) for k in range(3)]


def track(*args):
    return CliRunner().invoke(track_app, [str(a) for a in args])


def test_spine_track_writes_the_series_tables(blob_series, blob_model, tmp_path):
    out = tmp_path / "out"
    result = track(*blob_series, "--model", blob_model, "--out", out, "--overlay", "--max-rotation", "0")
    assert result.exit_code == 0, result.output
    observations = list(csv.DictReader((out / "series_observations.csv").open()))
    assert tuple(observations[0]) == OBSERVATION_COLUMNS
    tracks = list(csv.DictReader((out / "series_spines.csv").open()))
    assert tuple(tracks[0]) == TRACK_COLUMNS
    assert len(observations) == 3 * len(tracks)
    states = sorted(t["state"] for t in tracks)
    assert states == sorted(["stable"] * 9 + ["lost", "gained"]), states
    sessions = list(csv.DictReader((out / "series_sessions.csv").open()))
    assert [(int(s["count"]), s["gained"], s["lost"]) for s in sessions] == [(10, "", ""), (11, "1", "0"),
                                                                            (10, "0", "1")]
    assert float(sessions[2]["survival"]) == pytest.approx(0.9)
    assert float(sessions[1]["turnover"]) == pytest.approx(1 / 21, abs=1e-4)
    for k, (dz, dy, dx) in enumerate(SHIFTS):    # a point of session k moved by d is at p - d in session 0
        assert float(sessions[k]["shift_x_um"]) == pytest.approx(-dx * 0.1, abs=0.03)
        assert float(sessions[k]["shift_y_um"]) == pytest.approx(-dy * 0.1, abs=0.03)
        assert float(sessions[k]["shift_z_um"]) == pytest.approx(-dz * 0.5, abs=0.1)
    # a spine's centroid in the first frame is the same in every session it was seen in
    by_track = {}
    for row in observations:
        if row["present"] == "1":
            by_track.setdefault(row["track_id"], []).append([float(row[f"centroid_{a}_um"]) for a in "xy"])
    assert max(np.ptp(np.array(v), axis=0).max() for v in by_track.values()) < 0.2
    summary = json.loads((out / "series_summary.json").read_text())
    assert summary["states"]["stable"] == 9 and summary["settings"]["max_gap"] == 1
    assert summary["inputs"] == [str(p) for p in blob_series]
    for k in range(3):
        assert (out / f"series_s{k}_boxes.csv").exists() and (out / f"series_s{k}_spines.csv").exists()
        overlay = imagecodecs.png_decode((out / f"series_s{k}_overlay.png").read_bytes())
        assert overlay.shape == (1024, 1024, 3)
    assert "11 spines over 3 sessions: 9 stable, 1 gained, 1 lost" in result.stderr


def test_spine_track_reads_a_folder_and_a_time_series_tiff(blob_series, blob_model, tmp_path):
    by_files = track(*blob_series, "--model", blob_model, "--out", tmp_path / "a", "-q", "--json")
    assert by_files.exit_code == 0, by_files.output
    folder = tmp_path / "days"
    folder.mkdir()
    for k, path in enumerate(blob_series):               # day10 sorts after day2: numbers by value
        (folder / f"day{[1, 2, 10][k]}.tif").write_bytes(path.read_bytes())
    by_folder = track(folder, "--model", blob_model, "--out", tmp_path / "b", "-q")
    assert by_folder.exit_code == 0, by_folder.output
    series_tif = tmp_path / "series.tif"
    tifffile.imwrite(series_tif, np.stack([blob_session(k) for k in range(3)]), imagej=True,
                     resolution=(10, 10), metadata={"spacing": 0.5, "unit": "um", "axes": "TZYX"})
    by_time = track(series_tif, "--model", blob_model, "--out", tmp_path / "c", "-q")
    assert by_time.exit_code == 0, by_time.output
    first = (tmp_path / "a" / "series_observations.csv").read_text()
    assert (tmp_path / "b" / "series_observations.csv").read_text() == first
    assert (tmp_path / "c" / "series_observations.csv").read_text() == first
    summary = json.loads(by_files.stdout)
    assert summary["n_tracks"] == 11 and len(summary["sessions"]) == 3
    assert json.loads((tmp_path / "c" / "series_summary.json").read_text())["inputs"][2] == f"{series_tif}[t=2]"


def test_sessions_of_different_sizes_are_compared(blob_series, blob_model, tmp_path):
    """Another session's stack may be larger (more slices, a wider field): the smaller is padded to register."""
    larger = write_tiff(tmp_path / "larger.tif", blob_session(1, size=140, depth=13))
    result = track(blob_series[0], larger, blob_series[2], "--model", blob_model, "--out", tmp_path / "o",
                   "--max-rotation", "0")
    assert result.exit_code == 0, result.output
    assert "11 spines over 3 sessions: 9 stable, 1 gained, 1 lost" in result.stderr
    sessions = list(csv.DictReader((tmp_path / "o" / "series_sessions.csv").open()))
    assert float(sessions[1]["shift_x_um"]) == pytest.approx(0.63, abs=0.03)
    assert float(sessions[1]["shift_z_um"]) == pytest.approx(-0.5, abs=0.1)


def _one_line_no_output(result, out, *words):
    """Exit code 1, one error line (the sessions done before it have their progress line), no file written."""
    assert result.exit_code == 1, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("spine-track: error: ")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr
    for word in words:
        assert word in errors[0], errors[0]
    assert errors[0].count(".tif:") <= 1, errors[0]          # the file is named once
    assert not out.exists() or not any(out.iterdir())


def test_bad_series_are_one_line_and_leave_no_output(blob_series, blob_model, tmp_path):
    out = tmp_path / "out"
    _one_line_no_output(track(blob_series[0], "--model", blob_model, "--out", out), out, "at least two sessions")
    finer = write_tiff(tmp_path / "finer.tif", blob_session(1), pixel_um=0.08)
    _one_line_no_output(track(blob_series[0], finer, "--model", blob_model, "--out", out), out,
                        "voxel size", "0.08", "--pixel-size")
    flat = write_tiff(tmp_path / "flat.tif", blob_session(1)[4])
    _one_line_no_output(track(blob_series[0], flat, "--model", blob_model, "--out", out), out, "single image")
    other = np.stack([blob_image((128, 128), [(x, 128 - y) for y, x in FIELD[:3]] if 3 <= z <= 6 else [],
                                 sigma=2.0, noise=3, seed=z) for z in range(10)]).astype(np.uint16)
    unrelated = write_tiff(tmp_path / "elsewhere.tif", other)
    _one_line_no_output(track(blob_series[0], unrelated, "--model", blob_model, "--out", out), out,
                        "session 1", "share too little")
    quiet = track(blob_series[0], unrelated, "--model", blob_model, "--out", out, "-q")
    assert quiet.exit_code == 1 and len(quiet.stderr.strip().splitlines()) == 1
    broken = tmp_path / "broken.tif"
    broken.write_bytes(blob_series[1].read_bytes()[:3000])
    _one_line_no_output(track(blob_series[0], broken, blob_series[2], "--model", blob_model, "--out", out), out,
                        "session 1", "broken.tif")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_no_output(track(empty, "--model", blob_model, "--out", out), out, "folder holds no stacks")


def test_the_same_pixel_size_given_overrides_the_files(blob_series, blob_model, tmp_path):
    finer = write_tiff(tmp_path / "finer.tif", blob_session(1), pixel_um=0.08)
    result = track(blob_series[0], finer, "--model", blob_model, "--out", tmp_path / "o", "--pixel-size", "0.1", "-q")
    assert result.exit_code == 0, result.output


def test_spine_track_takes_spine_runs_detection_options(blob_series, blob_model, tmp_path):
    """--score-threshold, --link-threshold, --max-area, --shaft-distance and --no-shaft-check mean what they mean
    in spine-run, reach the detector and are recorded in the summary."""
    def detection(*extra):
        out = tmp_path / f"o{len(list(tmp_path.iterdir()))}"
        result = track(*blob_series, "--model", blob_model, "--out", out, "--max-rotation", "0", "-q", *extra)
        assert result.exit_code == 0, result.output
        summary = json.loads((out / "series_summary.json").read_text())
        return summary["detection"], [s["count"] for s in summary["sessions"]]

    plain, counts = detection()
    assert plain["shaft_distance_um"] is None and counts == [10, 11, 10]     # the blob model's card names no check
    chosen, _ = detection("--score-threshold", "0.9", "--link-threshold", "0.6", "--shaft-distance", "2")
    assert (chosen["score_threshold"], chosen["link_threshold"], chosen["shaft_distance_um"]) == (0.9, 0.6, 2.0)
    off, _ = detection("--shaft-distance", "2", "--no-shaft-check")
    assert off["shaft_distance_um"] is None
    capped, counts = detection("--max-area", "0.05")                        # smaller than any blob's box
    assert capped["max_area_um2"] == 0.05 and counts == [0, 0, 0]


def test_a_table_read_back_is_the_detection_it_came_from(blob_series, blob_model):
    from spinedet.runtime.detector import SpineDetector
    from spinedet.runtime.reuse import detection_from_table
    from spinedet.runtime.stacks import open_stack

    with open_stack(blob_series[1]) as stack:
        found = SpineDetector(blob_model).detect(stack, projection=True)
        again = detection_from_table(found.table, stack, projection=True)
    assert len(found.spines) == 11 and [s.spine_id for s in again.spines] == [s.spine_id for s in found.spines]
    for a, b in zip(found.spines, again.spines):
        assert a.z == b.z and np.array_equal(a.boxes, b.boxes) and a.centroid_um == b.centroid_um
        assert b.fluorescence == pytest.approx(a.fluorescence) and b.background == pytest.approx(a.background)
    assert np.array_equal(again.projection, found.projection) and again.voxel_size == found.voxel_size


def test_tables_that_do_not_fit_the_stack_are_refused(blob_series):
    from spinedet.runtime.reuse import detection_from_table

    stack = blob_session(0)                                   # 10 x 128 x 128
    good = [[1, 3, (10, 10, 20, 20)], [1, 4, (11, 10, 21, 20)], [2, 5, (50, 60, 58, 70)]]

    def table(rows, stacks=None):
        return BoxTable.from_rows([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                                  [0.9] * len(rows), stacks)

    assert [s.z for s in detection_from_table(table(good), stack, (0.5, 0.1, 0.1)).spines] == [(3, 4), (5,)]
    for rows, words in (([[1, 10, (10, 10, 20, 20)]], "slice not in the stack"),
                        ([[1, 2, (120, 10, 140, 20)]], "outside the 128 x 128 pixel image"),
                        ([[1, 2, (20, 10, 10, 20)]], "no area"),
                        ([[0, 2, (10, 10, 20, 20)]], "spine ids start at 1"),
                        ([[1, 2, (10, 10, 20, 20)], [1, 2, (12, 10, 22, 20)]], "same slice")):
        with pytest.raises(SpineDetError, match=words):
            detection_from_table(table(rows), stack)
    with pytest.raises(SpineDetError, match="2 stacks"):
        detection_from_table(table(good, ["a", "a", "b"]), stack)


def test_spine_track_reuses_spine_runs_tables(blob_series, blob_model, tmp_path, monkeypatch):
    """--detections DIR: sessions with DIR/<stem>_boxes.csv are read, not detected; the series is the same, a
    table corrected by hand changes it, and a folder with no table or a table of another stack is one line."""
    from spinedet.runtime.cli import run_app
    from spinedet.runtime.detector import SpineDetector

    ran = CliRunner().invoke(run_app, [*map(str, blob_series), "--model", str(blob_model), "--out",
                                       str(tmp_path / "det"), "-q"])
    assert ran.exit_code == 0, ran.output
    plain = tmp_path / "plain"
    assert track(*blob_series, "--model", blob_model, "--out", plain, "--max-rotation", "0", "-q").exit_code == 0
    calls = []
    detect = SpineDetector.detect
    monkeypatch.setattr(SpineDetector, "detect", lambda self, *a, **k: calls.append(1) or detect(self, *a, **k))

    reused = tmp_path / "reused"
    result = track(*blob_series, "--model", blob_model, "--out", reused, "--max-rotation", "0", "--detections",
                   tmp_path / "det")
    assert result.exit_code == 0, result.output
    assert calls == [] and "from " in result.stderr and "day1_boxes.csv" in result.stderr
    for table in ("observations", "spines", "sessions"):
        assert (reused / f"series_{table}.csv").read_text() == (plain / f"series_{table}.csv").read_text(), table
    summary = json.loads((reused / "series_summary.json").read_text())
    assert summary["detections_read"] == [str(tmp_path / "det" / f"day{k}_boxes.csv") for k in (1, 2, 3)]

    # day 2's table gone: only day 2 is detected; day 3's table corrected by hand: a spine removed there is lost
    (tmp_path / "det" / "day2_boxes.csv").unlink()
    rows = (tmp_path / "det" / "day3_boxes.csv").read_text().splitlines()
    removed = rows[1].split(",")[0]
    (tmp_path / "det" / "day3_boxes.csv").write_text(
        "\n".join([rows[0]] + [r for r in rows[1:] if r.split(",")[0] != removed]) + "\n")
    edited = tmp_path / "edited"
    result = track(*blob_series, "--model", blob_model, "--out", edited, "--max-rotation", "0", "--detections",
                   tmp_path / "det", "-q")
    assert result.exit_code == 0, result.output
    assert len(calls) == 1
    states = [r["state"] for r in csv.DictReader((edited / "series_spines.csv").open())]
    assert sorted(states) == sorted(["stable"] * 8 + ["lost"] * 2 + ["gained"]), states

    # refused in one line, nothing written: no table at all, a table of another stack
    for k in (1, 3):
        (tmp_path / "det" / f"day{k}_boxes.csv").unlink()
    result = track(*blob_series, "--model", blob_model, "--out", tmp_path / "none", "--detections", tmp_path / "det")
    assert result.exit_code == 1 and "no table for any session" in result.stderr and not (tmp_path / "none").exists()
    (tmp_path / "det" / "day2_boxes.csv").write_text("spine_id,z,xmin,ymin,xmax,ymax,score\n1,12,1,1,5,5,0.9\n")
    result = track(*blob_series, "--model", blob_model, "--out", tmp_path / "other", "--detections", tmp_path / "det")
    err = result.stderr.strip()
    assert result.exit_code == 1 and len(err.splitlines()) == 1 and "day2_boxes.csv" in err and "slice" in err, err
    assert not (tmp_path / "other").exists() and len(calls) == 1
    # a table found on the maximum projection (spine-run --mip) has no depth: refused, naming why
    ran = CliRunner().invoke(run_app, [str(blob_series[0]), "--model", str(blob_model), "--out",
                                       str(tmp_path / "mip"), "--mip", "-q"])
    assert ran.exit_code == 0, ran.output
    del calls[:]                                              # (spine-run detected, in this process)
    result = track(*blob_series, "--model", blob_model, "--out", tmp_path / "flat", "--detections", tmp_path / "mip")
    err = result.stderr.strip()
    assert result.exit_code == 1 and len(err.splitlines()) == 1 and "--mip" in err and "day1_boxes.csv" in err, err
    assert not (tmp_path / "flat").exists() and calls == []


def test_bad_options_are_one_line_before_any_input(blob_series, blob_model, tmp_path, monkeypatch, capsys):
    from spinedet.runtime import track_cli

    for args, words in ((["--reference", "last"], "--reference"), (["--max-distance", "0"], "--max-distance"),
                        (["--max-gap", "-1"], "--max-gap"), (["--model", tmp_path / "none.onnx"], "model"),
                        (["--name", "a/b"], "--name"), (["--score-threshold", "1.5"], "score threshold"),
                        (["--shaft-distance", "-1"], "--shaft-distance")):
        monkeypatch.setattr("sys.argv", ["spine-track", *map(str, blob_series), "--out", str(tmp_path / "o"),
                                         *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            track_cli.main()                       # as installed: usage errors are one line too
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and words in err and err.startswith("spine-track: error: "), err
    assert not (tmp_path / "o").exists()


def test_spine_track_end_to_end_with_the_shipped_model(tmp_path):
    """A small synthetic 3-session series, detected by the shipped model, tracked, scored with spine-eval (4 s)."""
    truth = make_series(0, (12, 256, 256), sessions=3, max_shift_um=(1.0, 3.0, 3.0), max_rotation_deg=1.0,
                        **BRIGHT)
    write_series(truth, tmp_path / "data", "syn")
    out = tmp_path / "out"
    result = track(*[tmp_path / "data" / f"syn_s{k}.tif" for k in range(3)], "--out", out, "--threads", "2", "-q")
    assert result.exit_code == 0, result.output
    scores = score_series(read_series(tmp_path / "data" / "syn_observations.csv"), read_series(out))
    assert scores["detected_pairs"] >= 20
    assert scores["linking_accuracy"] >= 0.95
    rows = list(csv.DictReader((out / "series_sessions.csv").open()))
    for k in (1, 2):
        expected = truth.registration(k).shift_um
        assert float(rows[k]["shift_x_um"]) == pytest.approx(expected[2], abs=0.15)
        assert float(rows[k]["shift_y_um"]) == pytest.approx(expected[1], abs=0.15)
    evaluated = CliRunner().invoke(eval_app, ["sessions", "--gt", str(tmp_path / "data" / "syn_observations.csv"),
                                              "--pred", str(out), "--json"])
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["linking_accuracy"] == scores["linking_accuracy"]


# --- spine-eval sessions ------------------------------------------------------------------------------------------

BOX = {"A": (10, 10, 20, 20), "B": (40, 10, 50, 20), "C": (10, 40, 20, 50), "D": (40, 40, 50, 50),
       "F": (70, 70, 80, 80)}


def write_hand_series(folder, name, sessions):
    """sessions: per session a list of (spine_id, track_id, box name); boxes span slices 2-4."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    tracks = sorted({t for s in sessions for _, t, _ in s})
    for k, spines in enumerate(sessions):
        ids, zs, boxes = [], [], []
        for spine_id, _, box in spines:
            for z in (2, 3, 4):
                ids.append(spine_id)
                zs.append(z)
                boxes.append(BOX[box])
        table = BoxTable.from_rows(ids, zs, np.array(boxes, float).reshape(-1, 4), np.ones(len(ids)))
        (folder / f"{name}_s{k}_boxes.csv").write_text(boxes_csv_text(table))
        here = {t: s for s, t, _ in spines}
        rows += [[t, k, int(t in here), 1, here.get(t, ""), 0, 0, 0, ""] for t in tracks]
    with (folder / f"{name}_observations.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(OBSERVATION_COLUMNS)
        writer.writerows(rows)
    return folder / f"{name}_observations.csv"


def test_series_metric_on_hand_made_tables(tmp_path):
    # truth: A in all three sessions, B in 0-1 (lost in 2), C from 1 on (gained), D only in 2 (gained)
    truth = write_hand_series(tmp_path, "gt", [[(1, 1, "A"), (2, 2, "B")],
                                               [(1, 1, "A"), (2, 2, "B"), (3, 3, "C")],
                                               [(1, 1, "A"), (3, 3, "C"), (4, 4, "D")]])
    # prediction: A split after session 1, B split after 0 and its track joined to D, C right, a false
    # detection F in sessions 1 and 2 linked to itself
    pred = write_hand_series(tmp_path / "pred", "series", [[(1, 1, "A"), (2, 2, "B")],
                                                          [(1, 1, "A"), (2, 3, "B"), (3, 4, "C"), (4, 6, "F")],
                                                          [(1, 5, "A"), (2, 4, "C"), (3, 3, "D"), (4, 6, "F")]])
    s = score_series(read_series(truth), read_series(pred))
    assert (s["true_pairs"], s["detected_pairs"], s["linked_pairs"]) == (4, 4, 2)
    assert s["linking_accuracy"] == 0.5 and s["pair_recall"] == 0.5
    assert (s["links"], s["correct_links"], s["false_links"], s["half_matched_links"], s["spurious_links"]) == \
        (4, 2, 1, 0, 1)
    assert s["link_precision"] == pytest.approx(2 / 3)
    assert s["gained"] == {"true": 2, "pred": 4, "error": 1.0}
    assert s["lost"] == {"true": 1, "pred": 2, "error": 1.0}
    # the same through the command, and a perfect prediction scores perfectly
    result = CliRunner().invoke(eval_app, ["sessions", "--gt", str(truth), "--pred", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    assert "linking accuracy 0.5000" in result.stdout and "false 1, half-matched 0, spurious 1" in result.stdout
    perfect = score_series(read_series(truth), read_series(truth))
    assert perfect["linking_accuracy"] == 1.0 and perfect["false_links"] == 0
    assert perfect["gained"]["error"] == 0.0 and perfect["lost"]["error"] == 0.0


def test_series_metric_counts_a_missed_detection_and_half_matched_links():
    truth = [{1: 1, 2: 2}, {1: 1, 2: 2}, {1: 1, 2: 2}]
    pred = [{10: 1, 20: 2}, {10: 1, 30: 2}, {10: 1, 20: 2}]     # spine 2's box in session 1 matched nothing
    matches = [{10: 1, 20: 2}, {10: 1}, {10: 1, 20: 2}]
    s = link_scores(truth, pred, matches)
    assert (s["true_pairs"], s["detected_pairs"], s["linked_pairs"]) == (4, 2, 2)
    assert s["linking_accuracy"] == 1.0 and s["pair_recall"] == 0.5
    assert (s["correct_links"], s["half_matched_links"], s["false_links"]) == (2, 2, 0)


def test_series_metric_refuses_mismatched_series(tmp_path):
    truth = write_hand_series(tmp_path, "gt", [[(1, 1, "A")], [(1, 1, "A")]])
    pred = write_hand_series(tmp_path / "p", "series", [[(1, 1, "A")], [(1, 1, "A")], [(1, 1, "A")]])
    result = CliRunner().invoke(eval_app, ["sessions", "--gt", str(truth), "--pred", str(pred)])
    assert result.exit_code == 2 and "2 sessions" in result.output and "3" in result.output
    for bad in (tmp_path / "nothing_observations.csv", tmp_path / "gt_s0_boxes.csv"):
        result = CliRunner().invoke(eval_app, ["sessions", "--gt", str(bad), "--pred", str(pred)])
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
        assert result.stderr.startswith("spine-eval: error: ")


# --- the synthetic series -----------------------------------------------------------------------------------------

def test_synthetic_series_keeps_identities_and_makes_the_asked_turnover():
    s = make_series(7, (8, 128, 128), sessions=4, max_shift_um=(0.5, 2.0, 2.0), max_rotation_deg=1.0,
                    loss_fraction=0.2, gain_fraction=0.2, size_drift=0.2, **BRIGHT)
    assert s.shift_um[0].tolist() == [0, 0, 0] and s.rotation_deg[0] == 0
    assert np.all(np.abs(s.shift_um) <= [0.5, 2.0, 2.0]) and np.all(np.abs(s.rotation_deg) <= 1.0)
    for k in range(1, 4):
        before, now = s.alive[k - 1], s.alive[k]
        assert len(before - now) == round(0.2 * len(before))                          # lost, for good:
        assert not (before - now) & set().union(*s.alive[k:])
        assert len(now - before) <= round(0.2 * len(before))                          # gained (where room)
        assert len(now - before) >= 1
    ratios = [math.log(s.head_radius[k][i] / s.head_radius[k - 1][i]) for k in range(1, 4)
              for i in s.alive[k] & s.alive[k - 1]]
    assert 0.1 < np.std(ratios) < 0.3                                   # log-normal drift of SD 0.2
    # each session's ground truth boxes lie where the pose puts each spine's head
    px = s.voxel_size[1]
    for k, stack in enumerate(s.sessions):
        assert set(stack.table.spine_id.tolist()) <= s.alive[k]
        for i in set(stack.table.spine_id.tolist()):
            z, y, x = s.to_session(k, [s.position_um[i]])[0]
            if not (1 < y < 12 and 1 < x < 12):
                continue
            boxes = stack.table.boxes[stack.table.spine_id == i]
            assert np.any((boxes[:, 0] - 1 <= x / px) & (x / px <= boxes[:, 2] + 1)
                          & (boxes[:, 1] - 1 <= y / px) & (y / px <= boxes[:, 3] + 1))
    same = make_series(7, (8, 128, 128), sessions=4, max_shift_um=(0.5, 2.0, 2.0), max_rotation_deg=1.0,
                       loss_fraction=0.2, gain_fraction=0.2, size_drift=0.2, **BRIGHT)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(s.sessions, same.sessions))


def test_synthetic_series_truth_scores_perfectly_against_itself(tmp_path):
    from spinedet.training.synth.cli import app as synth_app

    result = CliRunner().invoke(synth_app, ["--out", str(tmp_path), "--sessions", "3", "--slices", "6", "--size",
                                            "96", "--seed", "2", "--pixel-size", "0.1", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)["series"][0]
    names = sorted(p.split("/")[-1] for p in report["files"])
    assert names == sorted([f"synth_000_s{k}{e}" for k in range(3) for e in (".tif", "_boxes.csv")]
                           + ["synth_000_observations.csv", "synth_000_spines.csv", "synth_000_truth.json"])
    truth = read_series(tmp_path / "synth_000_observations.csv")
    scores = score_series(truth, truth)
    assert scores["false_links"] == 0 and scores["linking_accuracy"] in (1.0, None)
    poses = json.loads((tmp_path / "synth_000_truth.json").read_text())["poses"]
    assert len(poses) == 3 and poses[0]["rotation_deg"] == 0
