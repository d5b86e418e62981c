import json
import shutil
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

import spinedet.training.validate as V
from spinedet.runtime.errors import SpineDetError
from spinedet.training.validate import SETTINGS, app

SMALL = ["--stacks-per-setting", "1", "--slices", "3", "--size", "128"]


def spine_validate(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def model(blob_model, tmp_path):
    """A copy of the blob model and its card, free to be calibrated."""
    copy = tmp_path / "model" / "m.onnx"
    copy.parent.mkdir()
    shutil.copy(blob_model, copy)
    shutil.copy(blob_model.with_suffix(".json"), copy.with_suffix(".json"))
    return copy


def test_validate_reports_f1_per_setting_and_on_real_data(blob_model, tmp_path):
    result = spine_validate(blob_model, *SMALL, "--json", "--real-root", tmp_path / "absent")
    assert result.exit_code == 0, result.output
    # --json: exactly one JSON object on stdout, nothing else there
    assert result.stdout.count("\n") == 1
    results = json.loads(result.stdout)
    synthetic = results["synthetic_f1_3d"]
    assert set(SETTINGS) | {"all settings", "inference_seconds_per_slice"} == set(synthetic)
    total = synthetic["all settings"]
    assert total["tp"] + total["fn"] > 0  # the stacks hold spines
    assert total["tp"] == sum(synthetic[name]["tp"] for name in SETTINGS)
    assert 0 <= total["f1"] <= 1
    assert results["real2d_mdg_val_f1"] is None  # folder absent: skipped, not failed
    assert "absent: no labels.csv" in result.stderr  # ... and said so
    # without --json: a readable summary on stdout; -q: nothing on stderr
    result = spine_validate(blob_model, *SMALL, "--real-root", tmp_path / "absent", "-q")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert lines[0] == f"{blob_model}: score threshold {results['score_threshold']:g}, link threshold 0.5"
    for name in [*SETTINGS, "all settings"]:
        assert any(line.startswith(f"F1-3D  {name} ") and f"F1 {synthetic[name]['f1']:.4f}" in line
                   for line in lines)
    assert "real2d-mdg val: skipped" in result.stdout


def test_validate_runs_the_cards_shaft_check_unless_told_not_to(model, tmp_path):
    card = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**card, "shaft_distance_um": 1.0}))
    absent = ["--real-root", tmp_path / "absent", "-q"]
    checked = spine_validate(model, *SMALL, *absent, "--json")
    unchecked = spine_validate(model, *SMALL, *absent, "--json", "--no-shaft-check")
    assert checked.exit_code == unchecked.exit_code == 0, checked.output + unchecked.output
    assert json.loads(checked.stdout)["shaft_distance_um"] == 1.0
    assert json.loads(unchecked.stdout)["shaft_distance_um"] is None
    text = spine_validate(model, *SMALL, *absent)
    assert text.stdout.splitlines()[0].endswith("link threshold 0.5, shaft check 1 µm")


def test_validate_real_data_default_honours_spinedet_data(blob_model, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(V, "real2d_f1", lambda detector, root: seen.append(root))
    monkeypatch.setenv("SPINEDET_DATA", str(tmp_path / "data"))
    result = spine_validate(blob_model, *SMALL, "--json")
    assert result.exit_code == 0, result.output
    assert seen == [tmp_path / "data" / "real2d-mdg"]
    assert f"{tmp_path / 'data' / 'real2d-mdg'}: no labels.csv" in result.stderr


def test_validate_bad_model_is_one_line(tmp_path):
    result = spine_validate(tmp_path / "missing.onnx")
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("spine-validate: error: ") and result.stderr.count("\n") == 1


@pytest.mark.parametrize("argv", [["--json", "results.json"], ["--batch", "0"], ["--stacks-per-setting", "x"],
                                  ["--device", "gpu"], ["--bogus"]])
def test_validate_bad_option_is_one_line(blob_model, argv, monkeypatch, capsys):
    """Usage errors too are one line and exit 2 (through the installed entry point's path)."""
    monkeypatch.setattr(sys, "argv", ["spine-validate", str(blob_model), *argv])
    with pytest.raises(SystemExit) as exit:
        V.main()
    assert exit.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1
    assert captured.err.startswith("spine-validate: error: ") and "(see spine-validate --help)" in captured.err


def test_validate_writes_nothing_but_a_calibrated_card(model, tmp_path, monkeypatch):
    """Without --calibrate nothing is written (the card least of all); with it, nothing if validation fails."""
    card = model.with_suffix(".json")
    before = card.read_bytes()
    listing = sorted(model.parent.iterdir())
    monkeypatch.chdir(tmp_path)
    result = spine_validate(model, *SMALL, "--json", "--real-root", tmp_path / "absent")
    assert result.exit_code == 0
    assert card.read_bytes() == before and sorted(model.parent.iterdir()) == listing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    # --json FILE (the old form) is no longer a way to write onto the card
    result = spine_validate(model, "--json", card)
    assert result.exit_code == 2 and card.read_bytes() == before

    def broken(*args, **kwargs):
        raise SpineDetError("the validation broke midway")

    monkeypatch.setattr(V, "synthetic_f1_3d", broken)
    result = spine_validate(model, "--calibrate", *SMALL, "--real-root", tmp_path / "absent")
    assert result.exit_code == 2 and "broke midway" in result.stderr
    assert card.read_bytes() == before and sorted(model.parent.iterdir()) == listing


def _tracks(table):
    """A table's spines as a set of frozensets of (z, rounded box, rounded score): ids and row order aside."""
    spines = {}
    for i, z, box, score in zip(table.spine_id, table.z, table.boxes, table.score):
        spines.setdefault(i, set()).add((int(z), tuple(np.round(box, 3)), round(float(score), 5)))
    return {frozenset(rows) for rows in spines.values()}


def test_raising_the_threshold_afterwards_equals_detecting_at_it(blob_model):
    """The sweep's shortcut: filter post-processed detections and re-track == run the detector at that threshold."""
    from spinedet.runtime.detector import SpineDetector
    from spinedet.training.synth import make_stack
    from spinedet.runtime.tracking import track_confirmed

    stack = make_stack(4, shape=(6, 128, 128), pixel_size_um=0.1, signal_photons=100.0)
    low = SpineDetector(blob_model, score_threshold=0.5)
    found = low.slice_detections(stack.image, stack.voxel_size)
    compared, linked_differs = 0, False
    for t in (0.5, 0.6, 0.75, 0.9):
        direct = SpineDetector(blob_model, score_threshold=t).detect(stack.image, voxel_size=stack.voxel_size).table
        again = track_confirmed(found, t, None, low.link_iom, low.max_misses)
        assert _tracks(direct) == _tracks(again)
        compared += len(direct)
        # tracks built from boxes above 0.5, kept if a box passes t
        direct_linked = SpineDetector(blob_model, score_threshold=t, link_threshold=0.5).detect(
            stack.image, voxel_size=stack.voxel_size).table
        assert _tracks(direct_linked) == _tracks(track_confirmed(found, t, 0.5, low.link_iom, low.max_misses))
        linked_differs |= _tracks(direct_linked) != _tracks(direct)
    assert compared > 0 and linked_differs


def test_calibrate_writes_the_threshold_into_the_card(model, tmp_path):
    from spinedet.runtime.contract import load_card
    from spinedet.runtime.detector import SpineDetector
    from spinedet.training.validate import THRESHOLDS

    before = load_card(model)
    result = spine_validate(model, "--calibrate", *SMALL, "--json", "--real-root", tmp_path / "absent")
    assert result.exit_code == 0, result.output
    card = load_card(model)
    record = card.metrics["score_threshold_calibration"]
    assert card.score_threshold == record["chosen"] and card.score_threshold in THRESHOLDS
    assert card.link_threshold == record["link_threshold"] == 0.5
    assert [r["threshold"] for r in record["sweep"]] == list(THRESHOLDS)
    best = max(r["synthetic_f1_3d"] for r in record["sweep"])
    assert [r for r in record["sweep"] if r["threshold"] == record["chosen"]][0]["synthetic_f1_3d"] == best
    assert (card.input_size, card.name) == (before.input_size, before.name)
    assert SpineDetector(model).score_threshold == card.score_threshold
    results = json.loads(result.stdout)
    assert results["score_threshold"] == card.score_threshold and results["calibration"] == record


def test_card_rejects_a_threshold_outside_0_1(blob_model, tmp_path):
    import shutil

    from spinedet.runtime.detector import SpineDetector
    from spinedet.runtime.errors import SpineDetError

    model = tmp_path / "m.onnx"
    shutil.copy(blob_model, model)
    card = json.loads(blob_model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**card, "score_threshold": 1.5}))
    with pytest.raises(SpineDetError, match="score_threshold"):
        SpineDetector(model)
