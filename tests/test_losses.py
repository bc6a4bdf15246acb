import math

import pytest
import torch

from pointcell.encodings import IGNORE, REPEL_IGNORE
from pointcell.losses import TaskCombiner, labelled_cross_entropy, proximity_loss, repel_loss


def test_scheduler_follows_the_paper_order():
    combiner = TaskCombiner("scheduler", ["cluster", "voronoi", "repel"])
    picked = [combiner.tasks_at(i) for i in range(6)]
    assert picked == [("voronoi",), ("repel",), ("cluster",)] * 2


def test_scheduler_cycles_through_a_subset():
    combiner = TaskCombiner("scheduler", ["cluster", "voronoi"])
    assert [combiner.tasks_at(i) for i in range(4)] == [("voronoi",), ("cluster",)] * 2


@pytest.mark.parametrize("mode", ["sum", "uncertainty"])
def test_sum_and_uncertainty_give_every_task_a_gradient(mode):
    combiner = TaskCombiner(mode, ["voronoi", "repel", "cluster"])
    assert combiner.tasks_at(7) == ("voronoi", "repel", "cluster")
    losses = {
        t: torch.tensor(v, requires_grad=True)
        for t, v in [("voronoi", 0.7), ("repel", 0.2), ("cluster", 0.9)]
    }
    combiner(losses).backward()
    assert all(loss.grad is not None and loss.grad.item() > 0 for loss in losses.values())
    if mode == "uncertainty":
        assert all(p.grad is not None and p.grad.item() != 0 for p in combiner.parameters())


def test_uncertainty_weights_start_as_kendall_formula():
    combiner = TaskCombiner("uncertainty", ["voronoi", "repel"])
    total = combiner({"voronoi": torch.tensor(0.8), "repel": torch.tensor(0.4)})
    assert total.detach().item() == pytest.approx(0.8 + 0.5 * 0.4)  # s = 0: exp(0) = 1


def test_bad_combiner_arguments():
    with pytest.raises(ValueError, match="subset"):
        TaskCombiner("sum", ["voronoi", "edges"])
    with pytest.raises(ValueError, match="mode"):
        TaskCombiner("average", ["voronoi"])


def test_voronoi_loss_ignores_ignored_pixels():
    target = torch.full((1, 4, 4), IGNORE)
    target[0, 0, 0], target[0, 3, 3] = 1, 0
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = labelled_cross_entropy(logits, target)
    loss.backward()
    changed = logits.detach().clone()
    changed[0, :, 1:3, 1:3] += 5.0  # only ignored pixels differ
    assert float(labelled_cross_entropy(changed, target)) == pytest.approx(loss.detach().item())
    grad = logits.grad[0].abs().sum(0)
    assert grad[0, 0] > 0 and grad[3, 3] > 0
    assert grad[target[0] == IGNORE].sum() == 0


def test_cross_entropy_with_everything_ignored_is_zero_not_nan():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = labelled_cross_entropy(logits, torch.full((1, 3, 3), IGNORE))
    loss.backward()
    assert loss.detach().item() == 0.0


def test_repel_loss_is_mse_on_nucleus_probability():
    logits = torch.zeros(1, 2, 2, 2)  # softmax -> 0.5 everywhere
    target = torch.tensor([[[0.5, 1.0], [0.0, 0.5]]])
    assert float(repel_loss(logits, target)) == pytest.approx((0.25 + 0.25) / 4)


def test_repel_loss_skips_negative_targets():
    logits = torch.zeros(1, 2, 2, 2, requires_grad=True)  # probability 0.5 everywhere
    target = torch.tensor([[[1.0, REPEL_IGNORE], [0.0, -0.3]]])  # -0.3: blended by a warp
    assert repel_loss(logits, target).item() == pytest.approx((0.25 + 0.25) / 2)
    skipped = repel_loss(logits, torch.full((1, 2, 2), REPEL_IGNORE))
    skipped.backward()
    assert skipped.item() == 0.0 and logits.grad is not None


def test_proximity_loss_is_binary_cross_entropy_on_the_soft_target():
    logit = torch.tensor([[[0.0, 2.0]]])
    target = torch.tensor([[[0.5, 1.0]]])
    expected = (-math.log(0.5) - math.log(1 / (1 + math.exp(-2.0)))) / 2
    assert float(proximity_loss(logit, target)) == pytest.approx(expected)


def test_uncertainty_adds_class_and_proximity_losses_unweighted():
    combiner = TaskCombiner("uncertainty", ["voronoi"])
    losses = {
        "voronoi": torch.tensor(2.0),
        "class": torch.tensor(3.0),
        "proximity": torch.tensor(5.0),
    }
    assert combiner(losses).item() == pytest.approx(2.0 + 3.0 + 5.0)  # log-variance 0: weight 1
