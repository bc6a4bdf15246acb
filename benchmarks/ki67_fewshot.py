"""A new patient with a few clicks: the Ki67 model trained on SHIDC patient p1, fine-tuned on
the clicks of one tile of patient p2, scored on p2's other tiles.

Run: ``python benchmarks/ki67_fewshot.py [--steps 120 --p1-steps 500]`` with the data in
``../shared/data``. The p1 model is the stain strength arm of ``benchmarks/ki67_shift.py``
(trained here if ``runs/`` lacks it). Each p2 tile in turn is the one a pathologist clicks: the
p1 model is fine-tuned on it alone (same augmentation, its own clicks pick the checkpoint), and
the other three tiles are predicted (without ``--tta``) and scored against their clicks, beside
the p1 model's prediction of the same tiles. ``--arms``: fine-tune as p1 was trained
(``ignore``, the default) or with ``--unclicked background`` (``background``, not yet run:
p2's annotators click every tumour cell and lymphocyte and skip stroma, so an unclicked
nucleus is one not to count). This is the workflow for a slide unlike the training ones --
``pointcell train --init-from`` on a clicked field of it -- not the patient-split protocol of
``benchmarks/classes.py``. Writes ``benchmarks/results/ki67_fewshot.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance, write_result  # noqa: E402
from classes import (  # noqa: E402
    KI67_MPP,
    RUNS,
    predict_and_evaluate,
    shidc_patient_split,
    train,
    trained_steps,
)
from ki67_shift import ARMS, DATA, clicks_per_class, per_image_report  # noqa: E402
from pointcell.metrics import DetectionScores  # noqa: E402

WITHIN = 5.0  # the target: Ki67 index within 5 percentage points
# fine-tuning variants: run-name tag, extra `pointcell train` options, label
ARMS_FEWSHOT = {
    "ignore": ("", (), "unclicked nuclei left to the clustering (default)"),
    "background": (
        "background-",
        ("--unclicked", "background"),
        "unclicked nuclei = background (`--unclicked background`)",
    ),
}


def index_errors(errors: list[float]) -> dict[str, float]:
    """Mean and largest Ki67 index error, and how many are within the target."""
    values = np.asarray(errors)
    return {
        "mae": float(values.mean()),
        "max": float(values.max()),
        "within": int((values <= WITHIN).sum()),
    }


def held_out_scores(report: dict[str, dict], stems: list[str]) -> dict[str, float]:
    """Detection pooled over ``stems`` and their Ki67 index errors."""
    rows = [report[stem] for stem in stems]
    pooled = DetectionScores(
        *(sum(row[key] for row in rows) for key in ("det_tp", "det_fp", "det_fn"))
    )
    return {
        "precision": pooled.precision,
        "f1": pooled.f1,
        **index_errors([row["positive_percent_abs_error"] for row in rows]),
    }


def fine_tuned_folds(
    tag: str, extra: tuple[str, ...], p1_model: Path, p2: list[str], steps: int
) -> dict[str, dict[str, dict]]:
    """Per clicked p2 tile: the evaluation of the p1 model fine-tuned on it (``extra``: its
    training options), on the others."""
    images, points = DATA / "images", DATA / "points"
    reports = {}
    for clicked in p2:
        others = [stem for stem in p2 if stem != clicked]
        run = train(
            f"ki67-fewshot-{tag}{clicked}",
            images,
            points,
            KI67_MPP,
            {"train": [clicked], "val": [clicked], "test": others},
            steps,
            extra=extra,
            init_from=str(p1_model / "best.pt"),
            val_every=max(1, steps // 3),
        )
        out = RUNS / f"ki67-fewshot-{tag}{clicked}-pred"
        predict_and_evaluate(
            run, [images / f"{s}.jpg" for s in others], points, KI67_MPP, out, tta=False
        )
        reports[clicked] = per_image_report(out)
    return reports


def fold_rows(label: str, before: dict, after: dict[str, dict[str, dict]]) -> list[str]:
    rows = []
    for clicked, report in after.items():
        others = list(report)
        old, new = held_out_scores(before, others), held_out_scores(report, others)
        clicks = clicks_per_class([DATA / "images" / f"{clicked}.jpg"])
        rows.append(
            f"| {label} | {clicked} ({clicks['positive']} positive, {clicks['negative']} "
            f"negative) | {old['precision']:.3f} → {new['precision']:.3f} "
            f"| {old['f1']:.3f} → {new['f1']:.3f} | {old['mae']:.1f} → {new['mae']:.1f} "
            f"| {old['max']:.1f} → {new['max']:.1f} "
            f"| {old['within']} → {new['within']} of {len(others)} |"
        )
    pairs = [(stem, report[stem]) for report in after.values() for stem in report]
    new = index_errors([row["positive_percent_abs_error"] for _, row in pairs])
    old = index_errors([before[stem]["positive_percent_abs_error"] for stem, _ in pairs])
    rows.append(
        f"| {label} | all {len(pairs)} (clicked, held-out) pairs | | "
        f"| {old['mae']:.1f} → {new['mae']:.1f} | {old['max']:.1f} → {new['max']:.1f} "
        f"| {old['within']} → {new['within']} of {len(pairs)} |"
    )
    return rows


def index_rows(before: dict, after: dict[str, dict[str, dict]]) -> list[str]:
    """Per p2 tile: true index, the p1 model's, and each fine-tuned model's."""
    rows = []
    for stem in after:
        cells = [
            f"{report[stem]['positive_percent_pred']:.1f}" if stem in report else "—"
            for report in after.values()
        ]
        rows.append(
            f"| {stem} | {before[stem]['positive_percent_true']:.1f} "
            f"| {before[stem]['positive_percent_pred']:.1f} | " + " | ".join(cells) + " |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=120, help="fine-tuning steps on one tile")
    parser.add_argument("--p1-steps", type=int, default=500, help="training steps of the p1 model")
    parser.add_argument("--arms", nargs="+", choices=sorted(ARMS_FEWSHOT), default=["ignore"])
    args = parser.parse_args()
    start = time.time()
    images, points = DATA / "images", DATA / "points"
    split = shidc_patient_split(images)
    name, pale, _ = ARMS["pale"]
    p1_model = train(name, images, points, KI67_MPP, split, args.p1_steps, extra=pale)
    p2 = split["test"]
    before_out = RUNS / "adabn-shidc-p2-plain"  # the same prediction as benchmarks/adabn.py
    predict_and_evaluate(
        p1_model, [images / f"{s}.jpg" for s in p2], points, KI67_MPP, before_out, tta=False
    )
    before = per_image_report(before_out)
    rows, tables = [], []
    for arm in args.arms:
        tag, extra, label = ARMS_FEWSHOT[arm]
        after = fine_tuned_folds(tag, (*pale, *extra), p1_model, p2, args.steps)
        rows += fold_rows(label, before, after)
        tables += [
            f"Fine-tuned with {label}:",
            "",
            "| tile | true | p1 model | " + " | ".join(f"tuned on {s}" for s in after) + " |",
            "|---|---|---|" + "---|" * len(after),
            *index_rows(before, after),
            "",
        ]
    text = "\n".join(
        [
            "# Ki67 on a new patient with one clicked tile (SHIDC p1 model, fine-tuned on p2)",
            "",
            f"{provenance()}. Command: `python benchmarks/ki67_fewshot.py --steps {args.steps} "
            f"--p1-steps {args.p1_steps} --arms {' '.join(args.arms)}` "
            f"({(time.time() - start) / 60:.0f} min; finished runs and predictions reused). "
            "0.25 µm/px assumed.",
            "",
            f"p1 model: the stain strength arm of `ki67_shift.py` ({trained_steps(p1_model)[0]} "
            f"steps on p1). Each p2 tile in turn fine-tunes it for {args.steps} steps "
            "(`pointcell train --init-from`, same augmentation); the other three p2 tiles are "
            "predicted without `--tta` and scored against their clicks (detection within 3 µm, "
            "pooled over the three; index = positive / (positive + negative)). Before → after: "
            "the p1 model → the fine-tuned one, on the same three tiles.",
            "",
            "| fine-tuning | clicked p2 tile | det P | det F1 | index MAE (points) "
            f"| index max error | tiles within {WITHIN:g} points |",
            "|---|---|---|---|---|---|---|",
            *rows,
            "",
            "Ki67 index (%) per p2 tile: its clicks, the p1 model, and the model fine-tuned on "
            "each other tile (— where the tile itself was clicked).",
            "",
            *tables,
        ]
    )
    print(text)
    write_result("ki67_fewshot.md", text)


if __name__ == "__main__":
    main()
