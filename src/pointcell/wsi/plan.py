"""Slide tiling: the tissue mask, the grid of core tiles over it, and reading one tile."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import ndimage
from shapely.geometry.base import BaseGeometry
from skimage.filters import threshold_otsu
from skimage.morphology import disk
from skimage.transform import resize

from pointcell.device import Precision
from pointcell.io.slides import Slide, SlideReader
from pointcell.masks import fill_small_holes, remove_small_objects


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
class SlideRun:
    """Where a slide job runs and what it does with files: none of it changes the cells, so
    an interrupted job may resume with other values."""

    device: str = "auto"
    precision: Precision = "auto"
    gzip_geojson: bool = False  # write <stem>.geojson.gz
    labels_zarr: bool = False  # also write the level-0 instance labels as <stem>.labels.zarr
    resume: bool = False  # continue from the part files of an interrupted job
    overwrite: bool = False  # replace finished outputs and unfinished parts
    group_size: int = 4  # tiles per Dask task


@dataclass(frozen=True)
class TileTask:
    """One core tile: its index in the slide's grid and its window in level-0 pixels."""

    index: int
    x0: float
    y0: float
    x1: float
    y1: float


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
