"""``pointcell evaluate``: score a predictions folder against masks, outlines or clicks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pointcell.cli.options import Command, mpp_option, radius_option, writable_file

if TYPE_CHECKING:
    from pointcell.evaluate import EvaluationReport

TABLE_KEYS = ("accuracy", "f1", "dice", "aji", "pq", "det_precision", "det_recall", "det_f1")


@click.command(cls=Command)
@click.option(
    "--pred",
    required=True,
    type=click.Path(path_type=Path),
    help="Folder written by pointcell predict.",
)
@click.option(
    "--gt",
    required=True,
    type=click.Path(path_type=Path),
    help="Ground truth: masks, Aperio XML, GeoJSON outlines, or points.",
)
@radius_option
@mpp_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_file,
    help="JSON report; a CSV is written beside it. Default: PRED/evaluation.json.",
)
@click.option(
    "--allow-missing",
    is_flag=True,
    help="Score a partial folder (an interrupted predict, or ground truth of images not "
    "predicted) instead of refusing; the report counts what was missing.",
)
def evaluate(
    pred: Path, gt: Path, radius_um: float, mpp: float | None, out: Path | None, allow_missing: bool
) -> None:
    """Score predictions: pixel ACC/F1, object Dice, AJI, PQ, detection P/R/F1, count CCC."""
    from pointcell.checks import check_output_file
    from pointcell.evaluate import evaluate as run_evaluation
    from pointcell.evaluate import write_report

    json_path = check_output_file(out or pred / "evaluation.json")
    report = run_evaluation(pred, gt, radius_um=radius_um, mpp=mpp, allow_missing=allow_missing)
    if report.aggregate["n_gt_without_prediction"]:
        click.secho(
            f"partial: {report.aggregate['n_gt_without_prediction']} ground-truth image(s) "
            "had no prediction and are not in the aggregate",
            fg="yellow",
            err=True,
        )
    write_report(report, json_path, json_path.with_suffix(".csv"))
    _echo_table(report)
    for line in _summary_lines(report.aggregate):
        click.echo(line)
    click.echo(f"report: {json_path}")


def _echo_table(report: EvaluationReport) -> None:
    """One row of scores per image, then the aggregate."""
    shown = [k for k in TABLE_KEYS if k in report.aggregate]
    width = max(len(s) for s in report.per_image)
    click.echo(f"{'image':<{width}}  " + "  ".join(f"{k:>13}" for k in shown))
    for stem, row in report.per_image.items():
        click.echo(
            f"{stem:<{width}}  "
            + "  ".join(f"{row[k]:13.3f}" if k in row else f"{'-':>13}" for k in shown)
        )
    click.echo(
        f"{'aggregate':<{width}}  " + "  ".join(f"{report.aggregate[k]:13.3f}" for k in shown)
    )


def _summary_lines(agg: dict[str, Any]) -> list[str]:
    """Where detections went wrong, the count agreement, classes and positive percentages."""
    lines = [
        f"misses: {agg['det_fn_background']} outside any predicted nucleus, "
        f"{agg['det_fn_merged']} merged with a neighbour, {agg['det_fn_displaced']} displaced; "
        f"false detections: {agg['det_fp_far']} far from every point (> 2x radius), "
        f"{agg['det_fp_near']} near one"
    ]
    if "count_ccc" in agg:
        lines.append(
            f"count CCC {agg['count_ccc']:.3f} (95% CI {agg['count_ccc_low']:.3f}"
            f"-{agg['count_ccc_high']:.3f})"
        )
    if "classes" in agg:
        per_class = ", ".join(f"{name} {value:.3f}" for name, value in agg["class_fc"].items())
        lines.append(f"per-class F_c: {per_class}")
        lines.append(
            f"classes on matched cells: macro F1 {agg['class_macro_f1']:.3f}, "
            f"weighted F1 {agg['class_weighted_f1']:.3f}"
        )
    if "positive_percent_mae" in agg:
        line = (
            f"positive %: mean abs error {agg['positive_percent_mae']:.2f}, "
            f"max {agg['positive_percent_max_error']:.2f} points"
        )
        if "positive_ccc" in agg:
            line += f", CCC {agg['positive_ccc']:.3f}"
        lines.append(line)
    return lines
