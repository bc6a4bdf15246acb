"""The ``labels`` job: encode the points of many images and write the label maps to disk."""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from collections.abc import Callable, Iterator
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
    with bar:
        for done in _run_groups(job, groups, workers):
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


def _run_groups(
    job: Callable[..., list[LabelSummary]], groups: list[list[LabelSource]], workers: int
) -> Iterator[list[LabelSummary]]:
    """``job`` on each group, in order. Alone, one writer thread serves the whole job (image
    k is written while k + 1 is encoded). Worker processes are spawned, not forked: a process
    forked from one with threads running (torch's, a notebook's) can deadlock."""
    if workers <= 1:
        with BackgroundWriter() as writer:
            for group in groups:
                yield job(group, writer=writer)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield from pool.map(job, groups)


class BackgroundWriter:
    """Runs file writes in one thread while the caller goes on; at most one write waits
    behind the running one, so memory holds at most three images' maps. A failed write
    raises at the next submit or on leaving the ``with`` block."""

    def __init__(self) -> None:
        self._thread = ThreadPoolExecutor(1)
        self._pending: deque[Future[None]] = deque()

    def submit(self, write: Callable[..., None], *args: object) -> None:
        self._pending.append(self._thread.submit(write, *args))
        while len(self._pending) > 1:
            self._pending.popleft().result()

    def __enter__(self) -> BackgroundWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._thread.shutdown(wait=True)
        while self._pending:
            self._pending.popleft().result()


def _label_group(
    out: Path,
    sources: list[LabelSource],
    *,
    mpp: float | None,
    clip: bool,
    params: EncodingParams,
    writer: BackgroundWriter | None = None,
) -> list[LabelSummary]:
    """Encode and write the sources of one image file; files are compressed and written in a
    second thread (``writer``, or one of its own) while the next region is encoded."""
    summaries = []
    with (
        nullcontext(writer) if writer else BackgroundWriter() as writes,
        OpenSlides(mpp=mpp) as slides,
    ):
        for source in sources:
            encoded, pixel_size = _encode(source, slides, mpp=mpp, clip=clip, params=params)
            writes.submit(_write_maps, out, encoded)
            summaries.append(
                LabelSummary(
                    stem=source.stem,
                    n_points=encoded.n_points,
                    mpp=pixel_size,
                    nucleus_fraction=float((encoded.cluster == NUCLEUS).mean()),
                    ignore_fraction=float((encoded.cluster == IGNORE).mean()),
                )
            )
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
