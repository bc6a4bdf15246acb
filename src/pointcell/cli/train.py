"""``pointcell train``: a U-Net from clicks, in a run folder that can be resumed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pointcell.cli.options import (
    Command,
    ExperimentalOption,
    FiniteFloatRange,
    device_options,
    encoding_options,
    factor_range_option,
    mpp_option,
    region_options,
    seed_option,
    stack,
    writable_folder,
)

if TYPE_CHECKING:
    from pointcell.train import TrainResult


# The recipe: architecture, tasks, optimiser and schedule, patches.
_training_options = stack(
    click.option(
        "--preset",
        type=click.Choice(["cpu", "paper"]),
        default="cpu",
        show_default=True,
        help="cpu: EfficientNet-Lite0 from ImageNet (offline), 3,000 steps (2 cores: "
        "1-2 h); paper: ResNet50, 60,900 steps (a GPU).",
    ),
    click.option(
        "--steps",
        type=click.IntRange(min=1),
        help="Training iterations (default: the preset's); with --resume, a new total "
        "to train a finished run longer.",
    ),
    click.option(
        "--epochs",
        type=FiniteFloatRange(min=0, min_open=True),
        help="Training length in epochs (one patch per patch-sized area of training "
        "images), instead of --steps (default: none, steps are used).",
    ),
    click.option(
        "--encoder",
        help="Any segmentation-models-pytorch encoder (resnet50) or tu-<timm model> "
        "(tu-tf_efficientnet_lite0). Default: the preset's, or --init-from's.",
    ),
    click.option(
        "--encoder-weights",
        help="'imagenet' (offline for tu-tf_efficientnet_lite0, and lite1/2 with "
        "pointcell[imagenet]; else a download), 'none', or a local file. Default: the "
        "preset's with its encoder (cpu: imagenet), else none.",
    ),
    click.option(
        "--tasks",
        default="voronoi,repel,cluster",
        show_default=True,
        help="Comma-separated subset of the three tasks.",
    ),
    click.option(
        "--tasks-mode",
        type=click.Choice(["scheduler", "sum", "uncertainty"]),
        default="scheduler",
        show_default=True,
        help="How task losses are combined: one task a step (the paper), their sum "
        "(Qu et al.) or learned uncertainty weights (Kendall et al.).",
    ),
    click.option("--optimizer", type=click.Choice(["ranger", "adam"]), help="Default: ranger."),
    click.option("--lr", type=FiniteFloatRange(min=0, min_open=True), help="Default: 1e-3."),
    click.option(
        "--lr-schedule",
        type=click.Choice(["constant", "flat-cosine"]),
        default="constant",
        show_default=True,
        help="constant (the paper's) or flat-cosine: full lr, then a half-cosine decay to zero.",
    ),
    click.option(
        "--anneal-from",
        type=FiniteFloatRange(0, 1, max_open=True),
        default=0.72,
        show_default=True,
        help="flat-cosine: share of the steps before the decay starts (0: decay throughout).",
    ),
    click.option("--batch-size", type=click.IntRange(min=1), help="Patches a step. Default: 8."),
    click.option(
        "--patch-size",
        type=click.IntRange(min=32),
        help="Patch side in px at the working pixel size. Default: 256.",
    ),
    click.option(
        "--working-mpp",
        type=FiniteFloatRange(min=0, min_open=True),
        default=0.5,
        show_default=True,
        help="Pixel size the network works at (µm/px).",
    ),
)


# What the run learns from and how its data is drawn.
_data_options = stack(
    mpp_option,
    click.option(
        "--clip",
        is_flag=True,
        help="Drop points outside their image (or outside every training region).",
    ),
    region_options,
    encoding_options,
    seed_option(
        "Random seed: the default split, the network's start, the patches drawn and "
        "the global k-means."
    ),
    click.option(
        "--split",
        "split_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help='JSON {"train": [...], "val": [...], "test": [...]} of image stems. '
        "Default: a seeded 80/10/10 split.",
    ),
    click.option(
        "--sources",
        "sources_file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        help='JSON {"source": [image stems]}: draw patches evenly from each source (images '
        "named in none form one more), by area within a source. Default: by area alone, so "
        "a source of many large images gives most patches.",
    ),
    click.option(
        "--self-labels",
        type=click.Path(exists=True, file_okay=False, path_type=Path),
        cls=ExperimentalOption,
        help="Self-training: a folder of a model's instance masks of the training tiles "
        "(pointcell predict output, <stem>.tif); its nuclei around exactly one click join the "
        "cluster label. Default: none, the cluster label alone.",
    ),
    click.option(
        "--classes",
        default="auto",
        show_default=True,
        help="Cell classes to learn: auto (the class names on the training points; "
        "none found: detection only), none, or a comma-separated list (other names "
        "count as untyped).",
    ),
    click.option(
        "--hed-jitter",
        type=FiniteFloatRange(0, 0.5),
        default=0.0,
        show_default=True,
        help="Stain augmentation: jitter of hematoxylin/eosin/DAB densities (0.05 is mild).",
    ),
    click.option(
        "--colour-jitter",
        cls=ExperimentalOption,
        type=FiniteFloatRange(0, 0.9),
        default=0.0,
        show_default=True,
        help="Colour augmentation: brightness, contrast and saturation times U(1-c, 1+c), "
        "hue turned by up to c/3 of a turn (0.3 helped dark frozen sections, cost recall "
        "elsewhere).",
    ),
    factor_range_option(
        "--scale-range",
        (0.8, 1.25),
        "Random zoom of training patches (log-uniform; 2 = magnified twice). Widen it "
        "when nuclei of the images to predict may be much larger or smaller.",
    ),
    factor_range_option(
        "--stain-scale",
        (1.0, 1.0),
        "Stain strength augmentation: every stain density of a patch times one random "
        "factor (log-uniform; 0.3 = three times paler).",
    ),
)


# Where the run lives and how often it reports.
_run_options = stack(
    click.option(
        "--val-every",
        type=click.IntRange(min=1),
        help="Validate every N steps. Default: the preset's (cpu 250).",
    ),
    click.option(
        "--checkpoint-every",
        type=click.IntRange(min=1),
        help="Write last.pt every N steps. Default: the preset's (cpu 50).",
    ),
    click.option(
        "--init-from",
        help="Fine-tune a shipped model (pointcell-general, pointcell-he, pointcell-ki67) or a "
        "checkpoint instead of starting afresh. Default: start afresh.",
    ),
    click.option(
        "--snapshot-every",
        type=click.IntRange(min=1),
        help="Also keep the weights every N steps in RUN/snapshots (learning curves). "
        "Default: never.",
    ),
    device_options,
    click.option(
        "--cache-dir",
        type=click.Path(file_okay=False, path_type=Path),
        callback=writable_folder,
        help="Where encodings are cached. Default: ~/.cache/pointcell/encodings.",
    ),
    click.option(
        "--detection-head",
        cls=ExperimentalOption,
        is_flag=True,
        help="Add a head that learns where annotators click (a proximity map, as "
        "SC-CNN's); cells are its peaks (measured: detection F1 0.763 -> 0.755).",
    ),
)


@click.command(cls=Command)
@click.option(
    "--images",
    type=click.Path(exists=True, path_type=Path),
    help="Image file or folder: tiles and whole slides, mixed (required unless --resume).",
)
@click.option(
    "--points",
    type=click.Path(exists=True, path_type=Path),
    help="Points file or folder, matched to images by file name (required unless --resume).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    callback=writable_folder,
    help="Run folder to create (required unless --resume).",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Continue the run in this folder where it stopped (add --steps to extend it). "
    "Default: a new run.",
)
@_training_options
@_data_options
@_run_options
def train(
    images: Path | None,
    points: Path | None,
    out: Path | None,
    resume_dir: Path | None,
    preset: str,
    steps: int | None,
    **options: Any,
) -> None:
    """Train a U-Net on point labels (Voronoi, repel and cluster tasks; cell classes when the
    points carry them)."""
    from pointcell.train import TrainingInterrupted, config_from_options, fit

    try:
        if resume_dir is not None:
            result = fit(None, resume_dir, resume=True, steps=steps)
        else:
            if images is None or points is None or out is None:
                raise click.UsageError(
                    "--images, --points and --out are required (or --resume RUN)"
                )
            settings = _library_options(options)
            config = config_from_options(
                preset, images=str(images), points=str(points), steps=steps, **settings
            )
            result = fit(config, out)
    except TrainingInterrupted as exc:
        raise click.ClickException(str(exc)) from exc
    if os.environ.get("RANK", "0") == "0":  # one report per torchrun job
        _echo_result(result)


def _library_options(options: dict[str, Any]) -> dict[str, Any]:
    """The command's options as :func:`pointcell.train.config_from_options` takes them."""
    from pointcell.data import AugmentParams
    from pointcell.encodings import EncodingParams

    options = dict(options)
    encoding = {name: options.pop(name) for name in ("clustering", "unclicked", "fuse_floor")}
    options["encoding"] = EncodingParams(**encoding, seed=options["seed"])
    options["augment"] = AugmentParams(
        hed_jitter=options.pop("hed_jitter"),
        colour_jitter=options.pop("colour_jitter"),
        scale_range=options.pop("scale_range"),
        stain_scale_range=options.pop("stain_scale"),
    )
    for name in ("cache_dir", "roi", "self_labels"):
        if options[name] is not None:
            options[name] = str(options[name])
    return options


def _echo_result(result: TrainResult) -> None:
    best = "n/a" if result.best_score is None else f"{result.best_score:.3f}"
    click.echo(
        f"trained {result.steps} steps; best validation detection F1 {best}; "
        f"checkpoints in {result.run_dir}"
    )
    if result.best_score is not None:
        click.echo(
            "tune its detection threshold on the validation clicks: pointcell tune --model "
            f"{result.run_dir} --out {result.run_dir / 'tuned.pt'}"
        )
