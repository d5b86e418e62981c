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
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
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
                 target: str = "onnxruntime") -> list[str]:
    """Trace ``model`` (a torchvision FasterRCNN built from ``config``) to ``out_path``; return hygiene problems.

    target: the graph flavour, ``"onnxruntime"`` or ``"tensorrt"`` (see :mod:`spinedet.export.graph`),
    also the hygiene rules it is checked against.
    """
    wrapper = ExportableDetector(model, config.input_size, half=fp16, channels=config.in_channels,
                                 target=target).eval()
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
                progress=None, proposals: int | None = None, target: str = "onnxruntime") -> ExportReport:
    """Export ``source`` to ``out_path`` (+ card); raise SpineDetError if hygiene or parity fail.

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
    Nothing is written unless everything passed: the graph and its card are
    written together (:func:`~spinedet.runtime.files.write_all`).
    """
    from spinedet.training.parity import parity_report

    source, out_path = Path(source), Path(out_path)
    if target not in TARGETS:
        raise SpineDetError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    if proposals is not None and proposals < 1:
        raise SpineDetError(f"--proposals must be at least 1, got {proposals}")
    from_onnx = source.suffix.lower() == ".onnx"
    same_card = from_onnx and card_path(out_path).resolve() == card_path(source).resolve()
    if out_path.resolve() == source.resolve() or same_card:
        raise SpineDetError("the export would overwrite the model it is made from; choose another --name or --out",
                            out_path)
    model, config, kept = _source_model(source)
    if proposals is not None:
        model.rpn._post_nms_top_n["testing"] = int(proposals)
    precision = "fp16" if fp16 else "fp32"
    card = config.to_card(name=name or out_path.stem, precision=precision,
                          tile_overlap_px=min(64, min(config.input_size) // 4), **kept)
    card.export.update({"checkpoint": source.name, "checkpoint_sha256": file_sha256(source),
                        "proposals_per_slice": int(model.rpn._post_nms_top_n["testing"]), "opset": OPSET,
                        "target": target,
                        "backbone": config.backbone, "fpn_channels": config.fpn_channels,
                        "roi_levels": list(config.roi_levels), "roi_context_px": config.roi_context_px,
                        "model_config": config.to_dict()})  # lets spine-train --init recover the weights
    with tempfile.TemporaryDirectory(prefix="spine-export-") as folder:
        tmp = Path(folder) / out_path.name
        if progress:
            flavour = "" if target == "onnxruntime" else f", {target} flavour"
            progress(f"tracing {source.name} ({precision}{flavour})")
        problems = export_model(model, config, tmp, fp16=fp16, target=target)
        if problems:
            raise SpineDetError(f"exported graph fails the hygiene checks: {'; '.join(problems[:5])}", source)
        card_text = card.to_json() + "\n"
        card_path(tmp).write_text(card_text)
        load_card(tmp)  # the card the runtime will read must be valid
        parity = None
        if check:
            if progress:
                progress("checking parity with the torch model")
            parity = parity_report(model, tmp, card)
            if not parity["ok"]:
                raise SpineDetError(f"exported graph disagrees with the torch model: {parity['summary']}", source)
        write_all({out_path: tmp.read_bytes(), card_path(out_path): card_text})
    return ExportReport(out_path, card_path(out_path), out_path.stat().st_size / 1e6, precision, parity)


def _source_model(source: Path):
    """``(model, config, card fields to keep)`` of a checkpoint or an exported model."""
    from spinedet.training.checkpoints import load_checkpoint, load_model

    if source.suffix.lower() == ".onnx":
        model, config = load_model(source)  # SpineDetError for a missing or foreign file
        old = load_card(source)
        kept = {"score_threshold": old.score_threshold, "link_threshold": old.link_threshold,
                "metrics": dict(old.metrics)}
        return model.eval(), config, kept
    try:
        model, config, state = load_checkpoint(source)
    except SpineDetError:
        raise
    except Exception as exc:  # a checkpoint of another model layout
        raise SpineDetError(f"not a spinedet checkpoint ({type(exc).__name__}: {exc})", source) from None
    return model.eval(), config, {"metrics": dict(state.get("metrics") or {})}
