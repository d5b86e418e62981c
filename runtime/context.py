"""Depth context: what a model sees of the slices above and below the one it searches.

In one optical slice a spine head whose dendrite runs a slice or two deeper
is a round blob on its own, just like an axonal bouton or a punctum; what
tells them apart is the shaft nearby in depth.  A model with depth context
(its card's ``depth_context_um`` > 0) takes two channels per slice: the
slice, and the maximum projection of the slices within ``depth_context_um``
above and below it (the slice included).  For a single 2D image, and in
maximum-projection mode, the context is the image itself.

Normalisation and projection commute (both are monotonic per pixel), so the
projection may be taken of raw or of normalised slices.
"""

from __future__ import annotations

import math

import numpy as np

#: z-step (µm) assumed when a stack does not say: the paper's 0.5 µm
ASSUMED_Z_STEP_UM = 0.5


def reach_slices(depth_context_um: float, z_step_um: float | None) -> int:
    """How many slices on each side lie within ``depth_context_um`` (µm) at ``z_step_um`` (µm; None: 0.5)."""
    if depth_context_um <= 0:
        return 0
    step = z_step_um if z_step_um and z_step_um > 0 else ASSUMED_Z_STEP_UM
    return int(math.floor(depth_context_um / step + 1e-6))


def neighbour_projection(slices, k: int, reach: int) -> np.ndarray:
    """Maximum projection ``(Y, X)`` of ``slices[k - reach .. k + reach]`` (clipped to the stack).

    slices: a sequence of ``(Y, X)`` arrays (a stack, a lazy Stack or a list).
    """
    lo, hi = max(0, k - reach), min(len(slices), k + reach + 1)
    out = np.array(slices[lo], copy=True)
    for j in range(lo + 1, hi):
        np.maximum(out, slices[j], out=out)
    return out
