"""Shared fixtures: synthetic nuclei with known centres, and the bundled real sample."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from pointcell.sample import sample_dir

SHARED_MONUSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg"
BACKGROUND_RGB = (235, 200, 225)
NUCLEUS_RGB = (90, 50, 140)


@dataclass(frozen=True)
class SyntheticTile:
    image: np.ndarray  # (H, W, 3) uint8
    centres_xy: np.ndarray  # (N, 2)
    truth: np.ndarray  # (H, W) instance labels of the disks
    radius: float
    mpp: float


def make_disks(centres_xy, *, shape=(96, 96), radius=6.0, mpp=0.25, noise=4.0, seed=0):
    """Dark disks of ``radius`` px on a light background, with mild Gaussian noise."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    truth = np.zeros(shape, dtype=np.int32)
    centres = np.asarray(centres_xy, dtype=float).reshape(-1, 2)
    for label, (x, y) in enumerate(centres, start=1):
        truth[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = label
    image = np.where(truth[..., None] > 0, NUCLEUS_RGB, BACKGROUND_RGB).astype(float)
    image += np.random.default_rng(seed).normal(0, noise, image.shape)
    return SyntheticTile(np.clip(image, 0, 255).astype(np.uint8), centres, truth, radius, mpp)


@pytest.fixture
def disks() -> SyntheticTile:
    centres = [(20, 20), (60, 24), (30, 70), (75, 72), (48, 48)]
    return make_disks(centres)


@pytest.fixture
def sample() -> Path:
    return sample_dir()


@pytest.fixture
def shared_monuseg() -> Path:
    if not (SHARED_MONUSEG / "images").is_dir():
        pytest.skip("../shared/data/monuseg is not available")
    return SHARED_MONUSEG


def write_disk_dataset(folder: Path, n_images: int = 3, *, shape=(96, 96), mpp=0.5) -> Path:
    """Write ``images/*.tif`` (with pixel size) and ``points/*.csv`` of synthetic disks."""
    import tifffile

    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "points").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index in range(n_images):
        centres = rng.uniform(12, min(shape) - 12, size=(6, 2))
        tile = make_disks(centres, shape=shape, radius=5.0, mpp=mpp, seed=index)
        resolution = 1e4 / mpp
        tifffile.imwrite(
            folder / "images" / f"img{index}.tif",
            tile.image,
            resolution=(resolution, resolution),
            resolutionunit="CENTIMETER",
        )
        rows = "\n".join(f"{x:.2f},{y:.2f}" for x, y in centres)
        (folder / "points" / f"img{index}.csv").write_text(f"x,y\n{rows}\n")
    return folder


@pytest.fixture
def disk_dataset(tmp_path) -> Path:
    return write_disk_dataset(tmp_path / "data")


def small_checkpoint_state() -> dict:
    """The minimal checkpoint content of an untrained small U-Net (ResNet18, thin decoder)."""
    import torch

    from pointcell.model import ModelConfig, build_model

    config = ModelConfig(encoder="resnet18", decoder_channels=(16, 16, 16, 16, 16))
    torch.manual_seed(0)
    return {
        "config": {"model": config.to_dict()},
        "model": build_model(config).state_dict(),
        "normalisation": {"mean": [0.5] * 3, "std": [0.25] * 3},
        "working_mpp": 0.5,
        "postprocess": {"min_probability": 0.3},
    }


@pytest.fixture(scope="session")
def small_checkpoint(tmp_path_factory) -> Path:
    """One untrained small model file for every test that needs a model (read only)."""
    from pointcell.io.checkpoints import save_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "small.pt"
    save_checkpoint(path, small_checkpoint_state())
    return path


def tiny_config(data: Path, tmp_path: Path, **changes):
    """A TrainConfig of a few CPU steps of a small U-Net on ``data/{images,points}``."""
    from pointcell.model import ModelConfig
    from pointcell.train import TrainConfig

    values = dict(
        images=str(data / "images"),
        points=str(data / "points"),
        model=ModelConfig(encoder="resnet18", decoder_channels=(16, 16, 16, 16, 16)),
        steps=4,
        batch_size=2,
        patch_size=64,
        val_every=2,
        checkpoint_every=1,
        precision="fp32",
        device="cpu",
        cache_dir=str(tmp_path / "cache"),
    )
    values.update(changes)
    return TrainConfig(**values)
