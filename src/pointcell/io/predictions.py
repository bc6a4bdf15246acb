"""The folder a prediction job writes: per-image outputs and ``predictions.json``.

``pointcell predict`` and ``pointcell baseline`` write it, ``pointcell evaluate`` reads it;
keeping its layout here lets each of them depend on this module, not on one another.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import numpy as np
from shapely.geometry.base import BaseGeometry
from skimage.segmentation import find_boundaries

from pointcell.errors import PointcellInputError
from pointcell.io.cells import write_cells_csv, write_cells_geojson
from pointcell.io.images import (
    IMAGE_SUFFIXES,
    write_float_tiff,
    write_label_tiff,
    write_rgb_png,
)
from pointcell.io.jsonfiles import read_json, write_json
from pointcell.io.roi import region_mask
from pointcell.io.slides import SLIDE_SUFFIXES, slide_stem
from pointcell.masks import Cells
from pointcell.metrics import positive_percentage, proportion_ci
from pointcell.overlay import draw_points

if TYPE_CHECKING:
    from pointcell.wsi import SlideSummary

SUMMARY_FILE = "predictions.json"
INPUT_SUFFIXES = IMAGE_SUFFIXES + SLIDE_SUFFIXES


@dataclass(frozen=True)
class PredictionSummary:
    stem: str
    mpp: float
    n_cells: int
    model_s: float  # resampling and network
    postprocess_s: float
    megapixels: float
    class_counts: dict[str, int] = field(default_factory=dict)
    positive_percent: float | None = None  # positive / (positive + negative), in %
    positive_ci: tuple[float, float] | None = None  # its 95% Wilson interval
    roi_area_um2: float | None = None  # area of the region of interest the cells were kept in


def list_images(locations: list[str | os.PathLike[str]]) -> list[Path]:
    """Image files from a mix of files and folders (sorted within each folder)."""
    found: list[Path] = []
    for location in map(Path, locations):
        if location.is_dir():
            found += sorted(
                p
                for p in location.iterdir()
                if p.suffix.lower() in INPUT_SUFFIXES and not p.name.startswith(".")
            )
        elif location.is_file():
            found.append(location)
        else:
            raise PointcellInputError(f"{location}: no such image file or folder")
    if not found:
        raise PointcellInputError(
            f"no images ({', '.join(INPUT_SUFFIXES)}) in {', '.join(map(str, locations))}"
        )
    stems = [slide_stem(p) for p in found]
    duplicates = sorted({s for s in stems if stems.count(s) > 1})
    if duplicates:
        raise PointcellInputError(
            f"several input images share the name {duplicates[0]!r}; outputs are named by file stem"
        )
    return found


def cells_overlay(
    image: np.ndarray, labels: np.ndarray, xy: np.ndarray, roi: BaseGeometry | None = None
) -> np.ndarray:
    """The image with instance outlines in green, detected centres in red and the outline of
    the region of interest in yellow."""
    out = image.copy()
    out[find_boundaries(labels, mode="inner")] = (60, 255, 60)
    draw_points(out, xy, radius=2)
    if roi is not None:
        out[find_boundaries(region_mask(roi, out.shape[:2]), mode="inner")] = (255, 230, 0)
    return out


def write_prediction(
    out: Path,
    stem: str,
    image: np.ndarray,
    cells: Cells,
    *,
    mpp: float,
    probability: np.ndarray | None = None,
    overlay: bool = True,
    classes: tuple[str, ...] = (),
    roi: BaseGeometry | None = None,
) -> None:
    """Write the outputs of one image: labels TIFF, cells CSV and GeoJSON, optional
    probability map and overlay (with the region of interest, when given)."""
    write_label_tiff(out / f"{stem}.tif", cells.labels)
    write_cells_csv(out / f"{stem}.csv", cells, mpp=mpp, classes=classes)
    write_cells_geojson(out / f"{stem}.geojson", cells, mpp=mpp, classes=classes)
    if probability is not None:
        write_float_tiff(out / f"{stem}_probability.tif", probability)
    if overlay:
        drawn = cells_overlay(image, cells.labels, cells.xy, roi)
        write_rgb_png(out / f"{stem}_overlay.png", drawn)


class ClassSummary(TypedDict, total=False):
    class_counts: dict[str, int]
    positive_percent: float  # positive / (positive + negative), in %
    positive_ci: tuple[float, float]  # its 95% Wilson interval, in %


def class_summary(names: list[str]) -> ClassSummary:
    """Cells per class and, when classes ``positive`` and ``negative`` exist, the positive
    percentage (e.g. the Ki67 index) with its 95% Wilson confidence interval."""
    if not names:
        return {}
    counts = dict(sorted(Counter(names).items()))
    summary: ClassSummary = {"class_counts": counts}
    percent = positive_percentage(names)
    if percent is not None:
        positive = counts.get("positive", 0)
        low, high = proportion_ci(positive, positive + counts.get("negative", 0))
        summary["positive_percent"] = percent
        summary["positive_ci"] = (100.0 * low, 100.0 * high)
    return summary


def write_summary(
    out: Path,
    source: str,
    settings: dict[str, object],
    summaries: Sequence[PredictionSummary] | Sequence[SlideSummary],
) -> None:
    """``predictions.json``: what produced the folder, and per-image pixel sizes and timings;
    images predicted earlier into the same folder are kept."""
    path = out / SUMMARY_FILE
    images = _previous_images(path)
    images.update({s.stem: asdict(s) for s in summaries})
    write_record(out, {"model": source, "settings": settings, "complete": True, "images": images})


def _previous_images(path: Path) -> dict[str, object]:
    """The images an earlier run recorded in ``path``; none when it is missing or unreadable
    (it is rewritten whole)."""
    try:
        record = read_summary(path)
    except PointcellInputError:
        return {}
    images = record.get("images")
    return images if isinstance(images, dict) else {}


def read_summary(path: Path) -> dict[str, Any]:
    """The ``predictions.json`` at ``path`` (empty when there is none), or one clear error."""
    if not path.is_file():
        return {}
    record = read_json(path, "predictions record", advice="run predict again")
    if not isinstance(record, dict):
        raise PointcellInputError(f"{path}: not a predictions record; run predict again")
    return record


def write_record(out: Path, record: dict[str, object]) -> None:
    """``out/predictions.json``, replaced atomically."""
    write_json(out / SUMMARY_FILE, record)
