import json

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
