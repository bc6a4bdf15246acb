"""Training: one network, three point-label tasks, a run folder that survives interruptions.

A run folder holds ``config.json`` (everything needed to reproduce the run), ``split.json``,
``metrics.csv`` (one row per validation), ``last.pt`` (written atomically every
``checkpoint_every`` steps and when stopped by Ctrl-C or SIGTERM) and ``best.pt`` (highest
validation detection F1). A batch depends only on the seed and the step number, so
``fit(..., resume=True)`` continues exactly where the run stopped: on CPU it ends with the
same weights as an uninterrupted run.

Several GPUs (or CPU processes) train one model through PyTorch's own launcher: ``torchrun
--nproc-per-node N -m pointcell.cli train ...`` runs the same command in N processes that
average their gradients (DistributedDataParallel, NCCL on GPUs, gloo on CPUs). Each process
draws its own patches (``--batch-size`` is per process); only rank 0 validates and writes.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from tqdm.auto import tqdm

from pointcell import __version__
from pointcell.data import (
    AugmentParams,
    PatchSampler,
    PreparedImage,
    channel_stats,
    grid_batches,
    prepare_image,
    split_stems,
    with_class_map,
    with_proximity,
)
from pointcell.device import Precision, autocast_dtype, select_device
from pointcell.encodings import EncodingParams
from pointcell.errors import PointcellInputError
from pointcell.inference import Predictor, cells_from_maps, predict_maps
from pointcell.io.atomic import atomic_output
from pointcell.io.checkpoints import load_checkpoint, save_checkpoint
from pointcell.io.jsonfiles import write_json
from pointcell.io.pairing import ImagePointsPair, pair_images_with_points
from pointcell.losses import TASKS, TaskCombiner, TasksMode, proximity_loss, task_losses
from pointcell.metrics import DetectionScores, detection_scores
from pointcell.model import ENCODER_STRIDE, ModelConfig, build_model, split_proximity
from pointcell.postprocess import PostprocessParams
from pointcell.pretrained import cast_state_to_float

log = logging.getLogger(__name__)
LrSchedule = Literal["constant", "flat-cosine"]
OptimizerName = Literal["ranger", "adam"]
VALIDATION_RADIUS_UM = 3.0
BEST_METRIC = "val_det_f1"  # best.pt: highest detection F1 on the validation clicks
PROXIMITY_LR_SCALE = 10.0  # the new detection head learns this much faster than the network


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
        augment["scale_range"] = tuple(augment["scale_range"])
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
    # A ResNet18 U-Net: 3,000 steps take about 25 min on 2 CPU cores with bf16 autocast (AVX-512
    # BF16) and about 4 h in fp32 on cores without it (measured: 0.44 and 4.4-4.9 s a step).
    "cpu": {
        "model": ModelConfig(encoder="resnet18"),
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


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    best_score: float | None  # best validation detection F1
    history: list[dict[str, float]] = field(default_factory=list)


class TrainingInterrupted(Exception):
    """Training stopped by Ctrl-C or SIGTERM after saving ``last.pt``."""


class _StopRequest:
    """Signal handler that asks training to stop after the step under way, so that ``last.pt``
    is a step boundary and resuming repeats nothing; a second signal stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stopping after this step (signal %d); send it again to stop at once", signum)


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopRequest]:
    """Route Ctrl-C and SIGTERM (``kill``, batch schedulers, ``docker stop``) to a
    :class:`_StopRequest` while training; signals the process ignores (``nohup``) stay ignored."""
    request = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request  # only the main thread may set handlers; Ctrl-C still raises there
        return
    previous = {
        number: signal.getsignal(number)
        for number in (signal.SIGINT, signal.SIGTERM)
        if signal.getsignal(number) is not signal.SIG_IGN
    }
    for number in previous:
        signal.signal(number, request)
    try:
        yield request
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def make_optimizer(name: str, parameters, lr: float) -> torch.optim.Optimizer:  # noqa: ANN001
    """Ranger (RAdam + Lookahead, from pytorch-optimizer) or Adam."""
    if name == "ranger":
        from pytorch_optimizer import Ranger

        return Ranger(parameters, lr=lr)
    if name == "adam":
        return torch.optim.Adam(parameters, lr=lr)
    raise ValueError(f"optimizer must be ranger or adam, got {name!r}")


def learning_rate(
    step: int, total: int, base: float, schedule: LrSchedule, anneal_from: float
) -> float:
    """Learning rate of step ``step`` (counted from 0) of ``total``. "flat-cosine" keeps
    ``base`` for the first ``anneal_from`` share of the steps, then decays it to zero along a
    half cosine (the schedule Ranger's authors train with); "constant" is the paper's."""
    if schedule == "constant":
        return base
    if schedule != "flat-cosine":
        raise ValueError(f"lr schedule must be constant or flat-cosine, got {schedule!r}")
    start = anneal_from * total
    if step < start:
        return base
    progress = (step - start) / (total - start)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_cache_dir() -> Path:
    root = os.environ.get("XDG_CACHE_HOME", str(Path.home() / ".cache"))
    return Path(root) / "pointcell" / "encodings"


def prepare_dataset(
    config: TrainConfig, pairs: list[ImagePointsPair], *, progress: bool
) -> dict[str, PreparedImage]:
    """Encode (or load from the cache) the given image/points pairs, keyed by stem."""
    cache = Path(config.cache_dir) if config.cache_dir else default_cache_dir()
    prepared = [
        prepare_image(
            pair,
            working_mpp=config.working_mpp,
            params=config.encoding,
            mpp=config.mpp,
            clip=config.clip,
            cache_dir=cache,
        )
        for pair in tqdm(pairs, desc="encoding", unit="image", disable=not progress)
    ]
    return {img.stem: img for img in prepared}


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


def resolve_split(config: TrainConfig, stems: list[str]) -> dict[str, list[str]]:
    if config.split is None:
        return split_stems(stems, fractions=config.split_fractions, seed=config.seed)
    split = _split_lists(config.split)
    unknown = sorted(set(sum(split.values(), [])) - set(stems))
    if unknown:
        raise PointcellInputError(f"split names image(s) without points: {', '.join(unknown)}")
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


def total_steps(config: TrainConfig, train_images: list[PreparedImage]) -> int:
    if config.steps is not None:
        return config.steps
    area = sum(img.image.shape[0] * img.image.shape[1] for img in train_images)
    per_epoch = math.ceil(area / config.patch_size**2 / config.batch_size)
    return max(1, round(config.epochs * per_epoch))


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """Read the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        return cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True when ``flag`` is true in any process, so that all of them stop at one step."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
        return bool(value.item())


@contextlib.contextmanager
def distributed_context(dist: Distributed, device_name: str) -> Iterator[str]:
    """Join the torchrun process group for the duration of a run; yield the device this
    process trains on (its own GPU when there are GPUs)."""
    if not dist.enabled:
        yield device_name
        return
    device = select_device(device_name)
    if device.type == "cuda":
        torch.cuda.set_device(dist.local_rank)
        device_name = f"cuda:{dist.local_rank}"
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, rank=dist.rank, world_size=dist.world_size)
    try:
        yield device_name if device.type == "cuda" else device.type
    finally:
        torch.distributed.destroy_process_group()


class Trainer:
    """Holds the model, optimizer and combiner of one run and performs its steps."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        mean: list[float],
        std: list[float],
        initial_weights: dict[str, torch.Tensor] | None = None,
        dist: Distributed = Distributed(),
        device: str | None = None,
    ) -> None:
        self.config = config
        self.dist = dist
        self.device = select_device(device or config.device)
        self.dtype = autocast_dtype(self.device, config.precision)
        torch.manual_seed(config.seed)
        self.model = build_model(config.model, encoder_weights=config.encoder_weights)
        if initial_weights is not None:
            self.model.load_state_dict(
                adapt_output_head(cast_state_to_float(initial_weights), self.model.state_dict())
            )
        self.model.to(self.device).to(memory_format=torch.channels_last)
        # gradients flow through `trained` (the DDP wrapper when distributed) and are
        # averaged across processes; `model` is the plain network for eval and checkpoints
        self.trained: torch.nn.Module = self.model
        if dist.enabled:
            self.trained = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.combiner = TaskCombiner(config.tasks_mode, config.tasks).to(self.device)
        self.optimizer = make_optimizer(config.optimizer, self._parameter_groups(), config.lr)
        use_scaler = self.device.type == "cuda" and self.dtype == torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        self.mean, self.std = mean, std

    def _parameter_groups(self) -> list[dict[str, Any]]:
        """The network and combiner at the base rate; a detection head, which starts from
        scratch on a fine-tuned network, at PROXIMITY_LR_SCALE times that rate."""
        head = (
            self.model.get_submodule("proximity_head") if self.config.model.detection_head else None
        )
        fast = {id(p) for p in head.parameters()} if head is not None else set()
        body = [p for p in self.model.parameters() if id(p) not in fast]
        groups = [{"params": body + list(self.combiner.parameters()), "lr_scale": 1.0}]
        if head is not None:
            groups.append({"params": list(head.parameters()), "lr_scale": PROXIMITY_LR_SCALE})
        return groups

    def autocast(self):  # noqa: ANN201
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def losses(
        self, logits: torch.Tensor, targets: dict[str, torch.Tensor], tasks: tuple[str, ...]
    ) -> dict[str, torch.Tensor]:
        """The losses of ``tasks``, the class loss and, with a detection head, its own."""
        logits, proximity = split_proximity(logits, self.config.model.detection_head)
        losses = task_losses(logits, targets, tasks)
        if proximity is not None:
            losses["proximity"] = proximity_loss(proximity, targets["proximity"])
        return losses

    def step(
        self,
        iteration: int,
        images: torch.Tensor,
        targets: dict[str, torch.Tensor],
        lr: float | None = None,
    ) -> dict[str, float]:
        """One optimisation step on the tasks the combiner selects for ``iteration``, at
        learning rate ``lr`` (default: the config's)."""
        for group in self.optimizer.param_groups:
            group["lr"] = (self.config.lr if lr is None else lr) * group.get("lr_scale", 1.0)
        self.trained.train()
        images = images.to(self.device, memory_format=torch.channels_last)
        targets = {k: v.to(self.device) for k, v in targets.items()}
        with self.autocast():
            logits = self.trained(images)
        losses = self.losses(logits, targets, self.combiner.tasks_at(iteration))
        loss = self.combiner(losses)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self._average_combiner_gradients()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {k: float(v.detach()) for k, v in losses.items()}

    def _average_combiner_gradients(self) -> None:
        """Task-uncertainty weights live outside the DDP module: average them by hand."""
        if not self.dist.enabled:
            return
        for parameter in self.combiner.parameters():
            if parameter.grad is not None:
                torch.distributed.all_reduce(parameter.grad)
                parameter.grad /= self.dist.world_size

    def check_replicas_agree(self) -> None:
        """Raise if the processes of a distributed run ended with different weights."""
        if not self.dist.enabled:
            return
        with torch.no_grad():
            local = torch.stack([p.detach().double().sum() for p in self.model.parameters()]).to(
                self.device
            )
            gathered = [torch.zeros_like(local) for _ in range(self.dist.world_size)]
            torch.distributed.all_gather(gathered, local)
        if not all(torch.allclose(gathered[0], other) for other in gathered[1:]):
            raise RuntimeError("distributed training: the replicas' weights diverged")

    @torch.inference_mode()
    def validate(self, images: list[PreparedImage]) -> dict[str, float]:
        """Mean loss of every task over a grid of patches of the validation images."""
        self.model.eval()
        sums: dict[str, float] = {}  # every loss self.losses gives, in its order
        count = 0
        for batch, targets in grid_batches(
            images,
            patch_size=self.config.patch_size,
            batch_size=self.config.batch_size,
            mean=self.mean,
            std=self.std,
        ):
            batch = batch.to(self.device, memory_format=torch.channels_last)
            with self.autocast():
                logits = self.model(batch)
            losses = self.losses(logits, {k: v.to(self.device) for k, v in targets.items()}, TASKS)
            for task, value in losses.items():
                sums[task] = sums.get(task, 0.0) + float(value) * len(batch)
            count += len(batch)
        result = {f"val_{k}": v / count for k, v in sums.items()}
        result["val_loss"] = sum(result[f"val_{k}"] for k in TASKS) / len(TASKS)
        result["val_det_f1"] = self.detection_f1(images)
        return result

    def predictor(self) -> Predictor:
        """The network being trained, wrapped for whole-image inference."""
        return Predictor(
            self.model,
            self.mean,
            self.std,
            self.config.working_mpp,
            PostprocessParams(),
            self.device,
            self.dtype,
            "training",
            self.config.model.classes,
            self.config.model.detection_head,
        )

    def detection_f1(self, images: list[PreparedImage]) -> float:
        """Pooled detection F1 against the validation clicks (3 µm radius): a model-selection
        score that needs nothing but points."""
        predictor = self.predictor()
        mpp = self.config.working_mpp
        pooled = DetectionScores(0, 0, 0)
        for img in images:
            maps = predict_maps(predictor, img.image, batch_size=self.config.batch_size)
            cells = cells_from_maps(predictor, maps, mpp=mpp)
            pooled = pooled + detection_scores(
                img.points_xy, cells.xy, radius=VALIDATION_RADIUS_UM / mpp
            )
        return pooled.f1

    def state(
        self,
        step: int,
        total: int,
        best: float | None,
        elapsed_s: float,
        *,
        weights_only: bool = False,
    ) -> dict[str, Any]:
        """Checkpoint content; ``weights_only`` leaves out what only resuming needs."""
        state = {
            "config": self.config.to_dict(),
            "pointcell_version": __version__,
            "model": self.model.state_dict(),
            "step": step,
            "total_steps": total,
            "elapsed_s": elapsed_s,
            "best_score": best,
            "best_metric": BEST_METRIC,
            "normalisation": {"mean": self.mean, "std": self.std},
            "working_mpp": self.config.working_mpp,
            "world_size": self.dist.world_size,
        }
        if not weights_only:
            state.update(
                optimizer=self.optimizer.state_dict(),
                combiner=self.combiner.state_dict(),
                scaler=self.scaler.state_dict(),
                torch_rng=torch.get_rng_state(),
            )
        return state

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.combiner.load_state_dict(state["combiner"])
        self.scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["torch_rng"])


def adapt_output_head(
    state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Fit a checkpoint's weights to a network whose output head has other class channels, or
    a detection head the checkpoint lacks: the shared leading channels (background, nucleus,
    common classes) are kept, the others take the new network's initial values — so a
    detection model can be fine-tuned into a classifier, and either given a detection head."""
    # a detection head is taken from the checkpoint when both have one, else from the target
    adapted = {k: v for k, v in state.items() if k in target or not k.startswith("proximity")}
    adapted.update(
        {k: v for k, v in target.items() if k.startswith("proximity") and k not in state}
    )
    for name, value in state.items():
        wanted = target.get(name)
        if wanted is None or wanted.shape == value.shape or not name.startswith("segmentation"):
            continue
        merged = wanted.clone()
        n = min(len(value), len(wanted))
        merged[:n] = value[:n]
        adapted[name] = merged
    return adapted


def discover_classes(images: list[PreparedImage]) -> tuple[str, ...]:
    """Sorted class names of the typed clicks of the training images."""
    names: set[str] = set()
    for img in images:
        names.update(str(n) for n in img.point_classes if n)
    return tuple(sorted(names))


def _with_classes(config: TrainConfig, train_images: list[PreparedImage]) -> TrainConfig:
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


def _initial_state(config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint to fine-tune from, checked against the run's architecture."""
    if config.init_from is None:
        return None
    from pointcell.pretrained import resolve_checkpoint

    state = load_checkpoint(resolve_checkpoint(config.init_from))
    architecture = ModelConfig.from_dict(state["config"]["model"])

    def body(model: ModelConfig) -> ModelConfig:
        return replace(model, classes=(), detection_head=False)

    if body(architecture) != body(config.model):
        raise PointcellInputError(
            f"--init-from {config.init_from} is a {architecture.encoder} U-Net but the run "
            f"asks for {config.model.encoder}; drop --encoder to use the model's own"
        )
    if not math.isclose(float(state["working_mpp"]), config.working_mpp):
        raise PointcellInputError(
            f"--init-from {config.init_from} works at {state['working_mpp']} µm/px; pass "
            f"--working-mpp {state['working_mpp']}"
        )
    return state


def _write_metrics(path: Path, rows: list[dict[str, float]]) -> None:
    if not rows:
        return
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _read_metrics(path: Path, up_to_step: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return [row for row in rows if row["step"] <= up_to_step]


def fit(
    config: TrainConfig | None,
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    steps: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train (or, with ``resume``, continue training) and return where it ended.

    A new run refuses a folder that already holds a checkpoint. Ctrl-C or SIGTERM lets the
    step under way finish, saves ``last.pt`` and raises :class:`TrainingInterrupted` (a second
    one stops at once). ``steps`` with ``resume`` sets a new total, so that a
    finished run can be trained longer: with the constant learning rate this is the same as
    having asked for that many steps at the start; a flat-cosine schedule is stretched over the
    new total, so the learning rate goes back up.
    """
    dist = Distributed.from_environment()
    with distributed_context(dist, (config.device if config else "auto")) as device:
        return _fit(
            config,
            Path(run_dir),
            resume=resume,
            steps=steps,
            progress=progress,
            dist=dist,
            device=device,
        )


def _run_config(
    config: TrainConfig | None, run_dir: Path, *, resume: bool, steps: int | None
) -> tuple[TrainConfig, dict | None]:
    """The config to train with and, when resuming, the checkpoint to continue from (its
    config, stretched to ``steps`` when that is given); a new run must not overwrite one."""
    if not resume:
        if config is None:
            raise ValueError("a new run needs a config")
        if (run_dir / "last.pt").exists():
            raise PointcellInputError(
                f"{run_dir} already holds a run; resume it with --resume "
                f"{run_dir} or choose another --out"
            )
        return config, None
    state = load_checkpoint(run_dir / "last.pt")
    config = TrainConfig.from_dict(state["config"])
    if steps is not None:
        if steps <= state["step"]:
            raise PointcellInputError(
                f"{run_dir} has already trained {state['step']} steps; "
                f"--steps must be more to train it longer (got {steps})"
            )
        config = replace(config, steps=steps, epochs=None)
        if config.lr_schedule != "constant":
            log.warning(
                "the %s learning-rate schedule is stretched over the new total of %d "
                "steps: the rate goes back up",
                config.lr_schedule,
                steps,
            )
    return config, state


def _fit(
    config: TrainConfig | None,
    run_dir: Path,
    *,
    resume: bool,
    steps: int | None,
    progress: bool,
    dist: Distributed,
    device: str,
) -> TrainResult:
    config, state = _run_config(config, run_dir, resume=resume, steps=steps)
    pairs = pair_images_with_points(config.images, config.points)
    if not pairs:
        raise PointcellInputError(
            f"no image in {config.images} has a points file in {config.points}"
        )
    split = resolve_split(config, sorted(p.stem for p in pairs))
    needed = set(split["train"]) | set(split["val"])
    wanted = [p for p in pairs if p.stem in needed]
    if not dist.is_main:
        dist.barrier()  # rank 0 encodes and caches first; the others read its cache
    prepared = prepare_dataset(config, wanted, progress=progress and dist.is_main)
    if dist.is_main:
        dist.barrier()
    if state is None:
        config = _with_classes(config, [prepared[s] for s in split["train"]])
    if config.model.classes:
        radius = config.class_radius_um / config.working_mpp
        prepared = {
            stem: with_class_map(img, config.model.classes, radius_px=radius)
            for stem, img in prepared.items()
        }
    if config.model.detection_head:
        sigma = config.proximity_sigma_um / config.working_mpp
        prepared = {s: with_proximity(img, sigma_px=sigma) for s, img in prepared.items()}
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "split.json", split)
    train_images = [prepared[s] for s in split["train"]]
    val_images = [prepared[s] for s in split["val"]] if dist.is_main else []
    if not split["val"] and dist.is_main:
        log.warning("no validation images (fewer than 3 images); best.pt follows last.pt")
    initial = _initial_state(config) if state is None else None
    trained = state if state is not None else initial
    if trained is not None:
        # resuming, or fine-tuning: keep the normalisation the weights were trained with
        mean, std = trained["normalisation"]["mean"], trained["normalisation"]["std"]
    else:
        mean, std = channel_stats([img.image for img in train_images])
    trainer = Trainer(
        config,
        mean=mean,
        std=std,
        initial_weights=None if initial is None else initial["model"],
        dist=dist,
        device=device,
    )
    sampler = PatchSampler(
        train_images,
        patch_size=config.patch_size,
        batch_size=config.batch_size,
        mean=mean,
        std=std,
        augment=config.augment,
        seed=config.seed + 1_000_003 * dist.rank,  # every process draws its own patches
    )
    total = total_steps(config, train_images)
    at = _Progress(step=0, elapsed_s=0.0, best=None)
    if state is not None:
        trainer.load_state(state)
        at = _Progress(int(state["step"]), float(state["elapsed_s"]), state["best_score"])
    history = _read_metrics(run_dir / "metrics.csv", at.step)
    result = _loop(
        trainer, sampler, val_images, run_dir, at, total, history, progress and dist.is_main
    )
    trainer.check_replicas_agree()
    return result


@dataclass
class _Progress:
    """Where a run stands: steps done, wall time spent, best validation score so far."""

    step: int
    elapsed_s: float
    best: float | None


def _loop(
    trainer: Trainer,
    sampler: PatchSampler,
    val_images: list[PreparedImage],
    run_dir: Path,
    progress_state: _Progress,
    total: int,
    history: list[dict[str, float]],
    progress: bool,
) -> TrainResult:
    config = trainer.config
    names = list(config.tasks) + (["class"] if config.model.classes else [])
    names += ["proximity"] if config.model.detection_head else []
    running: dict[str, list[float]] = {task: [] for task in names}
    at = progress_state
    offset = at.elapsed_s - time.perf_counter()
    bar = tqdm(total=total, initial=at.step, desc="training", unit="step", disable=not progress)

    def save(path: Path, **extra: Any) -> None:
        at.elapsed_s = time.perf_counter() + offset
        if trainer.dist.is_main:
            save_checkpoint(path, trainer.state(at.step, total, at.best, at.elapsed_s, **extra))

    def record_validation() -> None:
        row = {"step": float(at.step), "elapsed_s": time.perf_counter() + offset}
        row.update({f"train_{t}": float(np.mean(v)) if v else math.nan for t, v in running.items()})
        for values in running.values():
            values.clear()
        if val_images:
            row.update(trainer.validate(val_images))
        history.append(row)
        if trainer.dist.is_main:
            _write_metrics(run_dir / "metrics.csv", history)
        score = row.get(BEST_METRIC)
        if score is not None and (at.best is None or score > at.best):
            at.best = score
            save(run_dir / "best.pt")

    def interrupted() -> TrainingInterrupted:
        save(run_dir / "last.pt")
        return TrainingInterrupted(
            f"interrupted after step {at.step} of {total}; continue with "
            f"`pointcell train --resume {run_dir}`"
        )

    try:
        with _stop_on_signals() as stop:
            while at.step < total:
                if trainer.dist.any(stop.requested, trainer.device):
                    raise interrupted()
                images, targets = sampler.batch(at.step)
                lr = learning_rate(
                    at.step, total, config.lr, config.lr_schedule, config.anneal_from
                )
                for task, value in trainer.step(at.step, images, targets, lr).items():
                    running[task].append(value)
                at.step += 1
                bar.update(1)
                bar.set_postfix({t: f"{np.mean(v[-20:]):.3f}" for t, v in running.items() if v})
                if at.step % config.val_every == 0 or at.step == total:
                    record_validation()
                if config.snapshot_every and at.step % config.snapshot_every == 0:
                    save(run_dir / "snapshots" / f"step-{at.step:06d}.pt", weights_only=True)
                if at.step % config.checkpoint_every == 0 or at.step == total:
                    save(run_dir / "last.pt")
    except KeyboardInterrupt:
        raise interrupted() from None
    finally:
        bar.close()
    if not val_images:
        save(run_dir / "best.pt")
    return TrainResult(run_dir=run_dir, steps=at.step, best_score=at.best, history=history)
