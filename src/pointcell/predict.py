"""The ``predict`` job: a model on many images, every output written atomically."""

from __future__ import annotations

import json
import os
import time
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.inference import (
    Predictor,
    adapt_batchnorm,
    cells_from_maps,
    predict_image_maps,
)
from pointcell.io.atomic import atomic_output
from pointcell.io.cells import (
    cell_class_names,
    polygon_pixels,
    write_cells_csv,
    write_cells_geojson,
)
from pointcell.io.images import (
    IMAGE_SUFFIXES,
    read_image,
    resolve_mpp,
    write_float_tiff,
    write_label_tiff,
    write_rgb_png,
)
from pointcell.io.slides import SLIDE_SUFFIXES, slide_stem
from pointcell.metrics import positive_percentage, proportion_ci
from pointcell.overlay import draw_points
from pointcell.postprocess import Cells, PostprocessParams, cells_within

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


def region_mask(roi: BaseGeometry, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centre lies in a (Multi)Polygon region, holes left out."""
    mask = np.zeros(shape, dtype=bool)
    for polygon in getattr(roi, "geoms", [roi]):
        mask[polygon_pixels(polygon.exterior.coords, shape)] = True
        for hole in polygon.interiors:
            mask[polygon_pixels(hole.coords, shape)] = False
    return mask


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
    _write_record(out, {"model": source, "settings": settings, "complete": True, "images": images})


def _previous_images(path: Path) -> dict[str, object]:
    """The images an earlier run recorded in ``path``; none when it is missing or unreadable
    (it is rewritten whole)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    images = record.get("images") if isinstance(record, dict) else None
    return images if isinstance(images, dict) else {}


def _cells_in_roi(cells: Cells, roi: BaseGeometry, path: Path, shape: tuple[int, ...]) -> Cells:
    """The cells whose centre lies in ``roi``; a warning when it misses the image."""
    height, width = shape[:2]
    if not roi.intersects(shapely.box(0, 0, width, height)):
        warnings.warn(
            f"{path.name}: the region of interest lies outside the image "
            f"({width}x{height} px); no cells",
            PointcellWarning,
            stacklevel=3,
        )
    return cells_within(cells, roi)


def adapted_to_images(
    predictor: Predictor,
    paths: Sequence[Path],
    *,
    mpp: float | None = None,
    tile: int = 512,
    progress: bool = True,
) -> Predictor:
    """:func:`pointcell.inference.adapt_batchnorm` on image files, read one at a time (they
    are read again when predicted); ``mpp`` as for :func:`predict_images`."""

    def images() -> Iterator[tuple[np.ndarray, float]]:
        for path in paths:
            loaded = read_image(path)
            yield loaded.pixels, resolve_mpp(loaded, mpp, working_mpp=predictor.working_mpp)

    return adapt_batchnorm(predictor, images(), tile=tile, progress=progress)


def predict_images(
    predictor: Predictor,
    images: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    params: PostprocessParams | None = None,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    tta: bool = False,
    save_probability: bool = False,
    overlay: bool = True,
    rois: dict[Path, BaseGeometry] | None = None,
    progress: bool = True,
) -> list[PredictionSummary]:
    """Predict every image and write ``out/<stem>.tif`` (instance labels, input size),
    ``<stem>.csv`` and ``<stem>.geojson`` (cells), optionally ``<stem>_probability.tif`` and
    ``<stem>_overlay.png``, and ``predictions.json`` (pixel sizes and timings). ``tta``:
    average the network over the 8 symmetries of the square (8 times slower). ``rois``: a
    region of interest per image path (see :func:`pointcell.io.roi.roi_for_images`); only the
    cells whose centre lies in it are kept, counted and written."""
    out = Path(out)
    params = params or predictor.postprocess
    paths = list_images(images)
    summaries: list[PredictionSummary] = []
    record = {
        "model": predictor.source,
        "postprocess": params.to_dict(),
        "tta": tta,
        "complete": False,  # until the last image is written: evaluate refuses a partial run
        "expected": [slide_stem(p) for p in paths],
        "images": {},
    }
    _write_record(out, record)
    for path in tqdm(paths, desc="predicting", unit="image", disable=not progress):
        loaded = read_image(path)
        pixel_size = resolve_mpp(loaded, mpp, working_mpp=predictor.working_mpp)
        start = time.perf_counter()
        maps = predict_image_maps(
            predictor,
            loaded.pixels,
            mpp=pixel_size,
            tile=tile,
            overlap=overlap,
            batch_size=batch_size,
            tta=tta,
            progress=progress,
        )
        modelled = time.perf_counter()
        cells = cells_from_maps(predictor, maps, mpp=pixel_size, params=params)
        roi = (rois or {}).get(path)
        if roi is not None:
            cells = _cells_in_roi(cells, roi, path, loaded.pixels.shape[:2])
        done = time.perf_counter()
        stem = slide_stem(path)
        write_prediction(
            out,
            stem,
            loaded.pixels,
            cells,
            mpp=pixel_size,
            probability=maps[0] if save_probability else None,
            overlay=overlay,
            classes=predictor.classes,
            roi=roi,
        )
        summaries.append(
            PredictionSummary(
                stem,
                pixel_size,
                len(cells.xy),
                modelled - start,
                done - modelled,
                loaded.pixels.shape[0] * loaded.pixels.shape[1] / 1e6,
                **class_summary(cell_class_names(cells, predictor.classes) or []),
                roi_area_um2=None if roi is None else roi.area * pixel_size**2,
            )
        )
        record["images"] = {s.stem: asdict(s) for s in summaries}
        _write_record(out, record)
    _write_record(out, {**record, "complete": True})
    return summaries


def _write_record(out: Path, record: dict[str, object]) -> None:
    with atomic_output(out / SUMMARY_FILE) as tmp:
        tmp.write_text(json.dumps(record, indent=2), encoding="utf-8")
