"""Training: augmentation, data sources, a short run that learns, validation wiring and exact resume."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

import json  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from spinedet.runtime.boxes import iom  # noqa: E402
from spinedet.runtime.contract import ModelCard, intensity_range, normalise  # noqa: E402
from spinedet.runtime.tables import BoxTable  # noqa: E402
from spinedet.training import augment as A  # noqa: E402
from spinedet.training.data import (MixedSampler, Sample, ValStack, normalise_stack, real2d_samples,  # noqa: E402
                                    samples_from_stack)
from spinedet.training.config import ModelConfig  # noqa: E402
from spinedet.training.averaging import WeightAverage  # noqa: E402
from spinedet.training.model import predict  # noqa: E402
from spinedet.training.train import (TrainOptions, app, evaluate_2d, evaluate_3d, parse_args,  # noqa: E402
                                     settings, train, validate)

TINY = dict(fpn_channels=32, representation_size=128, input_size=(128, 128))


def toy_sample(rng, size=128) -> Sample:
    """A dim dendrite along x with one bright round spine head beside it; the box is the head."""
    yy, xx = np.mgrid[:size, :size]
    y0 = rng.uniform(40, 88)
    image = 0.35 * np.exp(-0.5 * ((yy - y0) / 3.0) ** 2)
    cx, cy = rng.uniform(30, 98), y0 + rng.choice([-1, 1]) * rng.uniform(14, 20)
    r = rng.uniform(4, 6)
    image = image + np.exp(-0.5 * ((yy - cy) ** 2 + (xx - cx) ** 2) / (r / 1.2) ** 2)
    image = image + rng.normal(0, 0.03, image.shape)
    box = np.array([[cx - r, cy - r, cx + r, cy + r]], np.float32)
    return Sample(np.clip(image, 0, 1).astype(np.float32), box, "toy", "")


# --------------------------------------------------------------------------- augmentation


def test_dihedral_moves_boxes_with_the_image():
    image = np.zeros((40, 30), np.float32)
    image[5:12, 20:26] = 1
    box = np.array([[20, 5, 26, 12]], np.float32)
    seen = set()
    for k in range(8):
        out, b = A.dihedral(image, box, k)
        x0, y0, x1, y1 = b[0].astype(int)
        assert out[y0:y1, x0:x1].all() and out.sum() == image.sum()
        seen.add(out.tobytes())
    assert len(seen) == 8


def test_crop_and_rescale_keep_boxes_consistent():
    image = np.zeros((64, 64), np.float32)
    image[10:20, 30:40] = 1
    box = np.array([[30, 10, 40, 20]], np.float32)
    out, b = A.rescale(image, box, 2.0)
    assert out.shape == (128, 128) and np.allclose(b, [[60, 20, 80, 40]])
    out, b = A.crop(image, box, y0=5, x0=25, size=16)
    assert np.allclose(b, [[5, 5, 15, 15]]) and out[5:15, 5:15].all()
    # a box mostly outside the window is dropped, a window past the border is zero padded
    out, b = A.crop(image, box, y0=-10, x0=38, size=32)
    assert len(b) == 0 and out.shape == (32, 32) and out[:10].sum() == 0


def test_crops_centre_on_hard_negatives_when_asked():
    image = np.zeros((512, 512), np.float32)
    spine = np.array([[20, 20, 30, 30]], np.float32)
    negative = np.array([[400, 450, 412, 462]], np.float32)
    for seed in range(10):
        rng = np.random.default_rng(seed)
        image[:] = 0
        image[450:462, 400:412] = 1                      # the look-alike
        out, boxes = A.random_crop(image, spine, 128, rng, p_box_centred=0.0, negatives=negative,
                                   p_negative_centred=1.0)
        assert out.sum() == 144 and len(boxes) == 0      # the whole look-alike, no spine label
    # without negatives (or with p = 0) the crop goes where it went before
    a = A.random_crop(image, spine, 128, np.random.default_rng(1), 0.5)
    b = A.random_crop(image, spine, 128, np.random.default_rng(1), 0.5, negatives=negative, p_negative_centred=0.0)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # augment rescales the negatives with the image: the look-alike stays in the crop
    cfg = A.AugmentConfig(crop=128, p_box_centred=0.0, p_negative_centred=1.0, p_rescale=1.0, dihedral=False,
                          p_noise=0.0, p_blur=0.0, p_intensity=0.0, p_quantise=0.0)
    for seed in range(10):
        out, _ = A.augment(image, spine, np.random.default_rng(seed), cfg, negatives=negative)
        assert out.max() > 0.5


def test_augment_moves_a_slice_and_its_depth_context_together():
    rng = np.random.default_rng(3)
    image = rng.random((96, 80)).astype(np.float32)
    boxes = np.array([[10, 20, 30, 44]], np.float32)
    linear = A.AugmentConfig(crop=64, p_rescale=1.0, p_blur=1.0, p_noise=0.0, p_intensity=0.0, p_quantise=0.0,
                             p_flat_context=0.0)
    for seed in range(4):
        single, single_boxes = A.augment(image, boxes, np.random.default_rng(seed), linear)
        both, both_boxes = A.augment(np.stack([image, 0.5 * image]), boxes, np.random.default_rng(seed), linear)
        # same geometry as the slice alone, and rescale, crop, orientation and blur are linear
        np.testing.assert_allclose(both[0], single, atol=1e-6)
        np.testing.assert_allclose(both[1], 0.5 * single, atol=1e-6)
        np.testing.assert_array_equal(both_boxes, single_boxes)
    flat, _ = A.augment(np.stack([image, 0.5 * image]), boxes, rng, A.AugmentConfig(crop=64, p_flat_context=1.0))
    np.testing.assert_array_equal(flat[0], flat[1])  # a lone 2D image is its own context


def test_samples_carry_their_neighbour_projection():
    image = np.random.default_rng(0).random((5, 32, 32)).astype(np.float32)
    table = BoxTable.from_rows([1], [2], [[4, 4, 12, 12]], [1])
    samples = samples_from_stack(image, table, "s", "x", context_reach=1)
    np.testing.assert_array_equal(samples[2].context, image[1:4].max(axis=0))
    np.testing.assert_array_equal(samples[0].context, image[0:2].max(axis=0))
    assert samples[2].model_input(2).shape == (2, 32, 32) and samples[2].model_input(1) is samples[2].image
    assert samples_from_stack(image, table, "s", "x")[2].context is None


def test_augment_is_seeded_and_stays_in_range():
    image = np.random.default_rng(0).random((200, 200)).astype(np.float32)
    boxes = np.array([[50, 50, 70, 66], [120, 10, 140, 30]], np.float32)
    a = A.augment(image, boxes, np.random.default_rng(3))
    b = A.augment(image, boxes, np.random.default_rng(3))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    for seed in range(20):
        out, bx = A.augment(image, boxes, np.random.default_rng(seed), A.AugmentConfig(crop=128))
        assert out.shape == (128, 128) and out.dtype == np.float32
        assert 0 <= out.min() and out.max() <= 1
        assert bx.shape[1] == 4 and (bx >= 0).all() and (bx <= 128).all()


def test_blur_and_noise():
    image = np.zeros((31, 31), np.float32)
    image[15, 15] = 1
    blurred = A.gaussian_blur(image, 1.0)
    assert blurred.sum() == pytest.approx(1, abs=1e-5) and blurred[15, 15] < 0.2
    assert blurred[15, 14] == pytest.approx(blurred[14, 15])
    noisy = A.add_noise(np.zeros((100, 100), np.float32), 0.1, np.random.default_rng(0))
    assert noisy.std() == pytest.approx(0.1, rel=0.1)


# --------------------------------------------------------------------------- data


def test_normalisation_is_the_runtimes():
    stack = np.random.default_rng(0).integers(0, 4096, (3, 32, 32)).astype(np.uint16)
    low, high = intensity_range(stack, ModelCard())
    assert np.array_equal(normalise_stack(stack), normalise(stack, low, high))


def test_mixed_sampler_follows_weights():
    a = [Sample(np.zeros((4, 4), np.float32), np.zeros((0, 4)), "a")]
    b = [Sample(np.zeros((4, 4), np.float32), np.zeros((0, 4)), "b")] * 3
    sampler = MixedSampler({"a": a, "b": b, "empty": []}, {"a": 3.0})
    rng = np.random.default_rng(0)
    counts = {"a": 0, "b": 0}
    for _ in range(2000):
        counts[sampler.draw(rng).source] += 1
    assert sampler.names == ["a", "b"] and counts["a"] / 2000 == pytest.approx(0.75, abs=0.04)
    with pytest.raises(ValueError):
        MixedSampler({"x": []})


def test_samples_from_stack_and_absent_real_data(tmp_path):
    table = BoxTable.from_rows([1, 1], [0, 2], [[1, 1, 5, 5], [2, 2, 6, 6]], [1, 1])
    image = np.zeros((3, 8, 8), np.float32)
    assert [len(s.boxes) for s in samples_from_stack(image, table, "s", "n")] == [1, 0, 1]
    assert len(samples_from_stack(image, table, "s", "n", empty_slices=False)) == 2
    with pytest.warns(UserWarning, match="absent"):
        assert real2d_samples("train", root=tmp_path / "nowhere") == []


# --------------------------------------------------------------------------- validation wiring


class _Oracle(nn.Module):
    """A fake detector that returns given boxes per call, to test the validation plumbing."""

    def __init__(self, answers, scores=None):
        super().__init__()
        self.answers = list(answers)
        self.scores = None if scores is None else list(scores)

    def forward(self, images):
        out = []
        for _ in images:
            boxes = torch.as_tensor(self.answers.pop(0), dtype=torch.float32).reshape(-1, 4)
            scores = (torch.full((len(boxes),), 0.9) if self.scores is None
                      else torch.as_tensor(self.scores.pop(0), dtype=torch.float32))
            out.append({"boxes": boxes, "scores": scores})
        return out


def test_validation_uses_the_runtime_metrics():
    gt = [np.array([[10, 10, 20, 20]], np.float32), np.array([[30, 30, 40, 44]], np.float32)]
    samples = [Sample(np.zeros((64, 64), np.float32), g) for g in gt]
    # one hit, one duplicate pair (IoM-NMS removes it, not a FP), one miss
    answers = [[[11, 10, 20, 21], [10, 10, 19, 20]], [[50, 50, 60, 60]]]
    result = evaluate_2d(_Oracle(answers), samples, TrainOptions())
    assert (result["tp"], result["fp"], result["fn"]) == (1, 1, 1)
    # 3D: the spine seen in slices 1-3 is tracked into one spine and matches the ground truth
    table = BoxTable.from_rows([7, 7, 7], [1, 2, 3], [[10, 10, 20, 20]] * 3, [1, 1, 1])
    stack = ValStack("s", np.zeros((5, 64, 64), np.float32), table)
    answers = [[], [[10, 10, 20, 20]], [[10, 11, 20, 21]], [[10, 10, 20, 20]], []]
    f3, f2 = evaluate_3d(_Oracle(answers), [stack], TrainOptions())
    assert f3["f1"] == 1.0 and (f2["tp"], f2["fp"], f2["fn"]) == (3, 0, 0)


def test_validation_reports_the_best_threshold_from_one_model_run():
    sample = Sample(np.zeros((64, 64), np.float32), np.array([[10, 10, 20, 20]], np.float32))
    answer, scores = [[10, 10, 20, 20], [40, 40, 50, 50]], [0.9, 0.6]  # the spine and a weaker false one

    def run(thresholds):
        oracle = _Oracle([answer], [scores])  # answers once: validate must not run the model per threshold
        return validate(oracle, {"toy": [sample]}, [], TrainOptions(val_thresholds=thresholds))

    paper = run((0.5,))
    assert paper["threshold"] == 0.5 and paper["2d/toy"]["fp"] == 1 and paper["score"] == pytest.approx(2 / 3)
    swept = run((0.5, 0.7, 0.95))
    assert swept["threshold"] == 0.7 and swept["score"] == 1.0  # 0.95 loses the spine too


# --------------------------------------------------------------------------- training


@pytest.mark.slow
def test_short_training_learns_an_obvious_spine():
    rng = np.random.default_rng(0)
    samples = [toy_sample(rng) for _ in range(8)]
    config = ModelConfig(backbone="mobilenet_v2", pretrained=True, **TINY)
    options = TrainOptions(iterations=150, lr=0.01, momentum=0.9, val_every=0, log_every=0, seed=0,
                           augment=A.AugmentConfig.none())
    try:
        result = train(config, options, {"toy": samples}, log=None)
    except Exception as exc:  # weights package missing: the model tests report it
        if type(exc).__name__ == "MissingWeights":
            pytest.skip(str(exc))
        raise
    losses = result["losses"]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20])
    found = 0
    for (boxes, scores), sample in zip(predict(result["model"], [s.image for s in samples]), samples):
        top = boxes[scores > 0.5]
        if len(top) and iom(top[:1], sample.boxes)[0, 0] >= 0.5:
            found += 1
    assert found >= 7  # the most confident box is the spine


def _tiny_run(out_dir, iterations, resume=None, checkpoint_every=0, ema_decay=0.0):
    rng = np.random.default_rng(1)
    samples = [toy_sample(rng) for _ in range(4)]
    config = ModelConfig(backbone="mobilenet_v2", pretrained=False, fpn_channels=16, representation_size=32, input_size=(128, 128))
    options = TrainOptions(iterations=iterations, val_every=0, log_every=0, seed=5,
                           checkpoint_every=checkpoint_every, augment=A.AugmentConfig(crop=96), ema_decay=ema_decay)
    return train(config, options, {"toy": samples}, out_dir=out_dir, resume=resume, log=None)


def test_resume_gives_the_same_next_loss(tmp_path):
    whole = _tiny_run(tmp_path / "whole", 4)["losses"]
    first = _tiny_run(tmp_path / "part", 2)
    assert first["losses"] == whole[:2]
    resumed = _tiny_run(tmp_path / "other", 4, resume=tmp_path / "part" / "last.pt")
    assert resumed["iteration"] == 4 and len(resumed["losses"]) == 2
    assert resumed["losses"] == whole[2:]  # bitwise


def test_weight_average_follows_its_formula():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average = WeightAverage(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)
    average.update(model)  # first update: decay min(0.5, 2/11)
    d = 2 / 11
    assert torch.allclose(average.model.weight, torch.full((1, 2), d * 1.0 + (1 - d) * 3.0))
    assert not average.model.weight.requires_grad and not average.model.training
    with pytest.raises(ValueError, match="decay"):
        WeightAverage(model, decay=1.0)


def test_averaged_run_saves_the_average_and_resumes_exactly(tmp_path):
    from spinedet.training.checkpoints import load_checkpoint

    whole = _tiny_run(tmp_path / "whole", 4, ema_decay=0.9)
    _tiny_run(tmp_path / "part", 2, ema_decay=0.9)
    resumed = _tiny_run(tmp_path / "other", 4, resume=tmp_path / "part" / "last.pt", ema_decay=0.9)
    assert resumed["losses"] == whole["losses"][2:]  # the trained weights were restored, not the average
    saved, _, state = load_checkpoint(tmp_path / "whole" / "last.pt")
    averaged, resumed_average = whole["model"].state_dict(), resumed["model"].state_dict()
    trained = state["trained_model"]
    assert state["ema_updates"] == 4
    for name, value in saved.state_dict().items():
        assert torch.equal(value, averaged[name]) and torch.equal(value, resumed_average[name])
    assert any(not torch.equal(averaged[k], trained[k]) for k in trained if trained[k].is_floating_point())


def spine_train(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cli_runs_on_synthetic_data(tmp_path):
    out = tmp_path / "run"
    common = ["--out", out, "--backbone", "mobilenet_v2", "--scratch", "--fpn-channels", "16",
              "--representation-size", "32", "--iterations", "2", "--val-every", "2", "--synthetic-train", "1",
              "--synthetic-val", "1", "--synthetic-shape", "3,96,96", "--crop", "64", "--input-size", "96", "--no-real"]
    result = spine_train(*common, "--json")
    assert result.exit_code == 0, result.output
    assert (out / "last.pt").is_file() and (out / "best.pt").is_file() and (out / "metrics.jsonl").is_file()
    assert "3d/synthetic" in result.stderr
    # --json: one JSON object on stdout and nothing else there
    assert result.stdout.count("\n") == 1
    summary = json.loads(result.stdout)
    assert summary["iteration"] == 2 and summary["out"] == str(out)
    assert summary["best_score"] == summary["final"]["score"] and "3d/synthetic" in summary["final"]
    # without it, nothing on stdout and one summary line on stderr; -q: nothing on stderr either
    # (resuming the finished run: no iteration left, the data is built again and the result read back)
    result = spine_train(*common, "--resume", out / "last.pt")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and f"{out}: trained to iteration 2; best score" in result.stderr
    result = spine_train(*common, "--resume", out / "last.pt", "-q")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_cli_bad_option_is_one_line(monkeypatch, capsys):
    """Usage errors too are one line and exit 2 (through the installed entry point's path)."""
    from spinedet.training.entry import train_main

    for argv in (["--out", "x", "--batch-size", "2"], ["--out", "x", "--batch", "0"], ["--batch", "2"],
                 ["--out", "x", "--synthetic-shape", "20,a,512"]):
        monkeypatch.setattr(sys, "argv", ["spine-train", *argv])
        with pytest.raises(SystemExit) as exit:
            train_main()
        assert exit.value.code == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith("spine-train: error: ") and "(see spine-train --help)" in captured.err


@pytest.mark.parametrize("content", [None, b"not a checkpoint", b"\x80\x02}q\x00."])
@pytest.mark.parametrize("flag", ["--init", "--resume"])
def test_cli_refuses_a_bad_checkpoint_before_building_data(tmp_path, monkeypatch, flag, content):
    """A missing or foreign --init/--resume file is one error line, before minutes of data building start."""
    import spinedet.training.train as T

    def no_data(*args, **kwargs):
        raise AssertionError("data was built for a run that cannot start")

    monkeypatch.setattr(T, "synthetic_stacks", no_data)
    path = tmp_path / "start.pt"
    if content is not None:
        path.write_bytes(content)
    result = spine_train("--out", tmp_path / "run", flag, path, "--frozen-stages", "0", "--no-real")
    assert result.exit_code == 2 and result.stdout == ""
    err = result.stderr.strip()
    assert err.count("\n") == 0 and err.startswith("spine-train: error: ") and str(path) in err
    assert ("no such checkpoint file" if content is None else "not a spine-train checkpoint") in err


@pytest.mark.shared
def test_real2d_mdg_val_loads_normalised(shared_data):
    pytest.importorskip("spinedet.training.labels")
    samples = real2d_samples("val", root=shared_data / "real2d-mdg")
    assert len(samples) == 15 and all(s.source == "real2d-mdg" for s in samples)
    assert all(s.image.dtype == np.float32 and 0 <= s.image.min() and s.image.max() <= 1 for s in samples)
    assert sum(len(s.boxes) for s in samples) > 50
    h, w = samples[0].image.shape
    assert all((s.boxes[:, 2] <= w).all() and (s.boxes[:, 3] <= h).all() for s in samples)


def test_recipes_fill_unset_flags():
    config, options = settings(parse_args(["--out", "x", "--recipe", "cpu", "--iterations", "3000"]))
    assert (options.lr, options.momentum, options.warmup_iterations, options.lr_drops) == (5e-3, 0.9, 100, (2400,))
    config, options = settings(parse_args(["--out", "x"]))
    assert (options.lr, options.momentum, options.weight_decay, options.batch_size) == (1e-3, 0.6, 3e-6, 1)
    assert options.lr_drops == () and options.loss_weights == {"loss_rpn_box_reg": 2.0}
    assert options == TrainOptions(augment=A.AugmentConfig(crop=256), source_weights=options.source_weights)
    assert options.source_weights == {"synthetic": 1.0, "real2d-mdg": 1.0}
    assert config == ModelConfig(input_size=(512, 512))  # the defaults are the model's own
    _, options = settings(parse_args(["--out", "x", "--recipe", "cpu", "--lr", "0.01", "--lr-drop", "5"]))
    assert options.lr == 0.01 and options.lr_drops == (5,) and options.momentum == 0.9
    config, options = settings(parse_args(["-o", "x", "--batch", "4", "--seed", "3", "--threads", "2",
                                           "--backbone", "efficientnet_lite0", "--val-thresholds", "0.5,0.7",
                                           "--weights", "synthetic=1,real2d-mdg=2"]))
    assert (options.batch_size, options.seed, options.threads, options.val_thresholds) == (4, 3, 2, (0.5, 0.7))
    assert options.source_weights == {"synthetic": 1.0, "real2d-mdg": 2.0}
    assert config.backbone == "efficientnet_lite0" and type(config.backbone) is str


def test_validation_post_processing_is_the_runtimes():
    from spinedet.runtime.postprocess import MAX_AREA_UM2, NMS_IOM, max_area_pixels

    options = TrainOptions()
    assert options.max_area_px == max_area_pixels(MAX_AREA_UM2, ModelConfig().pixel_size_um)
    assert options.nms_iom == NMS_IOM
