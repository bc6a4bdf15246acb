"""Slide jobs end to end: in this process or on a Dask cluster, resumable from the parts."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from shapely.geometry.base import BaseGeometry
from tqdm.auto import tqdm

from pointcell.errors import PointcellWarning
from pointcell.inference import Predictor, load_predictor
from pointcell.io.slides import Slide, open_slide, slide_stem
from pointcell.postprocess import PostprocessParams
from pointcell.wsi.outputs import (
    manifest,
    merge_parts,
    prepare_parts,
    slide_outputs,
    write_label_zarr,
)
from pointcell.wsi.plan import (
    SlideRun,
    SlideSettings,
    TileTask,
    plan_tiles,
    tiles_touching,
    tissue_mask,
)
from pointcell.wsi.tiles import (
    SlideJob,
    StageTimes,
    part_path,
    process_tiles,
    run_tile_group,
    torch_threads,
)


@dataclass(frozen=True)
class SlideSummary:
    stem: str
    mpp: float
    level: int
    n_tiles: int
    n_tissue_tiles: int
    n_cells: int
    tissue_fraction: float
    wall_s: float
    times: dict[str, float] = field(default_factory=dict)
    roi_area_um2: float | None = None  # area of the region of interest, when one was given


def predict_slide(
    slide_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str,
    settings: SlideSettings = SlideSettings(),
    run: SlideRun = SlideRun(),
    predictor: Predictor | None = None,
    mpp: float | None = None,
    params: PostprocessParams | None = None,
    roi: BaseGeometry | None = None,
    client: object | None = None,
    torch_threads: int | None = None,
    progress: bool = True,
) -> SlideSummary:
    """Detect and segment the nuclei of a whole slide; write ``out/<stem>.csv`` and
    ``out/<stem>.geojson[.gz]`` (level-0 pixel coordinates), and with ``run.labels_zarr`` the
    instance labels as ``out/<stem>.labels.zarr``. With ``roi`` (a level-0 region), only the
    tiles that touch it are read and only the cells whose centroid lies in it are kept.

    ``model`` names the checkpoint (loaded here, or by each worker of a Dask ``client``);
    ``predictor`` may pass one already loaded for in-process runs.
    """
    start = time.perf_counter()
    slide_path, out = Path(slide_path), Path(out)
    if predictor is None and client is None:
        predictor = load_predictor(model, device=run.device, precision=run.precision)
    working_mpp, classes, stored = (
        (predictor.working_mpp, predictor.classes, predictor.postprocess)
        if predictor
        else _model_settings(model)
    )
    with open_slide(slide_path, mpp=mpp, reader=settings.reader) as slide:
        level = slide.best_level(working_mpp)
        tile_level0 = settings.tile * working_mpp / slide.mpp
        tissue, tasks, n_tiles = _tissue_tiles(slide, tile_level0, settings, roi)
        job = SlideJob(
            slide=str(slide_path),
            mpp=mpp,
            level=level,
            model=model,
            device=run.device,
            precision=run.precision,
            params=params or stored,
            settings=settings,
            parts=str(out / f"{slide_stem(slide_path)}.parts"),
            torch_threads=torch_threads,
            roi=roi,
        )
        outputs = _start_job(job, slide, tasks, out, run)
        times = _run_tiles(job, slide, tasks, predictor, client, run.group_size, progress=progress)
        parts = Path(job.parts)
        n_cells = merge_parts(parts, tasks, outputs[0], outputs[1], with_classes=bool(classes))
        if run.labels_zarr:
            write_label_zarr(outputs[2], parts, tasks, slide.dimensions, tile_level0)
        shutil.rmtree(parts)
    return SlideSummary(
        stem=slide_stem(slide_path),
        mpp=slide.mpp,
        level=level,
        n_tiles=n_tiles,
        n_tissue_tiles=len(tasks),
        n_cells=n_cells,
        tissue_fraction=float(tissue.mean()),
        wall_s=time.perf_counter() - start,
        times=asdict(times),
        roi_area_um2=None if roi is None else roi.area * slide.mpp**2,
    )


def _start_job(
    job: SlideJob, slide: Slide, tasks: list[TileTask], out: Path, run: SlideRun
) -> tuple[Path, Path, Path]:
    """The final table, GeoJSON and labels paths, after checking what an earlier job left
    there and making (or, resuming, keeping) its parts folder."""
    stem = slide_stem(Path(job.slide))
    table, geojson, parts = slide_outputs(out, stem, gzip_geojson=run.gzip_geojson)
    labels_path = out / f"{stem}.labels.zarr"
    prepare_parts(
        parts,
        manifest(job, slide, len(tasks)),
        resume=run.resume,
        overwrite=run.overwrite,
        outputs=[table, geojson] + ([labels_path] if run.labels_zarr else []),
    )
    return table, geojson, labels_path


def _tissue_tiles(
    slide: Slide, tile_level0: float, settings: SlideSettings, roi: BaseGeometry | None
) -> tuple[np.ndarray, list[TileTask], int]:
    """The thumbnail's tissue mask, the tiles to predict (those with tissue, and touching
    ``roi`` when given) and the number of tiles in the whole slide."""
    thumb, downsample = slide.thumbnail()
    tissue = tissue_mask(thumb, pixel_um=slide.mpp * downsample, min_od=settings.tissue_min_od)
    tasks, n_tiles = plan_tiles(slide.dimensions, tile_level0, tissue, downsample)
    if roi is not None:
        tasks = tiles_touching(tasks, roi)
        if not tasks:
            warnings.warn(
                f"{slide.path.name}: the region of interest covers no tissue of the slide "
                "(are its coordinates level-0 pixels?); no cells",
                PointcellWarning,
                stacklevel=3,
            )
    return tissue, tasks, n_tiles


def _model_settings(model: str) -> tuple[float, tuple[str, ...], PostprocessParams]:
    """Working pixel size, classes and post-processing of a checkpoint the workers load."""
    from pointcell.io.checkpoints import load_checkpoint
    from pointcell.model import ModelConfig
    from pointcell.pretrained import resolve_checkpoint

    state = load_checkpoint(resolve_checkpoint(model))
    classes = ModelConfig.from_dict(state["config"]["model"]).classes
    return float(state["working_mpp"]), classes, PostprocessParams(**state.get("postprocess", {}))


def _run_tiles(
    job: SlideJob,
    slide: Slide,
    tasks: list[TileTask],
    predictor: Predictor | None,
    client: object | None,
    group_size: int,
    *,
    progress: bool,
) -> StageTimes:
    """Predict the tiles without a part file yet, here or on ``client``, with a progress bar
    of tiles and cells."""
    parts = Path(job.parts)
    todo = [t for t in tasks if not part_path(parts, t.index).is_file()]
    bar = tqdm(
        total=len(tasks),
        initial=len(tasks) - len(todo),
        desc=f"{slide_stem(Path(job.slide))} tissue tiles",
        unit="tile",
        disable=not progress,
    )
    found = {"cells": 0}

    def advance(n_cells: int, n_tiles_done: int = 1) -> None:
        found["cells"] += n_cells
        bar.update(n_tiles_done)
        bar.set_postfix(cells=found["cells"], refresh=False)

    with bar:
        if client is not None:
            return _run_on_client(client, job, todo, group_size, advance)
        assert predictor is not None  # loaded by predict_slide for an in-process run
        with torch_threads(job.torch_threads):
            return process_tiles(job, todo, predictor, slide, on_tile=advance)


def _run_on_client(
    client: object,
    job: SlideJob,
    todo: list[TileTask],
    group_size: int,
    advance: Callable[..., None],
) -> StageTimes:
    from distributed import as_completed

    groups = [todo[i : i + group_size] for i in range(0, len(todo), group_size)]
    futures = [
        client.submit(run_tile_group, job, group, pure=False)  # type: ignore[attr-defined]
        for group in groups
    ]
    times = StageTimes()
    for future in as_completed(futures):
        result = future.result()
        times.add(result)
        advance(result.cells, result.tiles)
    return times


@contextlib.contextmanager
def dask_client(
    address: str | None = None, *, workers: int | None = None, torch_threads: int | None = None
) -> Iterator[tuple[object, int | None]]:
    """A Dask ``Client`` and the torch threads each worker should use.

    With ``address`` it connects to a running scheduler (``tcp://host:8786``; its workers
    must have pointcell installed); otherwise it starts a ``LocalCluster`` of ``workers``
    single-threaded processes on loopback, splitting this machine's cores between them
    (or giving each ``torch_threads``).
    """
    from distributed import Client, LocalCluster

    if address is not None:
        with Client(address) as client:
            yield client, None
        return
    n_workers = workers or 1
    threads = torch_threads or max(1, (os.cpu_count() or 1) // n_workers)
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client, threads


def predict_slides(
    slides: list[Path],
    out: str | os.PathLike[str],
    *,
    model: str,
    cluster: str | None = None,
    workers: int | None = None,
    worker_threads: int | None = None,
    rois: dict[Path, BaseGeometry] | None = None,
    **options: Any,
) -> list[SlideSummary]:
    """:func:`predict_slide` for several slides (``options`` are its keywords): in this
    process, or on a Dask cluster (a scheduler ``cluster`` address, or ``workers`` local
    processes) shared by all of them. ``rois``: a level-0 region per slide (see
    :func:`pointcell.io.roi.roi_for_images`)."""
    rois = rois or {}
    if cluster is None and not workers:
        return [
            predict_slide(path, out, model=model, roi=rois.get(path), **options) for path in slides
        ]
    with dask_client(cluster, workers=workers, torch_threads=worker_threads) as (client, threads):
        return [
            predict_slide(
                path,
                out,
                model=model,
                client=client,
                torch_threads=threads,
                roi=rois.get(path),
                **options,
            )
            for path in slides
        ]
