"""``pointcell tune``: fit the detection threshold and peak distance on held-out clicks, or
(``--outlines``) the nucleus-mask threshold and outline growth on held-out masks."""

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
    from pointcell.inference import Predictor
    from pointcell.postprocess import PostprocessParams
    from pointcell.tune import HeldOutImages, OutlineTrial, Pick, Trial


NEAR_LEGEND = {  # what the star of the trial tables means under each --pick
    "one-se": "* within one standard error of the best",
    "best": "* tied with the best",
}


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
@click.option(
    "--outlines",
    is_flag=True,
    help="Tune the outlines instead of detection: --points are instance masks (or polygons); "
    "chooses the nucleus-mask threshold (at most the detection threshold) and the growth into "
    "the stain (--refine-outlines) with the best mean AJI; the detection settings are kept.",
)
@click.option(
    "--pick",
    type=click.Choice(["one-se", "best"]),
    default="one-se",
    show_default=True,
    help="one-se: of the settings within one standard error of the best score (bootstrapped "
    "over the images), keep the one nearest the model's own; best: the best score, however "
    "small its lead.",
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
    outlines: bool,
    pick: Pick,
    stain: str | None,
    device: str,
    precision: Precision,
) -> None:
    """Choose the detection threshold and the minimum distance between detections that best
    find the clicked cells of held-out images (or, with --outlines, the outline settings that
    best match their true outlines), and write a model that uses them (the network runs once
    per image)."""
    from pointcell.inference import load_predictor
    from pointcell.tune import HeldOutImages, validation_images, write_tuned_model

    if images is not None and points is not None:
        held_out = HeldOutImages(images, points)
    elif images is None and points is None:
        held_out = validation_images(model)
    else:
        raise click.UsageError("give both --images and --points, or neither (a run's validation)")
    predictor = load_predictor(model, device=device, precision=precision)
    own = predictor.postprocess_for(stain, warn=False)
    if outlines:
        best, summary = _tune_outlines(predictor, held_out, own, mpp=mpp, tta=tta, pick=pick)
    else:
        best, summary = _tune_detection(
            predictor,
            held_out,
            own,
            mpp=mpp,
            tta=tta,
            radius_um=radius_um,
            distances=distances,
            pick=pick,
        )
    write_tuned_model(model, out, best, stain=stain)
    click.echo(
        f"{summary}; wrote {out} (use it with pointcell predict --model {out}"
        f"{f' --stain {stain}' if stain else ''})"
    )


def _tune_detection(
    predictor: Predictor,
    held_out: HeldOutImages,
    own: PostprocessParams,
    *,
    mpp: float | None,
    tta: bool,
    radius_um: float,
    distances: tuple[float, ...],
    pick: Pick,
) -> tuple[PostprocessParams, str]:
    """The chosen detection settings on the held-out clicks, and a line that says so."""
    from pointcell.tune import DISTANCE_GRID, predict_clicked, tune_postprocess, tuned_setting

    items = predict_clicked(predictor, held_out, mpp=mpp, tta=tta)
    trials = tune_postprocess(
        predictor,
        items,
        radius_um=radius_um,
        base=own,
        distances=distances or DISTANCE_GRID,
        pick=pick,
    )
    knob = tuned_setting(predictor)
    _echo_trials(trials, [knob, "min_distance_um"], own, pick)
    best = trials[0]
    top = max(t.scores.f1 for t in trials)
    return best.params, (
        f"chose {knob} {getattr(best.params, knob):.2f}, min_distance_um "
        f"{best.params.min_distance_um:.2f} on {len(items)} image(s): detection F1 "
        f"{best.scores.f1:.3f} (best {top:.3f})"
    )


def _echo_trials(
    trials: list[Trial], columns: list[str], own: PostprocessParams, pick: Pick
) -> None:
    """Every setting tried with its detection scores, those near the best starred and the
    model's own and the chosen marked."""
    click.echo("  ".join(f"{c:>15}" for c in columns) + "  precision  recall     F1")
    for trial in sorted(trials, key=lambda t: [getattr(t.params, c) for c in columns]):
        s = trial.scores
        click.echo(
            "  ".join(f"{getattr(trial.params, c):15.2f}" for c in columns)
            + f"  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:.3f}"
            + _marks(trial.near_best, trial.params, own, trials[0].params)
        )
    click.echo(NEAR_LEGEND[pick])


def _marks(
    near: bool, params: PostprocessParams, own: PostprocessParams, chosen: PostprocessParams
) -> str:
    """``*`` for a setting near the best, then whether it is the model's own or the chosen."""
    names = [name for name, p in (("model's", own), ("chosen", chosen)) if p == params]
    return ("*" if near else " ") + (f" ({', '.join(names)})" if names else "")


def _tune_outlines(
    predictor: Predictor,
    held_out: HeldOutImages,
    own: PostprocessParams,
    *,
    mpp: float | None,
    tta: bool,
    pick: Pick,
) -> tuple[PostprocessParams, str]:
    """The chosen outline settings on the held-out masks, and a line that says so."""
    from pointcell.tune import predict_outlined, tune_outlines

    items = predict_outlined(predictor, held_out, mpp=mpp, tta=tta)
    trials = tune_outlines(predictor, items, base=own, pick=pick)
    _echo_outline_trials(trials, own, pick)
    best = trials[0]
    top = max(t.aji for t in trials)
    return best.params, (
        f"chose foreground {best.params.foreground:.2f}, refine_outlines_um "
        f"{best.params.refine_outlines_um:.2f} on {len(items)} image(s): AJI {best.aji:.3f} "
        f"(best {top:.3f}), pixel F1 {best.pixel_f1:.3f} (detection settings kept)"
    )


def _echo_outline_trials(trials: list[OutlineTrial], own: PostprocessParams, pick: Pick) -> None:
    """Every outline setting tried with its mean AJI and pixel F1, those near the best starred
    and the model's own and the chosen marked."""
    click.echo(f"{'foreground':>15}  {'refine_outlines_um':>18}    AJI  pixel F1")
    order = sorted(trials, key=lambda t: (-t.params.foreground, t.params.refine_outlines_um))
    for trial in order:
        click.echo(
            f"{trial.params.foreground:15.2f}  {trial.params.refine_outlines_um:18.2f}  "
            f"{trial.aji:.3f}  {trial.pixel_f1:8.3f}"
            + _marks(trial.near_best, trial.params, own, trials[0].params)
        )
    click.echo(NEAR_LEGEND[pick])
