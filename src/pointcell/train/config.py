"""What defines a training run: :class:`TrainConfig`, its presets, and the options of
``pointcell train`` turned into one."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal, get_args

from pointcell.data import AugmentParams
from pointcell.device import Precision
from pointcell.encodings import EncodingParams
from pointcell.errors import PointcellInputError
from pointcell.io.jsonfiles import read_json
from pointcell.losses import TASKS, TasksMode
from pointcell.model import ENCODER_STRIDE, ModelConfig
from pointcell.regions import NEIGHBOURHOOD_UM

LrSchedule = Literal["constant", "flat-cosine"]


OptimizerName = Literal["ranger", "adam"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; stored as ``config.json`` in the run folder."""

    images: str
    points: str
    model: ModelConfig = ModelConfig()
    encoder_weights: str | None = None  # None, "imagenet" or a local weights file
    encoding: EncodingParams = EncodingParams()
    augment: AugmentParams = AugmentParams()
    mpp: float | None = None  # overrides the images' metadata
    working_mpp: float = 0.5
    clip: bool = False
    roi: str | None = None  # training regions of the slides: a file, or a folder of <stem>.*
    self_labels: str | None = None  # a model's instance masks of the tiles: self-training
    neighbourhood_um: float = NEIGHBOURHOOD_UM  # a slide without regions: disks around clicks
    tasks: tuple[str, ...] = TASKS
    tasks_mode: TasksMode = "scheduler"
    optimizer: OptimizerName = "ranger"
    lr: float = 1e-3
    lr_schedule: LrSchedule = "constant"
    anneal_from: float = 0.72  # flat-cosine: share of the steps at full lr before the decay
    batch_size: int = 8
    patch_size: int = 256  # the paper's 250, rounded up to a multiple of the encoder stride
    steps: int | None = None
    epochs: float | None = None  # an epoch: one patch per patch-sized area of training image
    val_every: int = 200
    checkpoint_every: int = 100
    seed: int = 0
    split: dict[str, list[str]] | None = None  # explicit {"train", "val", "test"} stems
    split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    # {source: [stems]}: patches drawn evenly from each source (the rest: one more source)
    sources: dict[str, list[str]] | None = None
    device: str = "auto"
    precision: Precision = "auto"
    cache_dir: str | None = None  # default: ~/.cache/pointcell/encodings
    snapshot_every: int | None = None  # keep the weights every N steps (learning curves)
    # cell classes: None = the class names found on the training points (no names: detection
    # only); () = ignore them; the final list is stored in model.classes
    classes: tuple[str, ...] | None = None
    class_radius_um: float = 2.0  # class target: disks of this radius around typed clicks
    proximity_sigma_um: float = 1.5  # detection head: width of the proximity target
    init_from: str | None = None  # start from a shipped model or checkpoint (fine-tuning)

    def __post_init__(self) -> None:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of steps or epochs")
        if self.patch_size % ENCODER_STRIDE:
            raise ValueError(f"patch_size must be a multiple of {ENCODER_STRIDE}")
        if self.batch_size < 1 or self.lr <= 0 or self.val_every < 1 or self.checkpoint_every < 1:
            raise ValueError("batch_size, lr, val_every and checkpoint_every must be positive")
        if self.neighbourhood_um <= 0:
            raise ValueError(f"neighbourhood_um must be positive, got {self.neighbourhood_um}")
        if self.proximity_sigma_um <= 0:
            raise ValueError(f"proximity_sigma_um must be positive, got {self.proximity_sigma_um}")
        if not 0 <= self.anneal_from < 1:
            raise ValueError(f"anneal_from must be in [0, 1), got {self.anneal_from}")
        # names are checked here, not at the first step after minutes of encoding
        for name, value, allowed in (
            ("optimizer", self.optimizer, get_args(OptimizerName)),
            ("lr_schedule", self.lr_schedule, get_args(LrSchedule)),
            ("tasks_mode", self.tasks_mode, get_args(TasksMode)),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        if not self.tasks or set(self.tasks) - set(TASKS):
            raise ValueError(f"tasks must be a non-empty subset of {TASKS}, got {self.tasks}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        data["model"] = ModelConfig.from_dict(data["model"])
        encoding = dict(data["encoding"])
        data["encoding"] = EncodingParams(**encoding)
        augment = dict(data["augment"])
        for name in ("scale_range", "stain_scale_range"):
            if name in augment:
                augment[name] = tuple(augment[name])
        data["augment"] = AugmentParams(**augment)
        data["tasks"] = tuple(data["tasks"])
        data["split_fractions"] = tuple(data["split_fractions"])
        if data.get("classes") is not None:
            data["classes"] = tuple(data["classes"])
        return cls(**data)


PRESETS: dict[str, dict[str, Any]] = {
    # Chamanzar & Nie 2020: ResNet50 U-Net, batch 8, lr 1e-3, Ranger, 60,900 iterations.
    "paper": {
        "model": ModelConfig(encoder="resnet50"),
        "steps": 60_900,
        "batch_size": 8,
        "lr": 1e-3,
        "optimizer": "ranger",
        "tasks_mode": "scheduler",
        "val_every": 1000,
        "checkpoint_every": 500,
    },
    # An EfficientNet-Lite0 U-Net started from ImageNet (weights from a pip package, offline):
    # on the Kumar split, 900 steps of it beat 3,000 of a ResNet18 from random weights (AJI
    # 0.469 vs 0.460, detection F1 0.818 vs 0.794; docs/results.md). 1.0-2.2 s a step on 2
    # CPU cores in fp32 (bf16 does not speed it up), so 3,000 steps take about 1-2 h.
    "cpu": {
        "model": ModelConfig(encoder="tu-tf_efficientnet_lite0"),
        "encoder_weights": "imagenet",
        "steps": 3000,
        "batch_size": 8,
        "lr": 1e-3,
        "optimizer": "ranger",
        "tasks_mode": "scheduler",
        "val_every": 250,
        "checkpoint_every": 50,
    },
}


def preset_config(name: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a named preset, with explicit overrides."""
    if name not in PRESETS:
        raise PointcellInputError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    values = {**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}}
    if "epochs" in overrides and overrides["epochs"] is not None:
        values.pop("steps", None)
    return TrainConfig(**values)


def parse_tasks(text: str) -> tuple[str, ...]:
    """``"voronoi,repel"`` -> ``("voronoi", "repel")``; checked by :class:`TrainConfig`."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


def parse_classes(text: str) -> tuple[str, ...] | None:
    """``--classes``: auto (None: the names on the training points), none (``()``) or a
    comma-separated list of class names."""
    if text == "auto":
        return None
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise PointcellInputError("--classes: give auto, none or comma-separated class names")
    return names


def _model_of(encoder: str | None, init_from: str | None) -> ModelConfig | None:
    """The architecture asked for: an encoder, that of the model fine-tuned from, or (None)
    the preset's."""
    if encoder:
        return ModelConfig(encoder=encoder)
    if init_from:
        from pointcell.pretrained import model_config_of

        return model_config_of(init_from)
    return None


def parse_sources(sources: object) -> dict[str, list[str]]:
    """A checked ``{source: [image stems]}`` of a --sources file."""
    if not isinstance(sources, dict) or not all(
        isinstance(stems, list) and all(isinstance(s, str) for s in stems)
        for stems in sources.values()
    ):
        raise PointcellInputError('the sources must be a JSON object {"source": [image stems]}')
    seen: dict[str, str] = {}
    for name, stems in sources.items():
        for stem in stems:
            if seen.setdefault(stem, name) != name:
                raise PointcellInputError(f"image {stem} is in two sources: {seen[stem]}, {name}")
    return dict(sources)


def source_names(config: TrainConfig, stems: Sequence[str]) -> list[str] | None:
    """The source of each training image (``None``: sample by area alone); images in no
    source of ``config.sources`` form one more."""
    if config.sources is None:
        return None
    of = {stem: name for name, listed in config.sources.items() for stem in listed}
    return [of.get(stem, "(other images)") for stem in stems]


def config_from_options(
    preset: str,
    *,
    encoder: str | None = None,
    encoder_weights: str | None = None,
    tasks: str = ",".join(TASKS),
    classes: str = "auto",
    detection_head: bool = False,
    split_file: str | os.PathLike[str] | None = None,
    sources_file: str | os.PathLike[str] | None = None,
    encoding: EncodingParams = EncodingParams(),
    augment: AugmentParams = AugmentParams(),
    **overrides: Any,
) -> TrainConfig:
    """The run ``pointcell train`` asks for: ``preset`` with the options given as they are
    typed (``None`` keeps the preset's value); a bad combination is one clear error. The
    encoder starts from the preset's weights only with the preset's encoder (another
    encoder, or --init-from, starts from none unless ``encoder_weights`` says)."""
    model = _model_of(encoder, overrides.get("init_from"))
    if encoder_weights is None:  # the preset's start goes with the preset's encoder only
        weights = None if model is not None else PRESETS.get(preset, {}).get("encoder_weights")
    else:
        weights = None if encoder_weights == "none" else encoder_weights
    if split_file is not None:
        overrides["split"] = read_json(Path(split_file), "split")
    if sources_file is not None:
        overrides["sources"] = parse_sources(read_json(Path(sources_file), "sources"))
    try:
        config = preset_config(
            preset,
            model=model,
            tasks=parse_tasks(tasks),
            classes=parse_classes(classes),
            encoding=encoding,
            augment=augment,
            **overrides,
        )
        config = replace(config, encoder_weights=weights)  # None too: not the preset's
        if detection_head:
            config = replace(config, model=replace(config.model, detection_head=True))
    except ValueError as exc:
        raise PointcellInputError(str(exc)) from exc
    return config
