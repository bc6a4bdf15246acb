"""Whole-slide images: pyramid levels, pixel size and bounded-memory region reads.

Slides are read with tiffslide (pure Python on tifffile: SVS, NDPI, SCN, BIF, generic pyramidal
TIFF and OME-TIFF, local or fsspec paths, no system library). Formats that are not TIFF-based
(MIRAX ``.mrxs``, Hamamatsu ``.vms``/``.vmu``) need OpenSlide: ``pip install
"pointcell[openslide]"``. Both expose the same API, so the rest of pointcell does not care which
one opened a slide.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import tifffile
from skimage.transform import downscale_local_mean

from pointcell.checks import check_mpp
from pointcell.errors import PointcellInputError
from pointcell.io.images import tiff_mpp, to_rgb8

SLIDE_SUFFIXES = (".svs", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".vmu", ".svslide")
OPENSLIDE_SUFFIXES = (".mrxs", ".vms", ".vmu", ".svslide")
# a plain TIFF this large (pixels) is read as a slide even without a pyramid
LARGE_TIFF_PIXELS = 8192 * 8192
SlideReader = Literal["auto", "tiffslide", "openslide"]


@dataclass
class Slide:
    """An open slide: level sizes as (width, height), downsamples, level-0 pixel size."""

    path: Path
    handle: Any  # tiffslide.TiffSlide or openslide.OpenSlide
    mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]

    @property
    def dimensions(self) -> tuple[int, int]:
        return self.level_dimensions[0]

    def level_mpp(self, level: int) -> float:
        return self.mpp * self.level_downsamples[level]

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 (height, width, 3) of a region given in ``level`` pixels.

        The window must lie inside the level; transparent pixels become white.
        """
        level_w, level_h = self.level_dimensions[level]
        if x < 0 or y < 0 or x + width > level_w or y + height > level_h:
            raise ValueError(f"region {x, y, width, height} outside level {level} of {self.path}")
        scale = self.level_downsamples[level]
        origin = (int(round(x * scale)), int(round(y * scale)))
        region = np.asarray(self.handle.read_region(origin, level, (width, height)))
        if region.ndim == 3 and region.shape[2] == 4:  # RGBA, premultiplied by OpenSlide
            alpha = region[..., 3:4].astype(np.float32) / 255.0
            rgb = region[..., :3].astype(np.float32) + 255.0 * (1.0 - alpha)
            return np.clip(rgb, 0, 255).astype(np.uint8)
        return to_rgb8(region, source=self.path)

    def best_level(self, mpp: float) -> int:
        """The coarsest level at least as fine as ``mpp`` (5% tolerance), so that reading never
        upsamples; level 0 when every level is coarser."""
        fine_enough = [
            level
            for level in range(len(self.level_downsamples))
            if self.level_mpp(level) <= mpp * 1.05
        ]
        return max(fine_enough, key=self.level_mpp) if fine_enough else 0

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """A low-resolution RGB view and its downsample from level 0, read strip by strip from
        the coarsest level so that memory stays bounded."""
        level = len(self.level_downsamples) - 1
        level_w, level_h = self.level_dimensions[level]
        factor = max(1, int(np.ceil(max(level_w, level_h) / max_size)))
        strip = factor * max(1, 1024 // factor)
        rows = []
        for y in range(0, level_h, strip):
            height = min(strip, level_h - y)
            pixels = self.read(level, 0, y, level_w, height).astype(np.float32)
            rows.append(downscale_local_mean(pixels, (factor, factor, 1), cval=255))  # glass
        thumb = np.clip(np.concatenate(rows), 0, 255).astype(np.uint8)
        return thumb, factor * self.level_downsamples[level]

    def close(self) -> None:
        self.handle.close()

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slide_stem(path: str | os.PathLike[str]) -> str:
    """File name without its extension, ``.ome.tif`` counted as one extension."""
    name = Path(path).name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def is_whole_slide(path: str | os.PathLike[str]) -> bool:
    """Slide formats, and TIFFs that hold a pyramid or are too large to read at once."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SLIDE_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff"):
        return False
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            height, width = series.levels[0].shape[:2]
            if series.levels[0].axes.startswith(("S", "C")) and series.levels[0].ndim == 3:
                height, width = series.levels[0].shape[1:]
            return len(series.levels) > 1 or height * width > LARGE_TIFF_PIXELS
    except (tifffile.TiffFileError, OSError, IndexError, ValueError):
        return False


def open_slide(
    path: str | os.PathLike[str], *, mpp: float | None = None, reader: SlideReader = "auto"
) -> Slide:
    """Open a whole-slide image; ``mpp`` overrides (or supplies) the level-0 pixel size."""
    path = Path(path)
    if not path.exists():
        raise PointcellInputError(f"{path}: slide not found")
    if reader == "auto":
        reader = "openslide" if path.suffix.lower() in OPENSLIDE_SUFFIXES else "tiffslide"
    handle = _open_handle(path, reader)
    try:
        if mpp is not None:
            found = check_mpp(mpp, "--mpp")
        else:
            recorded = _slide_mpp(path, handle)
            if recorded is None:
                raise PointcellInputError(
                    f"{path}: the slide does not record its pixel size; pass --mpp (µm per pixel)"
                )
            found = check_mpp(recorded, f"the metadata of {path}")
        return Slide(
            path=path,
            handle=handle,
            mpp=found,
            level_dimensions=tuple((int(w), int(h)) for w, h in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
        )
    except BaseException:
        handle.close()
        raise


class OpenSlides:
    """Slides opened on first use and kept open until the ``with`` block ends, so that the
    many regions of one slide are read through one handle."""

    def __init__(self, *, mpp: float | None = None, reader: SlideReader = "auto") -> None:
        self._mpp, self._reader = mpp, reader
        self._stack = ExitStack()
        self._open: dict[Path, Slide] = {}

    def get(self, path: Path) -> Slide:
        if path not in self._open:
            slide = open_slide(path, mpp=self._mpp, reader=self._reader)
            self._open[path] = self._stack.enter_context(slide)
        return self._open[path]

    def __enter__(self) -> OpenSlides:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()


def _open_handle(path: Path, reader: str) -> Any:
    opener: Callable[[str], Any]
    errors: tuple[type[BaseException], ...]
    if reader == "openslide":
        try:
            import openslide
        except ImportError as exc:
            raise PointcellInputError(
                f"{path}: this format needs OpenSlide; install it with "
                '`pip install "pointcell[openslide]"`'
            ) from exc
        opener, errors = openslide.OpenSlide, (openslide.OpenSlideError, OSError)
    elif reader == "tiffslide":
        import tiffslide

        opener, errors = tiffslide.TiffSlide, (tifffile.TiffFileError, OSError, ValueError)
    else:
        raise ValueError(f"unknown slide reader {reader!r}")
    try:
        return opener(str(path))
    except errors as exc:
        raise PointcellInputError(f"{path}: cannot read the slide ({exc})") from exc


def _slide_mpp(path: Path, handle: Any) -> float | None:
    properties = handle.properties
    for key in ("tiffslide.mpp-x", "openslide.mpp-x"):
        value = properties.get(key)
        if value not in (None, ""):
            return float(value)
    if path.suffix.lower() in (".tif", ".tiff"):  # OME-TIFF: PhysicalSizeX in the OME-XML
        with tifffile.TiffFile(path) as tif:
            return tiff_mpp(tif.pages.first)
    return None


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    shape: tuple[int, int],
    tile_at: Callable[[int, int, int, int, int], np.ndarray],
    *,
    mpp: float,
    n_levels: int = 3,
    tile: int = 512,
) -> None:
    """Write a tiled, zlib-compressed pyramidal TIFF (levels downsampled by 4) without holding
    the image in memory.

    ``tile_at(level, y, x, height, width)`` returns the RGB uint8 pixels of that window of that
    level; the level's shape is ``shape`` divided by ``4**level`` (rounded up).
    """
    resolution = 1e4 / mpp
    with tifffile.TiffWriter(path, bigtiff=True) as tif:
        for level in range(n_levels):
            scale = 4**level
            height, width = -(-shape[0] // scale), -(-shape[1] // scale)

            def tiles(level: int = level, height: int = height, width: int = width):  # noqa: ANN202
                for y in range(0, height, tile):
                    for x in range(0, width, tile):
                        block = np.full((tile, tile, 3), 255, np.uint8)
                        h, w = min(tile, height - y), min(tile, width - x)
                        block[:h, :w] = tile_at(level, y, x, h, w)
                        yield block

            tif.write(
                tiles(),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="zlib",
                resolution=(resolution / scale, resolution / scale),
                resolutionunit="CENTIMETER",
                subifds=n_levels - 1 if level == 0 else None,
                subfiletype=1 if level else 0,
                description=f"pointcell pyramidal TIFF; MPP = {mpp * scale}",
            )
