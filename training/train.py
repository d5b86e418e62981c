"""Training the spine detector (``spine-train``).

The default recipe is the paper's (Vogel et al., *Network training*): SGD
with momentum 0.6, learning rate 1e-3, L2 weight decay 3e-6, batch size 1,
the RPN's box regression loss weighted 2 relative to its objectness loss,
in-place augmentation (eight orientations, Gaussian noise and blur with
p = 0.5; see :mod:`spinedet.training.augment` for the additions).

The paper trained 14,348 iterations on a GPU.  In the few thousand
iterations a CPU affords, its learning rate is too small to get anywhere
(measured: F1 0 on every validation set after 800 iterations, where the
``cpu`` recipe had 0.66 on real2d-mdg).  ``--recipe cpu`` is lr 5e-3,
momentum 0.9, 100 warm-up iterations and lr / 10 for the last 20 % of
the iterations; explicit flags override either recipe.

Validation (every ``val_every`` iterations and at the end) runs the model
on whole images, post-processes with the runtime's own
:func:`~spinedet.runtime.postprocess.filter_detections`, and scores with the
runtime's :func:`~spinedet.runtime.evaluate.f1_2d` per source and, on
synthetic validation stacks, tracks with
:func:`~spinedet.runtime.tracking.track_slices` and scores
:func:`~spinedet.runtime.evaluate.f1_3d`: one implementation of the metrics.
Every score threshold of ``--val-thresholds`` is tried on the same
detections and the metrics are reported at the best one: a model ships with
a calibrated threshold (``spine-validate --calibrate``), and comparing
checkpoints at a fixed 0.5 instead mistook a shift of the scores for a worse
model (measured: the last checkpoint of the shipped model's run scored
F1-3D 0.77 at 0.5 against 0.82 for the kept one, yet 0.864 against 0.856
once both were calibrated).  ``--ema`` validates and saves a moving average
of the weights (:mod:`spinedet.training.averaging`).
The checkpoint with the best selection score (the mean of all validation
F1s) is kept as ``best.pt``; ``last.pt`` holds everything needed to resume
(model, optimizer, RNG states, iteration), and resuming gives exactly the
loss the uninterrupted run would have had.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from spinedet.runtime.context import reach_slices
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.evaluate import f1_2d, f1_3d, scores_from_counts
from spinedet.runtime.postprocess import (LINK_THRESHOLD, MAX_AREA_UM2, NMS_IOM, SCORE_THRESHOLD, above,
                                          filter_detections, link_threshold_for, max_area_pixels)
from spinedet.runtime.tracking import track_slices

from .augment import AugmentConfig, augment
from .averaging import WeightAverage
from .data import (REAL2D_MDG, SYNTHETIC, MixedSampler, Sample, ValStack, data_root, real2d_samples,
                   samples_from_stack, stack_inputs, synthetic_stacks)
from .backbones import BACKBONES
from .checkpoints import checkpoint_config, load_checkpoint, load_for_finetuning, save_checkpoint
from .config import ModelConfig
from .model import build_model, image_tensor, predict
from .validate import THRESHOLDS

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg")


@dataclass
class TrainOptions:
    """How to train (the model itself is described by :class:`ModelConfig`).

    loss_weights: factor per torchvision loss name (missing: 1); the paper weighs
        the RPN regression loss 2 relative to the objectness loss.
    source_weights: relative sampling weight per source name (missing: 1).
    val_every: validate (and checkpoint) every this many iterations; 0: only at the end.
    checkpoint_every: write ``last.pt`` every this many iterations (0: with validation only).
    warmup_iterations: linear learning-rate warm-up from lr/10 (0: constant lr, the paper's).
    lr_drops: iterations at which the learning rate is divided by 10 (empty: constant, the paper's).
    val_thresholds: score thresholds validation tries; it reports the metrics at the one
        with the best score, the operating point ``spine-validate --calibrate`` would pick,
        so checkpoints are compared as they would be shipped (the paper's 0.5 alone: ``(0.5,)``).
    max_area_px, nms_iom: the runtime's post-processing used for validation (its area cap
        :data:`~spinedet.runtime.postprocess.MAX_AREA_UM2` at the model's pixel size, and its IoM-NMS).
    ema_decay: keep an exponential moving average of the weights with this decay
        (:class:`~spinedet.training.averaging.WeightAverage`; 0: none).  The average is
        what is validated and what ``best.pt`` and ``last.pt`` hold as their model.
    """

    iterations: int = 3000
    batch_size: int = 1
    lr: float = 1e-3
    momentum: float = 0.6
    weight_decay: float = 3e-6
    warmup_iterations: int = 0
    lr_drops: tuple = ()
    seed: int = 0
    val_every: int = 500
    checkpoint_every: int = 0
    log_every: int = 20
    loss_weights: dict = field(default_factory=lambda: {"loss_rpn_box_reg": 2.0})
    source_weights: dict = field(default_factory=dict)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    threads: int | None = None
    val_thresholds: tuple = THRESHOLDS
    max_area_px: float | None = max_area_pixels(MAX_AREA_UM2, ModelConfig.pixel_size_um)
    nms_iom: float = NMS_IOM
    ema_decay: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- inference + metrics


def _post(raw, options: TrainOptions, threshold: float):
    return [filter_detections(b, s, score_threshold=threshold, max_area_px=options.max_area_px,
                              nms_iom=options.nms_iom) for b, s in raw]


def evaluate_2d(model, samples: list[Sample], options: TrainOptions, threshold: float = SCORE_THRESHOLD,
                raw=None, depth_context_um: float = 0.0) -> dict:
    """The runtime's per-image F1 (IoM >= 0.5) of ``model`` on ``samples`` at a score threshold.

    raw: the model's raw detections on the samples, if already at hand (then ``model`` is not run).
    depth_context_um: the model's (:class:`ModelConfig`); lone images are their own context.
    """
    channels = 2 if depth_context_um > 0 else 1
    raw = predict(model, [s.model_input(channels) for s in samples]) if raw is None else raw
    post = _post(raw, options, threshold)
    return f1_2d([b for b, _ in post], [s.boxes for s in samples])


def evaluate_3d(model, stacks: list[ValStack], options: TrainOptions, threshold: float = SCORE_THRESHOLD,
                raw=None, depth_context_um: float = 0.0) -> tuple[dict, dict]:
    """``(F1-3D, per-slice F1)`` of ``model`` on stacks: detect per slice, filter, track, score.

    As in the runtime, boxes above the link threshold (:data:`LINK_THRESHOLD`, 0.5) are tracked and a
    track counts if one of its boxes scores above ``threshold``; the
    per-slice F1 counts the boxes above ``threshold``.

    Counts are summed over the stacks before the scores are computed.
    raw: per stack, the model's raw detections per slice, if already at hand.
    depth_context_um: the model's (:class:`ModelConfig`).
    """
    if raw is None:
        raw = [predict(model, stack_inputs(stack, depth_context_um)) for stack in stacks]
    totals3, pred_2d, gt_2d = {"tp": 0, "fp": 0, "fn": 0}, [], []
    for stack, found in zip(stacks, raw):
        linked = _post(found, options, link_threshold_for(threshold, LINK_THRESHOLD))
        table = track_slices(linked, min_peak_score=threshold)
        post = above(linked, threshold)
        result = f1_3d(table, stack.table)
        for k in totals3:
            totals3[k] += result[k]
        for z, (boxes, _) in enumerate(post):
            pred_2d.append(boxes)
            gt_2d.append(stack.table.boxes[stack.table.z == z])
    return scores_from_counts(**totals3), f1_2d(pred_2d, gt_2d)


def validate(model, val_2d: dict, val_3d: list[ValStack], options: TrainOptions,
             depth_context_um: float = 0.0) -> dict:
    """All validation metrics: ``{"2d/<source>", "3d/synthetic", "2d/synthetic-stacks", "score", "threshold"}``.

    ``score`` (the selection criterion) is the mean F1 over the 2D sources and
    F1-3D.  The model runs once; every threshold of ``options.val_thresholds``
    is tried on its detections and the metrics are those at the threshold with
    the best score (ties: the lower threshold).  depth_context_um: the model's.
    """
    channels = 2 if depth_context_um > 0 else 1
    val_2d = {name: samples for name, samples in val_2d.items() if samples}
    raw_2d = {name: predict(model, [s.model_input(channels) for s in samples]) for name, samples in val_2d.items()}
    raw_3d = [predict(model, stack_inputs(stack, depth_context_um)) for stack in val_3d]
    best = None
    for threshold in sorted(options.val_thresholds):
        metrics, f1s = {}, []
        for name, samples in val_2d.items():
            metrics[f"2d/{name}"] = evaluate_2d(model, samples, options, threshold, raw_2d[name])
            f1s.append(metrics[f"2d/{name}"]["f1"])
        if val_3d:
            metrics["3d/synthetic"], metrics["2d/synthetic-stacks"] = evaluate_3d(model, val_3d, options,
                                                                                  threshold, raw_3d)
            f1s.append(metrics["3d/synthetic"]["f1"])
        metrics["score"] = float(np.mean(f1s)) if f1s else float("nan")
        metrics["threshold"] = float(threshold)
        if best is None or metrics["score"] > best["score"]:
            best = metrics
    return best


# --------------------------------------------------------------------------- training


def _target(boxes: np.ndarray) -> dict:
    b = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    b = b[(b[:, 2] - b[:, 0] >= 1) & (b[:, 3] - b[:, 1] >= 1)]
    return {"boxes": torch.from_numpy(b), "labels": torch.ones(len(b), dtype=torch.int64)}


def _rng_state(rng: np.random.Generator) -> dict:
    return {"numpy": rng.bit_generator.state, "torch": torch.get_rng_state()}


def _set_rng_state(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state["numpy"]
    torch.set_rng_state(state["torch"])


def _lr_at(options: TrainOptions, iteration: int) -> float:
    lr = options.lr * 0.1 ** sum(iteration >= d for d in options.lr_drops)
    if options.warmup_iterations and iteration < options.warmup_iterations:
        return lr * (0.1 + 0.9 * iteration / options.warmup_iterations)
    return lr


def _log(stream, text: str) -> None:
    if stream == "stderr":
        stream = sys.stderr
    if stream is not None:
        print(text, file=stream, flush=True)


def train(config: ModelConfig, options: TrainOptions, train_sources: dict, val_2d: dict | None = None,
          val_3d: list | None = None, out_dir=None, resume=None, init=None, log="stderr") -> dict:
    """Train a detector; return ``{"model", "config", "losses", "metrics", "best", "iteration"}``.

    train_sources: source name -> list of :class:`Sample` (weighted by ``options.source_weights``).
    val_2d: source name -> validation samples; val_3d: synthetic :class:`ValStack` list.
    out_dir: where ``last.pt``, ``best.pt``, ``metrics.jsonl`` go (None: nothing is written).
    resume: a ``last.pt`` to continue from (its model config wins over ``config``).
    init: a checkpoint whose weights (and model config) start a new run: fine-tuning,
        with a fresh optimizer, schedule and iteration count (ignored with ``resume``);
        a ``config.roi_context_px`` > 0 adds context pooling to a checkpoint without it
        (:func:`~spinedet.training.checkpoints.load_for_finetuning`), and ``config.frozen_stages``
        decides which backbone stages train from here on.
    log: a text stream for progress lines, "stderr" (the default) or None.
    ``model`` is the weight average when ``options.ema_decay`` is set.  ``losses`` lists the total loss of every iteration run in this call.
    """
    val_2d, val_3d = val_2d or {}, val_3d or []
    if options.threads:
        torch.set_num_threads(options.threads)
    out_dir = Path(out_dir) if out_dir is not None else None
    rng = np.random.default_rng(options.seed)
    torch.manual_seed(options.seed)
    start, best, history = 0, -math.inf, []
    if resume is not None:
        model, saved_config, state = load_checkpoint(resume)
        if saved_config.to_dict() != config.to_dict():
            warnings.warn("resuming: the checkpoint's model config replaces the one given", stacklevel=2)
        config = saved_config
    elif init is not None:
        model, config = load_for_finetuning(init, config.roi_context_px or None, config.depth_context_um or None,
                                            config.frozen_stages)
        state = None
    else:
        model, state = build_model(config, pretrained=True), None
    # with averaging, a checkpoint's model is the average and the trained weights ride along
    average = (WeightAverage(model, options.ema_decay, (state or {}).get("ema_updates", 0))
               if options.ema_decay else None)
    if state is not None and "trained_model" in state:
        model.load_state_dict(state["trained_model"], strict=True)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=options.lr, momentum=options.momentum,
                                weight_decay=options.weight_decay)
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        _set_rng_state(rng, state["rng"])
        start, best = int(state["iteration"]), float(state.get("best_score", -math.inf))
    sampler = MixedSampler(train_sources, options.source_weights)
    model.train()
    _log(log, f"[spine-train] {config.backbone} ({'ImageNet' if config.pretrained else 'scratch'}), "
              f"fpn {config.fpn_channels}, head {config.representation_size}; "
              f"{len(sampler)} training samples from {', '.join(sampler.names)}; "
              f"iterations {start}..{options.iterations}")
    metrics_log = (out_dir / "metrics.jsonl") if out_dir is not None else None
    last_metrics, tick, window = None, time.perf_counter(), []

    def checkpoint(name: str, iteration: int, metrics=None):
        if out_dir is None:
            return
        extra = {} if average is None else {"trained_model": model.state_dict(), "ema_updates": average.updates}
        save_checkpoint(out_dir / name, model if average is None else average.model, config, iteration=iteration,
                        optimizer=optimizer.state_dict(), rng=_rng_state(rng), best_score=best,
                        metrics=metrics or {}, options=json.dumps(options.to_dict()), **extra)

    for iteration in range(start, options.iterations):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(options, iteration)
        images, targets = [], []
        for _ in range(options.batch_size):
            sample = sampler.draw(rng)
            image, boxes = augment(sample.model_input(config.in_channels), sample.boxes, rng, options.augment,
                                   sample.negatives)
            images.append(image_tensor(image))
            targets.append(_target(boxes))
        losses = model(images, targets)
        total = sum(options.loss_weights.get(k, 1.0) * v for k, v in losses.items())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        if average is not None:
            average.update(model)
        value = float(total.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"loss is {value} at iteration {iteration}")
        history.append(value)
        window.append([value] + [float(losses[k].detach()) for k in LOSS_NAMES])
        done = iteration + 1
        if options.log_every and (done % options.log_every == 0 or done == options.iterations):
            now = time.perf_counter()
            mean = np.mean(window, axis=0)
            per_it = (now - tick) / len(window)
            eta = per_it * (options.iterations - done)
            _log(log, f"[spine-train] it {done}/{options.iterations} loss {mean[0]:.4f} "
                      f"(obj {mean[1]:.3f} rpn-box {mean[2]:.3f} cls {mean[3]:.3f} box {mean[4]:.3f}) "
                      f"lr {optimizer.param_groups[0]['lr']:.2g} {per_it:.3f} s/it eta {eta / 60:.1f} min")
            tick, window = now, []
        validate_now = done == options.iterations or (options.val_every and done % options.val_every == 0)
        if validate_now and (val_2d or val_3d):
            t0 = time.perf_counter()
            last_metrics = validate(model if average is None else average.model, val_2d, val_3d, options,
                                    config.depth_context_um)
            model.train()
            parts = [f"{k} F1 {v['f1']:.3f} (P {v['precision']:.2f} R {v['recall']:.2f})"
                     for k, v in last_metrics.items() if isinstance(v, dict)]
            improved = last_metrics["score"] > best
            if improved:
                best = last_metrics["score"]
            _log(log, f"[spine-train] validation at it {done} (threshold {last_metrics['threshold']:g}): "
                      f"{'; '.join(parts)}; score {last_metrics['score']:.4f}{' (best)' if improved else ''} "
                      f"[{time.perf_counter() - t0:.0f} s]")
            if metrics_log is not None:
                metrics_log.parent.mkdir(parents=True, exist_ok=True)
                with open(metrics_log, "a") as handle:
                    handle.write(json.dumps({"iteration": done, **last_metrics}) + "\n")
            if improved:
                checkpoint("best.pt", done, last_metrics)
            checkpoint("last.pt", done, last_metrics)
            tick = time.perf_counter()
        elif validate_now or (options.checkpoint_every and done % options.checkpoint_every == 0):
            checkpoint("last.pt", done, last_metrics)
    if out_dir is not None:
        (out_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return {"model": model if average is None else average.model, "config": config, "losses": history,
            "metrics": last_metrics, "best": best,
            "iteration": max(start, options.iterations)}


# --------------------------------------------------------------------------- command line


#: Optimiser presets: (lr, momentum, warm-up iterations, lr drops as fractions of the run).
RECIPES = {"paper": (1e-3, 0.6, 0, ()), "cpu": (5e-3, 0.9, 100, (0.8,))}


def _pairs(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        name, _, value = part.partition("=")
        out[name.strip()] = float(value)
    return out


def _ints(text: str) -> tuple:
    return tuple(int(v) for v in text.replace("x", ",").split(","))


def _floats(text: str) -> tuple:
    return tuple(float(v) for v in text.split(","))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spine-train", description="Train the spine detector (Faster R-CNN).",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", required=True, help="run folder for checkpoints and metrics (e.g. runs/mnv2)")
    p.add_argument("--resume", default=None, help="continue from this last.pt")
    p.add_argument("--init", default=None,
                   help="fine-tune: start from this checkpoint's weights and model (fresh optimizer and schedule); "
                        "an exported .onnx model with its card works too (e.g. models/spinedet_default.onnx)")
    m = p.add_argument_group("model")
    m.add_argument("--backbone", choices=BACKBONES, default=ModelConfig.backbone)
    m.add_argument("--scratch", action="store_true", help="random backbone init instead of ImageNet weights")
    m.add_argument("--fpn-channels", type=int, default=ModelConfig.fpn_channels)
    m.add_argument("--representation-size", type=int, default=ModelConfig.representation_size)
    m.add_argument("--input-size", type=int, default=512, help="model input (square) in pixels")
    m.add_argument("--roi-context", type=float, default=ModelConfig.roi_context_px,
                   help="pixels of surroundings the box head also pools around each RoI (0: none)")
    m.add_argument("--depth-context", type=float, default=ModelConfig.depth_context_um,
                   help="µm above and below each slice whose maximum projection the model also sees "
                        "(a second input channel; 0: the slice alone)")
    m.add_argument("--frozen-stages", type=int, default=None,
                   help=f"backbone stages kept frozen (default {ModelConfig.frozen_stages}; "
                        "with --init, the checkpoint's)")
    m.add_argument("--roi-levels", default=",".join(ModelConfig.roi_levels),
                   help="FPN levels the box head pools from, e.g. 0 (stride 4 only) or 0,1,2,3")
    t = p.add_argument_group("optimisation (defaults: the paper's recipe)")
    t.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                   help="paper: SGD lr 1e-3, momentum 0.6, constant; cpu: lr 5e-3, momentum 0.9, "
                        "100 warm-up iterations, lr/10 for the last 20%% (for short CPU runs); "
                        "--lr, --momentum, --warmup, --lr-drop left at None take the recipe's value")
    t.add_argument("--iterations", type=int, default=TrainOptions.iterations)
    t.add_argument("--batch-size", type=int, default=1)
    t.add_argument("--lr", type=float, default=None, help="learning rate")
    t.add_argument("--momentum", type=float, default=None, help="SGD momentum")
    t.add_argument("--weight-decay", type=float, default=TrainOptions.weight_decay)
    t.add_argument("--warmup", type=int, default=None, help="linear lr warm-up iterations")
    t.add_argument("--lr-drop", type=_ints, default=None, help="iterations where lr is divided by 10, e.g. 2400")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--crop", type=int, default=256, help="training crop size (0: whole images)")
    t.add_argument("--no-augment", action="store_true", help="no augmentation (crops only)")
    t.add_argument("--hard-negatives", type=float, default=AugmentConfig.p_negative_centred,
                   help="probability that a synthetic crop is centred on a bouton or punctum (a spine look-alike)")
    t.add_argument("--ema", type=float, default=0.0,
                   help="keep a moving average of the weights with this decay (e.g. 0.999) and validate and "
                        "save it (0: off)")
    t.add_argument("--val-thresholds", type=_floats, default=THRESHOLDS,
                   help="score thresholds validation tries; checkpoints are compared at their best one "
                        "(0.5 alone: the paper's rule)")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    t.add_argument("--val-every", type=int, default=500)
    t.add_argument("--checkpoint-every", type=int, default=0)
    t.add_argument("--log-every", type=int, default=20)
    d = p.add_argument_group("data")
    d.add_argument("--synthetic-train", type=int, default=40, help="synthetic training stacks")
    d.add_argument("--synthetic-val", type=int, default=4, help="synthetic validation stacks (F1-3D)")
    d.add_argument("--synthetic-shape", type=_ints, default=(20, 512, 512), help="Z,H,W of synthetic stacks")
    d.add_argument("--synthetic-seed", type=int, default=1,
                   help="training stacks use seeds [S, i], validation stacks [S + 1000, i]")
    d.add_argument("--real-root", default=None, help="real2d-mdg folder (default ../shared/data/real2d-mdg)")
    d.add_argument("--no-real", action="store_true", help="do not use real2d-mdg")
    d.add_argument("--weights", type=_pairs, default={SYNTHETIC: 1.0, REAL2D_MDG: 1.0},
                   help="sampling weights per source, e.g. synthetic=1,real2d-mdg=2")
    return p


def _frozen_stages(args, init_config: ModelConfig | None) -> int:
    """``--frozen-stages`` if given, else the fine-tuned checkpoint's, else the default."""
    if args.frozen_stages is not None:
        return args.frozen_stages
    if args.init and not args.resume:
        return (init_config or checkpoint_config(args.init)).frozen_stages
    return ModelConfig.frozen_stages


def settings(args, init_config: ModelConfig | None = None) -> tuple[ModelConfig, TrainOptions]:
    """The model config and training options of parsed ``spine-train`` arguments.

    init_config: the ``--init`` checkpoint's config if already read (else it is read here when needed).
    """
    config = ModelConfig(backbone=args.backbone, pretrained=not args.scratch, fpn_channels=args.fpn_channels,
                         representation_size=args.representation_size, input_size=(args.input_size,) * 2,
                         frozen_stages=_frozen_stages(args, init_config), roi_context_px=args.roi_context,
                         depth_context_um=args.depth_context,
                         roi_levels=tuple(v.strip() for v in args.roi_levels.split(",") if v.strip()))
    aug = (AugmentConfig.none(crop=args.crop or None) if args.no_augment
           else AugmentConfig(crop=args.crop or None, p_negative_centred=args.hard_negatives))
    lr, momentum, warmup, drops = RECIPES[args.recipe]
    drops = tuple(int(round(f * args.iterations)) for f in drops)
    options = TrainOptions(iterations=args.iterations, batch_size=args.batch_size,
                           lr=lr if args.lr is None else args.lr,
                           momentum=momentum if args.momentum is None else args.momentum,
                           weight_decay=args.weight_decay,
                           warmup_iterations=warmup if args.warmup is None else args.warmup,
                           lr_drops=drops if args.lr_drop is None else tuple(args.lr_drop), seed=args.seed,
                           val_every=args.val_every,
                           checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                           source_weights=args.weights, augment=aug, threads=args.threads,
                           val_thresholds=tuple(args.val_thresholds), ema_decay=args.ema)
    return config, options


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    started = {}  # checkpoint path -> its config, each file read once
    try:
        for path in (args.resume, args.init):
            if path is not None:
                started[path] = checkpoint_config(path)  # a file that is no checkpoint fails now, before the data
        config, options = settings(args, started.get(args.init))
    except (SpineDetError, ValueError) as exc:
        print(f"spine-train: error: {exc}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    norm = dict(low_percentile=config.low_percentile, high_percentile=config.high_percentile)
    train_sources, val_2d, val_3d = {}, {}, []
    # the model that trains decides whether samples carry depth context: a resumed one's own, or a fine-tuned one's
    depth = config.depth_context_um
    if args.resume:
        depth = started[args.resume].depth_context_um
    elif args.init:
        depth = depth or started[args.init].depth_context_um
    if args.synthetic_train:
        stacks = synthetic_stacks(args.synthetic_train, args.synthetic_seed, args.synthetic_shape, **norm)
        train_sources[SYNTHETIC] = [
            s for st in stacks
            for s in samples_from_stack(st.image, st.table, SYNTHETIC, st.name, negatives=st.negatives,
                                        context_reach=reach_slices(depth, st.voxel_size[0]) if depth > 0 else None)]
    if args.synthetic_val:
        # validation stacks at the model's pixel size, as the runtime would resample them
        val_3d = synthetic_stacks(args.synthetic_val, args.synthetic_seed + 1000, args.synthetic_shape,
                                  pixel_size_um=config.pixel_size_um, **norm)
    if not args.no_real:
        root = Path(args.real_root) if args.real_root else data_root() / REAL2D_MDG
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            train_sources[REAL2D_MDG] = real2d_samples("train", root, **norm)
            val_2d[REAL2D_MDG] = real2d_samples("val", root, warn=False, **norm)
        for w in caught[:1]:
            print(f"[spine-train] warning: {w.message}", file=sys.stderr)
    print(f"[spine-train] data ready in {time.perf_counter() - t0:.0f} s: "
          + ", ".join(f"{k} {len(v)} train" for k, v in train_sources.items())
          + (f", {len(val_3d)} synthetic val stacks" if val_3d else "")
          + "".join(f", {k} {len(v)} val" for k, v in val_2d.items() if v), file=sys.stderr)
    try:
        result = train(config, options, train_sources, val_2d, val_3d, out_dir=args.out, resume=args.resume,
                       init=args.init)
    except (SpineDetError, ValueError, FloatingPointError) as exc:
        print(f"spine-train: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"best_score": result["best"], "final": result["metrics"]}, indent=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
