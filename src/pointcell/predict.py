"""The ``predict`` job: a model on many images, every output written atomically."""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry
from tqdm.auto import tqdm

from pointcell.device import Precision
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.inference import (
    Predictor,
    adapt_batchnorm,
    cells_from_maps,
    load_predictor,
    predict_image_maps,
)
from pointcell.io.cells import cell_class_names
from pointcell.io.images import read_image, resolve_mpp
from pointcell.io.predictions import (
    PredictionSummary,
    class_summary,
    list_images,
    write_prediction,
    write_record,
    write_summary,
)
from pointcell.io.roi import roi_for_images
from pointcell.io.slides import is_whole_slide, slide_stem
from pointcell.masks import Cells
from pointcell.postprocess import PostprocessParams, cells_within
from pointcell.pretrained import DEFAULT_MODEL
from pointcell.wsi import SlideRun, SlideSettings, SlideSummary, predict_slides


@dataclass(frozen=True)
class PredictSettings:
    """Everything ``pointcell predict`` is told besides its inputs and output folder.

    ``postprocess`` overrides some of the model's own post-processing settings (by name of
    :class:`~pointcell.postprocess.PostprocessParams`), or of those it was tuned with for
    ``stain``; ``tile``/``overlap``/``batch_size`` are
    the network's tiles (px at the working pixel size); ``slide`` how whole slides are read,
    and ``cluster``/``workers`` where their tiles run (a Dask scheduler, or local processes).
    """

    model: str = DEFAULT_MODEL
    mpp: float | None = None
    stain: str | None = None  # the images' stain: the model's settings tuned for it
    postprocess: dict[str, Any] = field(default_factory=dict)
    tile: int = 512
    overlap: int = 128
    batch_size: int = 4
    tta: bool = False
    adapt_norm: bool = False
    save_probability: bool = False
    overlay: bool = True
    roi: Path | None = None
    device: str = "auto"
    precision: Precision = "auto"
    slide: SlideSettings = SlideSettings()
    slide_run: SlideRun = SlideRun()  # its device and precision are those above
    cluster: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        if self.tile % 32 or self.overlap % 32 or self.overlap >= self.tile:
            raise PointcellInputError(
                "--tile-size and --overlap must be multiples of 32, overlap smaller than the tile"
            )
        if self.cluster and self.workers:
            raise PointcellInputError("give --cluster or --workers, not both")


@dataclass(frozen=True)
class PredictionJob:
    """What :func:`predict_paths` did: a summary per image and per whole slide, and the stains
    the model holds tuned settings for that went unused because no stain was named."""

    images: list[PredictionSummary]
    slides: list[SlideSummary]
    unused_stain_settings: tuple[str, ...] = ()


def predict_paths(
    locations: Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    settings: PredictSettings = PredictSettings(),
    *,
    progress: bool = True,
) -> PredictionJob:
    """``pointcell predict``: images and whole slides (told apart by format and size) from
    files and folders, predicted into ``out`` with one model."""
    out = Path(out)
    paths = list_images(list(locations))
    slides = [p for p in paths if is_whole_slide(p)]
    plain = [p for p in paths if p not in slides]
    if settings.adapt_norm and slides:
        raise PointcellInputError("--adapt-norm works on images, not whole slides")
    rois = roi_for_images(settings.roi, paths) if settings.roi else {}
    predictor = load_predictor(settings.model, device=settings.device, precision=settings.precision)
    if settings.adapt_norm:
        predictor = adapted_to_images(predictor, plain, mpp=settings.mpp, tile=settings.tile)
    params = predictor.postprocess_for(settings.stain)
    if settings.stain is not None:  # outlines are refined on the stain the user names ...
        params = replace(params, outline_stain=settings.stain)
    params = replace(params, **settings.postprocess)  # ... unless an override says otherwise
    image_summaries = []
    if plain:
        image_summaries = predict_images(
            predictor,
            list(plain),
            out,
            mpp=settings.mpp,
            params=params,
            tile=settings.tile,
            overlap=settings.overlap,
            batch_size=settings.batch_size,
            tta=settings.tta,
            save_probability=settings.save_probability,
            overlay=settings.overlay,
            rois=rois,
            progress=progress,
        )
    slide_summaries = []
    if slides:
        slide_summaries = _predict_slides(slides, out, settings, predictor, params, rois, progress)
    unused = () if settings.stain else tuple(sorted(predictor.postprocess_by_stain))
    return PredictionJob(image_summaries, slide_summaries, unused)


def _predict_slides(
    slides: list[Path],
    out: Path,
    settings: PredictSettings,
    predictor: Predictor,
    params: PostprocessParams,
    rois: dict[Path, BaseGeometry],
    progress: bool,
) -> list[SlideSummary]:
    """The whole slides of :func:`predict_paths`, here or on Dask workers, recorded in
    ``predictions.json`` with how they were tiled."""
    slide_settings = replace(
        settings.slide,
        network_tile=settings.tile,
        network_overlap=settings.overlap,
        batch_size=settings.batch_size,
        tta=settings.tta,
    )
    local = not (settings.cluster or settings.workers)
    summaries = predict_slides(
        slides,
        out,
        model=settings.model,
        cluster=settings.cluster,
        workers=settings.workers,
        predictor=predictor if local else None,
        mpp=settings.mpp,
        params=params,
        settings=slide_settings,
        run=replace(settings.slide_run, device=settings.device, precision=settings.precision),
        rois=rois,
        progress=progress,
    )
    write_summary(out, predictor.source, {"slides": asdict(slide_settings)}, summaries)
    return summaries


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
    write_record(out, record)
    tiling = {"tile": tile, "overlap": overlap, "batch_size": batch_size, "tta": tta}
    for path in tqdm(paths, desc="predicting", unit="image", disable=not progress):
        summary = _predict_one(
            predictor,
            path,
            out,
            mpp=mpp,
            params=params,
            roi=(rois or {}).get(path),
            tiling=tiling,
            save_probability=save_probability,
            overlay=overlay,
            progress=progress,
        )
        summaries.append(summary)
        record["images"] = {s.stem: asdict(s) for s in summaries}
        write_record(out, record)
    write_record(out, {**record, "complete": True})
    return summaries


def _predict_one(
    predictor: Predictor,
    path: Path,
    out: Path,
    *,
    mpp: float | None,
    params: PostprocessParams,
    roi: BaseGeometry | None,
    tiling: dict[str, Any],
    save_probability: bool,
    overlay: bool,
    progress: bool,
) -> PredictionSummary:
    """One image of :func:`predict_images`: predicted, post-processed and written."""
    loaded = read_image(path)
    pixel_size = resolve_mpp(loaded, mpp, working_mpp=predictor.working_mpp)
    start = time.perf_counter()
    maps = predict_image_maps(predictor, loaded.pixels, mpp=pixel_size, progress=progress, **tiling)
    modelled = time.perf_counter()
    cells = cells_from_maps(predictor, maps, mpp=pixel_size, params=params, image=loaded.pixels)
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
    return PredictionSummary(
        stem,
        pixel_size,
        len(cells.xy),
        modelled - start,
        done - modelled,
        loaded.pixels.shape[0] * loaded.pixels.shape[1] / 1e6,
        **class_summary(cell_class_names(cells, predictor.classes) or []),
        roi_area_um2=None if roi is None else roi.area * pixel_size**2,
    )
