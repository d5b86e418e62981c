"""Export: the traced graph is clean (hygiene), batch-dynamic and matches the torch model (parity)."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the [export] extra (torch, torchvision)")
onnx = pytest.importorskip("onnx")

from typer.testing import CliRunner  # noqa: E402

from spinedet.export.cli import app  # noqa: E402
from spinedet.export.hygiene import FORBIDDEN_OPS, TENSORRT_OPS, check_graph  # noqa: E402
from spinedet.export.onnx_export import export_onnx  # noqa: E402
from spinedet.training.parity import builtin_inputs, compare  # noqa: E402
from spinedet.runtime.backends import OnnxRuntimeBackend  # noqa: E402
from spinedet.runtime.contract import load_card  # noqa: E402
from spinedet.runtime.detector import SpineDetector  # noqa: E402
from spinedet.runtime.errors import SpineDetError  # noqa: E402
from spinedet.training.checkpoints import save_checkpoint  # noqa: E402
from spinedet.training.config import ModelConfig  # noqa: E402
from spinedet.training.model import build_model, predict  # noqa: E402

SIZE = (128, 128)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    config = ModelConfig(input_size=SIZE, fpn_channels=32, representation_size=64)
    model = build_model(config).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, config, metrics={"f1_3d_synthetic": 0.5})
    return path, model


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    return {p: export_onnx(checkpoint[0], folder / f"tiny_{p}.onnx", fp16=(p == "fp16")) for p in ("fp32", "fp16")}


def test_graph_hygiene(exported):
    for report in exported.values():
        model = onnx.load(str(report.onnx_path))
        ops = {n.op_type for n in model.graph.node}
        assert not ops & FORBIDDEN_OPS
        assert ops <= TENSORRT_OPS
        assert check_graph(model) == []
        assert {"NonMaxSuppression", "RoiAlign"} <= ops  # the detector really is in the graph
        assert "HardSigmoid" in ops  # MobileNetV2's ReLU6s as unit clips (fuse on onnxruntime CPU in fp16)
        dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
        assert dims == ["B", 1, *SIZE]


def test_hygiene_flags_forbidden_ops():
    from onnx import TensorProto, helper

    node = helper.make_node("NonZero", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.INT64, [2, None])])
    problems = check_graph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert any("forbidden op NonZero" in p for p in problems)


def test_fp32_parity_at_batches_1_3_8(exported):
    parity = exported["fp32"].parity
    assert parity["ok"]
    for b in (1, 3, 8):
        r = parity[f"batch_{b}"]
        assert r["detections"] > 0
        assert r["fraction"] >= 0.99 and r["max_score_diff"] < 1e-3


def test_fp16_is_smaller_and_close(exported):
    assert exported["fp16"].size_mb < 0.6 * exported["fp32"].size_mb
    assert exported["fp16"].parity["ok"]
    assert load_card(exported["fp16"].onnx_path).precision == "fp16"


def test_batch_is_dynamic_and_empty_slice_agrees(exported, checkpoint):
    card = load_card(exported["fp32"].onnx_path)
    backend = OnnxRuntimeBackend(exported["fp32"].onnx_path, card)
    slices = builtin_inputs(SIZE, count=5)
    reference = predict(checkpoint[1], slices)
    for b in (1, 2, 5):
        boxes, scores = backend.run(slices[:b])
        assert boxes.shape == (b, 80, 4) and scores.shape == (b, 80)
        r = compare(reference[:b], list(zip(boxes.astype(float), scores.astype(float))), 1e-3)
        assert r["matched"] == r["detections"]
    empty = np.zeros((1, 1, *SIZE), np.float32)
    boxes, scores = backend.run(empty)
    ref = predict(checkpoint[1], empty)[0]
    r = compare([ref], [(boxes[0].astype(float), scores[0].astype(float))], 1e-3)
    assert r["matched"] == r["detections"] and r["unmatched_extra"] == 0


def test_context_pooling_exports_with_parity(tmp_path):
    """A box head that also pools each RoI's surroundings: two RoiAligns, still clean and matching torch."""
    torch.manual_seed(3)
    config = ModelConfig(input_size=SIZE, fpn_channels=32, representation_size=64, roi_levels=("0",),
                         roi_context_px=12)
    save_checkpoint(tmp_path / "ctx.pt", build_model(config).eval(), config)
    report = export_onnx(tmp_path / "ctx.pt", tmp_path / "ctx.onnx")
    model = onnx.load(str(report.onnx_path))
    assert [n.op_type for n in model.graph.node].count("RoiAlign") == 2
    assert check_graph(model) == []
    assert report.parity["ok"] and all(report.parity[f"batch_{b}"]["fraction"] >= 0.99 for b in (1, 3, 8))
    assert load_card(report.onnx_path).export["roi_context_px"] == 12


def test_depth_context_exports_with_parity_and_runs(tmp_path):
    """A model that also sees its neighbours' projection: a [B, 2, H, W] input, clean, matching torch, runnable."""
    from spinedet.training.checkpoints import load_for_finetuning

    torch.manual_seed(4)
    config = ModelConfig(input_size=SIZE, fpn_channels=32, representation_size=64, roi_levels=("0",))
    save_checkpoint(tmp_path / "flat.pt", build_model(config).eval(), config)
    model, widened = load_for_finetuning(tmp_path / "flat.pt", depth_context_um=1.0)
    with torch.no_grad():  # a context channel that matters, so parity tests it
        model.backbone.stages[0][0][0].weight[:, 1].normal_(0, 0.3)
    save_checkpoint(tmp_path / "depth.pt", model, widened)
    report = export_onnx(tmp_path / "depth.pt", tmp_path / "depth.onnx")
    graph = onnx.load(str(report.onnx_path))
    assert [d.dim_param or d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim] == ["B", 2, *SIZE]
    assert check_graph(graph) == []
    assert report.parity["ok"] and report.parity["batch_3"]["detections"] > 0
    card = load_card(report.onnx_path)
    assert card.depth_context_um == 1.0 and card.channels == 2
    inputs = builtin_inputs(SIZE, channels=2, count=4)
    assert inputs.shape == (4, 2, *SIZE) and np.all(inputs[:, 1] >= inputs[:, 0])  # a projection includes its slice
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 200, 150)) * 1000).astype(np.uint16)
    assert SpineDetector(report.onnx_path, batch=4).detect(stack, voxel_size=(0.5, 0.1, 0.1)).shape == (3, 200, 150)


def test_exported_model_runs_in_the_runtime(exported):
    rng = np.random.default_rng(0)
    stack = (rng.random((3, 200, 150)) * 1000).astype(np.uint16)  # larger than the input: tiled
    result = SpineDetector(exported["fp32"].onnx_path, batch=4).detect(stack)
    assert result.shape == (3, 200, 150)


def test_cli_exports_into_a_folder_and_fails_cleanly(checkpoint, tmp_path):
    out = tmp_path / "models"
    result = CliRunner().invoke(app, [str(checkpoint[0]), "--out", str(out), "--name", "m", "--no-check", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)  # --json: one object on stdout
    assert report["onnx"] == str(out / "m.onnx") and report["target"] == "onnxruntime"
    assert (out / "m.onnx").exists() and (out / "m.json").exists()
    bad = tmp_path / "bad.pt"
    bad.write_text("not a checkpoint")
    result = CliRunner().invoke(app, [str(bad), "--out", str(tmp_path / "x")])
    assert result.exit_code == 2 and "bad.pt: not a spine-train checkpoint" in result.stderr
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())
    # an exported model exported again beside itself would overwrite itself: refused
    result = CliRunner().invoke(app, [str(out / "m.onnx"), "--no-check"])
    assert result.exit_code == 2 and "would overwrite the model it is made from" in result.stderr


def test_engine_needs_the_tensorrt_flavour(checkpoint, tmp_path):
    result = CliRunner().invoke(app, [str(checkpoint[0]), "--out", str(tmp_path), "--no-check", "--engine", "-q"])
    assert result.exit_code == 2
    assert result.stderr.strip() == ("spine-export: error: --engine builds from the tensorrt flavour: "
                                     "add --target tensorrt")
    assert not list(tmp_path.glob("*.onnx"))


def test_missing_checkpoint():
    with pytest.raises(SpineDetError, match="no such checkpoint file"):
        export_onnx("/nonexistent/ck.pt", "/tmp/never.onnx")


def _outputs_close(a, b, atol):
    for (ab, as_), (bb, bs) in zip(a, b):
        assert ab.shape == bb.shape
        np.testing.assert_allclose(ab, bb, atol=atol)
        np.testing.assert_allclose(as_, bs, atol=atol)


def test_weights_come_back_out_of_an_exported_graph(exported, checkpoint, tmp_path):
    """spine-train --init model.onnx: the torch model is rebuilt from the graph (card's config or, for an old
    card, its fields and the weight shapes) and computes what the original computed."""
    import json
    import shutil

    from spinedet.training.checkpoints import checkpoint_config, load_checkpoint, load_for_finetuning
    from spinedet.training.recover import model_from_onnx

    original, config, _ = load_checkpoint(checkpoint[0])
    slices = builtin_inputs(SIZE, count=4)
    reference = predict(original, slices)
    recovered, recovered_config = model_from_onnx(exported["fp32"].onnx_path)
    assert recovered_config == config
    _outputs_close(reference, predict(recovered, slices), atol=1e-4)
    for key, value in original.state_dict().items():
        if key.endswith(".weight") and value.dim() > 1:  # conv and linear weights (BatchNorms' are 1-D) as they were
            torch.testing.assert_close(recovered.state_dict()[key], value)
    # an older card without the config record: the card's fields and the weight shapes give the same model
    shutil.copy(exported["fp32"].onnx_path, tmp_path / "old.onnx")
    card = json.loads(exported["fp32"].card_path.read_text())
    del card["export"]["model_config"]
    (tmp_path / "old.json").write_text(json.dumps(card))
    assert checkpoint_config(tmp_path / "old.onnx") == config
    model, _ = load_for_finetuning(tmp_path / "old.onnx")
    _outputs_close(reference, predict(model, slices), atol=1e-4)
    # fp16 weights come back rounded, still within the fp16 parity tolerance (checked inside)
    half, _ = model_from_onnx(exported["fp16"].onnx_path)
    w = original.state_dict()["roi_heads.box_head.fc6.weight"]
    torch.testing.assert_close(half.state_dict()["roi_heads.box_head.fc6.weight"], w, rtol=1e-3, atol=1e-4)


def test_a_re_export_keeps_the_runtime_settings_of_its_source_card(exported, tmp_path):
    """Thresholds and the shaft check belong to the model, not the graph: exporting an .onnx again (another
    precision, the tensorrt flavour) carries them over."""
    import shutil

    source = tmp_path / "source.onnx"
    shutil.copy(exported["fp32"].onnx_path, source)
    card = json.loads(exported["fp32"].card_path.read_text())
    settings = {"score_threshold": 0.7, "link_threshold": 0.5, "shaft_distance_um": 1.0}
    source.with_suffix(".json").write_text(json.dumps({**card, **settings}))
    report = export_onnx(source, tmp_path / "again.onnx", check=False)
    again = load_card(report.onnx_path)
    assert (again.score_threshold, again.link_threshold, again.shaft_distance_um) == (0.7, 0.5, 1.0)


def test_a_graph_that_is_not_an_exported_detector_is_refused(blob_model):
    from spinedet.training.recover import model_from_onnx

    with pytest.raises(SpineDetError, match="cannot recover the weights") as caught:
        model_from_onnx(blob_model)
    assert str(blob_model) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.slow
@pytest.mark.shared
def test_shipped_model_exports_with_parity_on_real_images(shared_data, tmp_path):
    """The shipped architecture (context pooling, 300 proposals, 512 x 512) exported again from its recovered
    weights: fp32 parity with torch on real2d-mdg val images and the built-in slices at batches 1, 3 and 8."""
    from spinedet.training.parity import parity_report
    from spinedet.training.recover import model_from_onnx
    from spinedet.runtime.detector import shipped_model_path
    from spinedet.training.data import real2d_samples

    model, config = model_from_onnx(shipped_model_path())
    save_checkpoint(tmp_path / "shipped.pt", model, config)
    report = export_onnx(tmp_path / "shipped.pt", tmp_path / "shipped_fp32.onnx", check=False)
    real = []
    for sample in real2d_samples("val", shared_data / "real2d-mdg"):
        h, w = sample.image.shape
        real.append(sample.image[(h - 512) // 2:(h + 512) // 2, (w - 512) // 2:(w + 512) // 2])
    assert len(real) == 15
    parity = parity_report(model, report.onnx_path, load_card(report.onnx_path), extra_slices=np.stack(real))
    assert parity["ok"], parity["summary"]
    for b in (1, 3, 8):
        r = parity[f"batch_{b}"]
        assert r["detections"] >= 50 and r["fraction"] >= 0.99 and r["max_score_diff"] < 1e-3, r
        assert r["empty_slice_detections"] == 0


def test_relu6_becomes_a_unit_clip_only_where_that_computes_the_same():
    from torch import nn

    from spinedet.export.graph import ReLU6AsUnitClip, with_unit_clips

    class Chain(nn.Module):  # each ReLU6 feeds the next convolution
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU6(), nn.Conv2d(4, 2, 1))

        def forward(self, x):
            return {"0": self.body(x * 8)}

    class Skip(Chain):  # the activation's output goes around the next convolution
        def forward(self, x):
            a = self.body[1](self.body[0](x * 8))
            return {"0": self.body[2](x.expand(-1, 4, -1, -1)) + a[:, :2]}

    torch.manual_seed(0)
    chain = Chain()
    rewritten = with_unit_clips(chain, 1)
    assert isinstance(rewritten.body[1], ReLU6AsUnitClip) and isinstance(chain.body[1], nn.ReLU6)
    x = torch.rand(2, 1, 16, 16)
    torch.testing.assert_close(rewritten(x)["0"], chain(x)["0"])
    torch.testing.assert_close(rewritten.body[2].weight, 6 * chain.body[2].weight)
    assert with_unit_clips(Skip(), 1) is None
