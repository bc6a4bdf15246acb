"""One run's model, optimizer and task combiner, and the step, validation and state of it."""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch

from pointcell import __version__
from pointcell.data import grid_batches
from pointcell.device import autocast_dtype, select_device
from pointcell.inference import Predictor, cells_from_maps, predict_maps
from pointcell.losses import TASKS, TaskCombiner, proximity_loss, task_losses
from pointcell.metrics import DetectionScores, detection_scores
from pointcell.model import build_model, split_proximity
from pointcell.postprocess import PostprocessParams
from pointcell.pretrained import cast_state_to_float
from pointcell.regions import inside_region
from pointcell.targets import PreparedImage
from pointcell.train.config import LrSchedule, TrainConfig
from pointcell.train.distributed import Distributed

VALIDATION_RADIUS_UM = 3.0


BEST_METRIC = "val_det_f1"  # best.pt: highest detection F1 on the validation clicks


PROXIMITY_LR_SCALE = 10.0  # the new detection head learns this much faster than the network


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
            found = cells_from_maps(predictor, maps, mpp=mpp).xy
            clicks = img.points_xy
            if img.inside is not None:  # a training region: cells elsewhere were never clicked
                found, clicks = inside_region(found, img.inside), inside_region(clicks, img.inside)
            pooled = pooled + detection_scores(clicks, found, radius=VALIDATION_RADIUS_UM / mpp)
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
