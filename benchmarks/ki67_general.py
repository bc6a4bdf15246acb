"""Which start makes the better Ki67 model: the H&E model or the general default (issue 29)?

Run: ``python benchmarks/ki67_general.py [--steps 500]`` with SHIDC-B-Ki-67 in
``../shared/data/shidc_ki67``. The shipped ``pointcell-ki67`` recipe (typed clicks, class head,
HED jitter 0.05) is trained twice on the same 20 tiles and picks its checkpoint on the same 2
(``SHIDC_VAL`` of general.py), once from ``pointcell-he`` (ResNet18, the shipped model's start)
and once from ``pointcell-general`` (EfficientNet-Lite0). Both are scored on the 4 tiles of slide
``p1_0317``, which neither start nor run saw: the general model trained on every other SHIDC
tile, p2's included, so the p1 → p2 split of ki67_shift.py would not be fair to it. Beside them:
the floor (H+DAB watershed, DAB threshold fitted on the 22 other tiles) and ``pointcell-general``
itself with ``--stain ihc`` (no class head). Runs resume in ``runs/``; writes
``benchmarks/results/ki67_general.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, provenance, write_result  # noqa: E402
from _runs import (  # noqa: E402
    KI67_MPP,
    RUNS,
    best_step,
    floor,
    predict_and_evaluate,
    train,
)
from classes import tuned_dab_threshold  # noqa: E402
from general import SHIDC_TEST_SLIDE, SHIDC_VAL  # noqa: E402

SHIDC = SHARED / "shidc_ki67"
STARTS = {"pointcell-he": "ResNet18", "pointcell-general": "EfficientNet-Lite0"}
COLUMNS = (
    ("det_precision", "det P", "{:.3f}"),
    ("det_recall", "det R", "{:.3f}"),
    ("det_f1", "det F1", "{:.3f}"),
    ("count_ccc", "count CCC", "{:.3f}"),
    ("positive_percent_mae", "index MAE (points)", "{:.1f}"),
    ("positive_percent_max_error", "index max error", "{:.1f}"),
)


def tile_split() -> dict[str, list[str]]:
    """20 training tiles, the 2 validation tiles of the general run, the 4 of the test slide."""
    stems = sorted(path.stem for path in (SHIDC / "images").glob("*.jpg"))
    test = [s for s in stems if s.startswith(SHIDC_TEST_SLIDE)]
    train_stems = [s for s in stems if s not in test and s not in SHIDC_VAL]
    return {"train": train_stems, "val": list(SHIDC_VAL), "test": test}


def row(label: str, scores: dict) -> str:
    """One table row; a figure the scores lack (no class head: no index) is a dash."""
    cells = [fmt.format(scores[key]) if key in scores else "-" for key, _, fmt in COLUMNS]
    return f"| {label} | " + " | ".join(cells) + " |"


def measure(steps: int) -> list[tuple[str, dict]]:
    """Train both starts (or reuse them) and score everything on the test slide."""
    split = tile_split()
    test = [SHIDC / "images" / f"{stem}.jpg" for stem in split["test"]]
    gt = SHIDC / "points"
    others = [SHIDC / "images" / f"{stem}.jpg" for stem in split["train"] + split["val"]]
    threshold = tuned_dab_threshold(others, gt, KI67_MPP)
    floor_args = ["--stain", "ihc", "--dab-threshold", f"{threshold:.5f}"]
    rows = [
        (
            "floor (H+DAB watershed, DAB threshold fitted on the 22 other tiles)",
            floor(test, gt, KI67_MPP, RUNS / "ki67-general-floor", floor_args),
        ),
        (
            "`pointcell-general` as shipped, `--stain ihc` (no class head)",
            predict_and_evaluate(
                Path("pointcell-general"),
                test,
                gt,
                KI67_MPP,
                RUNS / "ki67-general-shipped-pred",
                extra=("--stain", "ihc"),
            ),
        ),
    ]
    for start, encoder in STARTS.items():
        run = train(f"ki67-from-{start}", SHIDC / "images", gt, KI67_MPP, split, steps,
                    init_from=start)  # fmt: skip
        scores = predict_and_evaluate(run, test, gt, KI67_MPP, Path(f"{run}-pred"))
        label = f"Ki67 recipe from `{start}` ({encoder}), {steps} steps, kept step {best_step(run)}"
        rows.append((label, scores))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    args = parser.parse_args()
    start = time.perf_counter()
    rows = measure(args.steps)
    minutes = (time.perf_counter() - start) / 60
    lines = [
        "# Ki67 model: from the H&E model or from the general default",
        "",
        f"{provenance()}. Command: `python {' '.join(sys.argv)}` ({minutes:.0f} min; finished "
        "runs and predictions reused). 0.25 µm/px assumed.",
        "",
        f"Test: the 4 tiles of slide `{SHIDC_TEST_SLIDE}` against their typed clicks (detection "
        "within 3 µm, Ki67 index = positive / (positive + negative)); training: the 20 tiles "
        f"outside that slide but {', '.join(SHIDC_VAL)}, which pick the checkpoint. "
        "Predictions with `--tta` and each model's own settings.",
        "",
        "| model | " + " | ".join(name for _, name, _ in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
        *(row(label, scores) for label, scores in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    write_result("ki67_general.md", text)


if __name__ == "__main__":
    main()
