"""Turn a pytest-benchmark JSON (default: bench/results/latest.json) into the tables of bench/README.md.

    python bench/report.py [RESULTS.json] > table.md

Per-slice latency is the median round time divided by the slices per call;
ratios are taken within the same run (same machine, same load).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

PAPER = 0.053  # s per slice, RTX A6000 (Vogel et al.)


def load(path):
    return json.loads(Path(path).read_text())


def latency_rows(data):
    rows = {}
    for b in data["benchmarks"]:
        extra = b.get("extra_info", {})
        if "slices_per_call" not in extra:
            continue
        n = extra["slices_per_call"]
        rows[b["name"]] = {"batch": n, "median": b["stats"]["median"] / n, "iqr": b["stats"]["iqr"] / n,
                           "min": b["stats"]["min"] / n, "threads": extra.get("threads")}
    return rows


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    data = load(argv[0] if argv else Path(__file__).parent / "results" / "latest.json")
    info = data["machine_info"]
    print(f"Machine: {info.get('cpu', {}).get('brand_raw', info.get('processor'))}, "
          f"{info.get('cpu', {}).get('count', '?')} CPU cores; Python {info.get('python_version')}; "
          f"run {data.get('datetime', '')[:19]}")
    rows = latency_rows(data)
    torch_by_batch = {r["batch"]: r["median"] for name, r in rows.items() if name.startswith("torch")}
    print("\n| what | batch | threads | s/slice (median) | IQR | vs paper 0.053 s | vs torch eager |")
    print("|---|---|---|---|---|---|---|")
    for name, r in sorted(rows.items(), key=lambda kv: (kv[0].split(" batch")[0], kv[1]["batch"])):
        ref = torch_by_batch.get(r["batch"])
        vs_torch = f"{ref / r['median']:.1f}x faster" if ref and not name.startswith("torch") else ""
        print(f"| {name.rsplit(' batch', 1)[0]} | {r['batch']} | {r['threads']} | {r['median']:.4f} | "
              f"{r['iqr']:.4f} | {r['median'] / PAPER:.2f}x | {vs_torch} |")
    e2e = [b for b in data["benchmarks"] if b.get("group") == "end to end"]
    if e2e:
        print("\n| end to end | slices | wall s (median) | s/slice | read | infer | post | track | peak RSS MB |")
        print("|---|---|---|---|---|---|---|---|---|")
        for b in e2e:
            x = b["extra_info"]
            st = x.get("stage_seconds", {})
            n = x["slices"]
            print(f"| {b['name']} | {n} | {b['stats']['median']:.2f} | {b['stats']['median'] / n:.3f} | "
                  + " | ".join(f"{st.get(k, 0) / n:.4f}" for k in ("read", "infer", "postprocess", "track"))
                  + f" | {x.get('peak_rss_mb')} |")
    post = [b for b in data["benchmarks"] if "postprocess" in b["name"] and "extra_info" in b]
    for b in post:
        if b.get("group") in (None, "postprocess"):
            print(f"\n{b['name']}: median {b['stats']['median'] * 1000:.1f} ms per 60-slice stack "
                  f"(IQR {b['stats']['iqr'] * 1000:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
