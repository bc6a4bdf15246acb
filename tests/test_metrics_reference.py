"""Cross-check of AJI and PQ against straightforward loop implementations.

The reference functions below are written independently of ``pointcell.metrics``, one object
at a time, from the published definitions: AJI as in the MoNuSeg challenge / Kumar et al. 2017
(the same algorithm as ``get_fast_aji`` published with HoVer-Net, Graham et al. 2019) and PQ as
in ``get_fast_pq`` of HoVer-Net (pairs with IoU > 0.5). They are slow but obviously correct.
"""

import numpy as np
import pytest
from skimage.draw import disk

from pointcell.metrics import aggregated_jaccard, panoptic_quality


def reference_aji(true, pred):
    true_ids = [i for i in np.unique(true) if i]
    pred_ids = [j for j in np.unique(pred) if j]
    used, c, u = set(), 0, 0
    for i in true_ids:
        g = true == i
        best_iou, best_j = 0.0, None
        for j in pred_ids:
            s = pred == j
            inter = np.logical_and(g, s).sum()
            iou = inter / np.logical_or(g, s).sum()
            if iou > best_iou:
                best_iou, best_j = iou, j
        if best_j is None:
            u += g.sum()
            continue
        s = pred == best_j
        c += np.logical_and(g, s).sum()
        u += np.logical_or(g, s).sum()
        used.add(best_j)
    for j in pred_ids:
        if j not in used:
            u += (pred == j).sum()
    return c / u


def reference_pq(true, pred):
    true_ids = [i for i in np.unique(true) if i]
    pred_ids = [j for j in np.unique(pred) if j]
    ious = []
    for i in true_ids:
        for j in pred_ids:
            g, s = true == i, pred == j
            iou = np.logical_and(g, s).sum() / np.logical_or(g, s).sum()
            if iou > 0.5:
                ious.append(iou)
    tp = len(ious)
    fp, fn = len(pred_ids) - tp, len(true_ids) - tp
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = np.mean(ious) if ious else 0.0
    return dq * sq


def random_labels(rng, shape=(64, 64), n=12):
    labels = np.zeros(shape, dtype=np.int32)
    for k in range(1, n + 1):
        centre = rng.uniform(0, shape[0], 2)
        rr, cc = disk(tuple(centre), rng.uniform(3, 9), shape=shape)
        labels[rr, cc] = k  # later disks overlap earlier ones: irregular shapes
    return labels


@pytest.mark.parametrize("seed", range(5))
def test_aji_and_pq_match_the_reference(seed):
    rng = np.random.default_rng(seed)
    true = random_labels(rng)
    pred = np.roll(random_labels(rng) if seed == 4 else true, shift=rng.integers(0, 4), axis=1)
    pred = np.where(rng.random(pred.shape) < 0.05, 0, pred)  # speckle
    assert aggregated_jaccard(true, pred) == pytest.approx(reference_aji(true, pred))
    assert panoptic_quality(true, pred).pq == pytest.approx(reference_pq(true, pred))
