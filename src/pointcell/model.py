"""The network: a U-Net with a ResNet (or any segmentation-models-pytorch) encoder.

Two output channels — background and nucleus — turned into probabilities with a softmax; a
model trained on typed points has one more channel per cell class (a per-pixel class head,
its own softmax over those channels).
:class:`ModelConfig` holds only JSON-serialisable values, so a checkpoint's config rebuilds it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from pointcell.errors import PointcellInputError

N_OUTPUTS = 2  # background, nucleus
NUCLEUS_CHANNEL = 1
ENCODER_STRIDE = 32  # input sides must be multiples of this


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the network. ``encoder`` is any smp encoder name (paper: resnet50)."""

    encoder: str = "resnet50"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    classes: tuple[str, ...] = ()  # cell classes of a classifying model, in channel order

    @property
    def n_outputs(self) -> int:
        return N_OUTPUTS + len(self.classes)

    def to_dict(self) -> dict[str, object]:
        return {
            "encoder": self.encoder,
            "decoder_channels": list(self.decoder_channels),
            "classes": list(self.classes),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            encoder=str(data["encoder"]),
            decoder_channels=tuple(int(c) for c in data["decoder_channels"]),
            classes=tuple(str(c) for c in data.get("classes", ())),
        )


def build_model(config: ModelConfig, *, encoder_weights: str | None = None) -> nn.Module:
    """Build the U-Net; ``encoder_weights`` is None, ``"imagenet"`` or a local weights file.

    ``"imagenet"`` lets segmentation-models-pytorch download the weights; offline, that fails
    with an error explaining how to pass a local file instead.
    """
    known = smp.encoders.get_encoder_names()
    if config.encoder not in known:
        raise PointcellInputError(
            f"unknown encoder {config.encoder!r}; choose one of "
            f"{', '.join(sorted(known)[:12])}, ..."
        )
    if encoder_weights == "imagenet":
        return _build_with_imagenet(config)
    model = _unet(config, weights=None)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    return model


def _unet(config: ModelConfig, *, weights: str | None) -> nn.Module:
    return smp.Unet(
        encoder_name=config.encoder,
        encoder_weights=weights,
        classes=config.n_outputs,
        decoder_channels=config.decoder_channels,
    )


def _build_with_imagenet(config: ModelConfig) -> nn.Module:
    try:
        return _unet(config, weights="imagenet")
    except Exception as exc:  # network and hub errors come in many types
        raise PointcellInputError(
            f"could not download ImageNet weights for encoder {config.encoder!r} ({exc}). "
            "Offline? Save the encoder's ImageNet state dict on a machine with internet access "
            "(e.g. torchvision's ResNet weights) and pass its path: "
            "--encoder-weights /path/to/weights.pth, or use --encoder-weights none"
        ) from exc


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into the model's encoder.

    Accepts an encoder state dict or a classification network's (torchvision/timm ResNet):
    keys of the classifier head (``fc.*``) are dropped, every encoder weight must be present.
    """
    path = Path(path)
    if not path.is_file():
        raise PointcellInputError(f"{path}: encoder weights file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors
        raise PointcellInputError(f"{path}: not a readable PyTorch weights file ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PointcellInputError(f"{path}: expected a state dict, got {type(state).__name__}")
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    encoder = model.get_submodule("encoder")
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PointcellInputError(
            f"{path}: weights do not fit the {type(encoder).__name__} encoder ({exc})"
        ) from exc


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) probabilities of the K cell classes (softmax over the class channels)."""
    return torch.softmax(logits[:, N_OUTPUTS:].float(), dim=1)


def nucleus_probability(logits: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the nucleus channel, (B, H, W)."""
    return torch.softmax(logits[:, :N_OUTPUTS].float(), dim=1)[:, NUCLEUS_CHANNEL]
