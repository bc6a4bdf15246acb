"""Whole-slide inference: tissue detection, tiles streamed through the model, each cell once.

The slide is cut into square *core* tiles (``tile`` px at the working pixel size) that
partition the plane. Each core is read with ``margin`` px of context on every side from the
pyramid level closest to the working pixel size, predicted and post-processed on its own, and
keeps exactly the nuclei whose centroid lies in the core (the owning-tile rule): a nucleus on a
border is segmented whole in the tile that owns it and dropped by its neighbours, so it is
neither duplicated nor cut as long as it is smaller than the margin. Only tiles that touch tissue
(found on a thumbnail) are read, and memory holds a few tiles at a time, whatever the slide size.

Every finished tile is written at once (atomically) as a part file; a killed job restarts from
the parts (``resume``). When all tiles are done, the parts are merged into the final cells table
(CSV) and QuPath GeoJSON (optionally gzipped), also atomically. Tile groups may run in this
process or on a Dask cluster; the parts, and so the outputs, are the same either way.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import hashlib
import json
import os
import shutil
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import shapely
import torch
from scipy import ndimage
from shapely.geometry.base import BaseGeometry
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.transform import resize
from tqdm.auto import tqdm

from pointcell.device import Precision
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.inference import Predictor, cells_from_maps, load_predictor, predict_maps
from pointcell.io.atomic import atomic_output
from pointcell.io.cells import (
    cell_classes,
    detection_feature,
    instance_outlines,
    polygon_pixels,
)
from pointcell.io.slides import Slide, SlideReader, open_slide, slide_stem
from pointcell.postprocess import (
    PostprocessParams,
    fill_small_holes,
    remove_small_objects,
)

MANIFEST = "manifest.json"
CSV_COLUMNS = ["id", "x", "y", "area_px", "area_um2", "score", "tile"]
CLASS_COLUMNS = ["class", "class_probability"]


@dataclass(frozen=True)
class SlideSettings:
    """How a slide is tiled and read; sizes in pixels at the model's working pixel size."""

    tile: int = 1024  # core tile
    margin: int = 64  # context read around each core: 32 µm at 0.5 µm/px
    network_tile: int = 512
    network_overlap: int = 128
    batch_size: int = 4
    tta: bool = False  # average the network over the 8 symmetries of the square
    tissue_min_od: float = 0.05  # optical density floor of tissue (white glass is ~0.03)
    reader: SlideReader = "auto"

    def __post_init__(self) -> None:
        if self.tile < 32 or self.margin < 0:
            raise ValueError("tile must be at least 32 px and margin non-negative")


@dataclass(frozen=True)
class TileTask:
    """One core tile: its index in the slide's grid and its window in level-0 pixels."""

    index: int
    x0: float
    y0: float
    x1: float
    y1: float


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


# ---------------------------------------------------------------- tissue and tiles


def tissue_mask(thumbnail: np.ndarray, *, pixel_um: float, min_od: float = 0.05) -> np.ndarray:
    """Tissue on a low-resolution RGB view: optical density above Otsu's threshold (never below
    ``min_od``), black scanner padding excluded, cleaned at the scale of tissue (specks under
    0.005 mm² dropped, holes under 0.01 mm² filled, closed over 20 µm)."""
    rgb = thumbnail.astype(np.float32)
    density = (-np.log10((rgb + 1.0) / 256.0)).max(axis=-1)
    values = density[rgb.max(axis=-1) > 30]
    threshold = min_od
    if values.size and np.ptp(values) > 0:
        threshold = max(min_od, float(threshold_otsu(values)) * 0.5)
    mask = (density > threshold) & (rgb.max(axis=-1) > 30)
    radius = max(1, int(round(20.0 / pixel_um)))
    mask = ndimage.binary_closing(mask, structure=disk(radius), border_value=0)
    area_px = 1.0 / pixel_um**2
    mask = remove_small_objects(ndimage.label(mask)[0], 5_000 * area_px) > 0
    return fill_small_holes(mask, 10_000 * area_px)


def plan_tiles(
    size: tuple[int, int],
    tile_level0: float,
    tissue: np.ndarray | None = None,
    tissue_downsample: float = 1.0,
) -> tuple[list[TileTask], int]:
    """Core tiles of a slide of ``size`` = (width, height) level-0 px that touch tissue, and the
    number of tiles in the full grid."""
    width, height = size
    n_cols, n_rows = int(np.ceil(width / tile_level0)), int(np.ceil(height / tile_level0))
    rows, cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    keep = np.ones(rows.shape, dtype=bool)
    if tissue is not None:
        # summed-area table: tissue pixels inside each tile's footprint on the thumbnail
        table = np.pad(tissue.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
        step = tile_level0 / tissue_downsample
        th, tw = tissue.shape
        r0 = np.clip(np.floor(rows * step).astype(int), 0, th)
        r1 = np.clip(np.ceil((rows + 1) * step).astype(int), 0, th)
        c0 = np.clip(np.floor(cols * step).astype(int), 0, tw)
        c1 = np.clip(np.ceil((cols + 1) * step).astype(int), 0, tw)
        keep = (table[r1, c1] - table[r0, c1] - table[r1, c0] + table[r0, c0]) > 0
    tasks = [
        TileTask(
            index=int(r * n_cols + c),
            x0=c * tile_level0,
            y0=r * tile_level0,
            x1=min((c + 1) * tile_level0, width),
            y1=min((r + 1) * tile_level0, height),
        )
        for r, c in zip(rows[keep], cols[keep], strict=True)
    ]
    return tasks, n_rows * n_cols


def tiles_touching(tasks: list[TileTask], roi: BaseGeometry) -> list[TileTask]:
    """The tiles whose core shares some area with a level-0 region."""
    if not tasks:
        return tasks
    corners = np.array([(t.x0, t.y0, t.x1, t.y1) for t in tasks])
    cores = shapely.box(corners[:, 0], corners[:, 1], corners[:, 2], corners[:, 3])
    overlap = shapely.area(shapely.intersection(cores, roi)) > 0
    return [task for task, keep in zip(tasks, overlap, strict=True) if keep]


# ---------------------------------------------------------------- one tile


@dataclass
class Region:
    """Pixels of a tile with its margin, resampled to the working pixel size, and the affine
    map back to level-0 coordinates (``level0 = origin + (index + 0.5) * step - 0.5``)."""

    pixels: np.ndarray
    origin: tuple[float, float]  # (x, y) level-0 coordinate of the region's top-left edge
    step: tuple[float, float]  # level-0 px per working px, along x and y

    def to_level0(self, xy: np.ndarray) -> np.ndarray:
        return np.asarray(self.origin) + (xy + 0.5) * np.asarray(self.step) - 0.5


def read_region(
    slide: Slide, level: int, task: TileTask, *, working_mpp: float, margin: int
) -> Region:
    """Read a core with its margin (clipped to the slide) and resample it to the working size."""
    scale = slide.level_downsamples[level]
    margin0 = margin * working_mpp / slide.mpp
    level_w, level_h = slide.level_dimensions[level]
    lx0 = max(0, int(np.floor((task.x0 - margin0) / scale)))
    ly0 = max(0, int(np.floor((task.y0 - margin0) / scale)))
    lx1 = min(level_w, int(np.ceil((task.x1 + margin0) / scale)))
    ly1 = min(level_h, int(np.ceil((task.y1 + margin0) / scale)))
    pixels = slide.read(level, lx0, ly0, lx1 - lx0, ly1 - ly0)
    per_working = working_mpp / slide.level_mpp(level)  # level px per working px
    out_h = max(1, int(round((ly1 - ly0) / per_working)))
    out_w = max(1, int(round((lx1 - lx0) / per_working)))
    if (out_h, out_w) != pixels.shape[:2]:
        pixels = resize(
            pixels, (out_h, out_w), order=1, preserve_range=True, anti_aliasing=per_working > 1
        ).astype(np.uint8)
    step = ((lx1 - lx0) / out_w * scale, (ly1 - ly0) / out_h * scale)
    return Region(pixels, (lx0 * scale, ly0 * scale), step)


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
    cells = cells_from_maps(predictor, maps, mpp=predictor.working_mpp, params=params)
    labels = cells.labels
    n = int(labels.max())
    if n == 0:
        return []
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


def _class_of(typed: tuple[list[str], np.ndarray] | None, row: int) -> tuple[str, float]:
    """Class name and probability of detection ``row`` (see :func:`cell_classes`)."""
    if typed is None or row < 0:
        return "", 0.0
    names, probability = typed
    return names[row], round(float(probability[row]), 4)


# ---------------------------------------------------------------- streaming many tiles


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
    parts = Path(job.parts)
    settings = job.settings

    def load(task: TileTask) -> tuple[Region, float]:
        start = time.perf_counter()
        region = read_region(
            slide, job.level, task, working_mpp=predictor.working_mpp, margin=settings.margin
        )
        return region, time.perf_counter() - start

    def finish(task: TileTask, region: Region, maps: np.ndarray) -> tuple[int, float, float]:
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
        with atomic_output(part_path(parts, task.index)) as tmp:
            tmp.write_text(json.dumps({"tile": task.index, "cells": cells}), encoding="utf-8")
        return len(cells), posted - start, time.perf_counter() - posted

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


@functools.lru_cache(maxsize=2)
def _cached_predictor(model: str, device: str, precision: Precision) -> Predictor:
    return load_predictor(model, device=device, precision=precision)


@functools.lru_cache(maxsize=4)
def _cached_slide(path: str, mpp: float | None, reader: str) -> Slide:
    return open_slide(path, mpp=mpp, reader=reader)  # type: ignore[arg-type]


def run_tile_group(job: SlideJob, tasks: list[TileTask]) -> StageTimes:
    """Worker entry point: predict a group of tiles with the job's model (loaded once per
    worker process and reused)."""
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    predictor = _cached_predictor(job.model, job.device, job.precision)
    slide = _cached_slide(job.slide, job.mpp, job.settings.reader)
    # on a CPU, single-threaded workers are the parallelism: no extra stage threads that
    # would compete with the other workers for cores; next to a GPU, overlap the stages
    overlap = predictor.device.type != "cpu"
    return process_tiles(job, tasks, predictor, slide, overlap_stages=overlap)


# ---------------------------------------------------------------- outputs


def _drawable(outline: list) -> bool:
    return (
        detection_feature(
            np.asarray(outline), centre=(0.0, 0.0), area_px=0.0, area_um2=0.0, score=0.0
        )
        is not None
    )


def write_label_zarr(
    path: Path, parts: Path, tasks: list[TileTask], size: tuple[int, int], tile_level0: float
) -> None:
    """Rasterise the cells' outlines into a uint32 label image at level 0 (zarr, chunks of one
    core tile), with the ids of the CSV table. One core window is drawn at a time from the
    outlines of its tile and its eight neighbours (a nucleus reaches at most the margin beyond
    its core), so memory holds one chunk and the parts of about two rows of tiles; the array
    appears atomically."""
    import zarr

    width, height = size
    n_cols = int(np.ceil(width / tile_level0))
    done = {task.index for task in tasks}

    # tiles are drawn row by row: the parts of the last two rows and a bit are all it reuses
    @functools.lru_cache(maxsize=3 * n_cols + 3)
    def drawable_outlines(index: int) -> tuple:
        if index not in done:
            return ()
        record = json.loads(part_path(parts, index).read_text(encoding="utf-8"))
        return tuple(cell[5] for cell in record["cells"] if _drawable(cell[5]))

    offsets, total = {}, 0
    for task in tasks:  # ids as merge_parts numbers them: tile order, drawable cells only
        record = json.loads(part_path(parts, task.index).read_text(encoding="utf-8"))
        offsets[task.index] = total
        total += sum(_drawable(cell[5]) for cell in record["cells"])
    chunk = int(np.ceil(tile_level0))
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    array = zarr.open_array(
        tmp, mode="w", shape=(height, width), chunks=(chunk, chunk), dtype="uint32", fill_value=0
    )
    for task in tasks:
        r0, r1 = int(round(task.y0)), int(round(task.y1))
        c0, c1 = int(round(task.x0)), int(round(task.x1))
        window = np.zeros((r1 - r0, c1 - c0), np.uint32)
        row, col = divmod(task.index, n_cols)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if not (0 <= col + dc < n_cols):
                    continue
                neighbour = (row + dr) * n_cols + col + dc
                for k, outline in enumerate(drawable_outlines(neighbour), start=1):
                    inside = polygon_pixels(np.asarray(outline) - (c0, r0), window.shape)
                    window[inside] = offsets[neighbour] + k
        array[r0:r1, c0:c1] = window
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def slide_outputs(out: Path, stem: str, *, gzip_geojson: bool) -> tuple[Path, Path, Path]:
    """Final cells table, final GeoJSON, and the folder of unfinished parts."""
    geojson = out / (f"{stem}.geojson.gz" if gzip_geojson else f"{stem}.geojson")
    return out / f"{stem}.csv", geojson, out / f"{stem}.parts"


def iter_part_cells(parts: Path, tasks: list[TileTask]) -> Iterator[tuple[int, list]]:
    for task in tasks:
        record = json.loads(part_path(parts, task.index).read_text(encoding="utf-8"))
        for cell in record["cells"]:
            yield task.index, cell


def merge_parts(
    parts: Path, tasks: list[TileTask], table: Path, geojson: Path, *, with_classes: bool = False
) -> int:
    """Write the cells of all parts as a CSV table and a QuPath GeoJSON FeatureCollection,
    one tile at a time; both appear atomically. Cells are numbered 1..n in tile order.
    Returns the number of cells."""
    n_cells = 0
    opener = gzip.open if geojson.suffix == ".gz" else open
    with atomic_output(table) as table_tmp, atomic_output(geojson) as geo_tmp:
        with (
            table_tmp.open("w", newline="", encoding="utf-8") as table_file,
            opener(geo_tmp, "wt", encoding="utf-8") as geo_file,
        ):
            writer = csv.writer(table_file)
            writer.writerow(CSV_COLUMNS + (CLASS_COLUMNS if with_classes else []))
            geo_file.write('{"type": "FeatureCollection", "features": [\n')
            for tile_index, cell in iter_part_cells(parts, tasks):
                x, y, area_px, area_um2, score, outline, name, probability = cell
                feature = detection_feature(
                    np.asarray(outline),
                    centre=(x, y),
                    area_px=area_px,
                    area_um2=area_um2,
                    score=score,
                    **({"cell_class": name, "class_probability": probability} if name else {}),
                )
                if feature is None:  # too small to draw; write_label_zarr skips it too
                    continue
                n_cells += 1
                feature["id"] = str(n_cells)
                row = [n_cells, x, y, area_px, area_um2, score, tile_index]
                writer.writerow(row + ([name, probability] if with_classes else []))
                geo_file.write((",\n" if n_cells > 1 else "") + json.dumps(feature))
            geo_file.write("\n]}\n")
    return n_cells


def _manifest(job: SlideJob, slide: Slide, n_tasks: int) -> dict:
    stat = Path(job.slide).stat()
    return {
        "slide": str(Path(job.slide).resolve()),
        "slide_bytes": stat.st_size,
        "slide_mtime_ns": stat.st_mtime_ns,
        "mpp": slide.mpp,
        "level": job.level,
        "model": job.model,
        "postprocess": job.params.to_dict(),
        "settings": asdict(job.settings),
        "tissue_tiles": n_tasks,
        "roi": None if job.roi is None else hashlib.sha1(shapely.to_wkb(job.roi)).hexdigest(),
    }


def _prepare_parts(
    parts: Path, manifest: dict, *, resume: bool, overwrite: bool, outputs: list[Path]
) -> None:
    finished = [p for p in outputs if p.exists()]
    if finished and not overwrite:
        raise PointcellInputError(f"{finished[0]} already exists; pass --overwrite to replace it")
    if parts.exists():
        if resume:
            recorded = parts / MANIFEST
            found = json.loads(recorded.read_text()) if recorded.is_file() else {}
            if found != manifest:
                changed = sorted(k for k in manifest if found.get(k) != manifest[k])
                raise PointcellInputError(
                    f"{parts}: the unfinished job used other settings ({', '.join(changed)}); "
                    "pass --overwrite to start again"
                )
            return
        if not overwrite:
            raise PointcellInputError(
                f"{parts} holds an unfinished job; pass --resume to continue it "
                "or --overwrite to start again"
            )
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    with atomic_output(parts / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")


def predict_slide(
    slide_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    model: str,
    predictor: Predictor | None = None,
    mpp: float | None = None,
    params: PostprocessParams | None = None,
    settings: SlideSettings = SlideSettings(),
    device: str = "auto",
    precision: Precision = "auto",
    gzip_geojson: bool = False,
    resume: bool = False,
    overwrite: bool = False,
    client: object | None = None,
    labels_zarr: bool = False,
    group_size: int = 4,
    torch_threads: int | None = None,
    roi: BaseGeometry | None = None,
    progress: bool = True,
) -> SlideSummary:
    """Detect and segment the nuclei of a whole slide; write ``out/<stem>.csv`` and
    ``out/<stem>.geojson[.gz]`` (level-0 pixel coordinates), and with ``labels_zarr`` the
    instance labels as ``out/<stem>.labels.zarr``. With ``roi`` (a level-0 region), only the
    tiles that touch it are read and only the cells whose centroid lies in it are kept.

    ``model`` names the checkpoint (loaded here, or by each worker of a Dask ``client``);
    ``predictor`` may pass one already loaded for in-process runs.
    """
    start = time.perf_counter()
    out = Path(out)
    slide_path = Path(slide_path)
    stem = slide_stem(slide_path)
    predictor = predictor or (
        None if client is not None else _cached_predictor(model, device, precision)
    )
    working_mpp, classes, stored = (
        (predictor.working_mpp, predictor.classes, predictor.postprocess)
        if predictor
        else _model_settings(model)
    )
    params = params or stored
    with open_slide(slide_path, mpp=mpp, reader=settings.reader) as slide:
        level = slide.best_level(working_mpp)
        tile_level0 = settings.tile * working_mpp / slide.mpp
        tissue, tasks, n_tiles = _tissue_tiles(slide, tile_level0, settings, roi)
        table, geojson, parts = slide_outputs(out, stem, gzip_geojson=gzip_geojson)
        labels_path = out / f"{stem}.labels.zarr" if labels_zarr else None
        job = SlideJob(
            slide=str(slide_path),
            mpp=mpp,
            level=level,
            model=model,
            device=device,
            precision=precision,
            params=params,
            settings=settings,
            parts=str(parts),
            torch_threads=torch_threads,
            roi=roi,
        )
        _prepare_parts(
            parts,
            _manifest(job, slide, len(tasks)),
            resume=resume,
            overwrite=overwrite,
            outputs=[table, geojson] + ([labels_path] if labels_path else []),
        )
        todo = [t for t in tasks if not part_path(parts, t.index).is_file()]
        bar = tqdm(
            total=len(tasks),
            initial=len(tasks) - len(todo),
            desc=f"{stem} tissue tiles",
            unit="tile",
            disable=not progress,
        )
        found = {"cells": 0}

        def advance(n_cells: int, n_tiles_done: int = 1) -> None:
            found["cells"] += n_cells
            bar.update(n_tiles_done)
            bar.set_postfix(cells=found["cells"], refresh=False)

        if client is None:
            assert predictor is not None  # loaded above for an in-process run
            times = _run_local(job, todo, predictor, slide, advance)
        else:
            times = _run_on_client(client, job, todo, group_size, advance)
        bar.close()
        n_cells = merge_parts(parts, tasks, table, geojson, with_classes=bool(classes))
        if labels_path:
            write_label_zarr(labels_path, parts, tasks, slide.dimensions, tile_level0)
        shutil.rmtree(parts)
    return SlideSummary(
        stem=stem,
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
    from pointcell.inference import resolve_checkpoint
    from pointcell.io.checkpoints import load_checkpoint
    from pointcell.model import ModelConfig

    state = load_checkpoint(resolve_checkpoint(model))
    classes = ModelConfig.from_dict(state["config"]["model"]).classes
    return float(state["working_mpp"]), classes, PostprocessParams(**state.get("postprocess", {}))


def _run_local(
    job: SlideJob,
    todo: list[TileTask],
    predictor: Predictor,
    slide: Slide,
    advance: Callable[[int], None],
) -> StageTimes:
    previous = torch.get_num_threads()
    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    try:
        return process_tiles(job, todo, predictor, slide, on_tile=advance)
    finally:
        torch.set_num_threads(previous)


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
    **options: object,
) -> list[SlideSummary]:
    """:func:`predict_slide` for several slides: in this process, or on a Dask cluster (a
    scheduler ``cluster`` address, or ``workers`` local processes) shared by all of them.
    ``rois``: a level-0 region per slide (see :func:`pointcell.io.roi.roi_for_images`)."""
    rois = rois or {}
    if cluster is None and not workers:
        return [
            predict_slide(path, out, model=model, roi=rois.get(path), **options)  # type: ignore[arg-type]
            for path in slides
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
                **options,  # type: ignore[arg-type]
            )
            for path in slides
        ]
