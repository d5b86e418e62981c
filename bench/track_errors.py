"""Where spine-track's gained/lost counts go wrong, from a track_series.py run (not part of the test suite).

    python bench/track_errors.py OUT [OUT ...]

OUT is a ``bench/track_series.py --out`` folder (``OUT/data`` the synthetic series with their
``_observations.csv``, ``OUT/tracked/NAME`` spine-track's outputs).  Detections are matched to true spines
per session as ``spine-eval sessions`` matches them (3D IoM >= 0.5).  Only spines in view in every session
count (``partial`` ones are left out on both sides, as the metric does).  Printed per OUT, and summed:

true losses (last visible session k - 1, not visible from k on), by what made them:

* ``died``: the generator removed the spine;  ``faded``: it is still there, alive, but below the
  synthetic truth's visibility rule (:mod:`spinedet.training.synth.truth`) from session k on;

and by what spine-track made of them: ``counted`` (the tool's track of the spine, found in session k - 1,
ends there), ``continued`` (the track goes on after k - 1: onto the same spine seen by the detector below the
truth's rule, a neighbour or a new spine), ``missed-before`` (the detector did not find the spine in
session k - 1).  True gains likewise: ``born`` / ``emerged`` (alive before, below the rule) and
``counted`` / ``preceded`` (the tool's track existed before) / ``missed-at``.

Predicted gains and losses that match no true one: ``false-detection`` (every detection of the track matches
no true spine), ``missed`` (a true spine the detector missed in the session before a gain or after a loss;
``@first`` / ``@last`` where that is the first or last session, which no gap can bridge), ``broken`` (the
true spine was found there but under another track), ``unmatched-there`` (the track's detection in that
session matches no true spine; others of the track do).
"""

from __future__ import annotations

import argparse
import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np

from spinedet.runtime.evaluate_sessions import session_matches, tracks_by_session
from spinedet.runtime.session_reports import read_series


def truth_rows(path: Path, n: int) -> dict:
    """``{true spine id: [observation row of session k]}`` of a ground-truth series with its ``alive`` column."""
    rows = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["track_id"]), [None] * n)[int(r["session"])] = r
    return rows


def one_series(truth_path: Path, pred_dir: Path, counts: Counter) -> None:
    truth, pred = read_series(truth_path), read_series(pred_dir)
    n = truth.n_sessions
    rows = truth_rows(truth_path, n)
    matches = [session_matches(p, g) for p, g in zip(pred.boxes, truth.boxes)]   # predicted spine -> true spine
    found = [{g: p for p, g in m.items()} for m in matches]                          # true spine -> predicted spine
    track_of = tracks_by_session(pred)                                               # predicted spine -> track
    spines_of = {}                                                                   # track -> {session: spine}
    for k, seen in enumerate(track_of):
        for s, t in seen.items():
            spines_of.setdefault(t, {})[k] = s
    ids, present, shown = pred.presence()

    def seen_truth(t, k):
        return rows[t][k]["present"] == "1"

    def tool_track(t, k):
        s = found[k].get(t)
        return None if s is None else track_of[k].get(s)

    for t, r in rows.items():
        if not all(x["in_view"] == "1" for x in r):
            continue
        visible = [k for k in range(n) if seen_truth(t, k)]
        if not visible:
            continue
        first, last = visible[0], visible[-1]
        if last < n - 1:
            kind = "died" if r[last + 1]["alive"] == "0" else "faded"
            track = tool_track(t, last)
            if track is None:
                outcome = "missed-before"
            else:
                outcome = "continued" if any(track in track_of[k].values() for k in range(last + 1, n)) else "counted"
            counts["true loss", kind, outcome] += 1
        if first > 0:
            kind = "born" if r[first - 1]["alive"] == "0" else "emerged"
            track = tool_track(t, first)
            if track is None:
                outcome = "missed-at"
            else:
                outcome = "preceded" if any(track in track_of[k].values() for k in range(first)) else "counted"
            counts["true gain", kind, outcome] += 1

    for row, track in enumerate(ids):
        if not shown[row].all():
            continue
        hits = np.flatnonzero(present[row])
        true_at = {k: matches[k].get(s) for k, s in spines_of[int(track)].items()}
        for side, k, step in (("predicted gain", hits[0], -1), ("predicted loss", hits[-1], +1)):
            if (side == "predicted gain" and k == 0) or (side == "predicted loss" and k == n - 1):
                continue
            g = true_at.get(k)
            if all(v is None for v in true_at.values()):
                counts[side, "false-detection"] += 1
                continue
            if g is None or g not in rows:
                counts[side, "unmatched-there"] += 1
                continue
            around = range(k - 1, -1, -1) if step < 0 else range(k + 1, n)
            other = [j for j in around if seen_truth(g, j)]
            if not other:
                counts[side, "true event"] += 1
                continue
            j = other[0]
            if g in found[j]:
                counts[side, "broken"] += 1
            else:
                edge = "@first" if j == 0 else "@last" if j == n - 1 else ""
                counts[side, "missed" + edge] += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, nargs="+")
    args = parser.parse_args()
    total, pairs = Counter(), Counter()
    for out in args.out:
        counts = Counter()
        for pred_dir in sorted((out / "tracked").iterdir()):
            one_series(out / "data" / f"{pred_dir.name}_observations.csv", pred_dir, counts)
        total.update(counts)
        results = out / "results.json"
        if results.exists():
            scores = json.loads(results.read_text())["total"]
            pairs.update({key: scores[key] for key in ("linked_pairs", "detected_pairs")})
        print(f"{out}:")
        report(counts)
    if len(args.out) > 1:
        print(f"all {len(args.out)}:")
        report(total)
        if pairs["detected_pairs"]:
            print(f"  linking accuracy {pairs['linked_pairs'] / pairs['detected_pairs']:.4f} "
                  f"({pairs['linked_pairs']}/{pairs['detected_pairs']} detected true pairs, from results.json)")


def report(counts: Counter) -> None:
    for key in sorted(counts):
        print(f"  {' / '.join(key)}: {counts[key]}")
    for event in ("gain", "loss"):
        true = sum(v for k, v in counts.items() if k[0] == f"true {event}")
        pred = sum(v for k, v in counts.items() if k[0] == f"predicted {event}")
        if true:
            print(f"  {event}: predicted {pred} vs true {true} ({100 * (pred - true) / true:+.1f} %)")


if __name__ == "__main__":
    main()
