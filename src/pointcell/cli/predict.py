"""``pointcell predict``: a model on images and whole slides."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pointcell.cli.options import (
    Command,
    ExperimentalOption,
    FiniteFloatRange,
    device_options,
    many_images_option,
    mpp_option,
    output_folder_option,
    stack,
    stain_option,
)

if TYPE_CHECKING:
    from pointcell.io.predictions import PredictionSummary
    from pointcell.wsi import SlideSummary

POSTPROCESS_OPTIONS = (
    "instances",
    "min_area_um2",
    "min_distance_um",
    "min_probability",
    "foreground",
    "min_proximity",
    "centre",
    "refine_outlines_um",
)
SLIDE_OPTIONS = ("slide_tile", "slide_reader")
RUN_OPTIONS = ("gzip_geojson", "labels_zarr", "resume", "overwrite")


# Overrides of the model's own post-processing (None: the model's).
_postprocess_options = stack(
    stain_option(
        "The images' stain: use the settings the model was tuned with for it "
        "(pointcell tune --stain), if any. Default: the model's own settings."
    ),
    click.option(
        "--instances",
        type=click.Choice(["watershed", "connected"]),
        help="Split the nucleus mask by a watershed from the detections (default) or "
        "by connected components (the paper).",
    ),
    click.option(
        "--min-area-um2",
        type=FiniteFloatRange(min=0),
        help="Smallest nucleus kept, in µm² (the model's default: 3).",
    ),
    click.option(
        "--min-distance-um",
        type=FiniteFloatRange(min=0, min_open=True),
        help="Smallest distance between two detections in µm (the model's default: "
        "2.5); raise it for large nuclei that give two peaks.",
    ),
    click.option(
        "--min-probability",
        type=FiniteFloatRange(0, 1),
        help="Smallest nucleus probability of a detection (the model's default: 0.5); "
        "raise it to keep only confident cells.",
    ),
    click.option(
        "--foreground",
        type=FiniteFloatRange(0, 1, min_open=True, max_open=True),
        help="Nucleus mask threshold on the probability (the model's default: 0.5, "
        "the argmax); lower it with --min-probability to find fainter nuclei "
        "(pointcell tune chooses both).",
    ),
    click.option(
        "--refine-outlines",
        "refine_outlines_um",
        type=FiniteFloatRange(0, 10),
        help="Grow each nucleus outline into the stained nucleus (hematoxylin, with --stain "
        "ihc also DAB) up to this far beyond the network's mask, in µm; 0: the network's "
        "outlines alone (the model's default: 1).",
    ),
    click.option(
        "--centre",
        type=click.Choice(["peak", "centroid"]),
        help="Where a cell is placed: its probability peak (the paper) or the centroid "
        "of its nucleus (the model's default: centroid).",
    ),
    click.option(
        "--min-proximity",
        cls=ExperimentalOption,
        type=FiniteFloatRange(0, 1),
        help="Models with a detection head: lowest proximity peak that is a cell (the "
        "model's default: 0.2).",
    ),
)


# How the network runs over an image, and what is written besides the cells.
_image_options = stack(
    click.option(
        "--tta",
        is_flag=True,
        help="Test-time augmentation: average the network over 8 rotations and mirror "
        "images (8 times slower, steadier maps).",
    ),
    click.option(
        "--tile-size",
        type=click.IntRange(min=32),
        default=512,
        show_default=True,
        help="Network tile in px at the working pixel size (a multiple of 32).",
    ),
    click.option(
        "--overlap",
        type=click.IntRange(min=0),
        default=128,
        show_default=True,
        help="Overlap of network tiles in px (a multiple of 32).",
    ),
    click.option(
        "--batch-size",
        type=click.IntRange(min=1),
        default=4,
        show_default=True,
        help="Network tiles a batch.",
    ),
    click.option("--save-probability", is_flag=True, help="Also write the probability map."),
    click.option(
        "--overlay/--no-overlay",
        default=True,
        show_default=True,
        help="Write a PNG of the image with the nuclei drawn.",
    ),
    click.option(
        "--roi",
        type=click.Path(exists=True, path_type=Path),
        help="Region of interest (e.g. a Ki67 hotspot): a QuPath GeoJSON or Aperio XML "
        "of outlines for one image, or a folder with <stem>.geojson or <stem>.xml per "
        "image. Only the cells whose centre lies inside are kept and counted. "
        "Default: everywhere.",
    ),
    click.option(
        "--adapt-norm",
        cls=ExperimentalOption,
        is_flag=True,
        help="Re-estimate the batch-norm statistics on the images given, pooled, "
        "before predicting them (AdaBN; images only; measured: detection F1 0.872 -> "
        "0.795, benchmarks/results/adabn.md).",
    ),
)


# Whole slides only: tiling, reader, outputs, resuming and Dask.
_slide_options = stack(
    click.option(
        "--slide-tile",
        type=click.IntRange(min=64),
        default=1024,
        show_default=True,
        help="Whole slides: core tile (px at the working pixel size) each nucleus is owned by.",
    ),
    click.option(
        "--slide-reader",
        type=click.Choice(["auto", "tiffslide", "openslide"]),
        default="auto",
        show_default=True,
        help="Whole slides: tiffslide, or OpenSlide (MIRAX, VMS) when auto.",
    ),
    click.option("--gzip", "gzip_geojson", is_flag=True, help="Whole slides: write .geojson.gz."),
    click.option(
        "--labels-zarr",
        is_flag=True,
        help="Whole slides: also write the instance labels (level 0) as OUT/<stem>.labels.zarr.",
    ),
    click.option("--resume", is_flag=True, help="Whole slides: continue an interrupted job."),
    click.option("--overwrite", is_flag=True, help="Whole slides: replace finished outputs."),
    click.option(
        "--cluster",
        metavar="ADDRESS",
        help="Whole slides: Dask scheduler address (tcp://host:8786) to spread tiles "
        "over. Default: this process.",
    ),
    click.option(
        "--workers",
        type=click.IntRange(min=1),
        help="Whole slides: start a local Dask cluster of this many worker processes. "
        "Default: none, this process.",
    ),
)


@click.command(cls=Command)
@click.option(
    "--model",
    default="pointcell-general",  # pretrained.DEFAULT_MODEL (not imported: it loads torch)
    show_default=True,
    help="Shipped model name, run folder (uses best.pt) or checkpoint file.",
)
@many_images_option
@output_folder_option()
@mpp_option
@_postprocess_options
@_image_options
@_slide_options
@device_options
def predict(images: tuple[Path, ...], out: Path, **options: Any) -> None:
    """Detect and segment nuclei with a trained model, in images or whole slides.

    Whole slides (SVS, NDPI, MRXS, pyramidal or very large TIFF) are streamed tile by tile
    over their tissue and give OUT/<stem>.csv and OUT/<stem>.geojson in level-0 pixels.
    """
    from pointcell.predict import predict_paths

    job = predict_paths(list(images), out, settings_from_options(options))
    if job.images:
        echo_image_summaries(job.images)
    if job.slides:
        echo_slide_summaries(job.slides)
    if job.unused_stain_settings:
        stains = "|".join(job.unused_stain_settings)
        click.echo(f"tip: the model has detection settings calibrated for --stain {stains}")
    click.echo(f"outputs in {out}")


def settings_from_options(options: dict[str, Any]) -> Any:
    """The command's options as a :class:`pointcell.predict.PredictSettings`."""
    from pointcell.predict import PredictSettings
    from pointcell.wsi import SlideRun, SlideSettings

    options = dict(options)
    postprocess = {k: options.pop(k) for k in POSTPROCESS_OPTIONS}
    slide = SlideSettings(tile=options.pop("slide_tile"), reader=options.pop("slide_reader"))
    run = SlideRun(**{k: options.pop(k) for k in RUN_OPTIONS})
    return PredictSettings(
        postprocess={k: v for k, v in postprocess.items() if v is not None},
        tile=options.pop("tile_size"),
        slide=slide,
        slide_run=run,
        **options,
    )


def echo_image_summaries(summaries: list[PredictionSummary]) -> None:
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


def echo_slide_summaries(summaries: list[SlideSummary]) -> None:
    width = max(len(s.stem) for s in summaries)
    click.echo(f"{'slide':<{width}}  tissue tiles    cells   wall s")
    for slide in summaries:
        click.echo(
            f"{slide.stem:<{width}}  {slide.n_tissue_tiles:5d}/{slide.n_tiles:<6d} "
            f"{slide.n_cells:8d} {slide.wall_s:8.1f}"
        )
