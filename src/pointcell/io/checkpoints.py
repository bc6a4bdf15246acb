"""Checkpoint files: written atomically, checked on load, with errors that say what to do."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from pointcell.errors import PointcellInputError
from pointcell.io.atomic import atomic_output

CHECKPOINT_FORMAT = "pointcell-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike[str], payload: dict[str, Any]) -> None:
    """Save ``payload`` (plus format and version tags); the old file survives a failed write."""
    data = {"format": CHECKPOINT_FORMAT, "format_version": CHECKPOINT_VERSION, **payload}
    with atomic_output(path) as tmp:
        torch.save(data, tmp)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, or raise a clear error."""
    path = Path(path)
    if not path.is_file():
        raise PointcellInputError(f"{path}: checkpoint not found")
    try:
        data = torch.load(path, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError, zipfile.BadZipFile) as exc:
        raise PointcellInputError(
            f"{path}: checkpoint is corrupt or truncated ({exc}); "
            "if a run was interrupted while saving, its other checkpoint (best.pt) is intact"
        ) from exc
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise PointcellInputError(f"{path}: not a pointcell checkpoint")
    if data.get("format_version") != CHECKPOINT_VERSION:
        raise PointcellInputError(
            f"{path}: checkpoint format version {data.get('format_version')} is not supported "
            f"by this pointcell (expects {CHECKPOINT_VERSION}); use the pointcell version that "
            "wrote it"
        )
    return data
