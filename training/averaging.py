"""An exponential moving average of a model's weights while it trains (Polyak averaging).

With batch 1 and a learning rate high enough to keep learning, the weights
after any one step are noisy; their running average is a smoother model that
usually scores better and calibrates more stably.  ``spine-train --ema D``
keeps one beside the trained model and validates and saves the average.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class WeightAverage:
    """``average = d * average + (1 - d) * weights`` after every optimiser step.

    decay: ``d`` for a long run (e.g. 0.999: an average over roughly the last
        1,000 steps).  Early on ``d`` is lowered to ``(1 + n) / (10 + n)``
        after ``n`` updates, so the average does not hold on to the weights it
        started from.  Non-float buffers (counters) are copied, not averaged.
    model: the averaged model (a copy of the trained one, in eval mode, no gradients).
    """

    def __init__(self, model: nn.Module, decay: float, updates: int = 0):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must be between 0 and 1, got {decay}")
        self.decay = float(decay)
        self.updates = int(updates)
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        return min(self.decay, (1 + self.updates) / (10 + self.updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` (same architecture) into the average."""
        self.updates += 1
        d = self.current_decay()
        weights = model.state_dict()
        for name, average in self.model.state_dict().items():
            if average.is_floating_point():
                average.mul_(d).add_(weights[name].detach(), alpha=1.0 - d)
            else:
                average.copy_(weights[name])
