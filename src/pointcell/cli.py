"""Command line: ``pointcell <command>``. Each command calls one library function."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import click

from pointcell import __version__
from pointcell.encodings import EncodingParams
from pointcell.errors import PointcellInputError


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
    click.secho(f"warning: {message}", fg="yellow", err=True)


class _Group(click.Group):
    """Turns input errors into one clear line (exit code 1) instead of a traceback."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except PointcellInputError as exc:
            raise click.ClickException(str(exc)) from exc


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


def _mpp_option(function):  # noqa: ANN001, ANN202
    return click.option(
        "--mpp",
        type=click.FloatRange(min=0, min_open=True),
        default=None,
        help="Pixel size in µm/px; overrides the file's metadata (required when it has none).",
    )(function)


def _encoding_options(function):  # noqa: ANN001, ANN202
    function = click.option(
        "--clustering",
        type=click.Choice(["local", "global"]),
        default="local",
        show_default=True,
        help="Per-Voronoi-cell k-means (paper) or one over the image (Qu).",
    )(function)
    return click.option(
        "--seed", type=int, default=0, show_default=True, help="Seed of the global k-means."
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
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder."
)
@_mpp_option
@click.option("--clip", is_flag=True, help="Drop points outside the image instead of failing.")
@_encoding_options
def labels(
    images: Path, points: Path, out: Path, mpp: float | None, clip: bool, clustering: str, seed: int
) -> None:
    """Encode point labels as Voronoi, cluster and repel label maps, with overlays."""
    from pointcell.labels import write_labels

    summaries = write_labels(
        images,
        points,
        out,
        mpp=mpp,
        clip=clip,
        params=EncodingParams(clustering=clustering, seed=seed),
    )
    for s in summaries:
        click.echo(
            f"{s.stem}: {s.n_points} points, nucleus {s.nucleus_fraction:.1%}, "
            f"ignored {s.ignore_fraction:.1%}"
        )
    click.echo(f"wrote label maps of {len(summaries)} image(s) to {out}")


@main.command()
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("pointcell-demo"),
    show_default=True,
    help="Output folder.",
)
def demo(out: Path) -> None:
    """Run pointcell on the bundled MoNuSeg sample (no network, no extra data)."""
    from pointcell.labels import write_labels
    from pointcell.sample import sample_dir

    sample = sample_dir()
    summaries = write_labels(sample / "images", sample / "points", out / "labels")
    for s in summaries:
        click.echo(f"{s.stem}: {s.n_points} points encoded")
    click.echo(f"label maps and overlays in {out / 'labels'}; open {out / 'labels' / 'overlay'}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
