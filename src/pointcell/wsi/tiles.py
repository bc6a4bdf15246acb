"""One slide's tiles through the model: read, predict, keep the owned cells, write parts."""

from __future__ import annotations

import contextlib
import functools
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import torch
from shapely.geometry.base import BaseGeometry

from pointcell.device import Precision
from pointcell.inference import Predictor, cells_from_maps, load_predictor, predict_maps
from pointcell.io.atomic import atomic_output
from pointcell.io.cells import (
    cell_classes,
    instance_outlines,
)
from pointcell.io.slides import Slide, open_slide
from pointcell.postprocess import PostprocessParams
from pointcell.wsi.plan import Region, SlideSettings, TileTask, read_region


@dataclass(frozen=True)
class SlideJob:
    """Everything a worker process needs to predict tiles of one slide (picklable)."""

    slide: str
    mpp: float | None
    level: int
    model: str
    device: str
    precision: Precision
    params: PostprocessParams
    settings: SlideSettings
    parts: str
    torch_threads: int | None = None
    roi: BaseGeometry | None = None  # level-0 region whose cells are kept


@dataclass
class StageTimes:
    """Busy seconds per stage, summed over tiles (stages may overlap in time)."""

    read_s: float = 0.0
    model_s: float = 0.0
    post_s: float = 0.0
    write_s: float = 0.0
    tiles: int = 0
    cells: int = 0
    megapixels: float = 0.0

    def add(self, other: StageTimes) -> None:
        for name, value in asdict(other).items():
            setattr(self, name, getattr(self, name) + value)


def owned_cells(
    maps: np.ndarray,
    region: Region,
    task: TileTask,
    *,
    predictor: Predictor,
    level0_mpp: float,
    params: PostprocessParams,
    roi: BaseGeometry | None = None,
) -> list[list]:
    """Post-process one region's maps (see :func:`cells_from_maps`) and keep the nuclei
    whose centroid lies in the task's core (and in ``roi``, a level-0 region, when given).

    Each cell is ``[x, y, area_px, area_um2, score, outline, class, class_probability]`` in
    level-0 pixels, the outline a list of (x, y) vertices, the class "" without classes.
    """
    cells = cells_from_maps(
        predictor, maps, mpp=predictor.working_mpp, params=params, image=region.pixels
    )
    labels = cells.labels
    n = int(labels.max())
    if n == 0:
        return []
    owned, counts, centres0 = _owned_instances(labels, region, task, roi)
    score = np.zeros(n + 1, dtype=np.float32)
    np.maximum.at(score, cells.instance, cells.score)
    # the class of an instance is that of its most probable detection
    best_row = np.full(n + 1, -1)
    order = np.argsort(cells.score)
    best_row[cells.instance[order]] = order
    typed = cell_classes(cells, predictor.classes)
    outlines = instance_outlines(np.where(owned[labels], labels, 0))
    pixel_area0 = region.step[0] * region.step[1]
    result = []
    for label in np.flatnonzero(owned):
        outline = outlines.get(int(label))
        if outline is None:
            continue
        area0 = counts[label] * pixel_area0
        result.append(
            [
                round(float(centres0[label, 0]), 2),
                round(float(centres0[label, 1]), 2),
                round(float(area0), 2),
                round(float(area0 * level0_mpp**2), 3),
                round(float(score[label]), 4),
                np.round(region.to_level0(outline), 2).tolist(),
                *_class_of(typed, int(best_row[label])),
            ]
        )
    return result


def _owned_instances(
    labels: np.ndarray, region: Region, task: TileTask, roi: BaseGeometry | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label 0..n: whether the task owns it (its centroid in the task's core and in
    ``roi``), its pixel count and its centroid (x, y) in level-0 pixels."""
    n = int(labels.max())
    counts = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64)
    rows, cols = np.indices(labels.shape)
    sum_r = np.bincount(labels.ravel(), weights=rows.ravel(), minlength=n + 1)
    sum_c = np.bincount(labels.ravel(), weights=cols.ravel(), minlength=n + 1)
    present = counts > 0
    centres = np.zeros((n + 1, 2))
    centres[present] = np.stack([sum_c, sum_r], axis=1)[present] / counts[present, None]
    centres0 = region.to_level0(centres)
    owned = (
        present
        & (centres0[:, 0] >= task.x0)
        & (centres0[:, 0] < task.x1)
        & (centres0[:, 1] >= task.y0)
        & (centres0[:, 1] < task.y1)
    )
    if roi is not None:
        owned &= shapely.intersects_xy(roi, centres0[:, 0], centres0[:, 1])
    owned[0] = False
    return owned, counts, centres0


def _class_of(typed: tuple[list[str], np.ndarray] | None, row: int) -> tuple[str, float]:
    """Class name and probability of detection ``row`` (see :func:`cell_classes`)."""
    if typed is None or row < 0:
        return "", 0.0
    names, probability = typed
    return names[row], round(float(probability[row]), 4)


def part_path(parts: Path, index: int) -> Path:
    return parts / f"tile-{index:07d}.json"


def process_tiles(
    job: SlideJob,
    tasks: list[TileTask],
    predictor: Predictor,
    slide: Slide,
    *,
    on_tile: Callable[[int], None] | None = None,
    prefetch: int = 2,
    overlap_stages: bool = True,
) -> StageTimes:
    """Predict ``tasks`` and write one part file per tile.

    With ``overlap_stages``, reading runs ahead of the model in one thread and
    post-processing/writing behind it in another, so that the network is not kept waiting by
    the CPU stages; without, the stages run one after the other in this thread (what a
    single-threaded Dask worker on a CPU should do: there the workers are the parallelism).
    """
    times = StageTimes()
    settings = job.settings
    load = functools.partial(_load_tile, job, slide, predictor)
    finish = functools.partial(_finish_tile, job, slide, predictor)
    with _executor(overlap_stages) as reader, _executor(overlap_stages) as writer:
        reads = deque(reader.submit(load, task) for task in tasks[:prefetch])
        following = iter(tasks[prefetch:])
        writes: deque = deque()
        for task in tasks:
            region, read_s = reads.popleft().result()
            upcoming = next(following, None)
            if upcoming is not None:
                reads.append(reader.submit(load, upcoming))
            times.read_s += read_s
            start = time.perf_counter()
            maps = predict_maps(
                predictor,
                region.pixels,
                tile=settings.network_tile,
                overlap=settings.network_overlap,
                batch_size=settings.batch_size,
                tta=settings.tta,
            )
            times.model_s += time.perf_counter() - start
            times.megapixels += region.pixels.shape[0] * region.pixels.shape[1] / 1e6
            writes.append(writer.submit(finish, task, region, maps))
            while writes and (len(writes) > prefetch or writes[0].done()):
                _collect(writes.popleft().result(), times, on_tile)
        while writes:
            _collect(writes.popleft().result(), times, on_tile)
    return times


def _load_tile(
    job: SlideJob, slide: Slide, predictor: Predictor, task: TileTask
) -> tuple[Region, float]:
    """A tile with its margin at the working pixel size, and the seconds reading took."""
    start = time.perf_counter()
    margin = job.settings.margin
    region = read_region(slide, job.level, task, working_mpp=predictor.working_mpp, margin=margin)
    return region, time.perf_counter() - start


def _finish_tile(
    job: SlideJob,
    slide: Slide,
    predictor: Predictor,
    task: TileTask,
    region: Region,
    maps: np.ndarray,
) -> tuple[int, float, float]:
    """Post-process a tile's maps and write its part file: cells, seconds of each stage."""
    start = time.perf_counter()
    cells = owned_cells(
        maps,
        region,
        task,
        predictor=predictor,
        level0_mpp=slide.mpp,
        params=job.params,
        roi=job.roi,
    )
    posted = time.perf_counter()
    with atomic_output(part_path(Path(job.parts), task.index)) as tmp:
        tmp.write_text(json.dumps({"tile": task.index, "cells": cells}), encoding="utf-8")
    return len(cells), posted - start, time.perf_counter() - posted


class _InlineExecutor:
    """Runs each submitted call at once, in the caller's thread."""

    def submit(self, function: Callable, *args: object) -> Future:
        future: Future = Future()
        future.set_result(function(*args))
        return future

    def __enter__(self) -> _InlineExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _executor(threaded: bool) -> ThreadPoolExecutor | _InlineExecutor:
    return ThreadPoolExecutor(1) if threaded else _InlineExecutor()


def _collect(
    result: tuple[int, float, float], times: StageTimes, on_tile: Callable[[int], None] | None
) -> None:
    n_cells, post_s, write_s = result
    times.post_s += post_s
    times.write_s += write_s
    times.tiles += 1
    times.cells += n_cells
    if on_tile is not None:
        on_tile(n_cells)


def _kept_on_worker(key: tuple, make: Callable[[], Any]) -> Any:
    """``make()``, kept for the life of the Dask worker process that runs this task (a model
    is loaded once per worker, not once per tile group); outside a worker, made afresh."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return make()
    kept = worker.__dict__.setdefault("_pointcell_kept", {})
    if key not in kept:
        kept[key] = make()
    return kept[key]


def run_tile_group(job: SlideJob, tasks: list[TileTask]) -> StageTimes:
    """Worker entry point: predict a group of tiles with the job's model (loaded once per
    worker process and reused); the worker's torch threads are restored afterwards."""
    predictor = _kept_on_worker(
        ("model", job.model, job.device, job.precision),
        lambda: load_predictor(job.model, device=job.device, precision=job.precision),
    )
    slide = _kept_on_worker(
        ("slide", job.slide, job.mpp, job.settings.reader),
        lambda: open_slide(job.slide, mpp=job.mpp, reader=job.settings.reader),
    )
    # on a CPU, single-threaded workers are the parallelism: no extra stage threads that
    # would compete with the other workers for cores; next to a GPU, overlap the stages
    overlap = predictor.device.type != "cpu"
    with torch_threads(job.torch_threads):
        return process_tiles(job, tasks, predictor, slide, overlap_stages=overlap)


@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (unchanged when None), then restore them."""
    previous = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
