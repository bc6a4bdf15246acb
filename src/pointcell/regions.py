"""Training regions: the parts of a tile or whole slide where every cell was clicked.

Only clicked areas teach. A points file may outline regions (QuPath *annotation* polygons, or
``--roi``); outside every region each target is "ignore", never background, because unclicked
cells lie there. Without regions a tile keeps its old meaning (it is one region: every cell in
it was clicked), while a slide's regions are the neighbourhoods of its clicks: a disk of
``neighbourhood_um`` around each click, merged where disks overlap. That costs labels (the
background between far-apart clicks is never learned) but never teaches a missed cell as
background.

A slide is never read whole: each region is read from the pyramid level nearest the working
pixel size, resampled and encoded on its own, named ``<slide>_r<k>`` (k from 1, in reading
order: top to bottom, then left to right).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import shapely
from shapely.affinity import affine_transform
from shapely.geometry.base import BaseGeometry

from pointcell.encodings import IGNORE, REPEL_IGNORE, Encodings
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.pairing import ImagePointsPair
from pointcell.io.points import Points, check_inside, read_annotations, subset
from pointcell.io.roi import region_mask, roi_for_images
from pointcell.io.slides import Slide, is_whole_slide, open_slide, slide_stem

NEIGHBOURHOOD_UM = 40.0  # region around each click of a slide without outlined regions


@dataclass(frozen=True)
class LabelSource:
    """One image that training or ``labels`` encodes: a whole tile, or one region of a slide.

    ``group`` is the slide (or tile) it comes from: a split never puts one group on two sides.
    For slide regions, ``region`` is the outline and ``points`` every click near it, both in
    level-0 pixels."""

    pair: ImagePointsPair
    stem: str
    group: str
    region: BaseGeometry | None = None
    points: Points | None = None

    @property
    def is_slide_region(self) -> bool:
        return self.region is not None


def label_sources(
    pairs: list[ImagePointsPair],
    *,
    mpp: float | None = None,
    clip: bool = False,
    roi: str | os.PathLike[str] | None = None,
    neighbourhood_um: float = NEIGHBOURHOOD_UM,
) -> list[LabelSource]:
    """Every tile, and every region of every slide, of the image/points pairs. Only the
    slides' headers and the points files are read here, not pixels. ``roi`` gives the
    slides' regions as :func:`pointcell.io.roi.roi_for_images` reads them for ``predict``."""
    slides = [pair.image for pair in pairs if is_whole_slide(pair.image)]
    outlines = roi_for_images(roi, slides) if roi is not None and slides else {}
    sources: list[LabelSource] = []
    for pair in pairs:
        if pair.image not in slides:
            sources.append(LabelSource(pair, pair.stem, pair.stem))
            continue
        with open_slide(pair.image, mpp=mpp) as slide:
            sources += slide_sources(
                pair,
                slide,
                clip=clip,
                outline=outlines.get(pair.image),
                neighbourhood_um=neighbourhood_um,
            )
    return sources


def slide_sources(
    pair: ImagePointsPair,
    slide: Slide,
    *,
    clip: bool,
    outline: BaseGeometry | None,
    neighbourhood_um: float,
) -> list[LabelSource]:
    """The regions of one slide with their clicks (see the module docstring); ``outline``
    (level-0 pixels) replaces the regions of the points file."""
    annotations = read_annotations(pair.points)
    width, height = slide.dimensions
    points = check_inside(annotations.points, (height, width), clip=clip, source=pair.points)
    warn_if_other_level(points, slide, source=pair.points)
    if outline is None:
        outline = annotations.regions
    if outline is None:
        outline = click_neighbourhoods(points.xy, radius_px=neighbourhood_um / slide.mpp)
    outline = shapely.intersection(outline, shapely.box(-0.5, -0.5, width - 0.5, height - 0.5))
    points = points_in_regions(points, outline, clip=clip, source=pair.points)
    stem = slide_stem(pair.image)
    sources = []
    for k, part in enumerate(region_parts(outline), start=1):
        inside = shapely.contains_xy(part, points.xy[:, 0], points.xy[:, 1])
        if not inside.any():
            warnings.warn(
                f"{pair.points}: region {k} of {pair.image.name} has no click; skipped "
                "(nothing to learn there)",
                PointcellWarning,
                stacklevel=2,
            )
            continue
        near = _points_near(points, part, margin=neighbourhood_um / slide.mpp)
        sources.append(LabelSource(pair, f"{stem}_r{k}", stem, part, near))
    return sources


def click_neighbourhoods(points_xy: np.ndarray, *, radius_px: float) -> BaseGeometry:
    """The union of disks of ``radius_px`` around the clicks."""
    return shapely.union_all(shapely.buffer(shapely.points(points_xy), radius_px, quad_segs=16))


def region_parts(outline: BaseGeometry) -> list[BaseGeometry]:
    """The separate polygons of an outline, in reading order (top, then left)."""
    parts = [p for p in getattr(outline, "geoms", [outline]) if p.area > 0]
    return sorted(parts, key=lambda p: (round(p.bounds[1]), round(p.bounds[0])))


def points_in_regions(points: Points, outline: BaseGeometry, *, clip: bool, source: Path) -> Points:
    """The clicks inside the regions: those outside are an error, or dropped with ``clip``."""
    inside = shapely.contains_xy(outline, points.xy[:, 0], points.xy[:, 1])
    if inside.all():
        return points
    outside = np.flatnonzero(~inside)
    if not clip:
        listed = ", ".join(
            f"#{i} (x={points.xy[i, 0]:g}, y={points.xy[i, 1]:g})" for i in outside[:3]
        )
        raise PointcellInputError(
            f"{source}: {len(outside)} click(s) outside every training region: {listed}; "
            "draw the regions around them, or pass --clip to drop them"
        )
    warnings.warn(
        f"{source}: dropped {len(outside)} click(s) outside every training region",
        PointcellWarning,
        stacklevel=3,
    )
    return subset(points, inside)


def _points_near(points: Points, part: BaseGeometry, *, margin: float) -> Points:
    """The clicks within ``margin`` of a region: those outside it still shape the Voronoi
    partition near its edge."""
    x0, y0, x1, y1 = part.bounds
    x, y = points.xy[:, 0], points.xy[:, 1]
    near = (x >= x0 - margin) & (x <= x1 + margin) & (y >= y0 - margin) & (y <= y1 + margin)
    return subset(points, near)


def warn_if_other_level(points: Points, slide: Slide, *, source: Path) -> None:
    """Warn when every click of a pyramid lies in its top-left 1/16: coordinates written at
    a coarser level (QuPath exports level-0 pixels, the ones pointcell expects)."""
    width, height = slide.dimensions
    if len(points) < 2 or len(slide.level_downsamples) < 2:
        return
    x, y = points.xy[:, 0], points.xy[:, 1]
    if (x < width / 4).all() and (y < height / 4).all():
        warnings.warn(
            f"{source}: every click lies in the top-left 1/16 of {slide.path.name}; are the "
            "coordinates at another pyramid level? pointcell (like QuPath's export) expects "
            "level-0 pixels",
            PointcellWarning,
            stacklevel=3,
        )


@dataclass(frozen=True)
class RegionPixels:
    """A slide region read at the working pixel size: its pixels, and the clicks and the
    region mask in its pixels."""

    pixels: np.ndarray
    points_xy: np.ndarray
    inside: np.ndarray


def read_region_pixels(slide: Slide, source: LabelSource, *, working_mpp: float) -> RegionPixels:
    """The bounding box of a region, read from the nearest pyramid level and resampled."""
    from pointcell.wsi.plan import TileTask, read_region

    if source.region is None or source.points is None:
        raise ValueError(f"{source.stem} is not a slide region")
    width, height = slide.dimensions
    x0, y0, x1, y1 = source.region.bounds
    # the pixels whose centre (at integer coordinates) lies in the bounds, as an index range
    box = TileTask(
        0,
        max(0.0, math.ceil(x0)),
        max(0.0, math.ceil(y0)),
        min(float(width), math.floor(x1) + 1),
        min(float(height), math.floor(y1) + 1),
    )
    read = read_region(slide, slide.best_level(working_mpp), box, working_mpp=working_mpp, margin=0)
    origin, step = np.asarray(read.origin), np.asarray(read.step)
    points_xy = (source.points.xy + 0.5 - origin) / step - 0.5
    inside = mask_in_pixels(
        source.region, read.pixels.shape[:2], origin=read.origin, step=read.step
    )
    return RegionPixels(read.pixels, points_xy, inside)


def outside_ignored(enc: Encodings, inside: np.ndarray) -> Encodings:
    """Encodings that teach nothing outside the region: Voronoi and cluster labels IGNORE,
    filtered repel REPEL_IGNORE."""
    return Encodings(
        voronoi=np.where(inside, enc.voronoi, IGNORE).astype(np.uint8),
        cluster=np.where(inside, enc.cluster, IGNORE).astype(np.uint8),
        repel=enc.repel,
        filtered_repel=np.where(inside, enc.filtered_repel, REPEL_IGNORE).astype(np.float32),
    )


def mask_in_pixels(
    region: BaseGeometry,
    shape: tuple[int, int],
    *,
    origin: tuple[float, float] = (0.0, 0.0),
    step: tuple[float, float] = (1.0, 1.0),
) -> np.ndarray:
    """The mask of a region (level-0 or original pixels) on an image whose pixel ``i`` has
    its centre at ``origin + (i + 0.5) * step - 0.5`` there: a resampled tile (origin 0) or a
    window of a slide read and resampled."""
    (ox, oy), (sx, sy) = origin, step
    matrix = [1 / sx, 0, 0, 1 / sy, (0.5 - ox) / sx - 0.5, (0.5 - oy) / sy - 0.5]
    return region_mask(affine_transform(region, matrix), shape)


def inside_region(points_xy: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """The points whose pixel lies in a region mask."""
    rows, cols = inside.shape
    col = np.clip(np.rint(points_xy[:, 0]).astype(int), 0, cols - 1)
    row = np.clip(np.rint(points_xy[:, 1]).astype(int), 0, rows - 1)
    return points_xy[inside[row, col]]
