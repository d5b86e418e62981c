"""The command ``spine-synth``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from spinedet.runtime.errors import SpineDetError

from .files import write_stack
from .stack import make_stack


class _Parser(argparse.ArgumentParser):
    def error(self, message):                    # one line, exit code 2
        raise SpineDetError(message)


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        return value
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="spine-synth",
                     description="Write synthetic two-photon spine stacks (NAME.tif) with ground truth "
                                 "(NAME_boxes.csv).")
    parser.add_argument("outdir", help="folder to write into (created if missing)")
    parser.add_argument("--count", type=_positive(int), default=1, help="number of stacks (default 1)")
    parser.add_argument("--slices", type=_positive(int), default=30, help="slices per stack (default 30)")
    parser.add_argument("--size", type=_positive(int), default=512, help="width = height in pixels (default 512)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--pixel-size", type=_positive(float), default=None, metavar="UM",
                        help="pixel size in µm (default: random 0.07-0.15)")
    parser.add_argument("--z-step", type=_positive(float), default=None, metavar="UM",
                        help="slice spacing in µm (default: random 0.3-1.0)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=None,
                        help="8 or 16 bit (default: random)")
    parser.add_argument("--prefix", default="synth", help="file name prefix (default synth)")
    return parser


def main(argv=None) -> int:
    """``spine-synth OUTDIR [--count N] [--slices Z] [--size PX] [--seed S] [--pixel-size UM]
    [--z-step UM] [--bit-depth 8|16]``; returns the exit code (2 on any error)."""
    try:
        args = _parser().parse_args(argv)
        if args.size < 16:
            raise SpineDetError(f"--size {args.size} is too small (at least 16 pixels)")
        overrides = {}
        if args.pixel_size is not None:
            overrides["pixel_size_um"] = args.pixel_size
        if args.z_step is not None:
            overrides["z_step_um"] = args.z_step
        if args.bit_depth is not None:
            overrides["bit_depth"] = args.bit_depth
        for i in range(args.count):
            stack = make_stack(np.random.default_rng([args.seed, i]), (args.slices, args.size, args.size),
                               **overrides)
            name = f"{args.prefix}_{i:03d}"
            write_stack(stack, args.outdir, name)
            print(f"{Path(args.outdir) / name}.tif: {stack.image.shape[0]} slices, "
                  f"{stack.voxel_size[1]:.3f} µm/px, z-step {stack.voxel_size[0]:.2f} µm, "
                  f"{len(stack.spines)} spines, {len(stack.table)} boxes")
        return 0
    except (SpineDetError, ValueError, MemoryError) as exc:
        print(f"spine-synth: error: {exc}", file=sys.stderr)
        return 2
