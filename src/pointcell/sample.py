"""The small real sample shipped inside the package (MoNuSeg crops, CC BY-NC-SA 4.0)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def sample_dir() -> Path:
    """Folder holding ``images/``, ``points/`` and ``masks/`` of the bundled sample."""
    return Path(str(files("pointcell") / "data" / "sample"))
