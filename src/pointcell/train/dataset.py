"""The images a run trains and validates on: encoded (or cached), split, given targets."""

from __future__ import annotations

import logging
import math
import os
import warnings
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from pointcell.data import split_stems, with_class_map, with_proximity
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.pairing import pair_images_with_points
from pointcell.io.slides import OpenSlides
from pointcell.regions import LabelSource, label_sources
from pointcell.targets import PreparedImage, file_digest, prepare_image, prepare_slide_region
from pointcell.train.config import TrainConfig
from pointcell.train.distributed import Distributed

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(root) / "pointcell" / "encodings"


def prepare_dataset(
    config: TrainConfig, sources: list[LabelSource], *, progress: bool
) -> dict[str, PreparedImage]:
    """Encode (or load from the cache) tiles and slide regions, keyed by stem. Slides stay
    open while their regions are read; only one region's pixels are in flight at a time."""
    regions = [source.stem for source in sources if source.is_slide_region]
    if config.self_labels is not None and regions:  # before any encoding is spent
        raise PointcellInputError(
            f"{regions[0]}: --self-labels works on image tiles, not slide regions"
        )
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    prepared: dict[str, PreparedImage] = {}
    digests: dict[Path, str] = {}
    with OpenSlides(mpp=config.mpp) as slides:
        for source in tqdm(sources, desc="encoding", unit="image", disable=not progress):
            if not source.is_slide_region:
                prepared[source.stem] = prepare_image(
                    source.pair,
                    working_mpp=config.working_mpp,
                    params=config.encoding,
                    mpp=config.mpp,
                    clip=config.clip,
                    cache_dir=cache,
                    self_labels=config.self_labels,
                )
                continue
            image = source.pair.image
            if image not in digests:
                digests[image] = file_digest(image)
            prepared[source.stem] = prepare_slide_region(
                source,
                slides.get(image),
                working_mpp=config.working_mpp,
                params=config.encoding,
                clip=config.clip,
                cache_dir=cache,
                slide_digest=digests[image],
            )
    return prepared


def _split_lists(split: object) -> dict[str, list[str]]:
    """``{"train": [...], "val": [...], "test": [...]}`` of stems, checked, from a split file.

    Keys starting with ``_`` are comments; ``test_*`` keys (e.g. ``test_same_organ``) are
    groups of test images and join ``test``."""
    if not isinstance(split, dict):
        raise PointcellInputError(
            'the split must be a JSON object with "train", "val" and "test" lists of image stems'
        )
    lists: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for key, stems in split.items():
        if key.startswith("_"):
            continue
        side = "test" if key.startswith("test_") else key
        if side not in lists:
            raise PointcellInputError(
                f'unknown key "{key}" in the split (expected train, val, test, test_<group>, '
                "or _<comment>)"
            )
        if not isinstance(stems, list) or not all(isinstance(s, str) for s in stems):
            raise PointcellInputError(f'the split\'s "{key}" must be a list of image stems')
        lists[side] += stems
    return lists


def resolve_split(config: TrainConfig, groups: dict[str, str]) -> dict[str, list[str]]:
    """Train / val / test stems. ``groups`` maps each stem to the slide (or tile) it comes
    from: the default split divides groups, never a group (a single slide's regions are split
    with a warning), and a split file may name a whole slide, ``slide:r<k>`` or a stem."""
    if config.split is None:
        return _default_split(config, groups)
    split = {side: _expand(names, groups) for side, names in _split_lists(config.split).items()}
    if not split["train"]:
        raise PointcellInputError("the split has no training image")
    for first, second in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(set(split[first]) & set(split[second]))
        if shared:
            raise PointcellInputError(
                f"the split puts image(s) in both {first} and {second}: {', '.join(shared)} "
                "(a model chosen or scored on its training images looks better than it is)"
            )
    return split


def _default_split(config: TrainConfig, groups: dict[str, str]) -> dict[str, list[str]]:
    names = sorted(set(groups.values()))
    if len(names) == 1 and len(groups) > 1 and names[0] not in groups:
        warnings.warn(
            f"one slide ({names[0]}): its regions are split between training and validation, "
            "so validation scores come from the slide the model learned on",
            PointcellWarning,
            stacklevel=3,
        )
        return split_stems(sorted(groups), fractions=config.split_fractions, seed=config.seed)
    by_group = split_stems(names, fractions=config.split_fractions, seed=config.seed)
    return {
        side: sorted(stem for stem, group in groups.items() if group in chosen)
        for side, chosen in by_group.items()
    }


def _expand(names: list[str], groups: dict[str, str]) -> list[str]:
    """Stems of the names of a split file: a stem, a slide (all its regions) or slide:r<k>."""
    stems: list[str] = []
    unknown = []
    for name in names:
        stem = name.replace(":", "_", 1) if ":" in name else name
        if stem in groups:
            stems.append(stem)
        elif name in groups.values():
            stems += sorted(s for s, group in groups.items() if group == name)
        else:
            unknown.append(name)
    if unknown:
        raise PointcellInputError(
            f"split names image(s) or region(s) without points: {', '.join(unknown)}"
        )
    return stems


def total_steps(config: TrainConfig, train_images: list[PreparedImage]) -> int:
    if config.steps is not None:
        return config.steps
    area = sum(img.image.shape[0] * img.image.shape[1] for img in train_images)
    per_epoch = math.ceil(area / config.patch_size**2 / config.batch_size)
    return max(1, round(config.epochs * per_epoch))


def discover_classes(images: list[PreparedImage]) -> tuple[str, ...]:
    """Sorted class names of the typed clicks of the training images."""
    names: set[str] = set()
    for img in images:
        names.update(str(n) for n in img.point_classes if n)
    return tuple(sorted(names))


def with_classes(config: TrainConfig, train_images: list[PreparedImage]) -> TrainConfig:
    """Fix the run's class list: asked for, found on the clicks, or that of --init-from."""
    if config.classes is not None:
        classes = config.classes
    else:
        classes = discover_classes(train_images)
        if len(classes) == 1:
            log.info("all typed points are %r: training detection only", classes[0])
            classes = ()
    if classes:
        log.info("training a classifier of %d cell classes: %s", len(classes), ", ".join(classes))
    return replace(config, model=replace(config.model, classes=tuple(classes)))


def prepare_run_images(
    config: TrainConfig, dist: Distributed, *, fresh: bool, progress: bool
) -> tuple[TrainConfig, dict[str, list[str]], dict[str, PreparedImage]]:
    """The run's split and its training and validation images, encoded (rank 0 first, the
    other processes then read its cache) and given the class and proximity targets the model
    needs; a ``fresh`` run also fixes its class list here."""
    pairs = pair_images_with_points(config.images, config.points)
    if not pairs:
        raise PointcellInputError(
            f"no image in {config.images} has a points file in {config.points}"
        )
    sources = label_sources(
        pairs,
        mpp=config.mpp,
        clip=config.clip,
        roi=config.roi,
        neighbourhood_um=config.neighbourhood_um,
    )
    split = resolve_split(config, {s.stem: s.group for s in sources})
    needed = set(split["train"]) | set(split["val"])
    if not dist.is_main:
        dist.barrier()
    wanted = [s for s in sources if s.stem in needed]
    prepared = prepare_dataset(config, wanted, progress=progress and dist.is_main)
    if dist.is_main:
        dist.barrier()
    if fresh:
        config = with_classes(config, [prepared[s] for s in split["train"]])
    if config.model.classes:
        radius = config.class_radius_um / config.working_mpp
        prepared = {
            stem: with_class_map(img, config.model.classes, radius_px=radius)
            for stem, img in prepared.items()
        }
    if config.model.detection_head:
        sigma = config.proximity_sigma_um / config.working_mpp
        prepared = {s: with_proximity(img, sigma_px=sigma) for s, img in prepared.items()}
    return config, split, prepared
