"""The training targets of one image: a tile or slide region read, resampled to the working
pixel size and encoded, and cached on disk.

Each image is resampled to the working pixel size (default 0.5 µm/px, the paper's) so that 20x
and 40x scans train together, encoded once, and cached under a key made of the image and points
file contents and every encoding parameter. No torch here: ``pointcell labels`` starts fast.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from skimage.transform import resize

from pointcell.encodings import EncodingParams, Encodings, encode
from pointcell.errors import PointcellInputError
from pointcell.io.atomic import atomic_directory
from pointcell.io.images import LoadedImage, read_image, read_label_image, resolve_mpp
from pointcell.io.pairing import ImagePointsPair
from pointcell.io.points import check_inside, read_annotations
from pointcell.io.slides import Slide
from pointcell.regions import (
    LabelSource,
    mask_in_pixels,
    outside_ignored,
    points_in_regions,
    read_region_pixels,
)

log = logging.getLogger(__name__)
CACHE_VERSION = 8
UNTYPED = ("", "unlabelled", "unlabeled", "unknown")  # class names that carry no class


@dataclass(frozen=True)
class PreparedImage:
    """An image and its encodings at the working pixel size; arrays are (H, W[, 3])."""

    stem: str
    image: np.ndarray  # uint8 RGB
    voronoi: np.ndarray  # uint8 labels
    cluster: np.ndarray  # uint8 labels
    repel: np.ndarray  # float32 filtered repel
    points_xy: np.ndarray  # (N, 2) clicks at the working pixel size
    point_classes: np.ndarray  # (N,) class name of each click, "" when untyped
    class_map: np.ndarray | None = None  # uint8 class index near typed clicks, else CLASS_IGNORE
    proximity: np.ndarray | None = None  # float32 proximity to the clicks (detection head)
    inside: np.ndarray | None = None  # bool: the training region, None = the whole image

    @property
    def n_points(self) -> int:
        return len(self.points_xy)


def point_class_names(classes: Sequence[str | None]) -> np.ndarray:
    """Class names as an array, with every untyped spelling (None, "unlabelled"...) as ""."""
    names = ["" if c is None or c.strip().lower() in UNTYPED else c.strip() for c in classes]
    return np.array(names, dtype=str).reshape(-1)


def resample(
    image: np.ndarray, points_xy: np.ndarray, factor: float
) -> tuple[np.ndarray, np.ndarray]:
    """Resize an RGB image by ``factor`` (anti-aliased) and move the points with it."""
    if math.isclose(factor, 1.0, rel_tol=1e-3):
        return image, points_xy
    shape = (max(1, round(image.shape[0] * factor)), max(1, round(image.shape[1] * factor)))
    scaled = resize(image, shape, order=1, anti_aliasing=factor < 1, preserve_range=True)
    real = (shape[0] / image.shape[0], shape[1] / image.shape[1])
    xy = (points_xy + 0.5) * np.array([real[1], real[0]]) - 0.5  # pixel centres stay centres
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), xy


def resample_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Integer labels (H, W) resized to ``shape`` by nearest neighbour: no new label values."""
    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)


def file_digest(path: Path) -> str:
    """SHA-256 of a file's contents, read in chunks (slides are large)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def cache_key(
    pair: ImagePointsPair,
    *,
    mpp: float,
    working_mpp: float,
    params: EncodingParams,
    clip: bool,
    image_digest: str | None = None,
    region: str | None = None,
    self_labels: Path | None = None,
) -> str:
    """Key of a cached encoding: file contents and every parameter that changes the result
    (for a slide region, its outline as WKT too)."""
    recipe = {
        "image": image_digest or file_digest(pair.image),
        "points": file_digest(pair.points),
        "mpp": mpp,
        "working_mpp": working_mpp,
        "params": params.to_dict(),
        "clip": clip,
        "version": CACHE_VERSION,
    }
    if region is not None:
        recipe["region"] = region
    if self_labels is not None:
        recipe["self_labels"] = file_digest(self_labels)
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:20]


_CACHED_ARRAYS = ("image", "voronoi", "cluster", "repel", "points_xy", "point_classes")
_OPTIONAL_ARRAYS = ("inside",)  # the training region, absent for a whole tile
_LISTS = ("points_xy", "point_classes")  # read into memory; the per-pixel rest is mapped


def load_cached(path: Path, stem: str) -> PreparedImage | None:
    """A cached encoding, or None when there is none (or it cannot be read).

    The per-pixel arrays are memory-mapped, read-only: a run over a thousand slide regions
    holds only the pages its patches touch, and the system may drop them again."""
    if not (path / "image.npy").is_file():
        return None
    names = [*_CACHED_ARRAYS, *(n for n in _OPTIONAL_ARRAYS if (path / f"{n}.npy").is_file())]
    try:
        arrays = {
            name: np.load(path / f"{name}.npy", mmap_mode=None if name in _LISTS else "r")
            for name in names
        }
        return PreparedImage(stem, **arrays)
    except (OSError, ValueError):
        log.warning("ignoring unreadable cache folder %s", path)
        return None


def save_cached(path: Path, prepared: PreparedImage) -> PreparedImage:
    """Write ``prepared`` to the cache folder ``path`` (one .npy per array, in place whole or
    not at all) and return it memory-mapped from there."""
    arrays = {name: getattr(prepared, name) for name in _CACHED_ARRAYS}
    if prepared.inside is not None:
        arrays["inside"] = prepared.inside
    shutil.rmtree(path, ignore_errors=True)  # called on a miss: what is there is unreadable
    with atomic_directory(path) as tmp:
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", np.ascontiguousarray(array), allow_pickle=False)
    return load_cached(path, prepared.stem) or prepared


def prepare_image(
    pair: ImagePointsPair,
    *,
    working_mpp: float,
    params: EncodingParams,
    mpp: float | None = None,
    clip: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    self_labels: str | os.PathLike[str] | None = None,
) -> PreparedImage:
    """Read, resample and encode one tile, using the on-disk cache when it is up to date.

    Outlined regions in the points file (:func:`pointcell.io.points.read_annotations`) limit
    the labels to them; outside, every target is ignored. ``self_labels``: a folder of a
    model's instance masks of the tiles (``pointcell predict`` output, ``<stem>.tif``), whose
    nuclei around one click join the cluster label (a round of self-training)."""
    image = read_image(pair.image)
    pixel_size = resolve_mpp(image, mpp, working_mpp=working_mpp)
    nuclei_file = None if self_labels is None else Path(self_labels) / f"{pair.stem}.tif"
    if nuclei_file is not None and not nuclei_file.is_file():
        raise PointcellInputError(
            f"{nuclei_file}: no self-training mask for {pair.stem} (pointcell predict it first)"
        )
    cached = None
    if cache_dir is not None:
        key = cache_key(
            pair,
            mpp=pixel_size,
            working_mpp=working_mpp,
            params=params,
            clip=clip,
            self_labels=nuclei_file,
        )
        cached = Path(cache_dir) / f"{pair.stem}-{key}"
        if (found := load_cached(cached, pair.stem)) is not None:
            return found
    prepared = encode_tile(
        image,
        pair,
        pixel_size=pixel_size,
        working_mpp=working_mpp,
        params=params,
        clip=clip,
        nuclei=None if nuclei_file is None else read_label_image(nuclei_file),
    )
    return prepared if cached is None else save_cached(cached, prepared)


def encode_tile(
    image: LoadedImage,
    pair: ImagePointsPair,
    *,
    pixel_size: float,
    working_mpp: float,
    params: EncodingParams,
    clip: bool,
    nuclei: np.ndarray | None = None,
) -> PreparedImage:
    """Resample a tile to the working pixel size and encode its clicks; outside its outlined
    regions (if any) every target is ignored. ``nuclei``: a model's instance labels of the
    tile at its own size, for self-training."""
    annotations = read_annotations(pair.points)
    points = check_inside(annotations.points, image.shape, clip=clip, source=pair.points)
    if annotations.regions is not None:
        points = points_in_regions(points, annotations.regions, clip=clip, source=pair.points)
    pixels, xy = resample(image.pixels, points.xy, pixel_size / working_mpp)
    if nuclei is not None:
        if nuclei.shape != image.shape[:2]:
            raise PointcellInputError(
                f"{pair.stem}: the self-training mask is {nuclei.shape[1]}x{nuclei.shape[0]} px, "
                f"the image {image.shape[1]}x{image.shape[0]}"
            )
        nuclei = resample_labels(nuclei, pixels.shape[:2])
    enc = encode(pixels, xy, mpp=working_mpp, params=params, nuclei=nuclei)
    inside = None
    if annotations.regions is not None:
        step = (image.shape[1] / pixels.shape[1], image.shape[0] / pixels.shape[0])
        inside = mask_in_pixels(annotations.regions, pixels.shape[:2], step=step)
        enc = outside_ignored(enc, inside)
    return _prepared(pair.stem, pixels, enc, xy, points.classes, inside)


def _prepared(
    stem: str,
    pixels: np.ndarray,
    enc: Encodings,
    points_xy: np.ndarray,
    classes: Sequence[str | None],
    inside: np.ndarray | None,
) -> PreparedImage:
    names = point_class_names(classes)
    return PreparedImage(
        stem, pixels, enc.voronoi, enc.cluster, enc.filtered_repel, points_xy, names, inside=inside
    )


def prepare_slide_region(
    source: LabelSource,
    slide: Slide,
    *,
    working_mpp: float,
    params: EncodingParams,
    clip: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    slide_digest: str | None = None,
) -> PreparedImage:
    """Read one region of a slide at the working pixel size and encode it (only the region's
    bounding box is read), using the cache as :func:`prepare_image` does."""
    if source.region is None or source.points is None:
        raise ValueError(f"{source.stem} is not a slide region")
    cached = None
    if cache_dir is not None:
        key = cache_key(
            source.pair,
            mpp=slide.mpp,
            working_mpp=working_mpp,
            params=params,
            clip=clip,
            image_digest=slide_digest,
            region=source.region.wkt,
        )
        cached = Path(cache_dir) / f"{source.stem}-{key}"
        if (found := load_cached(cached, source.stem)) is not None:
            return found
    prepared = encode_slide_region(source, slide, working_mpp=working_mpp, params=params)
    return prepared if cached is None else save_cached(cached, prepared)


def encode_slide_region(
    source: LabelSource, slide: Slide, *, working_mpp: float, params: EncodingParams
) -> PreparedImage:
    """Read one region of a slide at ``working_mpp`` and encode it; outside the region every
    target is ignored."""
    if source.points is None:
        raise ValueError(f"{source.stem} is not a slide region")
    region = read_region_pixels(slide, source, working_mpp=working_mpp)
    enc = encode(region.pixels, region.points_xy, mpp=working_mpp, params=params)
    enc = outside_ignored(enc, region.inside)
    return _prepared(
        source.stem, region.pixels, enc, region.points_xy, source.points.classes, region.inside
    )
