"""Trace a trained checkpoint into one ONNX graph that follows the runtime's model contract.

:func:`export_onnx` writes ``<name>.onnx`` and its card ``<name>.json``
(atomically: a failed export leaves nothing behind), after checking the
graph's hygiene (:mod:`spinedet.export.hygiene`) and, unless told not to,
its parity with the torch model (:mod:`spinedet.training.parity`).

``fp16=True`` stores and computes the convolutional parts (backbone, FPN,
RPN head, box head) in float16 while the graph's inputs and outputs stay
float32, and box decoding, NMS inputs and RoI Align coordinates stay
float32: TensorRT 10.12+ builds strongly typed networks, so the precision
must be in the ONNX file itself.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from spinedet.runtime.contract import INPUT_NAME, OUTPUT_NAMES, load_card
from spinedet.runtime.errors import SpineDetError
from spinedet.runtime.files import file_sha256

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


def export_onnx(checkpoint, out_path, fp16: bool = False, check: bool = True, name: str | None = None,
                progress=None, proposals: int | None = None, target: str = "onnxruntime") -> ExportReport:
    """Export ``checkpoint`` to ``out_path`` (+ card); raise SpineDetError if hygiene or parity fail.

    proposals: RPN proposals kept per slice after NMS at inference (default: the
    checkpoint's, 1000 as in the paper).  The box head runs once per proposal,
    so this is the main speed knob after the backbone; spines are at most a few
    dozen per slice.
    target: ``"onnxruntime"`` (ONNX NonMaxSuppression and RoiAlign nodes) or
    ``"tensorrt"`` (the same detector in plain ops, for TensorRT builders
    without CUDA plugins, e.g. TensorRT-RTX); recorded as the card's
    ``export["target"]``.  Both follow the same model contract.
    """
    from spinedet.training.checkpoints import load_checkpoint
    from spinedet.training.parity import parity_report

    checkpoint, out_path = Path(checkpoint), Path(out_path)
    try:
        model, config, state = load_checkpoint(checkpoint)
    except FileNotFoundError:
        raise SpineDetError("no such checkpoint", checkpoint) from None
    except Exception as exc:
        raise SpineDetError(f"not a spinedet checkpoint ({type(exc).__name__}: {exc})", checkpoint) from None
    model.eval()
    if target not in TARGETS:
        raise SpineDetError(f"unknown export target {target!r}; choose one of {', '.join(TARGETS)}")
    if proposals is not None:
        if proposals < 1:
            raise SpineDetError(f"--proposals must be at least 1, got {proposals}")
        model.rpn._post_nms_top_n["testing"] = int(proposals)
    precision = "fp16" if fp16 else "fp32"
    card = config.to_card(name=name or out_path.stem, precision=precision, metrics=dict(state.get("metrics") or {}),
                          tile_overlap_px=min(64, min(config.input_size) // 4))
    card.export.update({"checkpoint": checkpoint.name, "checkpoint_sha256": file_sha256(checkpoint),
                        "proposals_per_slice": int(model.rpn._post_nms_top_n["testing"]), "opset": OPSET,
                        "target": target,
                        "backbone": config.backbone, "fpn_channels": config.fpn_channels,
                        "roi_levels": list(config.roi_levels), "roi_context_px": config.roi_context_px,
                        "model_config": config.to_dict()})  # lets spine-train --init recover the weights
    out_path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_path.stem}.", suffix=".onnx", dir=out_path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        if progress:
            flavour = "" if target == "onnxruntime" else f", {target} flavour"
            progress(f"tracing {checkpoint.name} ({precision}{flavour})")
        problems = export_model(model, config, tmp, fp16=fp16, target=target)
        if problems:
            raise SpineDetError(f"exported graph fails the hygiene checks: {'; '.join(problems[:5])}", checkpoint)
        parity = None
        if check:
            if progress:
                progress("checking parity with the torch model")
            parity = parity_report(model, tmp, card)
            if not parity["ok"]:
                raise SpineDetError(f"exported graph disagrees with the torch model: {parity['summary']}",
                                    checkpoint)
        card_tmp = tmp.with_suffix(".json")
        card_tmp.write_text(card.to_json() + "\n")
        load_card(tmp)  # the card the runtime will read must be valid
        os.chmod(tmp, os.stat(card_tmp).st_mode & 0o777)  # mkstemp made it private
        os.replace(tmp, out_path)
        os.replace(card_tmp, out_path.with_suffix(".json"))
    finally:
        for leftover in (tmp, tmp.with_suffix(".json")):
            if leftover.exists():
                leftover.unlink()
    return ExportReport(out_path, out_path.with_suffix(".json"), out_path.stat().st_size / 1e6, precision, parity)
