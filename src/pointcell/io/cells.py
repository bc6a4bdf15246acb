"""Writing predicted cells: a CSV table and QuPath-importable GeoJSON detections."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
from scipy import ndimage
from skimage.draw import polygon as fill_polygon
from skimage.measure import find_contours

from pointcell.io.atomic import atomic_output
from pointcell.io.points import class_colour
from pointcell.masks import Cells

CELL_CLASS = "Nucleus"
CELL_COLOUR = [0, 200, 0]


def cell_class_names(cells: Cells, classes: tuple[str, ...]) -> list[str] | None:
    """The class name of every cell, or None for a model without classes."""
    if cells.class_index is None or not classes:
        return None
    return [classes[i] for i in cells.class_index]


def cell_classes(cells: Cells, classes: tuple[str, ...]) -> tuple[list[str], np.ndarray] | None:
    """Every cell's class name and class probability, or None for a model without classes."""
    names = cell_class_names(cells, classes)
    if names is None or cells.class_probability is None:
        return None
    return names, cells.class_probability


def write_cells_csv(
    path: str | os.PathLike[str], cells: Cells, *, mpp: float, classes: tuple[str, ...] = ()
) -> None:
    """One row per detected cell: id, x, y, area_px, area_um2, score, instance, and for a
    classifying model class and class_probability."""
    areas = cells.areas()
    typed = cell_classes(cells, classes)
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        header = ["id", "x", "y", "area_px", "area_um2", "score", "instance"]
        writer.writerow(header + (["class", "class_probability"] if typed else []))
        for index, ((x, y), area, score, label) in enumerate(
            zip(cells.xy, areas, cells.score, cells.instance, strict=True), start=1
        ):
            row = [
                index,
                f"{x:.2f}",
                f"{y:.2f}",
                int(area),
                f"{area * mpp * mpp:.3f}",
                f"{score:.4f}",
                int(label),
            ]
            if typed:
                names, probability = typed
                row += [names[index - 1], f"{probability[index - 1]:.4f}"]
            writer.writerow(row)


def polygon_pixels(xy: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the pixels inside a polygon given by its (x, y) vertices, clipped to
    ``shape``: the inverse of :func:`instance_outlines`."""
    xy = np.asarray(xy, dtype=np.float64)
    return fill_polygon(xy[:, 1], xy[:, 0], shape)


def instance_outlines(labels: np.ndarray) -> dict[int, np.ndarray]:
    """Outline (K, 2) as (x, y) of every instance, traced on its bounding box only."""
    outlines = {}
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        crop = np.pad(labels[box] == index, 1).astype(np.float32)
        contours = find_contours(crop, 0.5)
        if not contours:
            continue
        contour = max(contours, key=len)
        rc = contour - 1 + np.array([box[0].start, box[1].start])
        outlines[index] = rc[:, ::-1]
    return outlines


def detection_feature(
    outline: np.ndarray,
    *,
    centre: tuple[float, float],
    area_px: float,
    area_um2: float,
    score: float,
    cell_class: str = CELL_CLASS,
    class_probability: float | None = None,
) -> dict | None:
    """One QuPath detection (GeoJSON Feature) from an outline (K, 2) as (x, y); None when the
    outline is too short to be a polygon. QuPath colours it by its class."""
    ring = np.round(outline, 2).tolist()
    if ring and ring[0] != ring[-1]:
        ring.append(ring[0])
    if len(ring) < 4:
        return None
    measurements = {
        "Centroid X px": round(centre[0], 2),
        "Centroid Y px": round(centre[1], 2),
        "Area px": round(area_px, 2),
        "Area µm^2": round(area_um2, 3),
        "Score": round(score, 4),
    }
    if class_probability is not None:
        measurements["Class probability"] = round(class_probability, 4)
    return {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "detection",
            "classification": {"name": cell_class, "color": _colour(cell_class)},
            "measurements": measurements,
        },
    }


def _colour(name: str) -> list[int]:
    return CELL_COLOUR if name == CELL_CLASS else class_colour(name)


def write_cells_geojson(
    path: str | os.PathLike[str], cells: Cells, *, mpp: float, classes: tuple[str, ...] = ()
) -> None:
    """QuPath detections: one Polygon feature per instance with its centre, score and area,
    and its class (name and colour) for a classifying model."""
    typed = cell_classes(cells, classes)
    outlines = instance_outlines(cells.labels)
    areas = np.bincount(cells.labels.ravel())
    best: dict[int, int] = {}
    for index, label in enumerate(cells.instance):
        if label and (label not in best or cells.score[index] > cells.score[best[label]]):
            best[int(label)] = index
    features = []
    for label, outline in outlines.items():
        row = best.get(label)
        x, y = cells.xy[row] if row is not None else outline.mean(axis=0)
        feature = detection_feature(
            outline,
            centre=(float(x), float(y)),
            area_px=float(areas[label]),
            area_um2=float(areas[label] * mpp * mpp),
            score=float(cells.score[row]) if row is not None else 0.0,
            cell_class=typed[0][row] if typed and row is not None else CELL_CLASS,
            class_probability=float(typed[1][row]) if typed and row is not None else None,
        )
        if feature is not None:
            features.append(feature)
    with atomic_output(path) as tmp:
        tmp.write_text(
            json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8"
        )
