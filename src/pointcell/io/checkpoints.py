"""Checkpoint files: written atomically, checked on load, with errors that say what to do."""

from __future__ import annotations

import os
import pickle
import re
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
    """Load a checkpoint written by :func:`save_checkpoint`, or raise a clear error.

    Only tensors, numbers, strings and containers of them are unpickled (``weights_only``):
    a file that names any other Python object is refused before any of it runs, since model
    files are shared like images and opening one must be as safe."""
    path = Path(path)
    if not path.is_file():
        raise PointcellInputError(f"{path}: checkpoint not found")
    data = load_tensors(
        path,
        "checkpoint",
        "if a run was interrupted while saving, its other checkpoint (best.pt) is intact",
    )
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise PointcellInputError(f"{path}: not a pointcell checkpoint")
    if data.get("format_version") != CHECKPOINT_VERSION:
        raise PointcellInputError(
            f"{path}: checkpoint format version {data.get('format_version')} is not supported "
            f"by this pointcell (expects {CHECKPOINT_VERSION}); use the pointcell version that "
            "wrote it"
        )
    return data


def load_tensors(path: Path, what: str, advice: str = "") -> Any:
    """``torch.load`` restricted to tensors, numbers, strings and containers of them; a file
    that asks for any other Python object is refused with one line before any of it runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, zipfile.BadZipFile) as exc:
        refused = _refused_global(exc)
        if refused is not None:
            raise PointcellInputError(
                f"{path}: refused: the file asks for {refused}, which a pointcell {what} "
                "never holds (only tensors, numbers and strings); nothing in it was run"
            ) from exc
        raise PointcellInputError(
            f"{path}: {what} is corrupt or truncated ({_first_line(exc)})"
            + (f"; {advice}" if advice else "")
        ) from exc


def _refused_global(exc: BaseException) -> str | None:
    """The Python object a refused file asked for (``GLOBAL posix.system``), or None when the
    file is merely unreadable."""
    found = re.search(r"GLOBAL [\w.]+", str(exc))
    return found.group(0) if found else None


def _first_line(exc: BaseException) -> str:
    """The informative line of torch's error, without its advice to turn the safety off."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [
        line for line in lines if not line.startswith(("Weights only", "Please file", "Check"))
    ]
    return (useful or lines or [type(exc).__name__])[0]
