"""spine-export --int8: a quantised graph with its card, checked for parity and F1; spine-run picks it on the CPU."""

import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="int8 export tests need the [export] extra (torch, torchvision)")
onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from spinedet.export.cli import app as export_app  # noqa: E402
from spinedet.export.hygiene import check_graph  # noqa: E402
from spinedet.export.onnx_export import export_onnx  # noqa: E402
from spinedet.runtime import detector as detector_module  # noqa: E402
from spinedet.runtime.cli import run_app  # noqa: E402
from spinedet.runtime.contract import load_card  # noqa: E402
from spinedet.runtime.detector import (DEFAULT_INT8_MODEL_NAME, DEFAULT_MODEL_NAME, DEFAULT_TRT_MODEL_NAME,  # noqa: E402
                                       SpineDetector, default_model_path)
from spinedet.runtime.errors import SpineDetError  # noqa: E402
from spinedet.training.checkpoints import save_checkpoint  # noqa: E402
from spinedet.training.config import ModelConfig  # noqa: E402
from spinedet.training.model import build_model  # noqa: E402
from spinedet.training.parity import TOLERANCE  # noqa: E402

SIZE = (128, 128)  # the small model of tests/test_export.py


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The small random model of tests/test_export.py: enough for the command line and the card."""
    torch.manual_seed(0)
    config = ModelConfig(input_size=SIZE, fpn_channels=32, representation_size=64)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, build_model(config).eval(), config, metrics={"f1_3d_synthetic": 0.5})
    return path


@pytest.fixture(scope="module")
def trained_small(tmp_path_factory):
    """The shipped model's weights at a 128 x 128 input: small, and a detector whose scores mean something.

    Random weights make no confident detections (every score near 0.6), so int8 parity there would measure
    how ties between near-equal boxes break, not the quantisation.
    """
    from dataclasses import replace

    from spinedet.runtime.detector import shipped_model_path
    from spinedet.training.recover import model_from_onnx

    shipped = shipped_model_path()
    if not shipped.is_file():
        pytest.skip(f"no shipped model at {shipped}")
    model, config = model_from_onnx(shipped, check=False)
    config = replace(config, input_size=SIZE)
    small = build_model(config, pretrained=False).eval()
    small.load_state_dict(model.state_dict())
    path = tmp_path_factory.mktemp("small") / "small.pt"
    save_checkpoint(path, small, config)
    return path, small


@pytest.fixture(scope="module")
def int8_report(trained_small, tmp_path_factory):
    return export_onnx(trained_small[0], tmp_path_factory.mktemp("int8") / "small_int8.onnx", int8=True, check=False)


def test_int8_graph_is_quantised_clean_and_carded(int8_report):
    graph = onnx.load(str(int8_report.onnx_path))
    ops = [n.op_type for n in graph.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 20
    assert "HardSigmoid" not in ops  # plain Clip(0, 6) was quantised, not the unit clips
    assert {"NonMaxSuppression", "RoiAlign"} <= set(ops)  # NMS and RoI pooling stay float
    # weights in a 7-bit range (reduce_range): no saturating uint8 x int8 pair sums on CPUs without VNNI
    from onnx import numpy_helper

    weights = [numpy_helper.to_array(i) for i in graph.graph.initializer if i.data_type == onnx.TensorProto.INT8]
    assert len(weights) > 20 and max(int(np.abs(w.astype(np.int16)).max()) for w in weights) <= 64
    assert check_graph(graph) == []
    card = load_card(int8_report.onnx_path)
    assert card.precision == "int8" and int8_report.precision == "int8"
    quantization = card.export["quantization"]
    assert quantization["calibration"]["slices"] == 10 and "built-in" in quantization["calibration"]["source"]
    assert "per output channel" in quantization["weights"] and quantization["activations"].startswith("uint8")
    assert card.export["roi_sampling_ratio"] == 2


def test_int8_passes_its_parity_tolerance(int8_report, trained_small):
    """At batches 1, 3 and 8, on built-in slices it was not calibrated on (seed 1): TOLERANCE["int8"]."""
    from spinedet.training.parity import parity_report

    fraction, score_tolerance, min_iou = TOLERANCE["int8"]
    parity = parity_report(trained_small[1], int8_report.onnx_path, load_card(int8_report.onnx_path), seed=1)
    assert parity["ok"], parity["summary"]
    for b in (1, 3, 8):
        r = parity[f"batch_{b}"]
        assert r["detections"] >= 10 and r["fraction"] >= fraction, r
        assert r["max_score_diff"] < score_tolerance and r["empty_slice_detections"] == 0


@pytest.mark.slow
def test_int8_export_checks_parity_and_f1_and_records_them(trained_small, tmp_path):
    """The whole export as spine-export --int8 runs it (about 15 s): parity and the runtime's F1-3D check."""
    report = export_onnx(trained_small[0], tmp_path / "checked_int8.onnx", int8=True, roi_sampling=1)
    assert report.parity["ok"] and report.parity["f1_check"]["ok"], report.parity["f1_check"]["summary"]
    card = load_card(report.onnx_path)
    checks = card.metrics["int8_checks"]
    assert "IoU >= 0.5" in checks["parity"]["summary"]
    assert checks["f1_3d_against_float32"]["candidate"]["f1"] >= checks["f1_3d_against_float32"]["reference"]["f1"] \
        - 0.03
    assert card.export["roi_sampling_ratio"] == 1


def test_int8_is_smaller_than_fp32_and_runs_in_the_runtime(int8_report):
    assert int8_report.size_mb < 0.5 * 17.5  # the float32 graph of these weights: 17.5 MB
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 200, 150)) * 1000).astype(np.uint16)  # tiled
    assert SpineDetector(int8_report.onnx_path, batch=4).detect(stack).shape == (3, 200, 150)


def test_the_int8_weights_are_not_recovered(int8_report):
    from spinedet.training.recover import model_from_onnx

    with pytest.raises(SpineDetError, match="int8 model's weights are rounded to 8 bits"):
        model_from_onnx(int8_report.onnx_path)


def test_cli_int8_with_user_calibration_files(checkpoint, good_stack_path, tmp_path):
    out = tmp_path / "models"
    result = CliRunner().invoke(export_app, [str(checkpoint), "--int8", "--out", str(out), "--no-check", "--json",
                                             "--calibration-slices", str(good_stack_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["onnx"] == str(out / "tiny_int8.onnx") and report["precision"] == "int8"
    card = load_card(out / "tiny_int8.onnx")
    assert card.metrics["source_metrics"]["f1_3d_synthetic"] == 0.5  # the checkpoint's, kept apart
    calibration = card.export["quantization"]["calibration"]
    assert calibration["files"][0]["file"] == "good.tif" and calibration["slices"] == 10
    assert calibration["files"][0]["slices"] == list(range(10))  # 10 slices spread over the 10-slice stack


@pytest.mark.parametrize("content, problem", [
    (b"not an image at all", "not a TIFF or PNG image"),
    (None, "image is blank"),
])
def test_a_bad_calibration_file_is_one_line_and_writes_nothing(checkpoint, tmp_path, content, problem):
    bad = tmp_path / "bad.tif"
    if content is None:
        import tifffile

        tifffile.imwrite(bad, np.full((3, 64, 64), 7, np.uint16), photometric="minisblack")
    else:
        bad.write_bytes(content)
    out = tmp_path / "models"
    result = CliRunner().invoke(export_app, [str(checkpoint), "--int8", "--out", str(out),
                                             "--calibration-slices", str(bad)])
    assert result.exit_code == 2
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("spine-export: error: ") and "bad.tif" in line and problem in line
    assert not out.exists() or not list(out.iterdir())


def test_int8_refuses_options_that_make_no_sense(checkpoint, tmp_path):
    for extra, problem in ((["--fp16"], "--int8 and --fp16 exclude each other"),
                           (["--target", "tensorrt"], "use --target onnxruntime")):
        result = CliRunner().invoke(export_app, [str(checkpoint), "--int8", "--out", str(tmp_path), *extra])
        assert result.exit_code == 2 and problem in result.stderr
    assert not list(tmp_path.glob("*.onnx"))


# --- which shipped model runs ---------------------------------------------------------------------------------------


@pytest.fixture
def shipped_folder(int8_report, blob_model, tmp_path, monkeypatch):
    """A stand-in for spinedet.models: the blob model as the fp16 default, the tiny int8 model beside it."""
    folder = tmp_path / "models"
    folder.mkdir()
    for name, source in ((DEFAULT_MODEL_NAME, blob_model), (DEFAULT_INT8_MODEL_NAME, int8_report.onnx_path)):
        shutil.copy(source, folder / name)
        shutil.copy(source.with_suffix(".json"), (folder / name).with_suffix(".json"))
    monkeypatch.setattr(detector_module, "shipped_model_path", lambda name=DEFAULT_MODEL_NAME: folder / name)
    return folder


def test_spine_run_picks_the_int8_model_on_cpu_and_says_so(shipped_folder, good_stack_path, tmp_path):
    assert default_model_path("cpu") == shipped_folder / DEFAULT_INT8_MODEL_NAME
    assert default_model_path("cuda") == shipped_folder / DEFAULT_MODEL_NAME  # GPUs keep the fp16 file
    assert default_model_path("trt") == shipped_folder / DEFAULT_TRT_MODEL_NAME
    result = CliRunner().invoke(run_app, [str(good_stack_path), "--out", str(tmp_path / "out"), "-q"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "out" / "good_summary.json").read_text())
    assert summary["model"] == str(shipped_folder / DEFAULT_INT8_MODEL_NAME)
    assert summary["model_precision"] == "int8"
    # --model says otherwise: that file runs, and the summary says which
    result = CliRunner().invoke(run_app, [str(good_stack_path), "--out", str(tmp_path / "o2"), "-q", "--model",
                                          str(shipped_folder / DEFAULT_MODEL_NAME)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "o2" / "good_summary.json").read_text())
    assert summary["model"].endswith(DEFAULT_MODEL_NAME) and summary["model_precision"] == "fp32"


def test_without_the_int8_file_the_cpu_runs_the_fp16_one(shipped_folder):
    (shipped_folder / DEFAULT_INT8_MODEL_NAME).unlink()
    assert default_model_path("cpu") == shipped_folder / DEFAULT_MODEL_NAME
    assert SpineDetector().model_path == shipped_folder / DEFAULT_MODEL_NAME
