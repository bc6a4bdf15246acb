"""Run helpers shared by the benchmark scripts: the CLI as a subprocess, resumable training
runs in ``runs/``, predictions scored once per set of weights, the floor, data constants."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

from _common import REPO, SHARED
from pointcell.io.checkpoints import load_checkpoint
from pointcell.io.points import Points, read_points, write_points_csv
from pointcell.pretrained import resolve_checkpoint

RUNS = REPO / "runs"


REUSED: list[str] = []  # finished training runs found in runs/ and not retrained


REUSED_PREDICTIONS: list[str] = []  # test predictions of the same weights, not redone


CRC_MPP = 0.55  # CRCHistoPhenotypes: 20x, about 0.55 µm/px (data README)


KI67_MPP = 0.25  # not stated by SHIDC; nuclei of 7-9 µm span about 30-35 px


CRC_DATA = SHARED / "crchisto"


def cli(*args: str) -> str:
    command = [sys.executable, "-m", "pointcell.cli", *args]
    print("$ pointcell " + shlex.join(args), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"failed: {shlex.join(args)}\n{done.stdout}\n{done.stderr[-3000:]}")
    return done.stdout


def train(
    name: str,
    images: Path,
    points: Path,
    mpp: float,
    split: dict,
    steps: int,
    hed_jitter: float = 0.05,
    extra: tuple[str, ...] = (),
    init_from: str = "pointcell-he",
    val_every: int | None = None,
) -> Path:
    """Train (or resume, extend, or reuse) a run fine-tuned from ``init_from`` (by default the
    shipped H&E model), validated ``val_every`` steps (default: 4 times in all)."""
    run = RUNS / name
    if (run / "last.pt").is_file():
        done, total = trained_steps(run)
        if done < steps:
            cli("train", "--resume", str(run), *(("--steps", str(steps)) if total != steps else ()))
        elif done < total:
            cli("train", "--resume", str(run))
        elif name not in REUSED:  # an extended run is asked for at each of its lengths
            REUSED.append(name)
        return run
    split_file = RUNS / f"{name}-split.json"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(split))
    cli(
        "train",
        "--images", str(images),
        "--points", str(points),
        "--mpp", str(mpp),
        "--clip",  # real clicks: a few sit a fraction of a pixel past the image edge
        "--split", str(split_file),
        "--init-from", init_from,
        "--hed-jitter", str(hed_jitter),
        "--steps", str(steps),
        "--val-every", str(val_every or max(1, steps // 4)),
        "--out", str(run),
        *extra,
    )  # fmt: skip
    return run


def trained_steps(run: Path) -> tuple[int, int]:
    """(steps done, steps planned) of a run."""
    state = load_checkpoint(run / "last.pt")
    return int(state["step"]), int(state["total_steps"])


def best_step(run: Path) -> int:
    """Step of a run's ``best.pt``, the weights its predictions use."""
    return int(load_checkpoint(run / "best.pt")["step"])


def predict_and_evaluate(
    run: Path,
    images: list[Path],
    gt: Path,
    mpp: float,
    out: Path,
    extra: tuple[str, ...] = (),
    tta: bool = True,
) -> dict:
    """Predict (with TTA unless ``tta`` is false) and evaluate, or reuse an evaluation made by
    the same command after the model's weights were last written (predictions of 20 tiles take
    minutes)."""
    args = ["predict", "--model", str(run), "--mpp", str(mpp), "--out", str(out), "--no-overlay"]
    args += [*(["--tta"] if tta else []), *extra]
    for path in images:
        args += ["--images", str(path)]
    evaluation, command = out / "evaluation.json", out / "benchmark-command.json"
    weights = resolve_checkpoint(run)
    if not (
        evaluation.is_file()
        and command.is_file()
        and json.loads(command.read_text()) == args
        and evaluation.stat().st_mtime > weights.stat().st_mtime
    ):
        cli(*args)
        cli("evaluate", "--pred", str(out), "--gt", str(gt), "--mpp", str(mpp), "--allow-missing")
        command.write_text(json.dumps(args))
    else:
        REUSED_PREDICTIONS.append(out.name)
    return json.loads(evaluation.read_text())["aggregate"]


def floor(images: list[Path], gt: Path, mpp: float, out: Path, extra: list[str]) -> dict:
    args = ["baseline", "--mpp", str(mpp), "--out", str(out), "--no-overlay", *extra]
    for path in images:
        args += ["--images", str(path)]
    cli(*args)
    cli("evaluate", "--pred", str(out), "--gt", str(gt), "--mpp", str(mpp), "--allow-missing")
    return json.loads((out / "evaluation.json").read_text())["aggregate"]


def zero_based_points(source: Path, target: Path) -> Path:
    """Copies of CRCHisto's click tables moved by (-1, -1) px: its clicks come from MATLAB
    files and count pixels from 1 (against the training-free floor, which never resamples, the
    median offset of matched clicks is exactly (+1, +1) px), pointcell's points from 0."""
    target.mkdir(parents=True, exist_ok=True)
    for table in sorted(source.glob("*.csv")):
        clicks = read_points(table)
        write_points_csv(target / table.name, Points(clicks.xy - 1.0, clicks.classes))
    return target


def shidc_patient_split(images: Path) -> dict[str, list[str]]:
    """SHIDC by patient (file name ``<patient>_<image>_<crop>``): train on p1 (its first two
    tiles pick the checkpoint), test on the other patient."""
    stems = sorted(p.stem for p in images.glob("*.jpg"))
    train_stems = [s for s in stems if s.startswith("p1_")]
    test_stems = [s for s in stems if not s.startswith("p1_")]
    return {"train": train_stems[2:], "val": train_stems[:2], "test": test_stems}


def fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("-" if value is None else str(value))
