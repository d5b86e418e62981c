"""Linking per-slice detections across z into 3D spines (the paper's tracker).

Slices are visited top to bottom.  The boxes of the current slice are
compared with the last box of every open track by IoM; the highest-IoM pairs
are linked first, one to one, if their IoM is at least 0.5.  A box left
without a track starts a new spine.  A track that finds no box in a slice
misses it; after two consecutive misses it is closed, so a spine may skip a
single slice but not two.

A spine is reported only if one of its slices is confident: boxes above a
low *link* threshold (the paper's 0.5) build the tracks, and a track is kept
when its best box scores above the model's spine threshold
(``min_peak_score``).  Faint slices of a clearly seen spine so extend it in z
instead of being lost, and a track made only of faint boxes is dropped
(hysteresis thresholding; with ``min_peak_score=None`` every track is kept).

:class:`SliceTracker` takes one slice at a time (a microscope acquiring a
stack feeds slices as they arrive) and hands back tracks as they close;
:func:`track_slices` runs it over a whole stack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .boxes import as_boxes, greedy_pairs, iom
from .postprocess import above, link_threshold_for
from .tables import BoxTable

LINK_IOM = 0.5
MAX_MISSES = 2


@dataclass
class Track:
    """One spine followed through z.

    spine_id: 1-based id in the order spines are confirmed (their first box
        above ``min_peak_score``); 0 while the track is not confirmed.
    z: slice indices where the spine was detected (increasing).
    boxes: ``(len(z), 4)`` pixel boxes, one per detected slice.
    scores: confidences, one per detected slice.
    values: per-detection measurements (e.g. fluorescence), one row per slice.
    """

    spine_id: int
    z: list = field(default_factory=list)
    boxes: list = field(default_factory=list)
    scores: list = field(default_factory=list)
    values: list = field(default_factory=list)
    misses: int = 0

    @property
    def last_box(self) -> np.ndarray:
        return self.boxes[-1]


class SliceTracker:
    """Streaming tracker: call :meth:`add_slice` for each slice in order, then :meth:`finish`.

    link_iom: minimal IoM for a box to continue a track (paper: 0.5).
    max_misses: consecutive slices without a detection that close a track (paper: 2).
    min_peak_score: a closed track is handed back only if one of its boxes
        scored above this (None: every track).
    """

    def __init__(self, link_iom: float = LINK_IOM, max_misses: int = MAX_MISSES,
                 min_peak_score: float | None = None):
        self.link_iom = link_iom
        self.max_misses = max_misses
        self.min_peak_score = min_peak_score
        self._open: list[Track] = []
        self._next_id = 1
        self._last_z = None

    def add_slice(self, z: int, boxes, scores, values=None) -> list[Track]:
        """Link one slice's detections; return the tracks this slice closed.

        z: slice index, strictly increasing between calls.
        boxes: ``(N, 4)`` pixels; scores: ``(N,)``; values: optional ``(N,)``
        or ``(N, V)`` per-box measurements carried along with the track.
        """
        if self._last_z is not None and z <= self._last_z:
            raise ValueError(f"slices must arrive in increasing z order (got {z} after {self._last_z})")
        boxes = as_boxes(boxes)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        values = np.full((len(boxes), 1), np.nan) if values is None else np.asarray(values, dtype=np.float64)
        values = values.reshape(len(boxes), -1 if len(boxes) else max(values.size, 1))
        # slices skipped entirely (z jumps) count as misses for every open track
        skipped = 0 if self._last_z is None else z - self._last_z - 1
        self._last_z = z
        closed = self._age(skipped) if skipped else []

        last_boxes = np.array([t.last_box for t in self._open]).reshape(-1, 4)
        rows, cols = greedy_pairs(iom(last_boxes, boxes), self.link_iom)
        matched_tracks = set(rows.tolist())
        for r, c in zip(rows, cols):
            self._extend(self._open[r], z, boxes[c], scores[c], values[c])
        for k, track in enumerate(self._open):
            if k not in matched_tracks:
                track.misses += 1
        closed += self._close_missing()
        for c in sorted(set(range(len(boxes))) - set(cols.tolist())):
            track = Track(0)
            self._extend(track, z, boxes[c], scores[c], values[c])
            self._open.append(track)
        return self._confirmed(closed)

    def finish(self) -> list[Track]:
        """Close and return all tracks still open (the stack has ended)."""
        closed, self._open = self._open, []
        return self._confirmed(closed)

    def _extend(self, track: Track, z, box, score, value) -> None:
        track.z.append(int(z))
        track.boxes.append(np.asarray(box, dtype=np.float64))
        track.scores.append(float(score))
        track.values.append(value)
        track.misses = 0
        if not track.spine_id and (self.min_peak_score is None or score > self.min_peak_score):
            track.spine_id = self._next_id
            self._next_id += 1

    @staticmethod
    def _confirmed(tracks: list[Track]) -> list[Track]:
        """The closed tracks that became spines (unconfirmed ones are dropped)."""
        return [t for t in tracks if t.spine_id]

    def _age(self, n: int) -> list[Track]:
        for track in self._open:
            track.misses += n
        return self._close_missing()

    def _close_missing(self) -> list[Track]:
        closed = [t for t in self._open if t.misses >= self.max_misses]
        self._open = [t for t in self._open if t.misses < self.max_misses]
        return closed


def track_slices(detections, link_iom: float = LINK_IOM, max_misses: int = MAX_MISSES,
                 min_peak_score: float | None = None) -> BoxTable:
    """Track a whole stack: ``detections[z] = (boxes (N, 4), scores (N,))``; return a BoxTable.

    Rows are one per spine per detected slice, spine ids 1-based in order of
    confirmation.  min_peak_score: keep only tracks with a box above it.
    """
    tracker = SliceTracker(link_iom, max_misses, min_peak_score)
    tracks = []
    for z, (boxes, scores) in enumerate(detections):
        tracks += tracker.add_slice(z, boxes, scores)
    tracks += tracker.finish()
    return tracks_to_table(tracks)


def track_confirmed(detections, score_threshold: float, link_threshold: float | None = None,
                    link_iom: float = LINK_IOM, max_misses: int = MAX_MISSES) -> BoxTable:
    """The spines of a stack at ``score_threshold`` from its filtered per-slice detections: link, track, confirm.

    Boxes above the link threshold (:func:`~spinedet.runtime.postprocess.link_threshold_for`;
    None: ``score_threshold``) are tracked, and a track is kept when one of
    its boxes scores above ``score_threshold``: what :class:`SpineDetector`
    finds at those thresholds.  detections: ``[(boxes, scores), ...]`` per
    slice, filtered (area cap, NMS) at or below the link threshold; by
    :func:`~spinedet.runtime.postprocess.above` the result equals filtering
    at the link threshold itself, so one model run serves every threshold.
    """
    kept = above(detections, link_threshold_for(score_threshold, link_threshold))
    return track_slices(kept, link_iom, max_misses, min_peak_score=score_threshold)


def tracks_to_table(tracks, stack: str = "") -> BoxTable:
    """One BoxTable row per detection of every track (Track or Spine: anything with spine_id, z, boxes, scores)."""
    tracks = sorted(tracks, key=lambda t: t.spine_id)
    n = [len(t.z) for t in tracks]
    if not tracks:
        return BoxTable.empty()
    return BoxTable.from_rows(
        np.repeat([t.spine_id for t in tracks], n),
        np.concatenate([t.z for t in tracks]),
        np.concatenate([np.asarray(t.boxes) for t in tracks]),
        np.concatenate([t.scores for t in tracks]),
        [stack] * sum(n),
    )
