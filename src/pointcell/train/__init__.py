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

from pointcell.train.config import (
    PRESETS,
    LrSchedule,
    TrainConfig,
    config_from_options,
    preset_config,
)
from pointcell.train.dataset import resolve_split
from pointcell.train.distributed import Distributed
from pointcell.train.run import TrainingInterrupted, TrainResult, fit, initial_state
from pointcell.train.trainer import Trainer, adapt_output_head, learning_rate, make_optimizer

__all__ = [
    "PRESETS",
    "Distributed",
    "LrSchedule",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "TrainingInterrupted",
    "adapt_output_head",
    "config_from_options",
    "fit",
    "initial_state",
    "learning_rate",
    "make_optimizer",
    "preset_config",
    "resolve_split",
]
