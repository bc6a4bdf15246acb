"""Cell classes from typed clicks: CRCHisto (H&E cell types) and SHIDC-B-Ki-67 (IHC index).

Run: ``python benchmarks/classes.py [--steps 1200]`` with the data in ``../shared/data``.
Every step is one command line of the project's CLI (printed). Trains pointcell on the
training clicks (fine-tuned from the shipped H&E model, HED stain jitter 0.05), predicts the
test images, evaluates against the test clicks; runs the training-free floor beside it (for
SHIDC with its DAB threshold tuned on the training patients). Runs are kept in ``runs/`` and
resumed when interrupted. CRCHisto's clicks are moved by (-1, -1) px first: they come from
MATLAB files and count pixels from 1. ``--parts crchisto`` (or ``crchisto-long``, ``shidc``) runs
one part and keeps the others' sections of the results file; ``crchisto-long`` is one long run
(``--crchisto-long-steps``) from the shipped model, affordable with bf16 on a CPU with AMX.
Writes ``benchmarks/results/classes.md``.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, SHARED, provenance, write_result  # noqa: E402
from _runs import (  # noqa: E402
    CRC_DATA,
    CRC_MPP,
    KI67_MPP,
    REUSED,
    REUSED_PREDICTIONS,
    RUNS,
    best_step,
    cli,
    floor,
    fmt,
    predict_and_evaluate,
    shidc_patient_split,
    train,
    trained_steps,
    zero_based_points,
)
from pointcell.floor import WatershedParams, hematoxylin_watershed, mean_dab, tune_dab_threshold  # noqa: E402
from pointcell.io.checkpoints import load_checkpoint  # noqa: E402
from pointcell.io.images import read_image  # noqa: E402
from pointcell.io.points import read_points  # noqa: E402
from pointcell.metrics import match_points  # noqa: E402
from pointcell.model import ModelConfig  # noqa: E402
from pointcell.pretrained import resolve_checkpoint  # noqa: E402

# published for CRCHisto (Sirinukunwattana et al. 2016, IEEE TMI 35(5), SC-CNN detection and
# SC-CNN + NEP joint detection and classification; 2-fold cross-validation over its 100
# images, matching radius 6 px at 20x) -- a different protocol from this split
PUBLISHED = {"SC-CNN detection F1": 0.802, "SC-CNN + NEP weighted class F1 (joint)": 0.692}


def tuned_dab_threshold(images: list[Path], points: Path, mpp: float) -> float:
    """Fit the floor's DAB threshold on training images: nuclei matched to positive or
    negative clicks within 3 µm."""
    dab_means, positive = [], []
    params = WatershedParams(stain="ihc")
    for path in images:
        image = read_image(path).pixels
        cells = hematoxylin_watershed(image, mpp=mpp, params=params)
        clicks = read_points(points / f"{path.stem}.csv")
        names = np.array([c or "" for c in clicks.classes])
        typed = np.isin(names, ["positive", "negative"])
        true_index, pred_index = match_points(clicks.xy[typed], cells.xy, radius=3.0 / mpp)
        dab_means.append(mean_dab(image, cells)[pred_index])
        positive.append(names[typed][true_index] == "positive")
    return tune_dab_threshold(np.concatenate(dab_means), np.concatenate(positive))


PUBLISHED_RADIUS_UM = 6 * CRC_MPP  # the published matching radius, 6 px at 20x


def f1_at_published_radius(out: Path, gt: Path) -> float:
    """Detection F1 of predictions in ``out`` re-scored at the published 6 px radius."""
    report = out / "evaluation-6px.json"
    cli(
        "evaluate", "--pred", str(out), "--gt", str(gt), "--mpp", str(CRC_MPP),
        "--radius-um", f"{PUBLISHED_RADIUS_UM:.2f}", "--out", str(report), "--allow-missing",
    )  # fmt: skip
    return json.loads(report.read_text())["aggregate"]["det_f1"]


def crchisto_setup() -> tuple[dict, list[Path], Path, list[tuple[str, Path]]]:
    """CRCHisto's published split, test images, 0-based clicks, and the rows every CRCHisto
    table starts with: the training-free floor and the shipped H&E model."""
    published = json.loads((CRC_DATA / "split.json").read_text())
    split = {"train": published["train"], "val": published["validation"], "test": published["test"]}
    test = [CRC_DATA / "images" / f"{stem}.png" for stem in split["test"]]
    gt = zero_based_points(CRC_DATA / "points", RUNS / "crchisto-points-0based")
    floor(test, gt, CRC_MPP, RUNS / "classes-crchisto-floor", [])
    outputs = [("floor (hematoxylin watershed)", RUNS / "classes-crchisto-floor")]
    zero_shot = RUNS / "classes-crchisto-pointcell-he-pred"
    predict_and_evaluate(Path("pointcell-he"), test, gt, CRC_MPP, zero_shot)
    outputs.append(("`pointcell-he` as shipped (MoNuSeg, 40x; not trained on CRCHisto)", zero_shot))
    return split, test, gt, outputs


def crchisto_run(
    name: str,
    steps: int,
    split: dict,
    test: list[Path],
    gt: Path,
    extra: tuple[str, ...] = (),
    init_from: str = "pointcell-he",
    val_every: int | None = None,
) -> tuple[Path, Path]:
    """Train (or reuse) run ``name`` on CRCHisto's training split and predict its test split:
    (run folder, prediction folder)."""
    run = train(
        name, CRC_DATA / "images", gt, CRC_MPP, split, steps, extra=extra,
        init_from=init_from, val_every=val_every,
    )  # fmt: skip
    out = RUNS / f"{name}-pred"
    predict_and_evaluate(run, test, gt, CRC_MPP, out)
    return run, out


def tuned_rows(
    models: dict[str, tuple[Path, int]], test: list[Path], gt: Path
) -> list[tuple[str, Path]]:
    """Each model's (name: (run folder or checkpoint, its row)) detection threshold chosen on
    its run's validation clicks (pointcell tune, with TTA as the test predictions), then the
    test split predicted."""
    rows = []
    for name, (source, row) in models.items():
        model = RUNS / f"{name}-tuned.pt"
        tuned_after(model, source)
        if not model.is_file():
            cli("tune", "--model", str(source), "--tta", "--out", str(model))
        out = RUNS / f"{name}-tuned-pred"
        predict_and_evaluate(model, test, gt, CRC_MPP, out)
        rows.append(
            (f"model {row}, threshold tuned on validation clicks: {tuned_value(model)}", out)
        )
    return rows


def scored_rows(outputs: list[tuple[str, Path]], gt: Path) -> list[tuple[str, dict]]:
    """Numbered table rows: each output's evaluation, with detection F1 at 6 px added."""
    results = []
    for number, (label, out) in enumerate(outputs, start=1):
        scores = json.loads((out / "evaluation.json").read_text())["aggregate"]
        scores["det_f1_6px"] = f1_at_published_radius(out, gt)
        results.append((f"{number}. {label}", scores))
    return results


def crchisto(
    steps: int,
    unclicked_steps: int,
    anneal_steps: int,
    head_steps: int,
    exclude_steps: int,
    tune: bool,
) -> list[tuple[str, dict]]:
    split, test, gt, outputs = crchisto_setup()
    # CRCHisto's clicks are not exhaustive (about two thirds of the false detections of a
    # model trained with unclicked = ignore lie more than 6 µm from any click): the model
    # may learn which nuclei the annotators skipped
    trained: dict[str, int] = {}  # run name: its row number in the tables

    def add_trained(name: str, label: str, out: Path) -> None:
        outputs.append((f"pointcell ({label})", out))
        trained[name] = len(outputs)

    variants = (
        ("classes-crchisto", steps, (), "HED jitter 0.05"),
        ("classes-crchisto-unclicked", unclicked_steps, ("--unclicked", "background"),
         "HED jitter 0.05, unclicked nuclei = background"),
    )  # fmt: skip
    for name, length, extra, label in variants:
        if length == 0:
            continue
        run, out = crchisto_run(name, length, split, test, gt, extra)
        steps_label = f"{trained_steps(run)[0]} steps, kept: step {best_step(run)}"
        add_trained(name, f"{label}; {steps_label}", out)

    def continued(
        name: str, base: Path, length: int, extra: tuple[str, ...], label: Callable[[int], str]
    ) -> None:
        """Train run ``name`` on from ``base``'s best checkpoint, predict the test split and add
        its row, labelled by ``label`` of the step kept."""
        run, out = crchisto_run(name, length, split, test, gt, extra, str(base / "best.pt"))
        add_trained(name, label(best_step(run)), out)

    if anneal_steps:
        # the constant-lr run's best checkpoint trained on with a learning rate that decays
        # to zero (cosine): the same recipe, ending the way Ranger's authors end theirs
        first = best_step(RUNS / "classes-crchisto")
        continued(
            "classes-crchisto-annealed", RUNS / "classes-crchisto", anneal_steps,
            ("--lr-schedule", "flat-cosine", "--anneal-from", "0"),
            lambda kept: f"HED jitter 0.05; {first} steps, then {anneal_steps} with "
            f"cosine-decayed lr, kept: step {first} + {kept}",
        )  # fmt: skip
    best_so_far = RUNS / ("classes-crchisto-annealed" if anneal_steps else "classes-crchisto")
    if head_steps:
        # the best classifier so far given a detection head (SC-CNN's proximity target) and
        # trained on: cells where annotators click, not where nuclei are
        continued(
            "classes-crchisto-head", best_so_far, head_steps,
            ("--detection-head", "--lr-schedule", "flat-cosine", "--anneal-from", "0.5"),
            lambda kept: f"the row above + detection head, {head_steps} steps (flat, then "
            f"cosine from half way), kept: step {kept}",
        )  # fmt: skip
    if exclude_steps:
        # the annealed weights trained on with unclicked stained nuclei out of the losses
        # (the clustering otherwise labels most of their pixels background)
        continued(
            "classes-crchisto-exclude", best_so_far, exclude_steps,
            ("--unclicked", "exclude", "--lr-schedule", "flat-cosine", "--anneal-from", "0.5"),
            lambda kept: f"model {trained[best_so_far.name]} trained {exclude_steps} steps more "
            f"with `--unclicked exclude` (flat, then cosine from half way), kept: step {kept}",
        )  # fmt: skip
    if tune:
        outputs += tuned_rows({n: (RUNS / n, row) for n, row in trained.items()}, test, gt)
    return scored_rows(outputs, gt)


LONG_EXTRA = (
    "--unclicked", "exclude", "--lr-schedule", "flat-cosine", "--anneal-from", "0.5",
)  # fmt: skip
LONG_VAL_EVERY = 500


def crchisto_long(steps: list[int]) -> tuple[list[tuple[str, dict]], Path]:
    """One long run from the shipped H&E model (what bf16 on a CPU with AMX makes affordable):
    unclicked nuclei out of the losses, constant lr then a cosine decay from half way,
    validated and snapshotted every 500 steps; trained to ``steps[0]``, then extended to each
    further length in turn (``pointcell train --resume --steps N`` stretches the decay over
    the new total, so the rate rises again). Scored with the weights validation picked and
    with the final ones (the end of the decay), each with and without its tuned threshold."""
    split, test, gt, outputs = crchisto_setup()
    name = "classes-crchisto-long"
    extra = (*LONG_EXTRA, "--snapshot-every", str(LONG_VAL_EVERY))
    for length in steps[:-1]:
        train(name, CRC_DATA / "images", gt, CRC_MPP, split, length, extra=extra,
              val_every=LONG_VAL_EVERY)  # fmt: skip
    run, out = crchisto_run(name, steps[-1], split, test, gt, extra, val_every=LONG_VAL_EVERY)
    # a run found longer than asked is reused as it is: label it with its own length
    trained = trained_steps(run)[0]
    lengths = ", then extended to ".join(str(n) for n in [*steps[:-1], trained])
    label = f"HED jitter 0.05; {lengths} steps, `--unclicked exclude`"
    outputs.append((f"pointcell ({label}, kept by validation: step {best_step(run)})", out))
    final = RUNS / f"{name}-final-pred"
    predict_and_evaluate(run / "last.pt", test, gt, CRC_MPP, final)
    outputs.append((f"pointcell ({label}, final weights)", final))
    rows = len(outputs)
    tuned = {name: (run, rows - 1), f"{name}-final": (run / "last.pt", rows)}
    outputs += tuned_rows(tuned, test, gt)
    return scored_rows(outputs, gt), run


def validation_curve(run: Path) -> str:
    """A run's training time and validation detection F1 by step, from its metrics.csv."""
    with (run / "metrics.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    steps, seconds = float(rows[-1]["step"]), float(rows[-1]["elapsed_s"])
    curve = ", ".join(f"{int(float(r['step']))}: {float(r['val_det_f1']):.3f}" for r in rows)
    return (
        f"Training took {seconds / 60:.0f} min ({seconds / steps:.2f} s a step, validation "
        f"included). Validation detection F1 by step: {curve}."
    )


def shidc(steps: int) -> tuple[list[tuple[str, dict]], float]:
    data = SHARED / "shidc_ki67"
    split = shidc_patient_split(data / "images")
    test = [data / "images" / f"{stem}.jpg" for stem in split["test"]]
    train_images = [data / "images" / f"{stem}.jpg" for stem in split["val"] + split["train"]]
    threshold = tuned_dab_threshold(train_images, data / "points", KI67_MPP)
    run = train("classes-shidc", data / "images", data / "points", KI67_MPP, split, steps)
    plain = train(
        "classes-shidc-no-jitter", data / "images", data / "points", KI67_MPP, split, steps, 0.0
    )
    # SHIDC clicks tumour cells and lymphocytes and skips stromal nuclei: teach the model to
    # skip them too (unclicked stained nuclei are background), with mild and strong jitter
    skipping = {
        jitter: train(
            f"classes-shidc-unclicked{'-j15' if jitter == 0.15 else ''}",
            data / "images",
            data / "points",
            KI67_MPP,
            split,
            steps,
            jitter,
            extra=("--unclicked", "background"),
        )
        for jitter in (0.05, 0.15)
    }
    gt = data / "points"
    floor_args = ["--stain", "ihc", "--dab-threshold", f"{threshold:.5f}"]
    floor_scores = floor(test, gt, KI67_MPP, RUNS / "classes-shidc-floor", floor_args)
    model_scores = predict_and_evaluate(run, test, gt, KI67_MPP, RUNS / "classes-shidc-pred")
    plain_scores = predict_and_evaluate(
        plain, test, gt, KI67_MPP, RUNS / "classes-shidc-no-jitter-pred"
    )
    skipping_scores = {
        jitter: predict_and_evaluate(run, test, gt, KI67_MPP, Path(f"{run}-pred"))
        for jitter, run in skipping.items()
    }
    return [
        ("floor (H+DAB watershed, tuned DAB threshold)", floor_scores),
        ("pointcell, no stain jitter", plain_scores),
        ("pointcell (HED jitter 0.05)", model_scores),
        *(
            (f"pointcell (HED jitter {jitter}, unclicked nuclei = background)", scores)
            for jitter, scores in skipping_scores.items()
        ),
    ], threshold


ERROR_KEYS = {
    "det_fn_background": "missed: no nucleus at the click",
    "det_fn_merged": "missed: merged with a matched neighbour",
    "det_fn_displaced": "missed: detection > 3 µm away",
    "det_fp_far": "false: no click within 6 µm",
    "det_fp_near": "false: a click within 6 µm",
}


def error_table(rows: list[tuple[str, dict]]) -> list[str]:
    """Misses and false detections of each variant by cause (``pointcell evaluate``)."""
    lines = ["| variant | " + " | ".join(ERROR_KEYS.values()) + " |"]
    lines.append("|" + "---|" * (len(ERROR_KEYS) + 1))
    for name, agg in rows:
        lines.append(f"| {name} | " + " | ".join(fmt(agg.get(k)) for k in ERROR_KEYS) + " |")
    return lines


def table(rows: list[tuple[str, dict]], classes: bool, index: bool) -> list[str]:
    header = ["variant", "det P", "det R", "det F1", "count CCC"]
    published_radius = any("det_f1_6px" in agg for _, agg in rows)
    if published_radius:
        header.insert(4, "det F1 at 6 px")
    if classes:
        names = next((r["classes"] for _, r in rows if "classes" in r), [])
        header += [f"F_c {n}" for n in names] + ["macro F1", "weighted F1"]
    if index:
        header += ["positive % MAE", "max error", "positive % CCC"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, agg in rows:
        cells = [
            name,
            *(fmt(agg.get(k)) for k in ("det_precision", "det_recall", "det_f1", "count_ccc")),
        ]
        if published_radius:
            cells.insert(4, fmt(agg.get("det_f1_6px")))
        if classes:
            cells += [fmt(agg.get("class_fc", {}).get(n)) for n in names]
            cells += [fmt(agg.get("class_macro_f1")), fmt(agg.get("class_weighted_f1"))]
        if index:
            cells += [
                fmt(agg.get(k))
                for k in ("positive_percent_mae", "positive_percent_max_error", "positive_ccc")
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


INTRO = [
    "# Cell classes from typed clicks",
    "",
    "pointcell: ResNet18 U-Net fine-tuned from `pointcell-he` (CPU preset otherwise, HED jitter "
    "0.05 unless stated), class head trained on disks of 2 µm around typed clicks. Prediction: "
    "`--tta` (8 rotations and mirror images averaged), cells at the centroids of their nuclei "
    "(the default). Detection: Hungarian matching within 3 µm (CRCHisto also at the published "
    "6 px = 3.3 µm), pooled over the test images. F_c: HoVer-Net's per-class F1 (Graham et al. "
    "2019). Macro/weighted F1: classes of matched cells only. Each section names the command, "
    "commit and machine that produced it.",
    "",
]
SECTIONS = {
    "crchisto": "## CRCHistoPhenotypes",
    "crchisto-long": "## CRCHisto, one long run",
    "shidc": "## SHIDC-B-Ki-67",
}


def tuned_after(model: Path, run: Path) -> None:
    """Forget a tuned model made before its run's weights last changed."""
    if model.is_file() and model.stat().st_mtime < resolve_checkpoint(run).stat().st_mtime:
        model.unlink()


def tuned_value(model: Path) -> str:
    """The tuned setting of a model file, as a label."""
    state = load_checkpoint(model)
    post = state["postprocess"]
    head = ModelConfig.from_dict(state["config"]["model"]).detection_head
    return f"min proximity {post['min_proximity']}" if head else f"foreground {post['foreground']}"


def run_line(command: str, start: float) -> str:
    minutes = (time.perf_counter() - start) / 60
    reused = f"; finished training runs reused: {', '.join(REUSED)}" if REUSED else ""
    if REUSED_PREDICTIONS:
        reused += f"; their earlier test predictions reused: {', '.join(REUSED_PREDICTIONS)}"
    return f"{provenance()}. Command: `{command}` ({minutes:.0f} min, 2 CPU cores{reused})."


def crchisto_section(steps: dict[str, int], tune: bool, command: str) -> list[str]:
    start = time.perf_counter()
    rows = crchisto(**steps, tune=tune)
    return [
        f"{SECTIONS['crchisto']}, published test split ({CRC_MPP} µm/px, 70 train / 10 val / "
        "20 test images; unlabelled clicks count for detection only)",
        "",
        run_line(command, start) + " Clicks moved by (-1, -1) px to count pixels from 0 "
        "(CRCHisto's come from MATLAB files, counted from 1).",
        "",
        *crchisto_tables(rows),
    ]


def crchisto_long_section(steps: list[int], command: str) -> list[str]:
    start = time.perf_counter()
    rows, run = crchisto_long(steps)
    return [
        f"{SECTIONS['crchisto-long']} (CRCHisto's published split as above)",
        "",
        run_line(command, start) + " Training in bf16 autocast (`--precision auto` on a CPU "
        "with AVX-512 BF16 and AMX).",
        "",
        validation_curve(run),
        "",
        *crchisto_tables(rows),
    ]


def crchisto_tables(rows: list[tuple[str, dict]]) -> list[str]:
    """A CRCHisto section's scores, its errors by cause and the published figures."""
    return [
        *table(rows, classes=True, index=False),
        "",
        "Where the detection errors are (pooled counts over the test images, 3 µm matching):",
        "",
        *error_table(rows),
        "",
        "Published on this data set (Sirinukunwattana et al. 2016, IEEE TMI; 2-fold "
        "cross-validation, 6 px radius -- not the same protocol): "
        + ", ".join(f"{k} {v:.3f}" for k, v in PUBLISHED.items())
        + ".",
        "",
    ]


def shidc_section(steps: int, command: str) -> list[str]:
    start = time.perf_counter()
    rows, threshold = shidc(steps)
    return [
        f"{SECTIONS['shidc']} sample, split by patient (train p1, test p2; {KI67_MPP} µm/px "
        "assumed)",
        "",
        run_line(command, start) + f" {steps} training steps.",
        "",
        f"Floor DAB threshold tuned on the training patient: {threshold:.4f} (mean DAB optical "
        "density of a nucleus, balanced accuracy on matched positive/negative clicks).",
        "",
        *table(rows, classes=True, index=True),
        "",
    ]


def kept_section(text: str, heading: str) -> list[str]:
    """A section of an earlier results file, from its heading to the next one, unchanged."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith(heading)), None)
    if start is None:
        return []
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [*lines[start:end], *([""] if lines[end - 1] else [])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument(
        "--crchisto-steps", type=int, help="training steps on CRCHisto (default: --steps)"
    )
    parser.add_argument(
        "--crchisto-unclicked-steps",
        type=int,
        help="training steps of the CRCHisto unclicked-background variant (default: "
        "--crchisto-steps; 0 leaves it out)",
    )
    parser.add_argument(
        "--crchisto-anneal-steps",
        type=int,
        default=0,
        help="steps of a CRCHisto variant that continues the best checkpoint of the main run "
        "with a cosine-decayed learning rate (default 0: left out)",
    )
    parser.add_argument(
        "--crchisto-head-steps",
        type=int,
        default=0,
        help="steps of a CRCHisto variant that gives the best checkpoint so far a detection "
        "head (pointcell train --detection-head) and trains on (default 0: left out)",
    )
    parser.add_argument(
        "--crchisto-exclude-steps",
        type=int,
        default=0,
        help="steps of a CRCHisto variant that trains the annealed weights on with "
        "--unclicked exclude (default 0: left out)",
    )
    parser.add_argument(
        "--crchisto-long-steps",
        type=int,
        nargs="+",
        default=[7000, 9500, 14000],
        help="length of the crchisto-long part's run, then the lengths it is extended to in "
        "turn (default 7000 9500 14000: about 160 min with bf16 on 2 cores with AMX)",
    )
    parser.add_argument(
        "--crchisto-tune",
        action="store_true",
        help="also score each CRCHisto model with its detection threshold tuned on the "
        "validation clicks (pointcell tune)",
    )
    parser.add_argument(
        "--parts",
        nargs="+",
        choices=sorted(SECTIONS),
        default=sorted(SECTIONS),
        help="data sets to run; the others' sections of the results file are kept as they are",
    )
    args = parser.parse_args()
    crc_steps = args.crchisto_steps or args.steps
    unclicked = args.crchisto_unclicked_steps
    unclicked = crc_steps if unclicked is None else unclicked
    command = "python benchmarks/classes.py " + " ".join(sys.argv[1:])
    previous = (RESULTS / "classes.md").read_text() if (RESULTS / "classes.md").is_file() else ""
    lines = list(INTRO)
    for part, heading in SECTIONS.items():
        if part not in args.parts:
            lines += kept_section(previous, heading)
        elif part == "crchisto":
            steps = {
                "steps": crc_steps,
                "unclicked_steps": unclicked,
                "anneal_steps": args.crchisto_anneal_steps,
                "head_steps": args.crchisto_head_steps,
                "exclude_steps": args.crchisto_exclude_steps,
            }
            lines += crchisto_section(steps, args.crchisto_tune, command.strip())
        elif part == "crchisto-long":
            lines += crchisto_long_section(args.crchisto_long_steps, command.strip())
        else:
            lines += shidc_section(args.steps, command.strip())
    write_result("classes.md", "\n".join(lines))


if __name__ == "__main__":
    main()
