"""The ``labels`` job: encode the points of many images and write the label maps to disk."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from tqdm.auto import tqdm

from pointcell.encodings import IGNORE, NUCLEUS, EncodingParams, Encodings
from pointcell.errors import PointcellInputError
from pointcell.io.images import (
    read_image,
    resolve_mpp,
    write_float_tiff,
    write_label_png,
    write_rgb_png,
)
from pointcell.io.pairing import pair_images_with_points
from pointcell.io.slides import OpenSlides
from pointcell.overlay import encodings_overlay
from pointcell.regions import NEIGHBOURHOOD_UM, LabelSource, label_sources
from pointcell.targets import PreparedImage, encode_slide_region, encode_tile

LABEL_FOLDERS = ("voronoi", "cluster", "repel", "overlay")


@dataclass(frozen=True)
class LabelSummary:
    """What was written for one image."""

    stem: str
    n_points: int
    mpp: float
    nucleus_fraction: float  # share of pixels labelled nucleus by the cluster label
    ignore_fraction: float  # share of pixels ignored by the cluster label


def write_labels(
    images: str | os.PathLike[str],
    points: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    clip: bool = False,
    params: EncodingParams = EncodingParams(),
    roi: str | os.PathLike[str] | None = None,
    neighbourhood_um: float = NEIGHBOURHOOD_UM,
    workers: int = 1,
    progress: bool = True,
) -> list[LabelSummary]:
    """Encode every image/points pair and write ``out/{voronoi,cluster,repel,overlay}/<stem>``.

    Voronoi and cluster labels are 8-bit PNGs (0 background, 1 nucleus, 2 ignore), the filtered
    repel code a float32 TIFF (-1 where the repel loss skips the pixel), the overlay an RGB
    PNG. Each file appears atomically. A whole slide gives one set per training region,
    ``<slide>_r<k>``, the size of the region's bounding box at level-0 resolution (see
    :mod:`pointcell.regions`); it is never read whole. ``workers`` processes encode
    different images side by side (each starts by importing pointcell: worth it for many
    images).
    """
    out = Path(out)
    pairs = pair_images_with_points(images, points)
    if not pairs:
        raise PointcellInputError(f"no image with a points file in {images}: nothing to encode")
    sources = label_sources(pairs, mpp=mpp, clip=clip, roi=roi, neighbourhood_um=neighbourhood_um)
    groups = _by_image(sources)
    job = partial(_label_group, out, mpp=mpp, clip=clip, params=params)
    workers = min(workers, len(groups))
    bar = tqdm(total=len(sources), desc="encoding", unit="image", disable=not progress)
    summaries: list[LabelSummary] = []
    pool = _pool(workers)
    with bar, pool or nullcontext():
        for done in pool.map(job, groups) if pool else map(job, groups):
            summaries += done
            bar.update(len(done))
    return summaries


def _by_image(sources: list[LabelSource]) -> list[list[LabelSource]]:
    """The sources grouped by image file, in order: a slide's regions go to one worker,
    which opens the slide once."""
    groups: dict[Path, list[LabelSource]] = {}
    for source in sources:
        groups.setdefault(source.pair.image, []).append(source)
    return list(groups.values())


def _pool(workers: int) -> ProcessPoolExecutor | None:
    """Worker processes, or None: this process alone. Workers are spawned, not forked: a
    process forked from one with threads running (torch's, a notebook's) can deadlock."""
    if workers <= 1:
        return None
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def _label_group(
    out: Path,
    sources: list[LabelSource],
    *,
    mpp: float | None,
    clip: bool,
    params: EncodingParams,
) -> list[LabelSummary]:
    """Encode and write the sources of one image file; files are compressed and written in a
    second thread while the next region is encoded."""
    summaries = []
    with ThreadPoolExecutor(1) as writer, OpenSlides(mpp=mpp) as slides:
        pending: deque[Future[None]] = deque()
        for source in sources:
            encoded, pixel_size = _encode(source, slides, mpp=mpp, clip=clip, params=params)
            pending.append(writer.submit(_write_maps, out, encoded))
            while len(pending) > 1:
                pending.popleft().result()
            summaries.append(
                LabelSummary(
                    stem=source.stem,
                    n_points=encoded.n_points,
                    mpp=pixel_size,
                    nucleus_fraction=float((encoded.cluster == NUCLEUS).mean()),
                    ignore_fraction=float((encoded.cluster == IGNORE).mean()),
                )
            )
        for future in pending:
            future.result()
    return summaries


def _encode(
    source: LabelSource,
    slides: OpenSlides,
    *,
    mpp: float | None,
    clip: bool,
    params: EncodingParams,
) -> tuple[PreparedImage, float]:
    """The encodings of a tile or slide region at its own (level-0) pixel size."""
    if source.is_slide_region:
        slide = slides.get(source.pair.image)
        encoded = encode_slide_region(source, slide, working_mpp=slide.mpp, params=params)
        return encoded, slide.mpp
    image = read_image(source.pair.image)
    pixel_size = resolve_mpp(image, mpp)
    encoded = encode_tile(
        image, source.pair, pixel_size=pixel_size, working_mpp=pixel_size, params=params, clip=clip
    )
    return encoded, pixel_size


def _write_maps(out: Path, encoded: PreparedImage) -> None:
    stem = encoded.stem
    enc = Encodings(encoded.voronoi, encoded.cluster, encoded.repel, encoded.repel)
    write_label_png(out / "voronoi" / f"{stem}.png", enc.voronoi)
    write_label_png(out / "cluster" / f"{stem}.png", enc.cluster)
    write_float_tiff(out / "repel" / f"{stem}.tif", enc.filtered_repel)
    overlay = encodings_overlay(encoded.image, encoded.points_xy, enc)
    write_rgb_png(out / "overlay" / f"{stem}.png", overlay)
