"""The tensorrt flavour of the export graph: plain ops only, the same detections as the onnxruntime flavour.

Its two rewrites are checked against torchvision (``roi_align``, greedy ``nms``), the whole graph against
torch (the export's own parity check) and against the onnxruntime flavour of the same model on
onnxruntime.  The shipped model's weights (recovered from its ONNX file) measure the NMS on real and
synthetic slices and re-export it; the re-exports are marked ``slow``.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="export tests need the [export] extra (torch, torchvision)")
onnx = pytest.importorskip("onnx")
torchvision = pytest.importorskip("torchvision")

from spinedet.export import graph  # noqa: E402
from spinedet.export.graph import (CLUSTER_NMS_ITERATIONS, RPN_CANDIDATES_PER_PROPOSAL,  # noqa: E402
                                   ExportableDetector, cluster_nms, pairwise_iou, roi_align_grid)
from spinedet.export.hygiene import TENSORRT_FORBIDDEN_OPS, TENSORRT_OPS, check_graph  # noqa: E402
from spinedet.export.onnx_export import export_onnx  # noqa: E402
from spinedet.training.parity import builtin_inputs, compare  # noqa: E402
from spinedet.runtime.backends import OnnxRuntimeBackend  # noqa: E402
from spinedet.runtime.contract import load_card  # noqa: E402
from spinedet.runtime.errors import SpineDetError  # noqa: E402
from spinedet.training.checkpoints import save_checkpoint  # noqa: E402
from spinedet.training.config import ModelConfig  # noqa: E402
from spinedet.training.model import build_model  # noqa: E402

SIZE = (128, 128)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random detector (as tests/test_export.py builds) with context pooling, 200 proposals, exported
    fp32 in both flavours; the export's parity check against torch must pass for both."""
    torch.manual_seed(0)
    config = ModelConfig(input_size=SIZE, fpn_channels=32, representation_size=64, roi_context_px=8,
                         rpn_post_nms_top_n_test=200)
    model = build_model(config).eval()
    folder = tmp_path_factory.mktemp("trt")
    save_checkpoint(folder / "tiny.pt", model, config)
    reports = {t: export_onnx(folder / "tiny.pt", folder / f"tiny_{t}.onnx", target=t)
               for t in ("onnxruntime", "tensorrt")}
    return model, config, reports


def _run(path, slices, batch):
    backend = OnnxRuntimeBackend(path, load_card(path))
    out = []
    for k in range(0, len(slices), batch):
        boxes, scores = backend.run(slices[k:k + batch])
        out += [(b.astype(np.float64), s.astype(np.float64)) for b, s in zip(boxes, scores)]
    return out


def _assert_flavours_agree(reference, candidate):
    """Boxes above 0.5 of the onnxruntime flavour matched by the tensorrt flavour: IoU >= 0.9, |dscore| < 1e-3."""
    r = compare(reference, candidate, 1e-3)
    assert r["detections"] > 0
    assert r["matched"] >= 0.99 * r["detections"], r
    assert r["max_score_diff"] < 1e-3, r
    return r


# --- hygiene --------------------------------------------------------------------------------------------------------


def test_tensorrt_flavour_is_plain_ops_and_records_its_target(tiny):
    _, _, reports = tiny
    model = onnx.load(str(reports["tensorrt"].onnx_path))
    ops = {n.op_type for n in model.graph.node}
    assert not ops & (TENSORRT_FORBIDDEN_OPS | {"ScatterND"})
    assert ops <= TENSORRT_OPS
    assert {"GridSample", "MatMul", "TopK"} <= ops  # the rewrites really are in the graph
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert check_graph(model, target="tensorrt") == []
    assert check_graph(model) == []  # the onnxruntime rules are looser
    assert load_card(reports["tensorrt"].onnx_path).export["target"] == "tensorrt"
    assert load_card(reports["onnxruntime"].onnx_path).export["target"] == "onnxruntime"
    dims = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["B", 1, *SIZE]


def test_onnxruntime_flavour_fails_the_tensorrt_rules(tiny):
    _, _, reports = tiny
    model = onnx.load(str(reports["onnxruntime"].onnx_path))
    assert check_graph(model) == []
    problems = check_graph(model, target="tensorrt")
    assert "forbidden op NonMaxSuppression" in problems and "forbidden op RoiAlign" in problems


def _graph(nodes, inputs, outputs, initializers=()):
    from onnx import helper

    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])


def test_hygiene_tensorrt_rules_on_small_graphs():
    from onnx import TensorProto, helper, numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 5000])
    values = helper.make_tensor_value_info("v", TensorProto.FLOAT, ["B", 4000])
    index = helper.make_tensor_value_info("i", TensorProto.INT64, ["B", 4000])
    big_k = numpy_helper.from_array(np.array([4000], np.int64), "k")
    topk = _graph([helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1)], [x], [values, index], [big_k])
    for target in ("onnxruntime", "tensorrt"):
        assert any("k = 4000 > 3840" in p for p in check_graph(topk, target=target))

    k_input = helper.make_tensor_value_info("kk", TensorProto.INT64, [1])
    dynamic_k = _graph([helper.make_node("TopK", ["x", "kk"], ["v", "i"], axis=1)], [x, k_input], [values, index])
    assert any("not a constant" in p for p in check_graph(dynamic_k, target="tensorrt"))

    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 5000])
    plugin = _graph([helper.make_node("MyPlugin", ["x"], ["y"], domain="com.example")], [x], [y])
    assert any("custom-domain (plugin) op com.example::MyPlugin" in p for p in check_graph(plugin, target="tensorrt"))

    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["B", 10, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 1, 10])
    selected = helper.make_tensor_value_info("sel", TensorProto.INT64, [None, 3])
    nms = _graph([helper.make_node("NonMaxSuppression", ["boxes", "scores"], ["sel"])], [boxes, scores], [selected])
    assert any("forbidden op NonMaxSuppression" in p for p in check_graph(nms, target="tensorrt"))
    assert not any("NonMaxSuppression" in p for p in check_graph(nms, target="onnxruntime"))

    with pytest.raises(ValueError, match="unknown target"):
        check_graph(nms, target="cuda")


def test_unknown_target_is_refused(tiny, tmp_path):
    model, config, _ = tiny
    with pytest.raises(ValueError, match="unknown export target"):
        ExportableDetector(model, config.input_size, target="openvino")
    save_checkpoint(tmp_path / "t.pt", model, config)
    with pytest.raises(SpineDetError, match="unknown export target"):
        export_onnx(tmp_path / "t.pt", tmp_path / "t.onnx", target="openvino")
    assert not (tmp_path / "t.onnx").exists()


# --- the rewrites ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25, 0.125, 1 / 16])
@pytest.mark.parametrize("sampling_ratio", [1, 2])
def test_roi_align_grid_matches_torchvision(scale, sampling_ratio):
    """Boxes of every kind: inside, crossing every border, fully outside, thinner than a feature pixel."""
    g = torch.Generator().manual_seed(int(1 / scale) * 10 + sampling_ratio)
    batch, channels, height, width = 3, 6, 23, 17
    features = torch.randn(batch, channels, height, width, generator=g)
    image_h, image_w = height / scale, width / scale
    n = 64
    x0 = (torch.rand(batch, n, generator=g) * 1.6 - 0.3) * image_w
    y0 = (torch.rand(batch, n, generator=g) * 1.6 - 0.3) * image_h
    w = torch.rand(batch, n, generator=g) * 0.7 * image_w
    h = torch.rand(batch, n, generator=g) * 0.7 * image_h
    w[:, :6], h[:, :6] = 0.2 / scale, 0.3 / scale  # below one feature pixel
    boxes = torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)
    boxes[:, 6] = torch.tensor([-0.5 / scale, -0.5 / scale, image_w + 0.5 / scale, image_h + 0.5 / scale])  # all
    boxes[:, 7] = torch.tensor([-3 / scale, 2 / scale, -1.2 / scale, 5 / scale])  # left of the map
    crossing = ((boxes[..., 0] < 0) | (boxes[..., 1] < 0) | (boxes[..., 2] > image_w) | (boxes[..., 3] > image_h))
    assert crossing.float().mean() > 0.3
    rois = torch.cat([torch.arange(batch).repeat_interleave(n).float()[:, None], boxes.reshape(-1, 4)], dim=1)
    reference = torchvision.ops.roi_align(features, rois, (7, 7), spatial_scale=scale,
                                          sampling_ratio=sampling_ratio, aligned=False)
    ours = roi_align_grid(features, boxes, (7, 7), scale, sampling_ratio)
    assert ours.shape == reference.shape == (batch * n, channels, 7, 7)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


def _clustered_boxes(g, n, clusters, extent=200.0):
    centres = torch.rand(clusters, 2, generator=g) * extent
    which = torch.randint(0, clusters, (n,), generator=g)
    middle = centres[which] + torch.randn(n, 2, generator=g) * 4
    size = 8 + torch.rand(n, 2, generator=g) * 12
    return torch.cat([middle - size / 2, middle + size / 2], dim=1)


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_cluster_nms_is_greedy_nms(threshold):
    """Dense clusters, invalid entries, tied scores (the earlier entry wins) and groups (levels)."""
    g = torch.Generator().manual_seed(int(threshold * 10))
    for trial in range(10):
        n = 300
        boxes = _clustered_boxes(g, n, clusters=25)
        scores = torch.rand(n, generator=g)
        scores[::7] = scores[3]  # ties
        order = torch.sort(scores, descending=True, stable=True).indices
        boxes, scores = boxes[order], scores[order]
        valid = torch.rand(n, generator=g) > 0.1
        groups = torch.randint(0, 3, (n,), generator=g).float()
        for grouped in (False, True):
            reference = torch.zeros(n)
            for group in (groups.unique() if grouped else [None]):
                index = torch.nonzero(valid & (groups == group if grouped else True)).flatten()
                kept = torchvision.ops.nms(boxes[index], -index.float(), threshold)  # rank = position
                reference[index[kept]] = 1
            keep = cluster_nms(boxes[None], valid[None], threshold, groups=groups[None] if grouped else None)[0]
            torch.testing.assert_close(keep, reference, rtol=0, atol=0)


def test_pairwise_iou_matches_torchvision():
    g = torch.Generator().manual_seed(1)
    boxes = _clustered_boxes(g, 50, clusters=5)
    torch.testing.assert_close(pairwise_iou(boxes[None])[0], torchvision.ops.box_iou(boxes, boxes))


def test_fast_nms_alone_is_not_enough():
    """One step (Fast NMS) suppresses boxes whose suppressor was itself suppressed: a chain a > b > c."""
    boxes = torch.tensor([[[0.0, 0, 10, 10], [3, 0, 13, 10], [6, 0, 16, 10]]])  # IoU(a,b) = IoU(b,c) = 0.54
    valid = torch.ones(1, 3, dtype=torch.bool)
    assert cluster_nms(boxes, valid, 0.5, iterations=1).tolist() == [[1, 0, 0]]
    assert cluster_nms(boxes, valid, 0.5).tolist() == [[1, 0, 1]]  # greedy keeps c


# --- whole graph ----------------------------------------------------------------------------------------------------


def test_tensorrt_flavour_matches_torch(tiny):
    """The export's own parity check (torch eager vs the tensorrt-flavour ONNX) at batches 1, 3 and 8."""
    parity = tiny[2]["tensorrt"].parity
    assert parity["ok"], parity["summary"]
    for b in (1, 3, 8):
        r = parity[f"batch_{b}"]
        assert r["detections"] > 0 and r["fraction"] >= 0.99 and r["max_score_diff"] < 1e-3, r


def test_flavours_agree_on_synthetic_slices(tiny):
    _, _, reports = tiny
    slices = np.concatenate([builtin_inputs(SIZE, seed=s) for s in (0, 1)])
    reference = _run(reports["onnxruntime"].onnx_path, slices, 8)
    for batch in (1, 5):
        candidate = _run(reports["tensorrt"].onnx_path, slices, batch)
        assert [b.shape for b, _ in candidate] == [(80, 4)] * len(slices)
        assert [s.shape for _, s in candidate] == [(80,)] * len(slices)
        _assert_flavours_agree(reference, candidate)


def test_candidate_count_follows_the_proposals(tiny):
    model, config, _ = tiny
    detector = ExportableDetector(model, config.input_size, target="tensorrt")
    total = sum(min(detector.pre_nms_top_n, n) for n in detector.level_sizes)
    assert detector.rpn_candidates == min(RPN_CANDIDATES_PER_PROPOSAL * 200, total)
    assert ExportableDetector(model, config.input_size, target="tensorrt", rpn_candidates=50).rpn_candidates == 200


# --- the shipped model (slow) ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped():
    from spinedet.training.recover import model_from_onnx
    from spinedet.runtime.detector import shipped_model_path

    path = shipped_model_path()
    if not path.is_file():
        pytest.skip(f"no default model at {path}")
    model, config = model_from_onnx(path, check=False)
    return path, model, config


def _real_crops(shared_data, size):
    from spinedet.training.data import real2d_samples

    crops = []
    for sample in real2d_samples("val", shared_data / "real2d-mdg"):
        h, w = sample.image.shape
        crops.append(sample.image[(h - size[0]) // 2:(h + size[0]) // 2, (w - size[1]) // 2:(w + size[1]) // 2])
    assert len(crops) == 15
    return np.stack(crops)


def _slices_for(config, shared=None):
    """Built-in synthetic slices of two seeds (+ real2d-mdg val centre crops, their own depth context)."""
    slices = [builtin_inputs(config.input_size, config.in_channels, seed=s) for s in (0, 1)]
    if shared is not None:
        real = _real_crops(shared, config.input_size)[:, None]
        slices.append(np.repeat(real, config.in_channels, axis=1).astype(np.float32))
    return np.concatenate(slices)


def _nms_problems(detector, x):
    """The two NMS problems of one slice in the tensorrt flavour: (RPN boxes, scores, levels) sorted best
    first over all candidates, and (box-head boxes, valid) sorted best first."""
    recorded = {}
    rpn_nms, box_nms = detector._proposals_dense_nms, graph.cluster_nms

    def rpn(boxes, scores, offsets):
        recorded["rpn"] = (boxes[0], scores[0], offsets[0])
        return rpn_nms(boxes, scores, offsets)

    def box(boxes, valid, threshold, iterations=CLUSTER_NMS_ITERATIONS, groups=None):
        if groups is None:
            recorded["box"] = (boxes[0], valid[0])
        return box_nms(boxes, valid, threshold, iterations, groups)

    detector._proposals_dense_nms = rpn
    graph.cluster_nms = box
    try:
        with torch.inference_mode():
            detector(torch.from_numpy(np.ascontiguousarray(x[None])))
    finally:
        graph.cluster_nms = box_nms
        del detector._proposals_dense_nms
    boxes, scores, levels = recorded["rpn"]
    top, order = scores.topk(len(scores))
    return (boxes[order], top, levels[order]), recorded["box"]


def _greedy(boxes, valid, threshold, groups=None):
    """Greedy NMS keep mask of boxes sorted best first (the position is the rank)."""
    index = torch.nonzero(valid).flatten()
    rank = -index.float()
    kept = (torchvision.ops.nms(boxes[index], rank, threshold) if groups is None else
            torchvision.ops.batched_nms(boxes[index], rank, groups[index], threshold))
    mask = torch.zeros(len(valid))
    mask[index[kept]] = 1
    return mask


def test_cluster_nms_has_converged_on_real_and_synthetic_slices(shipped, request):
    """With the shipped model's weights, on synthetic slices and (when ../shared is there) real2d-mdg val images:
    CLUSTER_NMS_ITERATIONS + 1 steps change nothing (so the mask is greedy NMS's fixed point) and equal
    torchvision's greedy NMS, for the RPN over the best RPN_CANDIDATES_PER_PROPOSAL x proposals (which hold
    all the proposals the full NMS keeps) and for the box head."""
    _, model, config = shipped
    try:
        shared = request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        shared = None
    detector = ExportableDetector(model, config.input_size, channels=config.in_channels, target="tensorrt").eval()
    m, post, t = detector.rpn_candidates, detector.post_nms_top_n, CLUSTER_NMS_ITERATIONS
    assert m == RPN_CANDIDATES_PER_PROPOSAL * post
    slices = _slices_for(config, shared)
    assert len(slices) == 16 + (15 if shared is not None else 0)
    for x in slices:
        (boxes, scores, levels), (box_boxes, box_valid) = _nms_problems(detector, x)
        valid = scores >= 0
        full = _greedy(boxes, valid, detector.rpn_nms, levels)
        assert int(torch.nonzero(full).flatten()[post - 1]) < m  # the best m hold all proposals kept
        keep = cluster_nms(boxes[None, :m], valid[None, :m], detector.rpn_nms, t, levels[None, :m])
        assert torch.equal(keep, cluster_nms(boxes[None, :m], valid[None, :m], detector.rpn_nms, t + 1,
                                             levels[None, :m]))
        assert torch.equal(keep[0], full[:m])
        keep = cluster_nms(box_boxes[None], box_valid[None], detector.box_nms, t)
        assert torch.equal(keep, cluster_nms(box_boxes[None], box_valid[None], detector.box_nms, t + 1))
        assert torch.equal(keep[0], _greedy(box_boxes, box_valid, detector.box_nms))


@pytest.mark.slow
def test_onnxruntime_flavour_is_the_shipped_graph(shipped, tmp_path):
    """The default target still traces today's graph: the shipped model re-exported gives its node list."""
    path, model, config = shipped
    save_checkpoint(tmp_path / "shipped.pt", model, config)
    card = load_card(path)
    report = export_onnx(tmp_path / "shipped.pt", tmp_path / "again.onnx", fp16=card.precision == "fp16",
                         check=False, proposals=card.export["proposals_per_slice"])
    again, shipped_graph = onnx.load(str(report.onnx_path)).graph, onnx.load(str(path)).graph
    assert [(n.op_type, list(n.attribute)) for n in again.node] == \
        [(n.op_type, list(n.attribute)) for n in shipped_graph.node]


@pytest.mark.slow
@pytest.mark.shared
def test_shipped_model_flavours_agree_on_real_images(shipped, shared_data, tmp_path):
    """The shipped model re-exported (its precision and proposals) in both flavours: on real2d-mdg val images
    and built-in synthetic slices the tensorrt flavour finds the onnxruntime flavour's boxes above 0.5."""
    path, model, config = shipped
    save_checkpoint(tmp_path / "shipped.pt", model, config)
    card = load_card(path)
    onnx_paths = {t: export_onnx(tmp_path / "shipped.pt", tmp_path / f"{t}.onnx", fp16=card.precision == "fp16",
                                 check=False, proposals=card.export["proposals_per_slice"], target=t).onnx_path
                  for t in ("onnxruntime", "tensorrt")}
    assert check_graph(onnx.load(str(onnx_paths["tensorrt"])), target="tensorrt") == []
    slices = _slices_for(config, shared_data)
    reference = _run(onnx_paths["onnxruntime"], slices, 8)
    candidate = _run(onnx_paths["tensorrt"], slices, 8)
    r = _assert_flavours_agree(reference[16:], candidate[16:])  # real images
    assert r["detections"] >= 50
    _assert_flavours_agree(reference[:16], candidate[:16])  # synthetic


def test_weights_come_back_out_of_a_tensorrt_flavour_graph(tiny):
    """spine-train --init works on either flavour: the same named weights, the recovered model reproduces it."""
    from spinedet.training.recover import model_from_onnx

    model, config, reports = tiny
    recovered, recovered_config = model_from_onnx(reports["tensorrt"].onnx_path)  # checks parity itself
    assert recovered_config == config
    for key, value in model.state_dict().items():
        if key.endswith(".weight") and value.dim() > 1:
            torch.testing.assert_close(recovered.state_dict()[key], value)
