"""Option types and decorators shared by the commands; importing this module stays cheap
(click and the standard library only)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pointcell.checks import check_mpp, check_output_dir, check_output_file
from pointcell.errors import PointcellInputError

Decorator = Callable[[Callable[..., Any]], Callable[..., Any]]


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange lets NaN through (every comparison with it is false)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class ExperimentalOption(click.Option):
    """An option measured no better than the default (docs/method.md has the figures): it is
    listed apart in ``--help``."""


class Command(click.Command):
    """A command whose ``--help`` lists experimental options in their own section."""

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        regular: list[tuple[str, str]] = []
        experimental: list[tuple[str, str]] = []
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is not None:
                (experimental if isinstance(param, ExperimentalOption) else regular).append(record)
        with formatter.section("Options"):
            formatter.write_dl(regular)
        if experimental:
            with formatter.section("Experimental options (measured no better than the default)"):
                formatter.write_dl(experimental)


def stack(*decorators: Decorator) -> Decorator:
    """One decorator applying ``decorators``, so that options are listed in the given order."""

    def apply(function: Callable[..., Any]) -> Callable[..., Any]:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


def as_bad_parameter(
    check: Callable[[Any], Any], value: Any, ctx: click.Context, param: click.Parameter
) -> Any:
    """``check(value)``, with its input error shown as click's error for this option."""
    try:
        return check(value)
    except PointcellInputError as exc:
        raise click.BadParameter(str(exc), ctx=ctx, param=param) from exc


def writable_folder(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    return None if value is None else as_bad_parameter(check_output_dir, value, ctx, param)


def writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Any:
    return None if value is None else as_bad_parameter(check_output_file, value, ctx, param)


def _plausible_mpp(ctx: click.Context, param: click.Parameter, value: float | None) -> Any:
    if value is None:
        return None
    return as_bad_parameter(lambda mpp: check_mpp(mpp, "--mpp"), value, ctx, param)


def ordered_range(
    ctx: click.Context, param: click.Parameter, value: tuple[float, float]
) -> tuple[float, float]:
    if value[0] > value[1]:
        raise click.BadParameter("MIN must not exceed MAX", ctx=ctx, param=param)
    return value


mpp_option = click.option(
    "--mpp",
    type=FiniteFloatRange(min=0, min_open=True),
    default=None,
    callback=_plausible_mpp,
    help="Pixel size in µm/px. Default: the file's metadata (required when it has none).",
)
radius_option = click.option(
    "--radius-um",
    type=FiniteFloatRange(min=0, min_open=True),
    default=3.0,
    show_default=True,
    help="Matching radius in µm: a detection counts when it lies this close to a true cell.",
)
many_images_option = click.option(
    "--images",
    required=True,
    multiple=True,
    type=click.Path(exists=True, path_type=Path),
    help="Image file or folder; repeat for more.",
)


def output_folder_option(help_text: str = "Output folder.") -> Decorator:
    return click.option(
        "--out",
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        callback=writable_folder,
        help=help_text,
    )


def factor_range_option(name: str, default: tuple[float, float], help_text: str) -> Decorator:
    """A ``MIN MAX`` pair of positive factors for a log-uniform augmentation draw."""
    factor = FiniteFloatRange(min=0.05, max=20)
    return click.option(
        name,
        type=(factor, factor),
        default=default,
        show_default=True,
        metavar="MIN MAX",
        callback=ordered_range,
        help=help_text,
    )


def encoding_options(function: Callable[..., Any]) -> Callable[..., Any]:
    """How clicks become training targets (see :class:`pointcell.encodings.EncodingParams`)."""
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
        "IHC score that skips stroma) or exclude (experimental, clicks are sparse: the cluster "
        "and repel losses skip them; measured no change of detection).",
    )(function)
    function = click.option(
        "--fuse-floor",
        cls=ExperimentalOption,
        type=click.Choice(["off", "he", "ihc"]),
        default="off",
        show_default=True,
        help="Fused labels: the training-free floor's nuclei (he: hematoxylin, ihc: "
        "hematoxylin + DAB) around exactly one click join the cluster label's (labels cover "
        "more of each nucleus, the model measured slightly worse).",
    )(function)
    return function


STAINS = ("he", "ihc")


def stain_option(help_text: str, *, default: str | None = None) -> Decorator:
    """``--stain he|ihc``: what the images are stained with (said by the user, never guessed)."""
    return click.option(
        "--stain",
        type=click.Choice(STAINS),
        default=default,
        show_default=default is not None,
        help=help_text,
    )


def seed_option(help_text: str) -> Decorator:
    return click.option("--seed", type=int, default=0, show_default=True, help=help_text)


def device_options(function: Callable[..., Any]) -> Callable[..., Any]:
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


# Where the clicks of whole slides teach (pointcell.regions).
region_options = stack(
    click.option(
        "--roi",
        type=click.Path(exists=True, path_type=Path),
        help="Training regions of whole slides (where every cell was clicked): a QuPath "
        "GeoJSON or Aperio XML of outlines, or a folder with <slide stem>.geojson per slide. "
        "Outside them nothing is learned. Default: the annotation outlines of the points "
        "file, else the neighbourhood of each click.",
    ),
    click.option(
        "--neighbourhood",
        "neighbourhood_um",
        type=FiniteFloatRange(min=0, min_open=True),
        default=40.0,
        show_default=True,
        help="A slide without outlined regions learns within this radius (µm) of each click.",
    ),
)
