"""spine-run on a folder of synthetic stacks: serial against ``--workers N`` (a local Dask cluster).

    python bench/batch_dask.py [--count 20] [--slices 8] [--size 256] [--workers 2] [--rounds 2] [--threads N]
                               [--work DIR]

Writes ``--count`` stacks with spine-synth, then per round runs ``spine-run FOLDER`` serially and with
``--workers N``, each a fresh process, in an order that alternates between rounds; prints the wall time of
each run (process start to exit: the parallel run includes starting the cluster and loading the model once per
worker) and whether every output file of the parallel run equals the serial run's, with the timing fields
(the summaries' ``seconds``, batch_summary.csv's ``seconds``) left out.  Not part of the test suite.

Measured 2026-12-03 on the 2-core development machine (shared; load average ~2 during the runs), shipped fp16
model, 20 stacks of 8 x 256 x 256, 4 rounds, best of each: serial 7.4 s, ``--workers 2`` 8.9 s (0.83x: serially
onnxruntime already runs each stack on both cores, and the cluster costs ~1 s to start plus a model load per
worker); with ``--threads 1`` in both runs serial 13.5 s, ``--workers 2`` 9.3 s (1.45x).  Outputs identical in
every round.  Parallel runs pay off where a machine has more cores than one stack's inference keeps busy, or on a
cluster.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent


def without_timing(folder: Path) -> dict:
    contents = {}
    for path in sorted(folder.iterdir()):
        if path.name.endswith("_summary.json"):
            summary = json.loads(path.read_text())
            summary.pop("seconds")
            contents[path.name] = summary
        elif path.name == "batch_summary.csv":
            contents[path.name] = [{k: v for k, v in row.items() if k != "seconds"}
                                   for row in csv.DictReader(path.open())]
        else:
            contents[path.name] = path.read_bytes()
    return contents


def spine_run(stacks: Path, out: Path, extra: list) -> float:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run([str(BIN / "spine-run"), str(stacks), "--out", str(out), "-q", *extra], check=True)
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="--threads of both runs (per worker in the parallel one; default: spine-run's: all CPUs "
                             "serially, the CPUs shared out among the workers)")
    parser.add_argument("--work", type=Path, default=None, help="folder for stacks and outputs (default: a temp one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="batch_dask_"))
    stacks = work / "stacks"
    subprocess.run([str(BIN / "spine-synth"), "--out", str(stacks), "--count", str(args.count), "--slices",
                    str(args.slices), "--size", str(args.size), "--seed", "3", "-q"], check=True)
    for path in stacks.glob("*.csv"):  # ground truth: not an input
        path.unlink()
    threads = [] if args.threads is None else ["--threads", str(args.threads)]
    runs = {"serial": [], f"workers {args.workers}": []}
    identical = []
    for r in range(args.rounds):
        order = [("serial", []), (f"workers {args.workers}", ["--workers", str(args.workers)])]
        for name, extra in order if r % 2 == 0 else order[::-1]:
            runs[name].append(spine_run(stacks, work / name.replace(" ", "_"), extra + threads))
        identical.append(without_timing(work / "serial") == without_timing(work / f"workers_{args.workers}"))
        print(f"round {r + 1}: " + ", ".join(f"{name} {times[-1]:.1f} s" for name, times in runs.items())
              + f"; outputs identical (timing fields left out): {identical[-1]}", flush=True)
    best = {name: min(times) for name, times in runs.items()}
    print(f"{args.count} stacks of {args.slices}x{args.size}x{args.size}, --threads {args.threads or 'default'}: best of {args.rounds}: "
          + ", ".join(f"{name} {t:.1f} s" for name, t in best.items())
          + f"; speed-up {best['serial'] / best[f'workers {args.workers}']:.2f}x; identical in every round: "
          + str(all(identical)))


if __name__ == "__main__":
    main()
