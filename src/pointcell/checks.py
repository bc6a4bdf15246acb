"""Checks of physical inputs and output paths, made before any work starts.

One place decides what a plausible pixel size is, what a number must be to mean something, how
large a buffer derived from an image size may grow, and whether an output location can be
written, so that every command refuses the same bad input with the same clear line instead of
running for minutes and then failing, or running and reporting nonsense.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

from pointcell.errors import PointcellInputError

MPP_RANGE = (0.05, 20.0)  # µm/px: from 200x optics to a 0.5x overview; scans are 0.1-1
MAX_WORKING_PIXELS = 400e6  # an image resampled beyond this is a wrong pixel size, not a tile


def check_mpp(value: float, source: str) -> float:
    """``value`` as a pixel size in µm/px, or an error naming where it came from."""
    low, high = MPP_RANGE
    if not math.isfinite(value) or not low <= value <= high:
        remedy = "" if source == "--mpp" else ", or pass --mpp to override the file's metadata"
        raise PointcellInputError(
            f"pixel size {value:g} µm/px from {source} is not plausible (expected "
            f"{low:g}-{high:g}; 0.25 for 40x, 0.5 for 20x scans): check the value{remedy}"
        )
    return float(value)


def check_positive(name: str, value: float) -> float:
    """``value`` if it is a finite number above 0; NaN or infinity as a setting is an error."""
    if not math.isfinite(value) or value <= 0:
        raise PointcellInputError(f"{name} must be a finite number above 0, got {value}")
    return float(value)


def check_resampled_size(
    shape: tuple[int, int], mpp: float, working_mpp: float, source: str
) -> tuple[int, int]:
    """The (rows, cols) of an image of ``shape`` at ``mpp`` once resampled to ``working_mpp``,
    or an error before the buffer is allocated when it would hold an absurd number of pixels."""
    scale = mpp / working_mpp
    rows, cols = max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))
    if rows * cols > MAX_WORKING_PIXELS:
        raise PointcellInputError(
            f"{source}: {shape[1]}x{shape[0]} px at {mpp:g} µm/px is {cols}x{rows} px at the "
            f"working {working_mpp:g} µm/px ({rows * cols / 1e6:.0f} megapixels, over "
            f"{MAX_WORKING_PIXELS / 1e6:.0f}): check the pixel size, or give a slide as a "
            "pyramidal TIFF so that it is read tile by tile"
        )
    return rows, cols


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a folder that exists and can be written, or one that can be created.

    Nothing is created: a command that then fails on other input leaves no empty folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PointcellInputError(f"{path}: the output folder is a file")
    _check_creatable(path)
    return path


def check_output_file(path: str | os.PathLike[str]) -> Path:
    """``path`` if a file can be written there (its folder may still have to be created)."""
    path = Path(path)
    if path.is_dir():
        raise PointcellInputError(f"{path}: the output file is a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise PointcellInputError(f"{path}: cannot replace the output file (not writable)")
    _check_creatable(path.parent)
    return path


def _check_creatable(folder: Path) -> None:
    """Raise unless files can be written in ``folder`` or in the folder that would hold it."""
    existing = folder.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise PointcellInputError(f"{folder}: cannot create it, {existing} is a file")
    try:  # a real write: root ignores mode bits but not read-only mounts
        with tempfile.TemporaryFile(dir=existing, prefix=".pointcell-probe."):
            pass
    except OSError as exc:
        raise PointcellInputError(
            f"{folder}: cannot write there ({exc.strerror or exc} in {existing})"
        ) from exc
