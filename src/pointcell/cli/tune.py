"""``pointcell tune``: fit the detection threshold and peak distance on held-out clicks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pointcell.cli.options import (
    Command,
    FiniteFloatRange,
    device_options,
    mpp_option,
    radius_option,
    stain_option,
    writable_file,
)

if TYPE_CHECKING:
    from pointcell.device import Precision
    from pointcell.postprocess import PostprocessParams
    from pointcell.tune import Trial


@click.command(cls=Command)
@click.option(
    "--model",
    required=True,
    help="Shipped model name, run folder (uses best.pt) or checkpoint file.",
)
@click.option(
    "--images",
    type=click.Path(exists=True, path_type=Path),
    help="Held-out image file or folder (not the images the model was trained on). Default: "
    "the validation images of the run given as --model.",
)
@click.option(
    "--points",
    type=click.Path(exists=True, path_type=Path),
    help="Their clicks (CSV, GeoJSON, XML) or instance masks, matched by file name; points "
    "files of other images are ignored. Default: the run's validation clicks.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_file,
    help="Model file to write (.pt): the same weights with the tuned settings.",
)
@radius_option
@mpp_option
@click.option("--tta", is_flag=True, help="Tune on test-time augmented maps (predict with --tta).")
@click.option(
    "--min-distances",
    "distances",
    type=FiniteFloatRange(min=0, min_open=True),
    multiple=True,
    help="Minimum distance between detections to try, in µm; repeat for more. Default: 2, "
    "2.5, 3, 3.5 and 4 (the model's own is always tried).",
)
@stain_option(
    "Tune for images of this stain only: the model keeps its other settings and "
    "predict uses these with --stain. Default: replace the model's own settings."
)
@device_options
def tune(
    model: str,
    images: Path | None,
    points: Path | None,
    out: Path,
    radius_um: float,
    mpp: float | None,
    tta: bool,
    distances: tuple[float, ...],
    stain: str | None,
    device: str,
    precision: Precision,
) -> None:
    """Choose the detection threshold and the minimum distance between detections that best
    find the clicked cells of held-out images, and write a model that uses them (the network
    runs once per image)."""
    from pointcell.inference import load_predictor
    from pointcell.tune import (
        DISTANCE_GRID,
        HeldOutImages,
        predict_clicked,
        tune_postprocess,
        tuned_setting,
        validation_images,
        write_tuned_model,
    )

    if images is not None and points is not None:
        held_out = HeldOutImages(images, points)
    elif images is None and points is None:
        held_out = validation_images(model)
    else:
        raise click.UsageError("give both --images and --points, or neither (a run's validation)")
    predictor = load_predictor(model, device=device, precision=precision)
    items = predict_clicked(predictor, held_out, mpp=mpp, tta=tta)
    own = predictor.postprocess_for(stain, warn=False)
    trials = tune_postprocess(
        predictor, items, radius_um=radius_um, base=own, distances=distances or DISTANCE_GRID
    )
    knob = tuned_setting(predictor)
    _echo_trials(trials, [knob, "min_distance_um"], own)
    best = trials[0]
    write_tuned_model(model, out, best.params, stain=stain)
    click.echo(
        f"best {knob} {getattr(best.params, knob):.2f}, min_distance_um "
        f"{best.params.min_distance_um:.2f} on {len(items)} image(s): detection F1 "
        f"{best.scores.f1:.3f}; wrote {out} (use it with pointcell predict --model {out}"
        f"{f' --stain {stain}' if stain else ''})"
    )


def _echo_trials(trials: list[Trial], columns: list[str], own: PostprocessParams) -> None:
    """Every setting tried with its detection scores, the model's own marked."""
    click.echo("  ".join(f"{c:>15}" for c in columns) + "  precision  recall     F1")
    for trial in sorted(trials, key=lambda t: [getattr(t.params, c) for c in columns]):
        s = trial.scores
        mark = " (model's)" if trial.params == own else ""
        click.echo(
            "  ".join(f"{getattr(trial.params, c):15.2f}" for c in columns)
            + f"  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:.3f}{mark}"
        )
