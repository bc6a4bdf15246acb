"""The ``labels`` job: encode the points of many images and write the label maps to disk."""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from pointcell.encodings import IGNORE, NUCLEUS, EncodingParams, Encodings, encode
from pointcell.errors import PointcellInputError
from pointcell.io.images import (
    read_image,
    resolve_mpp,
    write_float_tiff,
    write_label_png,
    write_rgb_png,
)
from pointcell.io.pairing import pair_images_with_points
from pointcell.io.points import read_points
from pointcell.overlay import encodings_overlay

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
    progress: bool = True,
) -> list[LabelSummary]:
    """Encode every image/points pair and write ``out/{voronoi,cluster,repel,overlay}/<stem>``.

    Voronoi and cluster labels are 8-bit PNGs (0 background, 1 nucleus, 2 ignore), the filtered
    repel code a float32 TIFF (-1 where the repel loss skips the pixel), the overlay an RGB
    PNG. Each file appears atomically.
    """
    out = Path(out)
    pairs = pair_images_with_points(images, points)
    if not pairs:
        raise PointcellInputError(f"no image with a points file in {images}: nothing to encode")
    summaries = []
    # files are compressed and written in a second thread while the next image is encoded
    with ThreadPoolExecutor(1) as writer:
        pending: deque[Future[None]] = deque()
        for pair in tqdm(pairs, desc="encoding", unit="image", disable=not progress):
            image = read_image(pair.image)
            pixel_size = resolve_mpp(image, mpp)
            pts = read_points(pair.points, image_shape=image.shape, clip=clip)
            enc = encode(image.pixels, pts.xy, mpp=pixel_size, params=params)
            pending.append(writer.submit(_write_maps, out, pair.stem, image.pixels, pts.xy, enc))
            while len(pending) > 1:
                pending.popleft().result()
            summaries.append(
                LabelSummary(
                    stem=pair.stem,
                    n_points=len(pts),
                    mpp=pixel_size,
                    nucleus_fraction=float((enc.cluster == NUCLEUS).mean()),
                    ignore_fraction=float((enc.cluster == IGNORE).mean()),
                )
            )
        for future in pending:
            future.result()
    return summaries


def _write_maps(
    out: Path, stem: str, pixels: np.ndarray, points_xy: np.ndarray, enc: Encodings
) -> None:
    write_label_png(out / "voronoi" / f"{stem}.png", enc.voronoi)
    write_label_png(out / "cluster" / f"{stem}.png", enc.cluster)
    write_float_tiff(out / "repel" / f"{stem}.tif", enc.filtered_repel)
    write_rgb_png(out / "overlay" / f"{stem}.png", encodings_overlay(pixels, points_xy, enc))
