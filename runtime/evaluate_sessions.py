"""Scoring a tracked series against ground truth: are the same spines linked across sessions?

The metric (``spine-eval sessions``):

1. **Which detection is which true spine**, per session: detected and
   true spines are matched one to one by the paper's 3D IoM (:mod:`.evaluate`),
   best pairs first, at ``IoM >= 0.5``.
2. **True pairs**: a true spine seen in two consecutive sessions ``k`` and
   ``k + 1`` is one true pair.  It is *detected* when both of its spines
   were matched by detections, and *linked* when those two detections carry
   the same track id.

   * ``linking_accuracy`` = linked / detected true pairs: how well the
     tracker links what the detector found (the tracker's own score);
   * ``pair_recall`` = linked / all true pairs (detection misses included).
3. **Links**: a predicted track seen in consecutive sessions ``k``, ``k + 1``
   is one link.  It is *correct* when both ends match the same true spine, a
   *false link* when they match two different true spines, *half-matched*
   when only one end matches a true spine (a true spine joined to a
   detection that matched none: a false detection, or the same spine
   detected with a box too unlike its true one), and *spurious* when
   neither end matches (two false detections joined, e.g. the same bouton
   twice).  ``link_precision`` = correct / (correct + false).
4. **Gained and lost**: per session, counted by
   :func:`~spinedet.runtime.sessions.session_summary` on both series (spines
   whose place left some session's view, state ``partial``, are not
   counted); the error is ``|predicted - true| / true`` of the totals over
   all sessions.

A ground truth series is written like ``spine-track``'s output:
``NAME_observations.csv`` with ``NAME_s<k>_boxes.csv`` beside it
(``spine-synth --sessions`` writes one).
"""

from __future__ import annotations

import numpy as np

from .boxes import greedy_pairs
from .errors import SpineDetError
from .evaluate import MATCH_IOM, iom_3d, spines_of
from .sessions import session_summary


def session_matches(pred_boxes, truth_boxes, match_iom: float = MATCH_IOM) -> dict:
    """``{predicted spine id: true spine id}`` of one session, matched one to one by 3D IoM (best first)."""
    if pred_boxes is None or truth_boxes is None or not len(pred_boxes) or not len(truth_boxes):
        return {}
    p, g = spines_of(pred_boxes, pred_boxes.stacks()[0]), spines_of(truth_boxes, truth_boxes.stacks()[0])
    rows, cols = greedy_pairs(iom_3d(p, g), match_iom)
    return {int(p.spine_id[r]): int(g.spine_id[c]) for r, c in zip(rows, cols)}


def _matrix(observations: list, visible=None):
    """Track ids, presence ``(T, N)`` and, per session, ``{spine id: row}`` from per-session ``{spine id: track}``."""
    n = len(observations)
    tracks = sorted({t for session in observations for t in session.values()})
    row = {t: i for i, t in enumerate(tracks)}
    present = np.zeros((len(tracks), n), dtype=bool)
    for k, session in enumerate(observations):
        for t in session.values():
            present[row[t], k] = True
    shown = np.ones_like(present) if visible is None else np.array(
        [[visible.get(t, [True] * n)[k] for k in range(n)] for t in tracks], dtype=bool).reshape(present.shape)
    return tracks, present, shown


def link_scores(truth: list, pred: list, matches: list, truth_visible: dict | None = None,
                pred_visible: dict | None = None) -> dict:
    """The series metric (module docstring) from plain mappings.

    truth, pred: per session ``{spine id: track id}`` of the spines seen
    there.  matches: per session ``{predicted spine id: true spine id}``.
    truth_visible, pred_visible: ``{track id: [in view in session k, ...]}``
    (default: always in view).  Returns a dict of counts and ratios, with
    ``per_session`` rows (``session``, true and predicted ``gained``/``lost``).
    """
    n = len(truth)
    if len(pred) != n or len(matches) != n:
        raise SpineDetError(f"the ground truth has {n} sessions, the prediction {len(pred)}")
    true_pairs = detected = linked = 0
    links = correct = false = half = spurious = 0
    for k in range(n - 1):
        # true spine -> predicted track, per session
        found = [{matches[j][s]: pred[j][s] for s in pred[j] if s in matches[j]} for j in (k, k + 1)]
        true_track = [{s: truth[j][s] for s in truth[j]} for j in (k, k + 1)]
        by_track = [{}, {}]
        for j in (0, 1):
            for s, t in true_track[j].items():
                by_track[j][t] = s
        for t in set(by_track[0]) & set(by_track[1]):
            true_pairs += 1
            a, b = by_track[0][t], by_track[1][t]
            if a in found[0] and b in found[1]:
                detected += 1
                linked += int(found[0][a] == found[1][b])
        # predicted links
        ends = [{}, {}]
        for j, kk in enumerate((k, k + 1)):
            for s, t in pred[kk].items():
                m = matches[kk].get(s)
                ends[j][t] = None if m is None else truth[kk].get(m)
        for t in set(ends[0]) & set(ends[1]):
            links += 1
            a, b = ends[0][t], ends[1][t]
            if a is None and b is None:
                spurious += 1
            elif a is None or b is None:
                half += 1
            elif a == b:
                correct += 1
            else:
                false += 1
    _, tp, tv = _matrix(truth, truth_visible)
    _, pp, pv = _matrix(pred, pred_visible)
    true_rows, pred_rows = session_summary(tp, tv), session_summary(pp, pv)
    per_session = [{"session": k, "gained_true": t["gained"], "gained_pred": p["gained"], "lost_true": t["lost"],
                    "lost_pred": p["lost"], "count_true": t["count"], "count_pred": p["count"]}
                   for k, (t, p) in enumerate(zip(true_rows, pred_rows))]

    def totals(key):
        true_total = sum(r[key] or 0 for r in true_rows)
        pred_total = sum(r[key] or 0 for r in pred_rows)
        return {"true": true_total, "pred": pred_total,
                "error": abs(pred_total - true_total) / true_total if true_total else (0.0 if not pred_total else None)}

    return {
        "sessions": n, "true_pairs": true_pairs, "detected_pairs": detected, "linked_pairs": linked,
        "linking_accuracy": linked / detected if detected else None,
        "pair_recall": linked / true_pairs if true_pairs else None,
        "links": links, "correct_links": correct, "false_links": false, "half_matched_links": half,
        "spurious_links": spurious,
        "link_precision": correct / (correct + false) if correct + false else None,
        "gained": totals("gained"), "lost": totals("lost"), "per_session": per_session,
    }


def tracks_by_session(series) -> list[dict]:
    """Per session, ``{spine id: track id}`` of the spines seen there, from a series read by
    :func:`~spinedet.runtime.session_reports.read_series`."""
    out = [dict() for _ in range(series.n_sessions)]
    for t, k, seen, s in zip(series.track_id, series.session, series.present, series.spine_id):
        if seen:
            out[k][int(s)] = int(t)
    return out


def score_series(truth, pred, match_iom: float = MATCH_IOM) -> dict:
    """:func:`link_scores` of two series as read by :func:`~spinedet.runtime.session_reports.read_series`
    (both need their per-session ``_boxes.csv``)."""
    if truth.n_sessions != pred.n_sessions:
        raise SpineDetError(f"the ground truth has {truth.n_sessions} sessions, the prediction {pred.n_sessions}")
    for what, series in (("ground truth", truth), ("prediction", pred)):
        missing = [k for k, b in enumerate(series.boxes) if b is None]
        if missing:
            raise SpineDetError(f"the {what} lacks the box table of session {missing[0]} "
                                f"(NAME_s{missing[0]}_boxes.csv)")

    def visible(series):
        ids, _, shown = series.presence()
        return {int(t): row.tolist() for t, row in zip(ids, shown)}

    matches = [session_matches(p, g, match_iom) for p, g in zip(pred.boxes, truth.boxes)]
    return link_scores(tracks_by_session(truth), tracks_by_session(pred), matches, visible(truth), visible(pred))
