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
:func:`~spinedet.runtime.tracking.track_confirmed` and scores
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

import json
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Annotated, Optional

import numpy as np
import torch
import typer

from spinedet.runtime.cliutil import Json, Out, Quiet, Seed, Threads, guarded, make_app, note, run, say
from spinedet.runtime.context import reach_slices
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.evaluate import f1_2d, f1_3d, scores_from_counts
from spinedet.runtime.postprocess import (LINK_THRESHOLD, MAX_AREA_UM2, NMS_IOM, SCORE_THRESHOLD, above,
                                          filter_detections, link_threshold_for, max_area_pixels)
from spinedet.runtime.tracking import track_confirmed

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
        table = track_confirmed(linked, threshold, LINK_THRESHOLD)
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

TOOL = "spine-train"

#: the choices of --backbone and --recipe
BackboneName = Enum("BackboneName", {name: name for name in BACKBONES}, type=str)
RecipeName = Enum("RecipeName", {name: name for name in sorted(RECIPES)}, type=str)


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


def _plain(value):
    """A choice's string (typer hands over Enum members)."""
    return value.value if isinstance(value, Enum) else value


app = make_app()


@app.command()
def spine_train(
    out: Out,
    resume: Annotated[Optional[Path], typer.Option(help="Continue from this last.pt.")] = None,
    init: Annotated[Optional[Path], typer.Option(
        help="Fine-tune: start from this checkpoint's weights and model (fresh optimizer and schedule); an "
             "exported .onnx model with its card works too (e.g. models/spinedet_default.onnx).")] = None,
    # the model
    backbone: BackboneName = BackboneName(ModelConfig.backbone),
    scratch: Annotated[bool, typer.Option("--scratch", help="Random backbone init instead of ImageNet "
                                                            "weights.")] = False,
    fpn_channels: int = ModelConfig.fpn_channels,
    representation_size: int = ModelConfig.representation_size,
    input_size: Annotated[int, typer.Option(help="Model input (square) in pixels.")] = 512,
    roi_context: Annotated[float, typer.Option(
        help="Pixels of surroundings the box head also pools around each RoI (0: none).")
    ] = ModelConfig.roi_context_px,
    depth_context: Annotated[float, typer.Option(
        help="µm above and below each slice whose maximum projection the model also sees (a second input "
             "channel; 0: the slice alone).")] = ModelConfig.depth_context_um,
    frozen_stages: Annotated[Optional[int], typer.Option(
        help=f"Backbone stages kept frozen (default {ModelConfig.frozen_stages}; with --init, the "
             "checkpoint's).")] = None,
    roi_levels: Annotated[str, typer.Option(
        help="FPN levels the box head pools from, e.g. 0 (stride 4 only) or 0,1,2,3.")
    ] = ",".join(ModelConfig.roi_levels),
    # optimisation (defaults: the paper's recipe)
    recipe: Annotated[RecipeName, typer.Option(
        help="paper: SGD lr 1e-3, momentum 0.6, constant; cpu: lr 5e-3, momentum 0.9, 100 warm-up iterations, "
             "lr/10 for the last 20% (for short CPU runs); --lr, --momentum, --warmup, --lr-drop left unset "
             "take the recipe's value.")] = RecipeName.paper,
    iterations: int = TrainOptions.iterations,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Training images per iteration (SGD step).")
                     ] = TrainOptions.batch_size,
    lr: Annotated[Optional[float], typer.Option(help="Learning rate.")] = None,
    momentum: Annotated[Optional[float], typer.Option(help="SGD momentum.")] = None,
    weight_decay: float = TrainOptions.weight_decay,
    warmup: Annotated[Optional[int], typer.Option(help="Linear lr warm-up iterations.")] = None,
    lr_drop: Annotated[Optional[tuple], typer.Option(
        parser=_ints, metavar="IT[,IT...]", help="Iterations where lr is divided by 10, e.g. 2400.")] = None,
    seed: Seed = TrainOptions.seed,
    crop: Annotated[int, typer.Option(help="Training crop size (0: whole images).")] = 256,
    no_augment: Annotated[bool, typer.Option("--no-augment", help="No augmentation (crops only).")] = False,
    hard_negatives: Annotated[float, typer.Option(
        help="Probability that a synthetic crop is centred on a bouton or punctum (a spine look-alike).")
    ] = AugmentConfig.p_negative_centred,
    ema: Annotated[float, typer.Option(
        help="Keep a moving average of the weights with this decay (e.g. 0.999) and validate and save it "
             "(0: off).")] = TrainOptions.ema_decay,
    val_thresholds: Annotated[tuple, typer.Option(
        parser=_floats, metavar="T[,T...]",
        help="Score thresholds validation tries; checkpoints are compared at their best one (0.5 alone: the "
             "paper's rule).")] = ",".join(f"{t:g}" for t in THRESHOLDS),
    threads: Threads = None,
    val_every: int = TrainOptions.val_every,
    checkpoint_every: int = TrainOptions.checkpoint_every,
    log_every: int = TrainOptions.log_every,
    # data
    synthetic_train: Annotated[int, typer.Option(help="Synthetic training stacks.")] = 40,
    synthetic_val: Annotated[int, typer.Option(help="Synthetic validation stacks (F1-3D).")] = 4,
    synthetic_shape: Annotated[tuple, typer.Option(parser=_ints, metavar="Z,H,W",
                                                   help="Z,H,W of synthetic stacks.")] = "20,512,512",
    synthetic_seed: Annotated[int, typer.Option(
        help="Training stacks use seeds [S, i], validation stacks [S + 1000, i].")] = 1,
    real_root: Annotated[Optional[Path], typer.Option(
        help=f"{REAL2D_MDG} folder (default: $SPINEDET_DATA/{REAL2D_MDG}, else ../shared/data/{REAL2D_MDG}).")
    ] = None,
    no_real: Annotated[bool, typer.Option("--no-real", help=f"Do not use {REAL2D_MDG}.")] = False,
    weights: Annotated[dict, typer.Option(
        parser=_pairs, metavar="SOURCE=W[,...]",
        help=f"Sampling weights per source, e.g. {SYNTHETIC}=1,{REAL2D_MDG}=2.")] = f"{SYNTHETIC}=1,{REAL2D_MDG}=1",
    as_json: Json = False,
    quiet: Quiet = False,
):
    """Train the spine detector (Faster R-CNN).

    Checkpoints (last.pt, best.pt), metrics.jsonl and config.json go into --out.
    """
    args = SimpleNamespace(**locals())
    result = guarded(TOOL, lambda: _checked(lambda: run_training(args)),
                     interrupted=f"interrupted; the last checkpoint written, if any, is {out / 'last.pt'} "
                                 "(--resume it)")
    summary = {"out": str(out), "iteration": result["iteration"], "best_score": _finite(result["best"]),
               "final": _finite(result["metrics"])}
    if as_json:
        typer.echo(json.dumps(summary, allow_nan=False))
        return
    if summary["best_score"] is None:
        say(f"{out}: trained to iteration {summary['iteration']}; no validation data, so no best.pt", quiet)
    else:
        final = summary["final"] or {}
        say(f"{out}: trained to iteration {summary['iteration']}; best score {summary['best_score']:.4f} "
            f"-> {out / 'best.pt'}" + (f" (last: {final['score']:.4f} at threshold {final['threshold']:g})"
                                       if final.get("score") is not None else ""), quiet)


def parse_args(argv) -> SimpleNamespace:
    """The option values of a ``spine-train`` command line, without running it (what :func:`settings` takes)."""
    command = typer.main.get_command(app)
    with command.make_context(TOOL, list(argv)) as ctx:
        return SimpleNamespace(**ctx.params)


def _checked(work):
    """Run ``work()``; a bad value or a diverging run is a SpineDetError (one error line, exit 2), as before."""
    try:
        return work()
    except (ValueError, FloatingPointError) as exc:
        raise SpineDetError(str(exc)) from exc


def _finite(value):
    """``value`` with every non-finite float (no validation yet: -inf, nan) as None, so it is valid JSON."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _frozen_stages(args, init_config: ModelConfig | None) -> int:
    """``--frozen-stages`` if given, else the fine-tuned checkpoint's, else the default."""
    if args.frozen_stages is not None:
        return args.frozen_stages
    if args.init and not args.resume:
        return (init_config or checkpoint_config(args.init)).frozen_stages
    return ModelConfig.frozen_stages


def settings(args, init_config: ModelConfig | None = None) -> tuple[ModelConfig, TrainOptions]:
    """The model config and training options of ``spine-train`` option values (:func:`parse_args`).

    init_config: the ``--init`` checkpoint's config if already read (else it is read here when needed).
    """
    config = ModelConfig(backbone=_plain(args.backbone), pretrained=not args.scratch, fpn_channels=args.fpn_channels,
                         representation_size=args.representation_size, input_size=(args.input_size,) * 2,
                         frozen_stages=_frozen_stages(args, init_config), roi_context_px=args.roi_context,
                         depth_context_um=args.depth_context,
                         roi_levels=tuple(v.strip() for v in args.roi_levels.split(",") if v.strip()))
    aug = (AugmentConfig.none(crop=args.crop or None) if args.no_augment
           else AugmentConfig(crop=args.crop or None, p_negative_centred=args.hard_negatives))
    lr, momentum, warmup, drops = RECIPES[_plain(args.recipe)]
    drops = tuple(int(round(f * args.iterations)) for f in drops)
    options = TrainOptions(iterations=args.iterations, batch_size=args.batch,
                           lr=lr if args.lr is None else args.lr,
                           momentum=momentum if args.momentum is None else args.momentum,
                           weight_decay=args.weight_decay,
                           warmup_iterations=warmup if args.warmup is None else args.warmup,
                           lr_drops=drops if args.lr_drop is None else tuple(args.lr_drop), seed=args.seed,
                           val_every=args.val_every,
                           checkpoint_every=args.checkpoint_every, log_every=args.log_every,
                           source_weights=dict(args.weights), augment=aug, threads=args.threads,
                           val_thresholds=tuple(args.val_thresholds), ema_decay=args.ema)
    return config, options


def run_training(args) -> dict:
    """Build the data a command line asks for and train (:func:`train`); return its result.

    A ``--resume``/``--init`` file that is no checkpoint fails first, before minutes of data building.
    Warnings become ``spine-train: note:`` lines; ``args.quiet`` silences them and the progress lines.
    """
    quiet = args.quiet
    started = {}  # checkpoint path -> its config, each file read once
    for path in (args.resume, args.init):
        if path is not None:
            started[path] = checkpoint_config(path)  # a file that is no checkpoint fails now, before the data
    config, options = settings(args, started.get(args.init))
    with warnings.catch_warnings():
        warnings.showwarning = lambda message, *_, **__: note(TOOL, str(message), quiet)
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
                                            context_reach=reach_slices(depth, st.voxel_size[0]) if depth > 0
                                            else None)]
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
                note(TOOL, str(w.message), quiet)
        say(f"[spine-train] data ready in {time.perf_counter() - t0:.0f} s: "
            + ", ".join(f"{k} {len(v)} train" for k, v in train_sources.items())
            + (f", {len(val_3d)} synthetic val stacks" if val_3d else "")
            + "".join(f", {k} {len(v)} val" for k, v in val_2d.items() if v), quiet)
        return train(config, options, train_sources, val_2d, val_3d, out_dir=args.out, resume=args.resume,
                     init=args.init, log=None if quiet else "stderr")


def main() -> None:
    """``spine-train`` (exits; see :mod:`spinedet.runtime.cliutil` for the exit codes)."""
    run(app, TOOL)


if __name__ == "__main__":
    main()
