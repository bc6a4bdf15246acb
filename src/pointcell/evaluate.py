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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from skimage.draw import polygon as fill_polygon

from pointcell.errors import PointcellInputError
from pointcell.io.atomic import atomic_output
from pointcell.io.images import read_label_image
from pointcell.io.points import instance_centroids, read_points, read_polygons
from pointcell.metrics import (
    DetectionScores,
    concordance,
    detection_scores,
    segmentation_scores,
)
from pointcell.predict import SUMMARY_FILE

DEFAULT_RADIUS_UM = 3.0
SEGMENTATION_KEYS = ("accuracy", "f1", "dice", "aji", "dq", "sq", "pq")
GT_SUFFIXES = (".tif", ".tiff", ".png", ".xml", ".geojson", ".json", ".csv")


@dataclass(frozen=True)
class GroundTruth:
    labels: np.ndarray | None  # instance labels, or None when only points are known
    points_xy: np.ndarray


def rasterise(outlines: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Instance labels from polygon outlines (x, y); later outlines overwrite earlier ones."""
    labels = np.zeros(shape, dtype=np.int32)
    for index, outline in enumerate(outlines, start=1):
        rr, cc = fill_polygon(outline[:, 1], outline[:, 0], shape)
        labels[rr, cc] = index
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
    return GroundTruth(None, read_points(path, image_shape=shape, clip=True).xy)


@dataclass
class EvaluationReport:
    per_image: dict[str, dict[str, float]] = field(default_factory=dict)
    aggregate: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return {
            "aggregation": "segmentation: mean over images; detection: pooled TP/FP/FN; "
            "count_ccc: across images",
            "aggregate": self.aggregate,
            "per_image": self.per_image,
        }


def _pixel_size(pred_dir: Path, stem: str, mpp: float | None) -> float:
    if mpp is not None:
        return mpp
    summary = pred_dir / SUMMARY_FILE
    if summary.is_file():
        images = json.loads(summary.read_text()).get("images", {})
        if stem in images:
            return float(images[stem]["mpp"])
    raise PointcellInputError(
        f"pixel size of {stem} unknown: pass --mpp "
        f"(or keep {SUMMARY_FILE} written by pointcell predict)"
    )


def _predicted_points(pred_dir: Path, stem: str, labels: np.ndarray) -> np.ndarray:
    table = pred_dir / f"{stem}.csv"
    if table.is_file():
        return read_points(table).xy
    return instance_centroids(labels)


def _match_files(pred_dir: Path, gt_dir: Path) -> list[tuple[str, Path, Path]]:
    if not pred_dir.is_dir():
        raise PointcellInputError(f"{pred_dir}: predictions folder not found")
    if not gt_dir.is_dir():
        raise PointcellInputError(f"{gt_dir}: ground-truth folder not found")
    predictions = {p.stem: p for p in pred_dir.glob("*.tif")}
    truths: dict[str, Path] = {}
    for path in sorted(gt_dir.iterdir()):
        if path.suffix.lower() in GT_SUFFIXES and path.stem in predictions:
            if path.stem in truths:
                raise PointcellInputError(
                    f"two ground-truth files for {path.stem}: {truths[path.stem]}, {path}"
                )
            truths[path.stem] = path
    if not truths:
        raise PointcellInputError(
            f"no ground truth in {gt_dir} matches a prediction (<stem>.tif) in {pred_dir}"
        )
    missing = sorted(set(predictions) - set(truths))
    if missing:
        raise PointcellInputError(f"no ground truth for prediction(s): {', '.join(missing)}")
    return [(stem, predictions[stem], truths[stem]) for stem in sorted(truths)]


def evaluate(
    pred_dir: str | os.PathLike[str],
    gt_dir: str | os.PathLike[str],
    *,
    radius_um: float = DEFAULT_RADIUS_UM,
    mpp: float | None = None,
) -> EvaluationReport:
    """Score every prediction in ``pred_dir`` against the file of the same stem in ``gt_dir``."""
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    report = EvaluationReport()
    pooled = DetectionScores(0, 0, 0)
    counts_true, counts_pred = [], []
    for stem, pred_path, gt_path in _match_files(pred_dir, gt_dir):
        labels = read_label_image(pred_path)
        truth = read_ground_truth(gt_path, labels.shape)
        pixel_size = _pixel_size(pred_dir, stem, mpp)
        points = _predicted_points(pred_dir, stem, labels)
        detection = detection_scores(truth.points_xy, points, radius=radius_um / pixel_size)
        pooled = pooled + detection
        row: dict[str, float] = {"n_true": len(truth.points_xy), "n_pred": len(points)}
        row.update({f"det_{k}": v for k, v in detection.to_dict().items()})
        if truth.labels is not None:
            row.update(segmentation_scores(truth.labels, labels).to_dict())
        report.per_image[stem] = row
        counts_true.append(len(truth.points_xy))
        counts_pred.append(len(points))
    for key in SEGMENTATION_KEYS:
        values = [r[key] for r in report.per_image.values() if key in r]
        if values:
            report.aggregate[key] = float(np.mean(values))
    report.aggregate.update({f"det_{k}": v for k, v in pooled.to_dict().items()})
    report.aggregate["n_images"] = len(report.per_image)
    report.aggregate["radius_um"] = radius_um
    if len(counts_true) >= 2:
        ccc = concordance(counts_true, counts_pred)
        report.aggregate.update(count_ccc=ccc.ccc, count_ccc_low=ccc.low, count_ccc_high=ccc.high)
    return report


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
