"""Instance-label and mask helpers shared by the encodings, the floor and the post-processing.

The lowest layer of the method's maths: it imports nothing of pointcell, so every stage that
makes or reads instance labels can use it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Cells:
    """Post-processed output of one image.

    ``labels`` (H, W) instance labels; ``xy`` (N, 2) detected centres as (x, y); ``score`` the
    probability at each centre; ``instance`` the label holding each centre (0 if none); for a
    classifying model, the class of each cell and its probability.
    """

    labels: np.ndarray
    xy: np.ndarray
    score: np.ndarray
    instance: np.ndarray
    class_index: np.ndarray | None = None  # (N,) index into the model's classes
    class_probability: np.ndarray | None = None  # (N,) probability of that class

    def areas(self) -> np.ndarray:
        """Area in pixels of the instance of every detection (0 when outside any)."""
        sizes = np.bincount(self.labels.ravel())
        return np.where(self.instance > 0, sizes[self.instance], 0)


def instance_centroids(labels: np.ndarray) -> np.ndarray:
    """(n, 2) centroids as (x, y) of the instances (label > 0) of a label image, in increasing
    label order; ids need not be consecutive."""
    flat = labels.ravel()
    counts = np.bincount(flat)
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    present = np.flatnonzero(counts[1:]) + 1
    mean_row = np.bincount(flat, weights=rows, minlength=counts.size)[present] / counts[present]
    mean_col = np.bincount(flat, weights=cols, minlength=counts.size)[present] / counts[present]
    return np.stack([mean_col, mean_row], axis=1)


def fill_small_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """The mask with every enclosed hole of at most ``max_hole_px`` pixels filled.

    A hole is a 4-connected region outside the mask that does not reach the image border
    (as ``ndimage.binary_fill_holes`` defines it; one labelling instead of its iterated
    dilation, several times faster).
    """
    outside, n = ndimage.label(~mask)
    small = np.bincount(outside.ravel(), minlength=n + 1) <= max_hole_px
    small[0] = False
    border = np.concatenate([outside[0], outside[-1], outside[:, 0], outside[:, -1]])
    small[border] = False
    return mask | small[outside]


def keep_instances(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Labels with only the instances whose id is flagged in ``keep`` (one bool per id, 0 =
    background), renumbered 1..n in their order."""
    keep = np.asarray(keep, dtype=bool).copy()
    keep[0] = False
    new_ids = np.zeros(len(keep), dtype=np.int32)
    new_ids[keep] = np.arange(1, int(keep.sum()) + 1)
    return new_ids[labels]


def remove_small_objects(labels: np.ndarray, min_area_px: float) -> np.ndarray:
    """Drop instances smaller than ``min_area_px`` and renumber the rest 1..n."""
    return keep_instances(labels, np.bincount(labels.ravel()) >= min_area_px)
