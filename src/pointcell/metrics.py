"""Segmentation and detection metrics, as pure NumPy functions on label images and points.

Segmentation (instance label images, 0 = background): pixel accuracy and F1, object-level Dice
and AJI as in Qu et al. 2019 / Kumar et al. 2017, panoptic quality as in HoVer-Net. Detection:
one-to-one (Hungarian) matching of predicted to true centres within a radius, precision /
recall / F1, and Lin's concordance correlation coefficient of per-image counts.
"""

from __future__ import annotations

import math
from dataclasses import asdict, astuple, dataclass

import numpy as np
import numpy.typing as npt
from scipy import sparse
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


def _relabel(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 1..n (0 stays background) and n."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape)
    if ids[0] != 0:
        return inverse + 1, len(ids)
    return inverse, len(ids) - 1


@dataclass(frozen=True)
class Overlap:
    """Pixel counts shared by true object i and predicted object j (both 1-based), and sizes."""

    intersection: np.ndarray  # (n_true + 1, n_pred + 1), row/col 0 = background
    true_sizes: np.ndarray  # (n_true,)
    pred_sizes: np.ndarray  # (n_pred,)

    @property
    def iou(self) -> np.ndarray:
        inter = self.intersection[1:, 1:]
        union = self.true_sizes[:, None] + self.pred_sizes[None, :] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(union > 0, inter / union, 0.0)


def overlap(true: np.ndarray, pred: np.ndarray) -> Overlap:
    """Contingency table of two label images of the same shape."""
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} vs {pred.shape}")
    t, n_true = _relabel(true)
    p, n_pred = _relabel(pred)
    table = sparse.coo_matrix(
        (np.ones(t.size, dtype=np.int64), (t.ravel(), p.ravel())), shape=(n_true + 1, n_pred + 1)
    ).toarray()
    return Overlap(table, table[1:, :].sum(1), table[:, 1:].sum(0))


def pixel_scores(true: np.ndarray, pred: np.ndarray) -> tuple[float, float]:
    """Pixel accuracy and pixel F1 of the foreground (label > 0)."""
    t, p = true > 0, pred > 0
    tp = np.count_nonzero(t & p)
    accuracy = np.count_nonzero(t == p) / t.size
    denominator = np.count_nonzero(t) + np.count_nonzero(p)
    return float(accuracy), float(2 * tp / denominator) if denominator else 1.0


def object_dice(true: np.ndarray, pred: np.ndarray, *, table: Overlap | None = None) -> float:
    """Object-level Dice (Sirinukunwattana et al. 2017, used by Qu et al. 2019).

    ``1/2 [sum_i w_i Dice(G_i, S*(G_i)) + sum_j v_j Dice(G*(S_j), S_j)]`` where S*(G) is the
    predicted object overlapping G most, and w, v are area fractions.
    """
    table = table or overlap(true, pred)
    inter = table.intersection[1:, 1:]
    n_true, n_pred = inter.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    dice = 2 * inter / (table.true_sizes[:, None] + table.pred_sizes[None, :])
    best_for_true = dice[np.arange(n_true), inter.argmax(1)] * (inter.max(1) > 0)
    best_for_pred = dice[inter.argmax(0), np.arange(n_pred)] * (inter.max(0) > 0)
    w = table.true_sizes / table.true_sizes.sum()
    v = table.pred_sizes / table.pred_sizes.sum()
    return float(0.5 * ((w * best_for_true).sum() + (v * best_for_pred).sum()))


def aggregated_jaccard(
    true: np.ndarray, pred: np.ndarray, *, table: Overlap | None = None
) -> float:
    """Aggregated Jaccard Index, Kumar et al. 2017 (the MoNuSeg challenge definition).

    Each true nucleus is paired with the predicted one of highest IoU: their intersection adds
    to C and their union to U (a true nucleus overlapping nothing adds only its own area to U).
    Predicted nuclei never paired add their areas to U. AJI = C / U.
    """
    table = table or overlap(true, pred)
    inter = table.intersection[1:, 1:]
    n_true, n_pred = inter.shape
    if n_true == 0:
        return 1.0 if n_pred == 0 else 0.0
    if n_pred == 0:
        return 0.0
    iou = table.iou
    best = iou.argmax(1)
    matched = iou[np.arange(n_true), best] > 0
    inter_best = inter[np.arange(n_true), best]
    union_best = table.true_sizes + table.pred_sizes[best] - inter_best
    c = inter_best[matched].sum()
    u = union_best[matched].sum() + table.true_sizes[~matched].sum()
    used = np.zeros(n_pred, dtype=bool)
    used[best[matched]] = True
    u += table.pred_sizes[~used].sum()
    return float(c / u) if u else 1.0


@dataclass(frozen=True)
class PanopticQuality:
    dq: float
    sq: float
    pq: float
    tp: int
    fp: int
    fn: int


def panoptic_quality(
    true: np.ndarray, pred: np.ndarray, *, table: Overlap | None = None
) -> PanopticQuality:
    """Panoptic quality as in HoVer-Net: pairs with IoU > 0.5 (unique by construction),
    DQ = TP / (TP + FP/2 + FN/2), SQ = mean IoU of the pairs, PQ = DQ * SQ."""
    table = table or overlap(true, pred)
    iou = table.iou
    n_true, n_pred = iou.shape
    pairs = iou > 0.5
    tp = int(pairs.sum())
    fp, fn = n_pred - tp, n_true - tp
    if tp == 0:
        return (
            PanopticQuality(0.0, 0.0, 0.0, tp, fp, fn)
            if (fp or fn)
            else PanopticQuality(1.0, 1.0, 1.0, 0, 0, 0)
        )
    dq = tp / (tp + 0.5 * fp + 0.5 * fn)
    sq = float(iou[pairs].mean())
    return PanopticQuality(dq, sq, dq * sq, tp, fp, fn)


@dataclass(frozen=True)
class SegmentationScores:
    accuracy: float
    f1: float
    dice: float
    aji: float
    dq: float
    sq: float
    pq: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def segmentation_scores(true: np.ndarray, pred: np.ndarray) -> SegmentationScores:
    """All segmentation metrics of one image (true and predicted instance labels)."""
    table = overlap(true, pred)
    accuracy, f1 = pixel_scores(true, pred)
    pq = panoptic_quality(true, pred, table=table)
    return SegmentationScores(
        accuracy,
        f1,
        object_dice(true, pred, table=table),
        aggregated_jaccard(true, pred, table=table),
        pq.dq,
        pq.sq,
        pq.pq,
    )


@dataclass(frozen=True)
class DetectionScores:
    tp: int
    fp: int
    fn: int

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 1.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 1.0

    @property
    def f1(self) -> float:
        denominator = 2 * self.tp + self.fp + self.fn
        return 2 * self.tp / denominator if denominator else 1.0

    def __add__(self, other: DetectionScores) -> DetectionScores:
        return DetectionScores(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    def to_dict(self) -> dict[str, float]:
        return {
            "tp": self.tp,
            "fp": self.fp,
            "fn": self.fn,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
        }


def match_points(
    true_xy: np.ndarray, pred_xy: np.ndarray, *, radius: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of predicted to true points within ``radius`` that maximises the
    number of pairs and, among those, minimises total distance (Hungarian algorithm).

    Returns index arrays (true_index, pred_index) of the matched pairs.
    """
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, float).reshape(-1, 2)
    empty = np.empty(0, dtype=np.int64)
    if len(true_xy) == 0 or len(pred_xy) == 0:
        return empty, empty
    close = cKDTree(true_xy).sparse_distance_matrix(
        cKDTree(pred_xy), radius, output_type="coo_matrix"
    )
    if close.nnz == 0:
        return empty, empty
    rows, row_index = np.unique(close.row, return_inverse=True)
    cols, col_index = np.unique(close.col, return_inverse=True)
    # cost: pairs within the radius cost their distance minus a large bonus, others nothing
    big = radius * (len(rows) + len(cols) + 1) + 1.0
    cost = np.zeros((len(rows), len(cols)))
    cost[row_index, col_index] = close.data - big
    r, c = linear_sum_assignment(cost)
    keep = cost[r, c] < 0
    return rows[r[keep]], cols[c[keep]]


@dataclass(frozen=True)
class DetectionErrors:
    """Why detections fail, after one-to-one matching within a radius.

    Misses (false negatives), by what the predicted labels hold at the true point:
    ``fn_background`` no predicted nucleus there (missed, or a click beside its nucleus);
    ``fn_merged`` a nucleus whose detection went to another true point (touching nuclei
    segmented as one); ``fn_displaced`` a nucleus whose detection matched nothing (placed
    farther than the radius). False detections: ``fp_far`` no true point within twice the
    radius (an unannotated nucleus, or an artefact); ``fp_near`` the others (a nucleus split in
    two, or a detection just beyond the radius).
    """

    fn_background: int
    fn_merged: int
    fn_displaced: int
    fp_far: int
    fp_near: int

    def __add__(self, other: DetectionErrors) -> DetectionErrors:
        return DetectionErrors(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


Matching = tuple[np.ndarray, np.ndarray]  # (true_index, pred_index), as match_points gives


def detection_errors(
    true_xy: np.ndarray,
    pred_xy: np.ndarray,
    labels: np.ndarray,
    *,
    radius: float,
    matched: Matching | None = None,
) -> DetectionErrors:
    """Sort the misses and false detections of one image by cause (see
    :class:`DetectionErrors`); ``labels`` are the predicted instances (H, W), points (x, y).
    ``matched``: the pairs of :func:`match_points` at this radius, when already computed."""
    true_xy = np.asarray(true_xy, float).reshape(-1, 2)
    pred_xy = np.asarray(pred_xy, float).reshape(-1, 2)
    true_index, pred_index = matched or match_points(true_xy, pred_xy, radius=radius)
    missed = np.setdiff1d(np.arange(len(true_xy)), true_index)
    false = np.setdiff1d(np.arange(len(pred_xy)), pred_index)
    nucleus_of_truth = _labels_at(labels, true_xy[missed])
    matched_nuclei = np.zeros(int(labels.max()) + 1, dtype=bool)
    matched_nuclei[_labels_at(labels, pred_xy[pred_index])] = True
    matched_nuclei[0] = False
    inside = nucleus_of_truth > 0
    merged = inside & matched_nuclei[nucleus_of_truth]
    if len(true_xy) and len(false):
        nearest, _ = cKDTree(true_xy).query(pred_xy[false])
        far = int((nearest > 2 * radius).sum())
    else:
        far = len(false)
    return DetectionErrors(
        fn_background=int((~inside).sum()),
        fn_merged=int(merged.sum()),
        fn_displaced=int((inside & ~merged).sum()),
        fp_far=far,
        fp_near=len(false) - far,
    )


def _labels_at(labels: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """The label under each point (x, y), rounded to the nearest pixel and clipped inside."""
    h, w = labels.shape
    cols = np.clip(np.rint(xy[:, 0]).astype(int), 0, w - 1)
    rows = np.clip(np.rint(xy[:, 1]).astype(int), 0, h - 1)
    return labels[rows, cols]


def systematic_offset(
    offsets: np.ndarray, *, min_px: float = 0.5, min_pairs: int = 30, z: float = 4.0
) -> np.ndarray | None:
    """The mean (dx, dy) of matched ``true - predicted`` offsets (N, 2) when it is a shift of
    the whole point set rather than noise: at least ``min_px`` along an axis and ``z`` standard
    errors from zero, over at least ``min_pairs`` pairs; else None. A shift of one pixel is
    the mark of points counted from 1 (MATLAB) read as counted from 0."""
    offsets = np.asarray(offsets, float).reshape(-1, 2)
    if len(offsets) < min_pairs:
        return None
    mean = offsets.mean(axis=0)
    standard_error = offsets.std(axis=0, ddof=1) / np.sqrt(len(offsets))
    shifted = (np.abs(mean) >= min_px) & (np.abs(mean) > z * standard_error)
    return mean if shifted.any() else None


def detection_scores(
    true_xy: np.ndarray, pred_xy: np.ndarray, *, radius: float, matched: Matching | None = None
) -> DetectionScores:
    """True positives, false positives and false negatives after one-to-one matching
    (``matched``: the pairs of :func:`match_points` at this radius, when already computed)."""
    t, _ = matched or match_points(true_xy, pred_xy, radius=radius)
    n_true, n_pred = len(np.reshape(true_xy, (-1, 2))), len(np.reshape(pred_xy, (-1, 2)))
    return DetectionScores(len(t), n_pred - len(t), n_true - len(t))


@dataclass(frozen=True)
class Concordance:
    ccc: float
    low: float  # 95% confidence interval
    high: float


def concordance(x: npt.ArrayLike, y: npt.ArrayLike, *, confidence: float = 0.95) -> Concordance:
    """Lin's concordance correlation coefficient with its confidence interval (Lin 1989:
    asymptotic variance of the Fisher z-transform). Identical series give 1 with CI [1, 1]."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    n = len(x)
    if n != len(y) or n < 2:
        raise ValueError("concordance needs two series of the same length, at least 2")
    mx, my = x.mean(), y.mean()
    sxx, syy = x.var(), y.var()
    sxy = ((x - mx) * (y - my)).mean()
    denominator = sxx + syy + (mx - my) ** 2
    if denominator == 0:
        return Concordance(1.0, 1.0, 1.0)
    ccc = 2 * sxy / denominator
    if ccc >= 1.0 or n < 3 or sxx == 0 or syy == 0:
        return Concordance(float(ccc), float(ccc), float(ccc))
    r = sxy / math.sqrt(sxx * syy)
    u = (mx - my) / (sxx * syy) ** 0.25
    variance = (
        (1 - r**2) * ccc**2 / ((1 - ccc**2) * r**2)
        + 2 * ccc**3 * (1 - ccc) * u**2 / (r * (1 - ccc**2) ** 2)
        - ccc**4 * u**4 / (2 * r**2 * (1 - ccc**2) ** 2)
    ) / (n - 2)
    from scipy.stats import norm

    half = norm.ppf(0.5 + confidence / 2) * math.sqrt(max(variance, 0.0))
    z = math.atanh(ccc)
    return Concordance(float(ccc), math.tanh(z - half), math.tanh(z + half))


def proportion_ci(successes: int, total: int, *, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default); (0, 1) when ``total`` is 0."""
    if total == 0:
        return 0.0, 1.0
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class ClassMatchCounts:
    """Detection and classification counts of one or more images, after matching centres.

    ``confusion[t, p]``: matched pairs with true class t and predicted class p;
    ``unmatched_true[c]`` / ``unmatched_pred[c]``: missed true cells and spurious predicted
    cells of class c. Counts of several images add up.
    """

    confusion: np.ndarray
    unmatched_true: np.ndarray
    unmatched_pred: np.ndarray

    def __add__(self, other: ClassMatchCounts) -> ClassMatchCounts:
        return ClassMatchCounts(
            self.confusion + other.confusion,
            self.unmatched_true + other.unmatched_true,
            self.unmatched_pred + other.unmatched_pred,
        )

    def class_f1(self) -> np.ndarray:
        """HoVer-Net's per-class F_c (Graham et al. 2019, eq. 6): on matched pairs TP_c, TN_c,
        FP_c, FN_c of class c, plus unmatched detections FP_d and misses FN_d of class c,
        F_c = 2(TP_c+TN_c) / (2(TP_c+TN_c) + 2FP_c + 2FN_c + FP_d + FN_d)."""
        matrix = self.confusion
        total = matrix.sum()
        tp = np.diag(matrix)
        fp = matrix.sum(axis=0) - tp
        fn = matrix.sum(axis=1) - tp
        tn = total - tp - fp - fn
        numerator = 2 * (tp + tn)
        denominator = numerator + 2 * fp + 2 * fn + self.unmatched_pred + self.unmatched_true
        return np.divide(numerator, denominator, out=np.zeros(len(tp)), where=denominator > 0)

    def matched_f1(self) -> tuple[float, float, np.ndarray]:
        """Macro and support-weighted F1 of the classes over matched pairs, and each class's
        F1 (classification quality alone, detection errors left out)."""
        matrix = self.confusion
        tp = np.diag(matrix).astype(float)
        precision_den = matrix.sum(axis=0)
        recall_den = matrix.sum(axis=1)
        denominator = precision_den + recall_den
        f1 = np.divide(2 * tp, denominator, out=np.zeros(len(tp)), where=denominator > 0)
        present = recall_den > 0
        macro = float(f1[present].mean()) if present.any() else 0.0
        weighted = float((f1 * recall_den).sum() / recall_den.sum()) if recall_den.sum() else 0.0
        return macro, weighted, f1


def class_match_counts(
    true_xy: np.ndarray,
    true_class: npt.ArrayLike,
    pred_xy: np.ndarray,
    pred_class: npt.ArrayLike,
    *,
    n_classes: int,
    radius: float,
    matched: Matching | None = None,
) -> ClassMatchCounts:
    """Match centres (Hungarian, within ``radius``; ``matched``: those pairs when already
    computed) and count classes; class indices < 0 (an untyped true cell) are left out of
    every class count."""
    true_class = np.asarray(true_class, int)
    pred_class = np.asarray(pred_class, int)
    true_index, pred_index = matched or match_points(true_xy, pred_xy, radius=radius)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    t, p = true_class[true_index], pred_class[pred_index]
    typed = (t >= 0) & (p >= 0)
    np.add.at(confusion, (t[typed], p[typed]), 1)
    missed = np.setdiff1d(np.arange(len(true_class)), true_index)
    spurious = np.setdiff1d(np.arange(len(pred_class)), pred_index)
    return ClassMatchCounts(
        confusion,
        np.bincount(true_class[missed][true_class[missed] >= 0], minlength=n_classes),
        np.bincount(pred_class[spurious][pred_class[spurious] >= 0], minlength=n_classes),
    )


def positive_percentage(names: list[str] | np.ndarray) -> float | None:
    """100 * positive / (positive + negative) of a list of class names; None without either."""
    names = np.asarray(names, dtype=str)
    positive = int((names == "positive").sum())
    negative = int((names == "negative").sum())
    total = positive + negative
    return None if total == 0 else 100.0 * positive / total
