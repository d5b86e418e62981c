"""``spine-export MODEL``: trained weights -> ONNX graph + model card (+ TensorRT engine, or an int8 graph).

Errors, exit codes and the shared options: :mod:`spinedet.runtime.cliutil`;
nothing is written for a failed export.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer

from spinedet.runtime.cliutil import Batch, Json, Quiet, guarded, make_app, run, say
from spinedet.runtime.errors import SpineDetError

app = make_app()


class Target(str, Enum):
    onnxruntime = "onnxruntime"
    tensorrt = "tensorrt"


@app.command()
def spine_export(
    model: Path = typer.Argument(..., metavar="MODEL",
                                 help="A spine-train checkpoint (.pt), or an exported model (.onnx with its card) "
                                      "to export again, e.g. in another flavour."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", file_okay=False,
                                       help="Folder to write into (default: beside MODEL)."),
    name: Optional[str] = typer.Option(None, help="File name of the graph, without .onnx (default: MODEL's name, "
                                                  "with _trt for the tensorrt flavour, _int8 with --int8)."),
    target: Target = typer.Option(Target.onnxruntime, help="onnxruntime: fastest on CPU; tensorrt: plain ops "
                                                           "that TensorRT (for RTX) builds into an engine."),
    fp16: bool = typer.Option(False, "--fp16", help="float16 weights and compute, float32 inputs/outputs."),
    int8: bool = typer.Option(False, "--int8", help="int8 static quantisation (QDQ) for onnxruntime's CPU provider: "
                                                    "int8 weights, uint8 activations; checked for parity and F1-3D."),
    calibration_slices: Optional[List[Path]] = typer.Option(
        None, "--calibration-slices", metavar="PATH",
        help="With --int8: TIFF/PNG stacks or images to calibrate on (repeat the option for several; 10 slices are "
             "taken, spread over them). Default: built-in synthetic slices."),
    proposals: Optional[int] = typer.Option(None, min=1, help="RPN proposals per slice at inference "
                                            "(default: the model's)."),
    roi_sampling: Optional[int] = typer.Option(None, min=1, help="RoI Align samples per bin side (default: the "
                                               "model's, 2; 1 pools 4x cheaper)."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare the graph with the torch model."),
    engine: bool = typer.Option(False, "--engine", help="Also build a TensorRT engine (needs --target tensorrt "
                                                        "and pip install 'spinedet[trt]'; no GPU needed)."),
    batch: Batch = 16,
    cache_dir: Optional[Path] = typer.Option(None, file_okay=False,
                                             help="Where TensorRT engines are cached (default ~/.cache/spinedet)."),
    as_json: Json = False,
    quiet: Quiet = False,
):
    """Trace a trained spine detector to a batchable ONNX graph with its model card (and a TensorRT engine)."""
    model = Path(model)
    suffix = "_trt" if target is Target.tensorrt else "_int8" if int8 else ""
    stem = name or (model.stem + (suffix if not model.stem.endswith(suffix) else ""))
    destination = (out or model.parent) / f"{stem}.onnx"

    def main():
        if engine and target is not Target.tensorrt:
            raise SpineDetError("--engine builds from the tensorrt flavour: add --target tensorrt")
        try:
            from .onnx_export import export_onnx
        except ImportError:
            raise SpineDetError("exporting needs torch, torchvision and onnx: pip install 'spinedet[export]'") from None
        report = export_onnx(model, destination, fp16=fp16, check=check, progress=lambda t: say(t, quiet),
                             proposals=proposals, target=target.value, int8=int8,
                             calibration=calibration_slices or None, roi_sampling=roi_sampling)
        result = {"onnx": str(report.onnx_path), "card": str(report.card_path), "size_mb": round(report.size_mb, 2),
                  "precision": report.precision, "target": target.value,
                  "parity": report.parity["summary"] if report.parity else None}
        f1 = (report.parity or {}).get("f1_check")
        if f1:
            result["f1_check"] = f1["summary"]
        say(f"{report.onnx_path}: {report.size_mb:.1f} MB, {report.precision}, {target.value} flavour"
            + (f"; parity: {report.parity['summary']}" if report.parity else "")
            + (f"; {f1['summary']}" if f1 else ""), quiet)
        if engine:
            import time

            from spinedet.runtime.contract import load_card
            from spinedet.runtime.trt_engine import build_cached

            card = load_card(report.onnx_path)
            start = time.perf_counter()
            data, key, path, built = build_cached(report.onnx_path, card.precision,
                                                  (card.channels, *card.input_size), batch, cache_dir)
            result["engine"] = {"path": str(path), "module": key.module, "version": key.version,
                                "targets": key.targets, "batch": [key.batch_min, key.batch_opt, key.batch_max],
                                "size_mb": round(len(data) / 1e6, 2), "built": built,
                                "seconds": round(time.perf_counter() - start, 1)}
            say(f"{path}: {key.module} {key.version} engine for {key.targets} (batch {key.batch_min}..{key.batch_max}, "
                f"{len(data) / 1e6:.1f} MB) {'built' if built else 'reused from the cache'}", quiet)
        return result

    result = guarded("spine-export", main)
    if as_json:
        typer.echo(json.dumps(result))


def main():
    run(app, "spine-export")
