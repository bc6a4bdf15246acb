"""A run folder: start or resume, the training loop, checkpoints, metrics and stop signals."""

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
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from pointcell.data import PatchSampler, channel_stats
from pointcell.errors import PointcellInputError
from pointcell.io.atomic import atomic_output
from pointcell.io.checkpoints import load_checkpoint, save_checkpoint
from pointcell.io.jsonfiles import write_json
from pointcell.model import ModelConfig
from pointcell.targets import PreparedImage
from pointcell.train.config import TrainConfig, source_names
from pointcell.train.dataset import prepare_run_images, total_steps
from pointcell.train.distributed import Distributed, distributed_context
from pointcell.train.trainer import BEST_METRIC, Trainer, learning_rate

log = logging.getLogger(__name__)


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


def initial_state(config: TrainConfig) -> dict[str, Any] | None:
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
    config, split, prepared = prepare_run_images(
        config, dist, fresh=state is None, progress=progress
    )
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json(run_dir / "config.json", config.to_dict())
        write_json(run_dir / "split.json", split)
    train_images = [prepared[s] for s in split["train"]]
    val_images = [prepared[s] for s in split["val"]] if dist.is_main else []
    if not split["val"] and dist.is_main:
        log.warning("no validation images (fewer than 3 images); best.pt follows last.pt")
    trainer, sampler = _trainer_and_sampler(config, state, train_images, dist, device)
    at = _Progress(step=0, elapsed_s=0.0, best=None)
    if state is not None:
        trainer.load_state(state)
        at = _Progress(int(state["step"]), float(state["elapsed_s"]), state["best_score"])
    loop = _Loop(
        trainer,
        val_images,
        run_dir,
        at,
        total_steps(config, train_images),
        _read_metrics(run_dir / "metrics.csv", at.step),
    )
    result = loop.run(sampler, progress=progress and dist.is_main)
    trainer.check_replicas_agree()
    return result


def _trainer_and_sampler(
    config: TrainConfig,
    state: dict[str, Any] | None,
    train_images: list[PreparedImage],
    dist: Distributed,
    device: str,
) -> tuple[Trainer, PatchSampler]:
    """The run's trainer (fresh, fine-tuned from ``config.init_from``, or to be resumed from
    ``state``) and its patch sampler, normalising as the weights were trained."""
    initial = initial_state(config) if state is None else None
    trained = state if state is not None else initial
    if trained is not None:
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
        sources=source_names(config, [img.stem for img in train_images]),
    )
    return trainer, sampler


@dataclass
class _Progress:
    """Where a run stands: steps done, wall time spent, best validation score so far."""

    step: int
    elapsed_s: float
    best: float | None


class _Loop:
    """The training loop of one run: steps, validations, checkpoints, stop requests."""

    def __init__(
        self,
        trainer: Trainer,
        val_images: list[PreparedImage],
        run_dir: Path,
        at: _Progress,
        total: int,
        history: list[dict[str, float]],
    ) -> None:
        self.trainer, self.config = trainer, trainer.config
        self.val_images, self.run_dir, self.at = val_images, run_dir, at
        self.total, self.history = total, history
        model = self.config.model
        names = list(self.config.tasks) + (["class"] if model.classes else [])
        names += ["proximity"] if model.detection_head else []
        self.running: dict[str, list[float]] = {task: [] for task in names}
        self.offset = at.elapsed_s - time.perf_counter()

    def save(self, path: Path, **extra: Any) -> None:
        at = self.at
        at.elapsed_s = time.perf_counter() + self.offset
        if self.trainer.dist.is_main:
            state = self.trainer.state(at.step, self.total, at.best, at.elapsed_s, **extra)
            save_checkpoint(path, state)

    def record_validation(self) -> None:
        row = {"step": float(self.at.step), "elapsed_s": time.perf_counter() + self.offset}
        row.update(
            {f"train_{t}": float(np.mean(v)) if v else math.nan for t, v in self.running.items()}
        )
        for values in self.running.values():
            values.clear()
        if self.val_images:
            row.update(self.trainer.validate(self.val_images))
        self.history.append(row)
        if self.trainer.dist.is_main:
            _write_metrics(self.run_dir / "metrics.csv", self.history)
        score = row.get(BEST_METRIC)
        if score is not None and (self.at.best is None or score > self.at.best):
            self.at.best = score
            self.save(self.run_dir / "best.pt")

    def interrupted(self) -> TrainingInterrupted:
        self.save(self.run_dir / "last.pt")
        return TrainingInterrupted(
            f"interrupted after step {self.at.step} of {self.total}; continue with "
            f"`pointcell train --resume {self.run_dir}`"
        )

    def step(self, sampler: PatchSampler) -> None:
        """One training step, then the validation and checkpoints due after it."""
        config, at = self.config, self.at
        images, targets = sampler.batch(at.step)
        lr = learning_rate(at.step, self.total, config.lr, config.lr_schedule, config.anneal_from)
        for task, value in self.trainer.step(at.step, images, targets, lr).items():
            self.running[task].append(value)
        at.step += 1
        if at.step % config.val_every == 0 or at.step == self.total:
            self.record_validation()
        if config.snapshot_every and at.step % config.snapshot_every == 0:
            self.save(self.run_dir / "snapshots" / f"step-{at.step:06d}.pt", weights_only=True)
        if at.step % config.checkpoint_every == 0 or at.step == self.total:
            self.save(self.run_dir / "last.pt")

    def run(self, sampler: PatchSampler, *, progress: bool) -> TrainResult:
        at, trainer = self.at, self.trainer
        bar = tqdm(
            total=self.total, initial=at.step, desc="training", unit="step", disable=not progress
        )
        try:
            with _stop_on_signals() as stop:
                while at.step < self.total:
                    if trainer.dist.any(stop.requested, trainer.device):
                        raise self.interrupted()
                    self.step(sampler)
                    bar.update(1)
                    bar.set_postfix(
                        {t: f"{np.mean(v[-20:]):.3f}" for t, v in self.running.items() if v}
                    )
        except KeyboardInterrupt:
            raise self.interrupted() from None
        finally:
            bar.close()
        if not self.val_images:
            self.save(self.run_dir / "best.pt")
        return TrainResult(self.run_dir, at.step, at.best, self.history)
