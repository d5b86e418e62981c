"""Measure spine-track end to end on synthetic time series (not part of the test suite).

    python bench/track_series.py --series 8 --out /tmp/track-bench [--threads 2] [--max-shift 4 --max-z-shift 1
        --max-rotation 1.5 --loss 0.1 --gain 0.1 --size-drift 0.15 --sessions 4 --slices 20 --size 512]

For each series i it runs the installed commands, as a user would: ``spine-synth --sessions`` (seed
``[SEED, i]``, 0.1 µm pixels, 0.5 µm slices, the other imaging settings drawn from spine-synth's ranges),
``spine-track`` with the shipped model and its defaults, and ``spine-eval sessions --json``; then prints
one line per series and the totals over all of them (pairs and links summed, gained/lost errors of the
summed counts), and writes them as JSON to ``OUT/results.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def run(command: list) -> str:
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(map(str, command))} failed: {done.stderr.strip()}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=8)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--slices", type=int, default=20)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--max-shift", type=float, default=4.0)
    parser.add_argument("--max-z-shift", type=float, default=1.0)
    parser.add_argument("--max-rotation", type=float, default=1.5)
    parser.add_argument("--loss", type=float, default=0.1)
    parser.add_argument("--gain", type=float, default=0.1)
    parser.add_argument("--size-drift", type=float, default=0.15)
    parser.add_argument("--track-args", default="", help="extra spine-track options, e.g. '--max-gap 0'")
    args = parser.parse_args()
    bin_dir = Path(sys.executable).parent
    data = args.out / "data"
    run([bin_dir / "spine-synth", "--out", data, "--count", args.series, "--sessions", args.sessions,
         "--slices", args.slices, "--size", args.size, "--seed", args.seed, "--pixel-size", 0.1, "--z-step", 0.5,
         "--max-shift", args.max_shift, "--max-z-shift", args.max_z_shift, "--max-rotation", args.max_rotation,
         "--loss", args.loss, "--gain", args.gain, "--size-drift", args.size_drift, "--quiet"])
    keys = ("true_pairs", "detected_pairs", "linked_pairs", "links", "correct_links", "false_links",
            "half_matched_links", "spurious_links")
    total = dict.fromkeys(keys, 0)
    gained = {"true": 0, "pred": 0}
    lost = {"true": 0, "pred": 0}
    rows = []
    for i in range(args.series):
        name = f"synth_{i:03d}"
        out = args.out / "tracked" / name
        start = time.perf_counter()
        run([bin_dir / "spine-track", *[data / f"{name}_s{k}.tif" for k in range(args.sessions)], "--out", out,
             "--threads", args.threads, "-q", *args.track_args.split()])
        seconds = time.perf_counter() - start
        scores = json.loads(run([bin_dir / "spine-eval", "sessions", "--gt", data / f"{name}_observations.csv",
                                 "--pred", out, "--json"]))
        for key in keys:
            total[key] += scores[key]
        for key, sums in (("gained", gained), ("lost", lost)):
            sums["true"] += scores[key]["true"]
            sums["pred"] += scores[key]["pred"]
        rows.append({"series": name, "seconds": round(seconds, 1), **scores})
        acc = scores["linking_accuracy"]
        print(f"{name}: linking accuracy {acc if acc is None else round(acc, 4)} ({scores['linked_pairs']}/"
              f"{scores['detected_pairs']} detected true pairs, {scores['true_pairs']} true), false links "
              f"{scores['false_links']}/{scores['links']}, gained {scores['gained']['pred']} (true "
              f"{scores['gained']['true']}), lost {scores['lost']['pred']} (true {scores['lost']['true']}), "
              f"spine-track {seconds:.1f} s", flush=True)

    def error(sums):
        return abs(sums["pred"] - sums["true"]) / sums["true"] if sums["true"] else None

    summary = {**total, "linking_accuracy": total["linked_pairs"] / max(total["detected_pairs"], 1),
               "pair_recall": total["linked_pairs"] / max(total["true_pairs"], 1),
               "link_precision": total["correct_links"] / max(total["correct_links"] + total["false_links"], 1),
               "gained": {**gained, "error": error(gained)}, "lost": {**lost, "error": error(lost)}}
    print(f"total over {args.series} series: linking accuracy {summary['linking_accuracy']:.4f} "
          f"({total['linked_pairs']}/{total['detected_pairs']}), pair recall {summary['pair_recall']:.3f}, "
          f"link precision {summary['link_precision']:.4f} (false {total['false_links']}, half-matched "
          f"{total['half_matched_links']}, spurious {total['spurious_links']} of {total['links']} links), "
          f"gained {gained['pred']} vs {gained['true']} ({100 * (summary['gained']['error'] or 0):.1f} %), "
          f"lost {lost['pred']} vs {lost['true']} ({100 * (summary['lost']['error'] or 0):.1f} %)")
    (args.out / "results.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                       "total": summary, "series": rows}, indent=2, default=str))


if __name__ == "__main__":
    main()
