"""Running a trained network on images of any size: tiling, blending and resampling.

The image is resampled to the model's working pixel size, padded (by reflection) to a multiple
of the encoder stride, and cut into overlapping tiles whose positions are multiples of the
stride too, so that every tile sees the same pixel grid. Tile predictions are blended with
weights that ramp down towards the tile edges, normalised by their sum. The nucleus probability
is resampled back to the input size.
"""

from __future__ import annotations

import contextlib
import copy
import os
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from skimage.transform import resize
from tqdm.auto import tqdm

from pointcell.device import Precision, autocast_dtype, select_device
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.checkpoints import load_checkpoint
from pointcell.masks import Cells
from pointcell.model import (
    ENCODER_STRIDE,
    ModelConfig,
    build_model,
    class_probabilities,
    nucleus_probability,
    split_proximity,
)
from pointcell.postprocess import (
    PostprocessParams,
    classify,
    postprocess,
    with_refined_outlines,
)
from pointcell.pretrained import cast_state_to_float, resolve_checkpoint
from pointcell.targets import resample


@dataclass
class Predictor:
    """A network ready for inference, with what it needs to read images as it was trained."""

    model: torch.nn.Module
    mean: list[float]
    std: list[float]
    working_mpp: float
    postprocess: PostprocessParams
    device: torch.device
    dtype: torch.dtype | None  # autocast dtype, None for fp32
    source: str
    classes: tuple[str, ...] = ()  # cell classes of a classifying model
    detection_head: bool = False  # a proximity head: cells at its peaks
    # settings tuned on clicked images of one stain ("he", "ihc"; see pointcell.tune)
    postprocess_by_stain: dict[str, PostprocessParams] = field(default_factory=dict)

    def postprocess_for(self, stain: str | None, *, warn: bool = True) -> PostprocessParams:
        """The settings for images of ``stain``: those tuned for it, else the model's own (with
        a warning unless ``warn`` is false, as when tuning a stain for the first time)."""
        if stain is None or stain not in self.postprocess_by_stain:
            if stain is not None and warn:
                warnings.warn(
                    f"{self.source} has no settings tuned for {stain} (pointcell tune --stain): "
                    "using its own",
                    PointcellWarning,
                    stacklevel=2,
                )
            return self.postprocess
        return self.postprocess_by_stain[stain]

    def autocast(self):  # noqa: ANN201
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)


def load_predictor(
    model: str | os.PathLike[str], *, device: str = "auto", precision: Precision = "auto"
) -> Predictor:
    """Load a checkpoint (file or run folder) for inference."""
    path = resolve_checkpoint(model)
    state = load_checkpoint(path)
    return predictor_from_state(state, device=device, precision=precision, source=str(path))


def predictor_from_state(
    state: dict[str, Any],
    *,
    device: str = "auto",
    precision: Precision = "auto",
    source: str = "<memory>",
) -> Predictor:
    try:
        config = ModelConfig.from_dict(state["config"]["model"])
        net = build_model(config)
        net.load_state_dict(cast_state_to_float(state["model"]))
    except (KeyError, RuntimeError, TypeError) as exc:
        raise PointcellInputError(
            f"{source}: checkpoint does not hold a usable model ({exc})"
        ) from exc
    chosen = select_device(device)
    net.to(chosen).to(memory_format=torch.channels_last).eval()
    post = PostprocessParams(**state.get("postprocess", {}))
    by_stain = {
        stain: PostprocessParams(**values)
        for stain, values in state.get("postprocess_by_stain", {}).items()
    }
    return Predictor(
        net,
        list(state["normalisation"]["mean"]),
        list(state["normalisation"]["std"]),
        float(state["working_mpp"]),
        post,
        chosen,
        autocast_dtype(chosen, precision),
        source,
        config.classes,
        config.detection_head,
        by_stain,
    )  # type: ignore[arg-type]


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start positions covering ``length`` with tiles of ``tile`` every ``stride``."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return starts + [length - tile]


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """1-D tile weights: near zero on the outer half of the overlap (where zero padding inside
    the network distorts predictions), a linear ramp over the inner half, 1 in between."""
    weights = np.ones(tile, dtype=np.float32)
    if overlap > 0:
        margin = overlap // 2
        ramp = (np.arange(overlap - margin, dtype=np.float32) + 1) / (overlap - margin + 1)
        weights[:margin] = weights[tile - margin :] = 1e-3
        weights[margin:overlap] = ramp
        weights[tile - overlap : tile - margin] = ramp[::-1]
    return weights


def adapt_batchnorm(
    predictor: Predictor,
    images: Iterable[tuple[np.ndarray, float]],
    *,
    tile: int = 512,
    batch_size: int = 4,
    progress: bool = False,
) -> Predictor:
    """A copy of ``predictor`` whose batch-norm statistics are re-estimated on ``images``
    (``(RGB array, µm/px)`` pairs): AdaBN (Li et al. 2018). A stain or scanner unlike that of
    the training slides shifts the means and variances of the network's features; measuring them
    on the images to be predicted undoes that shift at every layer without changing a weight.
    Each layer's statistics are the average, over batches of tiles of one image at the working
    pixel size, of the batch statistics as the layer sees them in training mode. ``images`` may
    be a generator: one image is held at a time."""
    model = copy.deepcopy(predictor.model)
    kinds = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)
    norms = [m for m in model.modules() if isinstance(m, kinds)]
    if not norms:
        raise PointcellInputError(f"{predictor.source}: the network has no batch-norm layers")
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative average over all batches
        norm.train()  # the other layers stay in eval mode
    batches = 0
    with torch.no_grad():
        for pixels, mpp in tqdm(images, desc="adapting", unit="image", disable=not progress):
            for chunk in _chunks(_adaptation_tiles(predictor, pixels, mpp, tile), batch_size):
                batch = _normalised_batch(predictor, np.stack(chunk))
                with predictor.autocast():
                    model(batch.contiguous(memory_format=torch.channels_last))
                batches += 1
    if not batches:
        raise PointcellInputError("adapting batch-norm statistics needs at least one image")
    model.eval()
    return replace(predictor, model=model, source=f"{predictor.source} (AdaBN)")


def _normalised_batch(predictor: Predictor, tiles: np.ndarray) -> torch.Tensor:
    """RGB uint8 tiles (B, h, w, 3) as the network reads them: (B, 3, h, w) on its device,
    normalised by the training images' channel means and standard deviations."""
    mean = torch.tensor(predictor.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(predictor.std, dtype=torch.float32).view(1, 3, 1, 1)
    batch = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0
    return ((batch - mean) / std).to(predictor.device)


def _adaptation_tiles(
    predictor: Predictor, pixels: np.ndarray, mpp: float, tile: int
) -> list[np.ndarray]:
    """Tiles covering an image at the working pixel size with the least overlap, padded as for
    prediction."""
    padded = _pad_to_stride(resample(pixels, np.empty((0, 2)), mpp / predictor.working_mpp)[0])
    th, tw = min(tile, padded.shape[0]), min(tile, padded.shape[1])
    return [
        padded[y : y + th, x : x + tw]
        for y in tile_starts(padded.shape[0], th, th)
        for x in tile_starts(padded.shape[1], tw, tw)
    ]


def _pad_to_stride(image: np.ndarray) -> np.ndarray:
    """The image padded (reflected) at the bottom and right to multiples of the encoder
    stride."""
    h, w = image.shape[:2]
    ph, pw = _round_up(h, ENCODER_STRIDE), _round_up(w, ENCODER_STRIDE)
    return np.pad(
        image, ((0, ph - h), (0, pw - w), (0, 0)), mode="reflect" if min(h, w) > 1 else "edge"
    )


def predict_probability(predictor: Predictor, image: np.ndarray, **options: Any) -> np.ndarray:
    """Nucleus probability (H, W) float32 of an RGB image already at the working pixel size.
    ``options``: tiling and progress, as :func:`predict_maps`."""
    return predict_maps(predictor, image, **options)[0]


def predict_maps(
    predictor: Predictor,
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    tta: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """(1 + K [+ 1], H, W) float32 maps of an RGB image at the working pixel size: the nucleus
    probability, the probability of each of the model's K cell classes, and with a detection
    head the proximity map (averaged over the 8 rotations and mirror images of every tile with
    ``tta``). :func:`cells_from_maps` turns them into cells."""
    if tile % ENCODER_STRIDE or overlap % ENCODER_STRIDE or overlap >= tile:
        raise ValueError(
            f"tile and overlap must be multiples of {ENCODER_STRIDE}, overlap smaller than tile"
        )
    h, w = image.shape[:2]
    padded = _pad_to_stride(image)
    ph, pw = padded.shape[:2]
    th, tw = min(tile, ph), min(tile, pw)
    stride = tile - overlap
    boxes = [(y, x) for y in tile_starts(ph, th, stride) for x in tile_starts(pw, tw, stride)]
    weight = np.outer(
        blend_weights(th, overlap if ph > th else 0), blend_weights(tw, overlap if pw > tw else 0)
    )
    n_maps = 1 + len(predictor.classes) + int(predictor.detection_head)
    total = np.zeros((n_maps, ph, pw), np.float32)
    norm = np.zeros((ph, pw), np.float32)
    bar = tqdm(
        total=len(boxes),
        desc="tiles",
        unit="tile",
        leave=False,
        disable=not progress or len(boxes) == 1,
    )
    for chunk in _chunks(boxes, batch_size):
        tensor = _normalised_batch(
            predictor, np.stack([padded[y : y + th, x : x + tw] for y, x in chunk])
        )
        symmetries = SQUARE_SYMMETRIES if tta else SQUARE_SYMMETRIES[:1]
        summed = _network_maps(predictor, tensor, *symmetries[0])
        for symmetry in symmetries[1:]:
            summed = summed + _network_maps(predictor, tensor, *symmetry)
        maps = (summed / len(symmetries)).cpu().numpy()
        for (y, x), tile_maps in zip(chunk, maps, strict=True):
            total[:, y : y + th, x : x + tw] += tile_maps * weight
            norm[y : y + th, x : x + tw] += weight
        bar.update(len(chunk))
    bar.close()
    return (total / norm)[:, :h, :w]


SQUARE_SYMMETRIES = [(turns, mirror) for mirror in (False, True) for turns in range(4)]


def _network_maps(
    predictor: Predictor, tensor: torch.Tensor, turns: int, mirror: bool
) -> torch.Tensor:
    """(B, 1 + K [+ 1], h, w) maps of a normalised batch seen rotated by ``turns`` quarter
    turns (then mirrored left-right), mapped back to the batch's orientation."""
    seen = torch.rot90(tensor, turns, dims=(2, 3))
    if mirror:
        seen = torch.flip(seen, dims=(3,))
    seen = seen.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), predictor.autocast():
        logits = predictor.model(seen)
    logits, proximity = split_proximity(logits, predictor.detection_head)
    maps = nucleus_probability(logits)[:, None]
    if predictor.classes:
        maps = torch.cat([maps, class_probabilities(logits)], dim=1)
    if proximity is not None:
        maps = torch.cat([maps, torch.sigmoid(proximity.float())[:, None]], dim=1)
    if mirror:
        maps = torch.flip(maps, dims=(3,))
    return torch.rot90(maps, -turns, dims=(2, 3))


def cells_from_maps(
    predictor: Predictor,
    maps: np.ndarray,
    *,
    mpp: float,
    params: PostprocessParams | None = None,
    image: np.ndarray | None = None,
) -> Cells:
    """Cells (instances, centres, classes) from the maps of :func:`predict_maps` at pixel size
    ``mpp``: post-processing of the nucleus probability — detections at the proximity map's
    peaks with a detection head — with outlines refined on the stain of ``image`` (the RGB
    pixels of the maps, when given and ``params.refine_outlines_um`` asks for it), then each
    cell's class."""
    n_classes = len(predictor.classes)
    proximity = maps[1 + n_classes] if predictor.detection_head else None
    params = params or predictor.postprocess
    cells = postprocess(maps[0], mpp=mpp, params=params, proximity=proximity)
    if image is not None:
        cells = with_refined_outlines(cells, maps[0], image, mpp=mpp, params=params)
    if n_classes:
        cells = classify(cells, maps[1 : 1 + n_classes], mpp=mpp)
    return cells


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def predict_image(
    predictor: Predictor, image: np.ndarray, *, mpp: float, **options: Any
) -> np.ndarray:
    """Nucleus probability at the input's size: resample to the working pixel size, predict,
    resample back (bilinear). ``options``: tiling, ``tta`` and progress, as
    :func:`predict_image_maps`."""
    return predict_image_maps(predictor, image, mpp=mpp, **options)[0]


def predict_image_maps(
    predictor: Predictor,
    image: np.ndarray,
    *,
    mpp: float,
    tile: int = 512,
    overlap: int = 128,
    batch_size: int = 4,
    tta: bool = False,
    progress: bool = False,
) -> np.ndarray:
    """:func:`predict_maps` at the input's size (nucleus, class probabilities, proximity)."""
    factor = mpp / predictor.working_mpp
    working, _ = resample(image, np.empty((0, 2)), factor)
    maps = predict_maps(
        predictor,
        working,
        tile=tile,
        overlap=overlap,
        batch_size=batch_size,
        tta=tta,
        progress=progress,
    )
    if maps.shape[1:] != image.shape[:2]:
        maps = np.stack(
            [
                resize(m, image.shape[:2], order=1, preserve_range=True, anti_aliasing=False)
                for m in maps
            ]
        ).astype(np.float32)
    return maps
