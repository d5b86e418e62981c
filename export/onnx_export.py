"""Trace a trained model into one ONNX graph that follows the runtime's model contract.

:func:`export_onnx` writes ``<name>.onnx`` and its card ``<name>.json``
(all or nothing: a failed export leaves nothing behind), after checking the
graph's hygiene (:mod:`spinedet.export.hygiene`) and, unless told not to,
its parity with the torch model (:mod:`spinedet.training.parity`).

``fp16=True`` stores and computes the convolutional parts (backbone, FPN,
RPN head, box head) in float16 while the graph's inputs and outputs stay
float32, and box decoding, NMS inputs and RoI Align coordinates stay
float32: TensorRT 10.12+ builds strongly typed networks, so the precision
must be in the ONNX file itself.

``int8=True`` traces the float32 graph with plain ``Clip`` activations and
quantises it (:mod:`spinedet.export.quantize`): int8 weights, uint8
activations, for onnxruntime's CPU provider.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from spinedet.runtime.contract import INPUT_NAME, OUTPUT_NAMES, card_path, load_card
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.files import file_sha256, write_all

from .graph import TARGETS, ExportableDetector
from .hygiene import check_graph

OPSET = 17


@dataclass
class ExportReport:
    onnx_path: Path
    card_path: Path
    size_mb: float
    precision: str
    parity: dict | None = None


def export_model(model, config, out_path, fp16: bool = False, batch_example: int = 2,
                 target: str = "onnxruntime", unit_clips: bool = True) -> list[str]:
    """Trace ``model`` (a torchvision FasterRCNN built from ``config``) to ``out_path``; return hygiene problems.

    target: the graph flavour, ``"onnxruntime"`` or ``"tensorrt"`` (see :mod:`spinedet.export.graph`),
    also the hygiene rules it is checked against.
    unit_clips: ReLU6 as ``HardSigmoid`` unit clips (default) or, False, as plain ``Clip(0, 6)`` (the
    graph that int8 quantisation starts from; :mod:`spinedet.export.quantize`).
    """
    wrapper = ExportableDetector(model, config.input_size, half=fp16, channels=config.in_channels,
                                 target=target, unit_clips=unit_clips).eval()
    example = torch.zeros(batch_example, config.in_channels, *config.input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about Python constants, all intended
        torch.onnx.export(
            wrapper, (example,), str(out_path), dynamo=False, opset_version=OPSET,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_axes={INPUT_NAME: {0: "B"}, OUTPUT_NAMES[0]: {0: "B"}, OUTPUT_NAMES[1]: {0: "B"}},
            do_constant_folding=True)
    import onnx

    return check_graph(onnx.load(str(out_path)), target=target)


def export_onnx(source, out_path, fp16: bool = False, check: bool = True, name: str | None = None,
                progress=None, proposals: int | None = None, target: str = "onnxruntime", int8: bool = False,
                calibration=None, roi_sampling: int | None = None) -> ExportReport:
    """Export ``source`` to ``out_path`` (+ card); raise SpineDetError if hygiene, parity or the F1 check fail.

    source: a ``spine-train`` checkpoint, or an exported ``.onnx`` model with
    its card (its weights are recovered, :mod:`spinedet.training.recover`; its
    card's calibrated thresholds and metrics carry over), e.g. to give the
    shipped model its TensorRT flavour.
    proposals: RPN proposals kept per slice after NMS at inference (default: the
    source's; 1000 in the paper).  The box head runs once per proposal, so this
    is the main speed knob after the backbone; spines are at most a few dozen
    per slice.
    target: ``"onnxruntime"`` (ONNX NonMaxSuppression and RoiAlign nodes) or
    ``"tensorrt"`` (the same detector in plain ops, for TensorRT builders
    without CUDA plugins, e.g. TensorRT-RTX); recorded as the card's
    ``export["target"]``.  Both follow the same model contract.
    int8: an int8 static QDQ graph for onnxruntime's CPU provider
    (:mod:`spinedet.export.quantize`), calibrated on ``calibration`` (paths of
    TIFF/PNG stacks or images; None: built-in synthetic slices).  Checked
    against the torch model at the int8 parity tolerance and, through the
    runtime, for F1-3D against the float32 graph of the same export
    (:func:`spinedet.training.validate.f1_check`).  Its card keeps the source's
    thresholds; the source's metrics move to ``metrics["source_metrics"]`` (they
    were not measured on this graph).
    roi_sampling: RoI Align samples per bin side (default: the model's, 2);
    recorded as the card's ``export["roi_sampling_ratio"]``.
    Nothing is written unless everything passed: the graph and its card are
    written together (:func:`~spinedet.runtime.files.write_all`).
    """
    from spinedet.training.parity import parity_report

    source, out_path = Path(source), Path(out_path)
    if target not in TARGETS:
        raise SpineDetError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    if proposals is not None and proposals < 1:
        raise SpineDetError(f"--proposals must be at least 1, got {proposals}")
    if roi_sampling is not None and roi_sampling < 1:
        raise SpineDetError(f"--roi-sampling must be at least 1, got {roi_sampling}")
    if int8 and fp16:
        raise SpineDetError("--int8 and --fp16 exclude each other")
    if int8 and target != "onnxruntime":
        raise SpineDetError("--int8 makes a graph for onnxruntime's CPU provider: use --target onnxruntime")
    if calibration and not int8:
        raise SpineDetError("calibration slices are for --int8")
    from_onnx = source.suffix.lower() == ".onnx"
    same_card = from_onnx and card_path(out_path).resolve() == card_path(source).resolve()
    if out_path.resolve() == source.resolve() or same_card:
        raise SpineDetError("the export would overwrite the model it is made from; choose another --name or --out",
                            out_path)
    model, config, kept = _source_model(source)
    if proposals is not None:
        model.rpn._post_nms_top_n["testing"] = int(proposals)
    if roi_sampling is not None:
        model.roi_heads.box_roi_pool.sampling_ratio = int(roi_sampling)
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    if int8:  # not this graph's: the source's measurements move aside
        kept = {**kept, "metrics": {"source_metrics": {"model": source.name, **kept.get("metrics", {})}}}
    card = config.to_card(name=name or out_path.stem, precision=precision,
                          tile_overlap_px=min(64, min(config.input_size) // 4), **kept)
    card.export.update({"checkpoint": source.name, "checkpoint_sha256": file_sha256(source),
                        "proposals_per_slice": int(model.rpn._post_nms_top_n["testing"]), "opset": OPSET,
                        "target": target,
                        "roi_sampling_ratio": int(model.roi_heads.box_roi_pool.sampling_ratio),
                        "backbone": config.backbone, "fpn_channels": config.fpn_channels,
                        "roi_levels": list(config.roi_levels), "roi_context_px": config.roi_context_px,
                        "model_config": config.to_dict()})  # lets spine-train --init recover the weights
    calibration_inputs = None
    if int8:  # read the user's calibration files before any long work: a bad one fails at once
        from .quantize import builtin_calibration, calibration_from_files

        calibration_inputs, described = (calibration_from_files(calibration, card) if calibration
                                         else builtin_calibration(card))
    with tempfile.TemporaryDirectory(prefix="spine-export-") as folder:
        tmp = Path(folder) / out_path.name
        if progress:
            flavour = "" if target == "onnxruntime" else f", {target} flavour"
            progress(f"tracing {source.name} ({'fp32, for int8' if int8 else precision}{flavour})")
        traced = Path(folder) / "float32" / out_path.name if int8 else tmp
        traced.parent.mkdir(exist_ok=True)
        problems = export_model(model, config, traced, fp16=fp16, target=target, unit_clips=not int8)
        if problems:
            raise SpineDetError(f"exported graph fails the hygiene checks: {'; '.join(problems[:5])}", source)
        if int8:
            import onnx

            from .quantize import quantize_graph

            if progress:
                progress(f"quantising to int8 (calibration: {described['slices']} slices)")
            card.export["quantization"] = {**quantize_graph(traced, tmp, calibration_inputs),
                                           "calibration": described}
            problems = check_graph(onnx.load(str(tmp)), target=target)
            if problems:
                raise SpineDetError(f"int8 graph fails the hygiene checks: {'; '.join(problems[:5])}", source)
            card_path(traced).write_text(replace(card, precision="fp32", metrics={}).to_json() + "\n")
        card_text = card.to_json() + "\n"
        card_path(tmp).write_text(card_text)
        load_card(tmp)  # the card the runtime will read must be valid
        parity = None
        if check:
            if progress:
                progress("checking parity with the torch model")
            parity = parity_report(model, tmp, card, seed=1 if int8 else 0)  # int8: not its calibration slices
            if not parity["ok"]:
                raise SpineDetError(f"exported graph disagrees with the torch model: {parity['summary']}", source)
            if int8:
                from spinedet.training.validate import f1_check

                if progress:
                    progress("checking F1-3D against the float32 graph through the runtime")
                f1 = f1_check(traced, tmp)
                if not f1["ok"]:
                    raise SpineDetError(f"int8 graph finds spines worse than the float32 graph: {f1['summary']}",
                                        source)
                parity["f1_check"] = f1
                card.metrics["int8_checks"] = {
                    "parity": {"summary": parity["summary"],
                               **{k: v for k, v in parity.items() if k.startswith("batch_")}},
                    "f1_3d_against_float32": {k: f1[k] for k in ("summary", "reference", "candidate", "seed", "shape")}}
                card_text = card.to_json() + "\n"
                card_path(tmp).write_text(card_text)
                load_card(tmp)
        write_all({out_path: tmp.read_bytes(), card_path(out_path): card_text})
    return ExportReport(out_path, card_path(out_path), out_path.stat().st_size / 1e6, precision, parity)


def _source_model(source: Path):
    """``(model, config, card fields to keep)`` of a checkpoint or an exported model."""
    from spinedet.training.checkpoints import load_checkpoint, load_model

    if source.suffix.lower() == ".onnx":
        model, config = load_model(source)  # SpineDetError for a missing or foreign file
        old = load_card(source)
        kept = {"score_threshold": old.score_threshold, "link_threshold": old.link_threshold,
                "shaft_distance_um": old.shaft_distance_um, "metrics": dict(old.metrics)}
        return model.eval(), config, kept
    try:
        model, config, state = load_checkpoint(source)
    except SpineDetError:
        raise
    except Exception as exc:  # a checkpoint of another model layout
        raise SpineDetError(f"not a spinedet checkpoint ({type(exc).__name__}: {exc})", source) from None
    return model.eval(), config, {"metrics": dict(state.get("metrics") or {})}
