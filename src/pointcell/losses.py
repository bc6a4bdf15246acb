"""Losses of the three tasks and the ways to combine them.

Functional losses take the network's logits (B, 2, H, W) and a target (B, H, W):

* Voronoi: cross-entropy over non-ignored pixels only (paper eq. 2);
* cluster: cross-entropy (paper eq. 1); pointcell's cluster label also has an ignore value;
* repel: mean squared error between the nucleus probability and the filtered repel (eq. 3),
  over pixels whose target is not negative (``REPEL_IGNORE``: unclicked nuclei under
  ``unclicked="exclude"``).

A classifying model (typed points) adds a fourth loss, ``class``: cross-entropy of its class
channels against the class target, which labels only the pixels at and around typed points
(everything else, untyped points included, is ignored). It is added at every iteration, on top
of what the combiner chooses among the paper's three tasks, which stay as in the paper. A model
with a detection head adds ``proximity`` the same way: binary cross-entropy of its proximity
logit against the soft proximity target (SC-CNN's regression target, learned as a probability).

Combiners: ``scheduler`` (paper eq. 4: one task per iteration, in the order Voronoi, repel,
cluster), ``sum`` (Qu et al. 2019) and ``uncertainty`` (Kendall et al. 2018, learned
log-variances).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pointcell.encodings import CLASS_IGNORE, IGNORE
from pointcell.model import N_OUTPUTS, nucleus_probability

TASKS = ("voronoi", "repel", "cluster")  # the paper's scheduler order
REGRESSION_TASKS = ("repel",)
EXTRA_TASKS = ("class", "proximity")  # added at every iteration, whatever the combiner
TasksMode = Literal["scheduler", "sum", "uncertainty"]


def labelled_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, *, ignore: int = IGNORE
) -> torch.Tensor:
    """Cross-entropy averaged over pixels whose target is not ``ignore`` (0 if there are
    none)."""
    valid = target != ignore
    if not bool(valid.any()):
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), target.long(), ignore_index=ignore)


def repel_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the nucleus probability and the (filtered) repel map, over
    pixels whose target is not negative (``REPEL_IGNORE``, also where bilinear warping blends
    it with a neighbour; 0 if there are none)."""
    probability = nucleus_probability(logits)
    valid = target >= 0
    if not bool(valid.any()):
        return probability.float().sum() * 0.0
    return F.mse_loss(probability[valid].float(), target[valid].float())


def class_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the class channels over the labelled pixels (typed points)."""
    return labelled_cross_entropy(logits[:, N_OUTPUTS:], target, ignore=CLASS_IGNORE)


def proximity_loss(logit: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the proximity logit (B, H, W) against the soft target."""
    return F.binary_cross_entropy_with_logits(logit.float(), target.float())


LOSSES = {"voronoi": labelled_cross_entropy, "cluster": labelled_cross_entropy, "repel": repel_loss}


def task_losses(
    logits: torch.Tensor, targets: Mapping[str, torch.Tensor], tasks: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Loss of every task in ``tasks`` against its target; ``class`` too when the logits have
    class channels."""
    losses = {task: LOSSES[task](logits[:, :N_OUTPUTS], targets[task]) for task in tasks}
    if logits.shape[1] > N_OUTPUTS and "class" in targets:
        losses["class"] = class_loss(logits, targets["class"])
    return losses


class TaskCombiner(nn.Module):
    """Turns per-task losses into the loss to minimise at an iteration.

    ``tasks`` is the enabled subset (in any order; the scheduler cycles through them in the
    paper's order). Only ``uncertainty`` has parameters: one log-variance ``s`` per task, with
    ``exp(-s) L + s/2`` for classification and ``exp(-s) L / 2 + s/2`` for regression tasks
    (Kendall et al. 2018, eqs. 7-10, with s = log sigma^2).
    """

    def __init__(self, mode: TasksMode, tasks: Sequence[str]) -> None:
        super().__init__()
        unknown = set(tasks) - set(TASKS)
        if unknown or not tasks:
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {list(tasks)}")
        if mode not in ("scheduler", "sum", "uncertainty"):
            raise ValueError(f"mode must be scheduler, sum or uncertainty, got {mode!r}")
        self.mode = mode
        self.tasks = tuple(t for t in TASKS if t in tasks)
        self.log_vars = nn.ParameterDict(
            {t: nn.Parameter(torch.zeros(())) for t in self.tasks} if mode == "uncertainty" else {}
        )

    def tasks_at(self, iteration: int) -> tuple[str, ...]:
        """The tasks whose losses are computed at ``iteration``."""
        if self.mode == "scheduler":
            return (self.tasks[iteration % len(self.tasks)],)
        return self.tasks

    def forward(self, losses: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if self.mode != "uncertainty":
            return torch.stack([losses[t] for t in losses]).sum()
        total = [losses[task] for task in EXTRA_TASKS if task in losses]
        for task, loss in losses.items():
            if task in EXTRA_TASKS:
                continue
            s = self.log_vars[task]
            scale = 0.5 if task in REGRESSION_TASKS else 1.0
            total.append(scale * torch.exp(-s) * loss + 0.5 * s)
        return torch.stack(total).sum()
