"""``spine-export CHECKPOINT``: trained weights -> ONNX graph + model card (+ TensorRT engine).

Errors are one line on stderr (``spine-export: error: <file>: <problem>``) and
a non-zero exit code; nothing is written for a failed export.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from spinedet.runtime.errors import SpineDetError

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)


@app.command()
def spine_export(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="A checkpoint written by spine-train."),
    out: Optional[Path] = typer.Option(None, "--out", "-o",
                                       help="ONNX file to write (default: beside the checkpoint, .onnx)."),
    fp16: bool = typer.Option(False, "--fp16", help="float16 weights and compute, float32 inputs/outputs."),
    batch_max: int = typer.Option(16, "--batch-max", min=1, help="Largest batch of the TensorRT profile."),
    engine: bool = typer.Option(False, "--engine", help="Also build (or reuse) a TensorRT engine."),
    check: bool = typer.Option(True, "--check/--no-check", help="Compare the graph with the torch model."),
    proposals: Optional[int] = typer.Option(None, min=1, help="RPN proposals per slice at inference "
                                            "(default: the checkpoint's, 1000)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Where TensorRT engines are cached."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Trace a trained spine detector to a batchable, TensorRT-ready ONNX graph."""
    say = (lambda text: None) if quiet else (lambda text: typer.echo(text, err=True))
    target = out or Path(checkpoint).with_suffix(".onnx")
    try:
        try:
            from .onnx_export import export_onnx
        except ImportError:
            raise SpineDetError("exporting needs torch, torchvision and onnx: pip install 'spinedet[export]'")
        report = export_onnx(checkpoint, target, fp16=fp16, check=check, progress=say, proposals=proposals)
        say(f"{report.onnx_path}: {report.size_mb:.1f} MB, {report.precision}"
            + (f"; parity: {report.parity['summary']}" if report.parity else ""))
        if engine:
            from spinedet.runtime.contract import load_card
            from spinedet.runtime.trt_engine import load_or_build

            card = load_card(report.onnx_path)
            _, key, path, built = load_or_build(report.onnx_path, card.precision,
                                                (card.channels, *card.input_size), batch_max, cache_dir)
            say(f"{path}: TensorRT {key.tensorrt_version} engine for {key.gpu_name} "
                f"(batch {key.batch_min}..{key.batch_max}) {'built' if built else 'reused from the cache'}")
    except SpineDetError as exc:
        typer.echo(f"spine-export: error: {exc}", err=True)
        raise typer.Exit(2)
    except Exception as exc:
        if os.environ.get("SPINEDET_DEBUG"):
            raise
        typer.echo(f"spine-export: error: {checkpoint}: {type(exc).__name__}: {exc} "
                   "(set SPINEDET_DEBUG=1 for details)", err=True)
        raise typer.Exit(3)


def main():
    app(prog_name="spine-export")
