import json

import numpy as np
import pytest

from spinedet.training.validate import SETTINGS, main


def test_validate_reports_f1_per_setting_and_on_real_data(blob_model, tmp_path, capsys):
    out = tmp_path / "v.json"
    assert main([str(blob_model), "--stacks-per-setting", "1", "--slices", "3", "--size", "128",
                 "--json", str(out), "--real-root", str(tmp_path / "absent")]) == 0
    results = json.loads(out.read_text())
    synthetic = results["synthetic_f1_3d"]
    assert set(SETTINGS) | {"all settings", "inference_seconds_per_slice"} == set(synthetic)
    total = synthetic["all settings"]
    assert total["tp"] + total["fn"] > 0  # the stacks hold spines
    assert total["tp"] == sum(synthetic[name]["tp"] for name in SETTINGS)
    assert 0 <= total["f1"] <= 1
    assert results["real2d_mdg_val_f1"] is None  # folder absent: skipped, not failed


def test_validate_bad_model_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spine-validate: error: ") and err.count("\n") == 1


def test_validate_will_not_overwrite_the_model_card(blob_model, capsys):
    card = blob_model.with_suffix(".json")
    before = card.read_bytes()
    assert main([str(blob_model), "--json", str(card)]) == 2
    err = capsys.readouterr().err
    assert "model's card" in err and err.count("\n") == 1
    assert card.read_bytes() == before


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
    from spinedet.training.validate import tracked_above

    stack = make_stack(4, shape=(6, 128, 128), pixel_size_um=0.1, signal_photons=100.0)
    low = SpineDetector(blob_model, score_threshold=0.5)
    found = low.slice_detections(stack.image, stack.voxel_size)
    compared, linked_differs = 0, False
    for t in (0.5, 0.6, 0.75, 0.9):
        direct = SpineDetector(blob_model, score_threshold=t).detect(stack.image, voxel_size=stack.voxel_size).table
        again = tracked_above(found, t, low)
        assert _tracks(direct) == _tracks(again)
        compared += len(direct)
        # tracks built from boxes above 0.5, kept if a box passes t
        direct_linked = SpineDetector(blob_model, score_threshold=t, link_threshold=0.5).detect(
            stack.image, voxel_size=stack.voxel_size).table
        assert _tracks(direct_linked) == _tracks(tracked_above(found, t, low, link_threshold=0.5))
        linked_differs |= _tracks(direct_linked) != _tracks(direct)
    assert compared > 0 and linked_differs


def test_calibrate_writes_the_threshold_into_the_card(blob_model, tmp_path, capsys):
    import shutil

    from spinedet.runtime.contract import load_card
    from spinedet.runtime.detector import SpineDetector
    from spinedet.training.validate import THRESHOLDS

    model = tmp_path / "m.onnx"
    shutil.copy(blob_model, model)
    shutil.copy(blob_model.with_suffix(".json"), model.with_suffix(".json"))
    before = load_card(model)
    out = tmp_path / "v.json"
    assert main([str(model), "--calibrate", "--stacks-per-setting", "1", "--slices", "3", "--size", "128",
                 "--json", str(out), "--real-root", str(tmp_path / "absent")]) == 0
    card = load_card(model)
    record = card.metrics["score_threshold_calibration"]
    assert card.score_threshold == record["chosen"] and card.score_threshold in THRESHOLDS
    assert card.link_threshold == record["link_threshold"] == 0.5
    assert [r["threshold"] for r in record["sweep"]] == list(THRESHOLDS)
    best = max(r["synthetic_f1_3d"] for r in record["sweep"])
    assert [r for r in record["sweep"] if r["threshold"] == record["chosen"]][0]["synthetic_f1_3d"] == best
    assert (card.input_size, card.name) == (before.input_size, before.name)
    assert SpineDetector(model).score_threshold == card.score_threshold
    assert json.loads(out.read_text())["score_threshold"] == card.score_threshold


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
