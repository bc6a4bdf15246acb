"""Reproduce the paper's comparison on MoNuSeg (Kumar split): floor, Qu et al., the paper,
the paper with task-uncertainty weights, and pointcell's best variant.

Every variant is a command line of the pointcell CLI (printed as it runs). Finished training
runs are reused and unfinished ones resumed, so the script can be stopped and restarted.

Run: ``python benchmarks/monuseg.py [--preset cpu] [--steps N] [--variants ...]``.
Writes ``benchmarks/results/monuseg-<preset>[-<N>steps].md`` (and ``.json``); variants run
earlier with the same preset and budget stay in the table.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, monuseg_dir, provenance, write_result  # noqa: E402
from pointcell.io.checkpoints import load_checkpoint  # noqa: E402

SPLIT = REPO / "benchmarks" / "monuseg_split.json"
WORK = REPO / "benchmarks" / ".cache" / "monuseg"
MPP = "0.25"

# name -> (training options, predict options); None training = no model (the floor)
VARIANTS: dict[str, tuple[list[str] | None, list[str], str]] = {
    "floor": (None, [], "0. hematoxylin threshold + distance watershed (no training)"),
    "qu": (
        ["--clustering", "global", "--tasks", "voronoi,cluster", "--tasks-mode", "sum"],
        ["--instances", "connected"],
        "1. Qu et al. 2019: global clustering + Voronoi, summed losses (no repel)",
    ),
    "paper": (
        ["--clustering", "local", "--tasks-mode", "scheduler"],
        ["--instances", "connected"],
        "2. paper: local clustering + Voronoi + filtered repel, scheduler",
    ),
    "uncertainty": (
        ["--clustering", "local", "--tasks-mode", "uncertainty"],
        ["--instances", "connected"],
        "3. paper with task-uncertainty weighting",
    ),
    "best": (
        ["--clustering", "local", "--tasks-mode", "scheduler"],
        ["--instances", "watershed"],
        "4. pointcell: paper model + watershed instances seeded by the detections",
    ),
    "lite0-random": (
        ["--encoder", "tu-tf_efficientnet_lite0", "--encoder-weights", "none"],
        ["--instances", "watershed"],
        "5a. as 4 with an EfficientNet-Lite0 encoder from random weights",
    ),
    "lite0-imagenet": (
        ["--encoder", "tu-tf_efficientnet_lite0", "--encoder-weights", "imagenet"],
        ["--instances", "watershed"],
        "5b. as 4 with an EfficientNet-Lite0 encoder from ImageNet (offline weights package)",
    ),
    "lite0-imagenet-fused": (
        [
            *("--encoder", "tu-tf_efficientnet_lite0", "--encoder-weights", "imagenet"),
            *("--fuse-floor", "he"),
        ],
        ["--instances", "watershed"],
        "5c. as 5b, trained on fused labels (cluster + floor nuclei around one click)",
    ),
}
COLUMNS = [
    ("accuracy", "ACC"),
    ("f1", "F1"),
    ("dice", "Dice"),
    ("aji", "AJI"),
    ("pq", "PQ"),
    ("det_precision", "det P"),
    ("det_recall", "det R"),
    ("det_f1", "det F1"),
    ("count_ccc", "count CCC"),
]


def run(command: list[str]) -> None:
    print("$", shlex.join(command), flush=True)
    subprocess.run(command, check=True, cwd=REPO)


def test_folders(root: Path, split: dict) -> tuple[Path, Path]:
    """Folders of links to the 14 test images and masks."""
    images, masks = WORK / "test" / "images", WORK / "test" / "masks"
    for folder in (images, masks):
        folder.mkdir(parents=True, exist_ok=True)
    for stem in split["test_same_organ"] + split["test_different_organ"]:
        for source, folder, suffix in (
            (root / "images", images, ".png"),
            (root / "masks", masks, ".tif"),
        ):
            link = folder / f"{stem}{suffix}"
            if not link.exists():
                link.symlink_to(source / f"{stem}{suffix}")
    return images, masks


def budget_tag(args: argparse.Namespace) -> str:
    """``cpu``, or ``cpu-900steps`` when the preset's length is overridden."""
    return args.preset + (f"-{args.steps}steps" if args.steps else "")


def run_dir_for(name: str, args: argparse.Namespace) -> Path:
    # the best variant reuses the paper's model: only post-processing differs
    return args.runs / f"monuseg-{'paper' if name == 'best' else name}-{budget_tag(args)}"


def train(name: str, options: list[str], args: argparse.Namespace, root: Path) -> Path:
    run_dir = run_dir_for(name, args)
    cli = [sys.executable, "-m", "pointcell.cli"]
    if (run_dir / "last.pt").is_file():
        state = load_checkpoint(run_dir / "last.pt")
        if state["step"] < state["total_steps"]:
            run([*cli, "train", "--resume", str(run_dir)])
        return run_dir
    command = [
        *cli,
        "train",
        "--images",
        str(root / "images"),
        "--points",
        str(root / "masks"),
        "--mpp",
        MPP,
        "--split",
        str(SPLIT),
        "--preset",
        args.preset,
        "--snapshot-every",
        str(args.snapshot_every),
        "--out",
        str(run_dir),
        *options,
    ]
    if args.steps:
        command += ["--steps", str(args.steps)]
    run(command)
    return run_dir


def predict_and_score(
    model: Path | None, predict_options: list[str], out: Path, images: Path, masks: Path
) -> dict:
    cli = [sys.executable, "-m", "pointcell.cli"]
    method = ["baseline"] if model is None else ["predict", "--model", str(model)]
    run(
        [
            *cli,
            *method,
            "--images",
            str(images),
            "--mpp",
            MPP,
            "--out",
            str(out),
            "--no-overlay",
            *predict_options,
        ]
    )
    run([*cli, "evaluate", "--pred", str(out), "--gt", str(masks), "--radius-um", "3"])
    return json.loads((out / "evaluation.json").read_text())["aggregate"]


def training_time(run_dir: Path) -> float:
    return float(load_checkpoint(run_dir / "last.pt")["elapsed_s"])


def learning_curve(run_dir: Path, name: str, work: Path, images: Path, masks: Path) -> list[dict]:
    """Test AJI and detection F1 of every kept snapshot, against training time."""
    rows = []
    for snapshot in sorted((run_dir / "snapshots").glob("step-*.pt")):
        out = work / "curves" / name / snapshot.stem
        if not (out / "evaluation.json").is_file():
            scores = predict_and_score(snapshot, VARIANTS[name][1], out, images, masks)
        else:
            scores = json.loads((out / "evaluation.json").read_text())["aggregate"]
        state = load_checkpoint(snapshot)
        rows.append({"step": state["step"], "elapsed_s": state["elapsed_s"], **scores})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--preset", default="cpu", choices=["cpu", "paper"])
    parser.add_argument("--steps", type=int, help="override the preset's training length")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--runs", type=Path, default=REPO / "runs")
    parser.add_argument("--snapshot-every", type=int, default=500)
    parser.add_argument(
        "--curves",
        nargs="*",
        default=["paper"],
        help="variants whose snapshots are scored for a learning curve",
    )
    args = parser.parse_args()
    root = monuseg_dir()
    split = json.loads(SPLIT.read_text())
    images, masks = test_folders(root, split)
    results, timings, curves = earlier_results(args)
    for name in args.variants:
        options, predict_options, _ = VARIANTS[name]
        started = time.perf_counter()
        model = None if options is None else train(name, options, args, root)
        scores = predict_and_score(
            model, predict_options, WORK / budget_tag(args) / "pred" / name, images, masks
        )
        results[name] = scores
        timings[name] = (
            time.perf_counter() - started,
            None if model is None else training_time(model),
        )
    curves |= {
        name: learning_curve(run_dir_for(name, args), name, WORK / budget_tag(args), images, masks)
        for name in args.curves
        if name in args.variants
    }
    write_report(args, results, timings, curves)


def earlier_results(args: argparse.Namespace) -> tuple[dict, dict, dict]:
    """Results, timings and curves of variants run earlier with the same preset and budget
    (their results file), so that variants can be run one session at a time."""
    path = REPO / "benchmarks" / "results" / f"monuseg-{budget_tag(args)}.json"
    if not path.is_file():
        return {}, {}, {}
    earlier = json.loads(path.read_text())
    keep = [name for name in earlier["results"] if name in VARIANTS]
    return (
        {name: earlier["results"][name] for name in keep},
        {name: tuple(earlier["timings"][name]) for name in keep},
        {name: rows for name, rows in earlier["curves"].items() if name in VARIANTS},
    )


def write_report(args: argparse.Namespace, results: dict, timings: dict, curves: dict) -> None:
    steps = args.steps or {"cpu": 3000, "paper": 60900}[args.preset]
    lines = [
        f"# MoNuSeg reproduction ({args.preset} preset, {steps} steps)",
        "",
        f"Command: `python benchmarks/monuseg.py --preset {args.preset}"
        f"{f' --steps {args.steps}' if args.steps else ''}`; {provenance()}.",
        "",
        "Kumar split (`benchmarks/monuseg_split.json`): 14 images train, 2 validate (model "
        "selection by detection F1 on their clicks), 14 test (8 same-organ, 6 different-organ). "
        "Training points are the instance centroids of the masks; masks are used only to "
        f"score. Budget: {steps} steps of batch 8, 256x256 patches at 0.5 µm/px, seed 0, same "
        "for every learned variant. AJI is Kumar's original (an unmatched true nucleus adds "
        "its own area only); detection matched one-to-one within 3 µm; segmentation metrics "
        "are means over the 14 test images, detection pooled over their cells; count CCC "
        "across the 14 images.",
        "",
        "| variant | " + " | ".join(label for _, label in COLUMNS) + " | train s | total s |",
        "|---|" + "---|" * (len(COLUMNS) + 2),
    ]
    for name, scores in results.items():
        total, trained = timings[name]
        cells = [f"{scores[key]:.3f}" if key in scores else "-" for key, _ in COLUMNS]
        lines.append(
            f"| {VARIANTS[name][2]} | "
            + " | ".join(cells)
            + f" | {'-' if trained is None else f'{trained:.0f}'} | {total:.0f} |"
        )
    lines += [
        "",
        "Commands (see the script for the exact lists): `pointcell baseline`, "
        "`pointcell train --preset ... --clustering {local,global} --tasks-mode "
        "{scheduler,sum,uncertainty}`, `pointcell predict --instances "
        "{connected,watershed}`, `pointcell evaluate --radius-um 3`.",
    ]
    for name, rows in curves.items():
        lines += [
            "",
            f"## Learning curve: {VARIANTS[name][2]}",
            "",
            "| step | training s | AJI | Dice | det F1 |",
            "|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['step']} | {row['elapsed_s']:.0f} | {row['aji']:.3f} | "
                f"{row['dice']:.3f} | {row['det_f1']:.3f} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    write_result(f"monuseg-{budget_tag(args)}.md", text)
    (REPO / "benchmarks" / "results" / f"monuseg-{budget_tag(args)}.json").write_text(
        json.dumps({"results": results, "timings": timings, "curves": curves}, indent=2)
    )


if __name__ == "__main__":
    main()
