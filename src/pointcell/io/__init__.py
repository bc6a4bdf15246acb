"""Everything that touches the disk: images, point annotations, label maps, pairing of files.

The names below load their module on first use, so that importing one light part of
``pointcell.io`` (e.g. :mod:`pointcell.io.atomic`, which the command line needs at start-up)
does not import numpy, tifffile and scipy.
"""

from __future__ import annotations

import importlib
from typing import Any

_HOME = {
    "atomic_output": "atomic",
    "LoadedImage": "images",
    "read_image": "images",
    "write_float_tiff": "images",
    "write_label_png": "images",
    "ImagePointsPair": "pairing",
    "pair_images_with_points": "pairing",
    "Points": "points",
    "read_points": "points",
    "write_points_csv": "points",
    "write_points_geojson": "points",
}
__all__ = sorted(_HOME)


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module 'pointcell.io' has no attribute {name!r}")
    return getattr(importlib.import_module(f"pointcell.io.{_HOME[name]}"), name)
