"""Models shipped inside the package, by name, and exporting a run as a compact model file."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path
from typing import Any

import torch

from pointcell.errors import PointcellInputError
from pointcell.io.checkpoints import load_checkpoint, save_checkpoint
from pointcell.model import ModelConfig

PRETRAINED = {
    "pointcell-general": "pointcell-general.pt",  # H&E and IHC nuclei, three sources
    "pointcell-he": "pointcell-he.pt",  # H&E nuclei, MoNuSeg points
    "pointcell-ki67": "pointcell-ki67.pt",  # Ki67 IHC, SHIDC typed clicks
}
DEFAULT_MODEL = "pointcell-general"
WEIGHT_KEYS = (
    "config",
    "model",
    "normalisation",
    "working_mpp",
    "postprocess",
    "postprocess_by_stain",
    "step",
    "elapsed_s",
    "best_score",
    "best_metric",
    "pointcell_version",
)


def pretrained_path(name: str) -> Path:
    """The packaged file of a shipped model."""
    if name not in PRETRAINED:
        raise PointcellInputError(f"unknown model {name!r}; shipped: {', '.join(PRETRAINED)}")
    path = Path(str(files("pointcell") / "models" / PRETRAINED[name]))
    if not path.is_file():
        raise PointcellInputError(
            f"the shipped model {name!r} is missing from this "
            f"installation ({path}); reinstall pointcell"
        )
    return path


def export_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    half: bool = True,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write the weights of a checkpoint (no optimizer state), in fp16 when ``half``, plus
    ``extra`` metadata (e.g. post-processing settings)."""
    state = load_checkpoint(source)
    kept = {k: state[k] for k in WEIGHT_KEYS if k in state}
    if half:
        kept["model"] = {
            k: v.half() if v.is_floating_point() else v for k, v in state["model"].items()
        }
    kept.update(extra or {})
    save_checkpoint(out, kept)
    return Path(out)


def resolve_checkpoint(model: str | os.PathLike[str]) -> Path:
    """A shipped model's name, a checkpoint file, or a run folder (its best, else last,
    checkpoint)."""
    if str(model) in PRETRAINED:
        return pretrained_path(str(model))
    path = Path(model)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise PointcellInputError(f"{path}: run folder holds no best.pt or last.pt")
    if not path.is_file():
        raise PointcellInputError(f"{path}: no such model file or run folder")
    return path


def model_config_of(model: str | os.PathLike[str]) -> ModelConfig:
    """The architecture of a shipped model, checkpoint or run folder."""
    return ModelConfig.from_dict(load_checkpoint(resolve_checkpoint(model))["config"]["model"])


def cast_state_to_float(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """fp16 weights of a shipped model, as fp32 for training or CPU inference."""
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
