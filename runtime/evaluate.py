"""Scoring detections against ground truth: the paper's F1-3D and the per-slice F1.

F1-3D (Vogel et al., Eqs. 3-5).  Each 3D spine is reduced to its z-averaged
box (mean of its per-slice boxes) and its inclusive slice range
``[z1, z2]``.  Two spines D and G overlap by

* ``IoM_xy``: IoM of the z-averaged boxes,
* ``IoM_z = (min(z2_D, z2_G) - max(z1_D, z1_G) + 1) / min(z2_D - z1_D + 1, z2_G - z1_G + 1)``
  (0 when the ranges do not meet),
* ``IoM = 5 IoM_xy IoM_z / (IoM_xy + 4 IoM_z)`` (F_0.5: xy counts more than z).

A detection is a true positive if some ground-truth spine overlaps it with
``IoM >= 0.5``, else a false positive; a ground-truth spine that no detection
overlaps that much is a false negative.  (As in the paper, this is not a
one-to-one matching.)  A detected track counts only if its mean score is at
least 0.5.  ``F1 = 2 TP / (2 TP + FP + FN)``.

The per-slice (2D) F1 matches boxes of the same slice one to one, best IoM
first, at ``IoM >= 0.5``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .boxes import as_boxes, greedy_pairs, iom
from .errors import SpineDetError
from .tables import BoxTable

MATCH_IOM = 0.5
MIN_TRACK_SCORE = 0.5


@dataclass
class Spines3D:
    """Spines of one stack reduced for scoring; arrays of length S."""

    spine_id: np.ndarray
    mean_box: np.ndarray  # (S, 4) pixels
    z_first: np.ndarray
    z_last: np.ndarray
    mean_score: np.ndarray


def spines_of(table: BoxTable, stack: str, min_mean_score: float | None = None) -> Spines3D:
    """Reduce the rows of ``stack`` to one entry per spine id (optionally only tracks scoring >= min_mean_score)."""
    rows = table.select(table.stack == stack)
    ids, inverse = np.unique(rows.spine_id, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    mean_box = np.stack([np.bincount(inverse, rows.boxes[:, k], len(ids)) for k in range(4)], axis=1)
    mean_box = mean_box / np.maximum(counts, 1)[:, None]
    z_first = np.full(len(ids), np.iinfo(np.int64).max)
    z_last = np.full(len(ids), np.iinfo(np.int64).min)
    np.minimum.at(z_first, inverse, rows.z)
    np.maximum.at(z_last, inverse, rows.z)
    mean_score = np.bincount(inverse, rows.score, len(ids)) / np.maximum(counts, 1)
    keep = np.ones(len(ids), dtype=bool) if min_mean_score is None else mean_score >= min_mean_score
    return Spines3D(ids[keep], mean_box[keep], z_first[keep], z_last[keep], mean_score[keep])


def projected(table: BoxTable) -> BoxTable:
    """Every spine as one row on slice 0: its z-averaged box and mean score.

    Scores a maximum-projection run (``spine-run --mip``) against 3D ground
    truth in the plane: both reduced to one box per spine.
    """
    parts = []
    for stack in table.stacks():
        spines = spines_of(table, stack)
        n = len(spines.spine_id)
        parts.append(BoxTable.from_rows(spines.spine_id, np.zeros(n), spines.mean_box, spines.mean_score, [stack] * n))
    return BoxTable.concatenate(parts)


def iom_z(first_a, last_a, first_b, last_b) -> np.ndarray:
    """Pairwise IoM of inclusive slice ranges, shape ``(len(a), len(b))``."""
    fa, la = np.asarray(first_a)[:, None], np.asarray(last_a)[:, None]
    fb, lb = np.asarray(first_b)[None, :], np.asarray(last_b)[None, :]
    overlap = np.clip(np.minimum(la, lb) - np.maximum(fa, fb) + 1, 0, None)
    shorter = np.minimum(la - fa + 1, lb - fb + 1)
    return overlap / np.maximum(shorter, 1)


def iom_3d(a: Spines3D, b: Spines3D) -> np.ndarray:
    """Pairwise 3D IoM (F_0.5 of IoM_xy and IoM_z), shape ``(len(a), len(b))``."""
    xy = iom(a.mean_box, b.mean_box)
    z = iom_z(a.z_first, a.z_last, b.z_first, b.z_last)
    denominator = xy + 4 * z
    out = np.zeros_like(xy)
    np.divide(5 * xy * z, denominator, out=out, where=denominator > 0)
    return out


def scores_from_counts(tp: int, fp: int, fn: int) -> dict:
    """``{tp, fp, fn, precision, recall, f1}`` from the counts (F1 = 2 TP / (2 TP + FP + FN))."""
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return {"tp": int(tp), "fp": int(fp), "fn": int(fn), "precision": precision, "recall": recall, "f1": f1}


def paired_names(ps: list, gs: list) -> list[tuple[str | None, str | None]]:
    """Which stack (or source) of a prediction is scored against which of the ground truth.

    One name on each side pair up whatever they are; otherwise names pair
    up by equality, and a name on one side only is paired with None.  Raises
    SpineDetError if several names share none at all (nothing can match).
    """
    if len(ps) <= 1 and len(gs) <= 1:
        return [(ps[0] if ps else None, gs[0] if gs else None)]
    if not set(ps) & set(gs):
        raise SpineDetError(f"the stacks of the two tables share no name (prediction: {ps[:3]}..., "
                            f"ground truth: {gs[:3]}...)")
    return [(s if s in ps else None, s if s in gs else None) for s in dict.fromkeys(gs + ps)]


def f1_3d(pred: BoxTable, gt: BoxTable, match_iom: float = MATCH_IOM,
          min_track_score: float = MIN_TRACK_SCORE) -> dict:
    """The paper's F1-3D of tracked detections ``pred`` against ground truth ``gt``.

    Returns ``{tp, fp, fn, precision, recall, f1}``; tp counts detections,
    fn ground-truth spines (see module docstring).
    """
    tp = fp = fn = 0
    for ps, gs in paired_names(pred.stacks(), gt.stacks()):
        d = spines_of(pred, ps, min_track_score) if ps is not None else None
        g = spines_of(gt, gs) if gs is not None else None
        if d is None or g is None:
            fp += 0 if d is None else len(d.spine_id)
            fn += 0 if g is None else len(g.spine_id)
            continue
        hit = iom_3d(d, g) >= match_iom
        tp += int(hit.any(axis=1).sum())
        fp += int((~hit.any(axis=1)).sum())
        fn += int((~hit.any(axis=0)).sum())
    return scores_from_counts(tp, fp, fn)


def f1_2d(pred_boxes, gt_boxes, match_iom: float = MATCH_IOM) -> dict:
    """Per-slice F1 over a list of images: ``pred_boxes[i]``, ``gt_boxes[i]`` are ``(N, 4)`` arrays.

    Boxes of the same image are matched one to one, best IoM first, at
    ``IoM >= match_iom``; predictions should already be post-processed.
    """
    if len(pred_boxes) != len(gt_boxes):
        raise ValueError("need as many prediction lists as ground-truth lists")
    tp = fp = fn = 0
    for p, g in zip(pred_boxes, gt_boxes):
        p, g = as_boxes(p), as_boxes(g)
        rows, _ = greedy_pairs(iom(p, g), match_iom)
        tp += len(rows)
        fp += len(p) - len(rows)
        fn += len(g) - len(rows)
    return scores_from_counts(tp, fp, fn)


def f1_2d_tables(pred: BoxTable, gt: BoxTable, match_iom: float = MATCH_IOM,
                 min_score: float = MIN_TRACK_SCORE) -> dict:
    """Per-slice F1 of two box tables: every (stack, slice) is one image; predictions need score >= min_score."""
    pred = pred.select(pred.score >= min_score)
    pred_list, gt_list = [], []
    for ps, gs in paired_names(pred.sources(), gt.sources()):
        p = pred.select(pred.source == ps) if ps is not None else BoxTable.empty()
        g = gt.select(gt.source == gs) if gs is not None else BoxTable.empty()
        for z in np.union1d(p.z, g.z):
            pred_list.append(p.boxes[p.z == z])
            gt_list.append(g.boxes[g.z == z])
    return f1_2d(pred_list, gt_list, match_iom)


def consensus(tables: list[BoxTable], min_votes: int, match_iom: float = MATCH_IOM) -> BoxTable:
    """Ground truth agreed by at least ``min_votes`` of several annotators (the paper's minimal/majority/maximal GT).

    Each annotator's spines are matched to the spines found so far by 3D IoM
    (best pairs first, one to one, ``IoM >= match_iom``); a spine's votes are
    the annotators that marked it.  A kept spine's box on a slice is the mean
    of its annotators' boxes on that slice, over the slices that at least
    half of them marked.  Spine ids are renumbered 1.. per stack.
    """
    if not tables:
        raise SpineDetError("consensus needs at least one annotation table")
    if not 1 <= min_votes <= len(tables):
        raise SpineDetError(f"--min-votes must be between 1 and the number of annotators ({len(tables)})")
    stacks = list(dict.fromkeys(s for t in tables for s in t.stacks()))
    out = []
    for stack in stacks:
        clusters: list[list[tuple[int, int]]] = []  # members: (annotator, spine_id)
        representative: list[Spines3D] = []
        for a, table in enumerate(tables):
            mine = spines_of(table, stack)
            if len(mine.spine_id) == 0:
                continue
            if clusters:
                reps = _concat_spines(representative)
                rows, cols = greedy_pairs(iom_3d(mine, reps), match_iom)
            else:
                rows = cols = np.zeros(0, dtype=np.int64)
            for r, c in zip(rows, cols):
                clusters[c].append((a, int(mine.spine_id[r])))
            for r in sorted(set(range(len(mine.spine_id))) - set(rows.tolist())):
                clusters.append([(a, int(mine.spine_id[r]))])
                representative.append(_take(mine, r))
        new_id = 0
        for members in clusters:
            if len({a for a, _ in members}) < min_votes:
                continue
            new_id += 1
            out.append(_merge_members(tables, stack, members, new_id))
    return BoxTable.concatenate(out)


def _take(s: Spines3D, k: int) -> Spines3D:
    return Spines3D(s.spine_id[k:k + 1], s.mean_box[k:k + 1], s.z_first[k:k + 1], s.z_last[k:k + 1],
                    s.mean_score[k:k + 1])


def _concat_spines(parts: list[Spines3D]) -> Spines3D:
    return Spines3D(*(np.concatenate([getattr(p, f) for p in parts])
                      for f in ("spine_id", "mean_box", "z_first", "z_last", "mean_score")))


def _merge_members(tables, stack, members, new_id) -> BoxTable:
    rows = BoxTable.concatenate(
        tables[a].select((tables[a].stack == stack) & (tables[a].spine_id == sid)) for a, sid in members)
    slices = list(dict.fromkeys(zip(rows.source.tolist(), rows.z.tolist())))
    votes = [int(np.sum((rows.source == src) & (rows.z == z))) for src, z in slices]
    kept = [s for s, v in zip(slices, votes) if v * 2 >= len(members)] or slices
    boxes = [rows.boxes[(rows.source == src) & (rows.z == z)].mean(axis=0) for src, z in kept]
    return BoxTable.from_rows([new_id] * len(kept), [z for _, z in kept], boxes, np.ones(len(kept)),
                              [stack] * len(kept), [src for src, _ in kept])
