"""The ``evaluate`` job: predictions against ground truth, per image and in aggregate.

Ground truth per image (matched by file stem) may be an instance mask (TIFF/PNG), Aperio XML
or GeoJSON outlines (rasterised), or points only (CSV/GeoJSON points: detection metrics only).
Predictions are the ``predict`` outputs: ``<stem>.tif`` instance labels and ``<stem>.csv``
detected centres. Aggregates: segmentation metrics are the mean over images (as Kumar et al.
and Qu et al. report them); detection precision/recall/F1 are pooled over all cells (the sums
of TP, FP and FN); the count CCC is computed across images.
"""

from __future__ import annotations

import csv
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from pointcell.checks import check_positive
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.atomic import atomic_output
from pointcell.io.cells import polygon_pixels
from pointcell.io.images import read_label_image
from pointcell.io.points import read_points, read_polygons
from pointcell.io.predictions import SUMMARY_FILE, read_summary
from pointcell.masks import instance_centroids
from pointcell.metrics import (
    DetectionErrors,
    DetectionScores,
    Matching,
    class_match_counts,
    concordance,
    detection_errors,
    detection_scores,
    match_points,
    positive_percentage,
    segmentation_scores,
    systematic_offset,
)
from pointcell.targets import point_class_names

DEFAULT_RADIUS_UM = 3.0
SEGMENTATION_KEYS = ("accuracy", "f1", "dice", "aji", "dq", "sq", "pq")
GT_SUFFIXES = (".tif", ".tiff", ".png", ".xml", ".geojson", ".json", ".csv")


@dataclass(frozen=True)
class GroundTruth:
    labels: np.ndarray | None  # instance labels, or None when only points are known
    points_xy: np.ndarray
    point_classes: np.ndarray | None = None  # class names of typed points ("" untyped)


def rasterise(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from polygon outlines (x, y); later outlines overwrite earlier ones."""
    labels = np.zeros(shape, dtype=np.int32)
    for index, outline in enumerate(outlines, start=1):
        labels[polygon_pixels(outline, shape)] = index
    return labels


def read_ground_truth(path: Path, shape: tuple[int, int]) -> GroundTruth:
    """Ground truth of one image of ``shape`` (rows, cols)."""
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff", ".png"):
        labels = read_label_image(path)
        if labels.shape != shape:
            raise PointcellInputError(
                f"{path}: ground truth is {labels.shape[1]}x"
                f"{labels.shape[0]} but the prediction is "
                f"{shape[1]}x{shape[0]}"
            )
        return GroundTruth(labels, instance_centroids(labels))
    if suffix in (".xml", ".geojson", ".json"):
        outlines = read_polygons(path)
        if outlines:
            labels = rasterise(outlines, shape)
            return GroundTruth(labels, instance_centroids(labels))
    points = read_points(path, image_shape=shape, clip=True)
    return GroundTruth(None, points.xy, point_class_names(points.classes))


@dataclass
class EvaluationReport:
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregate: dict[str, Any] = field(default_factory=dict)  # numbers, and lists for classes

    def to_dict(self) -> dict[str, object]:
        return {
            "aggregation": "segmentation: mean over images; detection and classes: pooled "
            "over cells; count_ccc and positive_ccc: across images",
            "aggregate": self.aggregate,
            "per_image": self.per_image,
        }


def _pixel_size(record: dict[str, Any], stem: str, mpp: float | None) -> float:
    """``mpp``, else the pixel size ``predictions.json`` (``record``) gives ``stem``."""
    if mpp is not None:
        return mpp
    images = record.get("images", {})
    if stem in images:
        return float(images[stem]["mpp"])
    raise PointcellInputError(
        f"pixel size of {stem} unknown: pass --mpp "
        f"(or keep {SUMMARY_FILE} written by pointcell predict)"
    )


def _predicted_points(
    pred_dir: Path, stem: str, labels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Predicted centres and their class names ("" without classes)."""
    table = pred_dir / f"{stem}.csv"
    if table.is_file():
        points = read_points(table)
        return points.xy, point_class_names(points.classes)
    centres = instance_centroids(labels)
    return centres, np.full(len(centres), "")


class _Pairs(NamedTuple):
    """Predictions paired with their ground truth, and the truths that have no prediction."""

    matched: list[tuple[str, Path, Path]]
    unpredicted: list[str]


def _match_files(pred_dir: Path, gt_dir: Path) -> _Pairs:
    if not pred_dir.is_dir():
        raise PointcellInputError(f"{pred_dir}: predictions folder not found")
    if not gt_dir.is_dir():
        raise PointcellInputError(f"{gt_dir}: ground-truth folder not found")
    predictions = _prediction_files(pred_dir)
    truths: dict[str, Path] = {}
    unpredicted = set()
    for path in sorted(gt_dir.iterdir()):
        if path.suffix.lower() not in GT_SUFFIXES:
            continue
        if path.stem not in predictions:
            unpredicted.add(path.stem)
        elif path.stem in truths:
            raise PointcellInputError(
                f"two ground-truth files for {path.stem}: {truths[path.stem]}, {path}"
            )
        else:
            truths[path.stem] = path
    if not truths:
        raise PointcellInputError(
            f"no ground truth in {gt_dir} matches a prediction (<stem>.tif) in {pred_dir}"
        )
    missing = sorted(set(predictions) - set(truths))
    if missing:
        raise PointcellInputError(f"no ground truth for prediction(s): {', '.join(missing)}")
    matched = [(stem, predictions[stem], truths[stem]) for stem in sorted(truths)]
    return _Pairs(matched, sorted(unpredicted))


def _prediction_files(pred_dir: Path) -> dict[str, Path]:
    """``<stem>.tif`` instance labels by stem, without the ``<stem>_probability.tif`` maps
    that ``predict --save-probability`` writes beside them."""
    tiffs = {p.stem: p for p in pred_dir.glob("*.tif")}
    suffix = "_probability"
    return {
        stem: path
        for stem, path in tiffs.items()
        if not (stem.endswith(suffix) and stem.removesuffix(suffix) in tiffs)
    }


def _check_complete(
    pred_dir: Path, record: dict[str, Any], pairs: _Pairs, allow_missing: bool
) -> None:
    """Refuse an aggregate over a partial folder: an interrupted ``predict`` run (as its
    ``predictions.json``, ``record``, says), or ground truth with no prediction, unless
    ``allow_missing``."""
    if allow_missing:
        return
    if record.get("complete") is False:
        done, expected = len(record.get("images", {})), len(record.get("expected", []))
        raise PointcellInputError(
            f"{pred_dir}: the predict run that wrote it was interrupted ({done} of {expected} "
            "images done): run it again, or pass --allow-missing to score the finished ones"
        )
    if pairs.unpredicted:
        listed = ", ".join(pairs.unpredicted[:5]) + (" ..." if len(pairs.unpredicted) > 5 else "")
        raise PointcellInputError(
            f"{len(pairs.unpredicted)} ground-truth image(s) have no prediction in {pred_dir} "
            f"({listed}): the aggregate would cover {len(pairs.matched)} of "
            f"{len(pairs.matched) + len(pairs.unpredicted)} images; pass --allow-missing to "
            "score the predicted ones only"
        )


class _TypedImage(NamedTuple):
    """What the class report needs of an image whose true points carry classes."""

    true_xy: np.ndarray
    true_classes: np.ndarray
    pred_xy: np.ndarray
    pred_classes: np.ndarray
    radius: float
    matched: Matching


def evaluate(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    radius_um: float = DEFAULT_RADIUS_UM,
    mpp: float | None = None,
    allow_missing: bool = False,
) -> EvaluationReport:
    """Score every prediction in ``pred_dir`` against the file of the same stem in ``gt_dir``.

    A folder that an interrupted ``predict`` left, or ground truth of images that were not
    predicted, is an error unless ``allow_missing``; the report then counts what was missing
    (``n_gt_without_prediction``)."""
    check_positive("the matching radius", radius_um)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pairs = _match_files(pred_dir, gt_dir)
    # read once; not at all when neither the completeness check nor the pixel sizes need it
    needed = not allow_missing or mpp is None
    record = read_summary(pred_dir / SUMMARY_FILE) if needed else {}
    _check_complete(pred_dir, record, pairs, allow_missing)
    report = EvaluationReport()
    pooled = DetectionScores(0, 0, 0)
    pooled_errors = DetectionErrors(0, 0, 0, 0, 0)
    offsets = []  # true - predicted centre of every matched pair, in pixels
    typed: dict[str, _TypedImage] = {}
    for stem, pred_path, gt_path in pairs.matched:
        labels = read_label_image(pred_path)
        truth = read_ground_truth(gt_path, labels.shape)
        pixel_size = _pixel_size(record, stem, mpp)
        points, pred_classes = _predicted_points(pred_dir, stem, labels)
        radius = radius_um / pixel_size
        matched = match_points(truth.points_xy, points, radius=radius)  # once, for all three
        detection = detection_scores(truth.points_xy, points, radius=radius, matched=matched)
        errors = detection_errors(truth.points_xy, points, labels, radius=radius, matched=matched)
        pooled, pooled_errors = pooled + detection, pooled_errors + errors
        offsets.append(truth.points_xy[matched[0]] - points[matched[1]])
        row: dict[str, float] = {"n_true": len(truth.points_xy), "n_pred": len(points)}
        row.update({f"det_{k}": v for k, v in detection.to_dict().items()})
        row.update({f"det_{k}": v for k, v in errors.to_dict().items()})
        if truth.labels is not None:
            row.update(segmentation_scores(truth.labels, labels).to_dict())
        report.per_image[stem] = row
        if truth.point_classes is not None and (truth.point_classes != "").any():
            typed[stem] = _TypedImage(
                truth.points_xy, truth.point_classes, points, pred_classes, radius, matched
            )
    if not any((image.pred_classes != "").any() for image in typed.values()):
        typed = {}  # predictions without classes: detection metrics only
    missing = len(pairs.unpredicted)
    _aggregate(report, pooled, pooled_errors, np.concatenate(offsets), radius_um, missing)
    if typed:
        _class_report(report, typed)
    return report


def _aggregate(
    report: EvaluationReport,
    pooled: DetectionScores,
    pooled_errors: DetectionErrors,
    offsets: np.ndarray,
    radius_um: float,
    n_unpredicted: int,
) -> None:
    """The report's aggregate: segmentation means over images, detection pooled over cells,
    the count CCC across images."""
    for key in SEGMENTATION_KEYS:
        values = [r[key] for r in report.per_image.values() if key in r]
        if values:
            report.aggregate[key] = float(np.mean(values))
    report.aggregate.update({f"det_{k}": v for k, v in pooled.to_dict().items()})
    report.aggregate.update({f"det_{k}": v for k, v in pooled_errors.to_dict().items()})
    report.aggregate["n_images"] = len(report.per_image)
    report.aggregate["n_gt_without_prediction"] = n_unpredicted
    _check_offset(report, offsets)
    report.aggregate["radius_um"] = radius_um
    counts_true = [row["n_true"] for row in report.per_image.values()]
    counts_pred = [row["n_pred"] for row in report.per_image.values()]
    if len(counts_true) >= 2:
        ccc = concordance(counts_true, counts_pred)
        report.aggregate.update(count_ccc=ccc.ccc, count_ccc_low=ccc.low, count_ccc_high=ccc.high)


def _check_offset(report: EvaluationReport, offsets: np.ndarray) -> None:
    """Record the mean offset of matched points; warn when the truth is shifted as a whole."""
    if len(offsets):
        mean = offsets.mean(axis=0)
        report.aggregate.update(det_offset_x_px=float(mean[0]), det_offset_y_px=float(mean[1]))
    shift = systematic_offset(offsets)
    if shift is not None:
        warnings.warn(
            f"the true points lie on average ({shift[0]:+.2f}, {shift[1]:+.2f}) px from the "
            f"matched predictions ({len(offsets)} pairs): one set is shifted against the other. "
            "If the true points count pixels from 1 (MATLAB), subtract 1 from x and y; pointcell "
            "counts from 0 (the centre of the top-left pixel is 0, 0).",
            PointcellWarning,
            stacklevel=3,
        )


def _class_report(report: EvaluationReport, typed: dict[str, _TypedImage]) -> None:
    """Per-class F_c, confusion matrix and macro/weighted F1 (pooled over images), and the
    positive percentage (e.g. Ki67 index) per image with its error and CCC across images."""
    classes = sorted({str(n) for image in typed.values() for n in image.true_classes} - {""})
    index = {name: i for i, name in enumerate(classes)}
    pooled = None
    true_index, pred_index = [], []
    for stem, (true_xy, true_names, pred_xy, pred_names, radius, matched) in typed.items():
        counts = class_match_counts(
            true_xy,
            [index.get(str(n), -1) for n in true_names],
            pred_xy,
            [index.get(str(n), -1) for n in pred_names],
            n_classes=len(classes),
            radius=radius,
            matched=matched,
        )
        pooled = counts if pooled is None else pooled + counts
        true_pct, pred_pct = (
            positive_percentage(true_names),
            positive_percentage(pred_names),
        )
        if true_pct is not None and pred_pct is not None:
            report.per_image[stem].update(
                positive_percent_true=true_pct,
                positive_percent_pred=pred_pct,
                positive_percent_abs_error=abs(pred_pct - true_pct),
            )
            true_index.append(true_pct)
            pred_index.append(pred_pct)
    assert pooled is not None
    macro, weighted, f1_matched = pooled.matched_f1()
    report.aggregate["classes"] = classes
    report.aggregate["class_fc"] = dict(zip(classes, map(float, pooled.class_f1()), strict=True))
    report.aggregate["class_f1_matched"] = dict(zip(classes, map(float, f1_matched), strict=True))
    report.aggregate["class_macro_f1"] = macro
    report.aggregate["class_weighted_f1"] = weighted
    report.aggregate["class_confusion"] = pooled.confusion.tolist()
    if true_index:
        errors = np.abs(np.subtract(pred_index, true_index))
        report.aggregate["positive_percent_mae"] = float(errors.mean())
        report.aggregate["positive_percent_max_error"] = float(errors.max())
        if len(true_index) >= 2:
            ccc = concordance(true_index, pred_index)
            report.aggregate.update(
                positive_ccc=ccc.ccc, positive_ccc_low=ccc.low, positive_ccc_high=ccc.high
            )


def write_report(
    report: EvaluationReport, json_path: str | os.PathLike[str], csv_path: str | os.PathLike[str]
) -> None:
    """The full report as JSON, and one CSV row per image."""
    with atomic_output(json_path) as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=2), encoding="utf-8")
    columns = sorted({k for row in report.per_image.values() for k in row})
    with atomic_output(csv_path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", *columns])
        for stem, row in report.per_image.items():
            writer.writerow([stem, *(row.get(c, "") for c in columns)])
