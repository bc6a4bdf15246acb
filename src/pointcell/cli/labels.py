"""``pointcell labels``: look at the training targets the clicks become."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from pointcell.cli.options import (
    Command,
    encoding_options,
    mpp_option,
    output_folder_option,
    region_options,
    seed_option,
)

if TYPE_CHECKING:
    from pointcell.encodings import ClusteringMode, FloorFusion, UnclickedMode


@click.command(cls=Command)
@click.option(
    "--images",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Image file or folder (PNG, JPEG, TIFF, or whole slides: one set of maps per "
    "training region, <slide>_r<k>).",
)
@click.option(
    "--points",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="Points file or folder (CSV, GeoJSON, Aperio XML or label masks), "
    "matched to images by file name.",
)
@output_folder_option()
@mpp_option
@click.option("--clip", is_flag=True, help="Drop points outside the image instead of failing.")
@region_options
@encoding_options
@seed_option("Seed of the global k-means (--clustering global).")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes encoding images side by side (each costs ~1.5 s to start).",
)
def labels(
    images: Path,
    points: Path,
    out: Path,
    mpp: float | None,
    clip: bool,
    roi: Path | None,
    neighbourhood_um: float,
    clustering: ClusteringMode,
    unclicked: UnclickedMode,
    fuse_floor: FloorFusion,
    seed: int,
    workers: int,
) -> None:
    """Encode point labels as Voronoi, cluster and repel label maps, with overlays."""
    from pointcell.encodings import EncodingParams
    from pointcell.labels import write_labels

    params = EncodingParams(
        clustering=clustering, unclicked=unclicked, fuse_floor=fuse_floor, seed=seed
    )
    summaries = write_labels(
        images,
        points,
        out,
        mpp=mpp,
        clip=clip,
        params=params,
        roi=roi,
        neighbourhood_um=neighbourhood_um,
        workers=workers,
    )
    for s in summaries:
        click.echo(
            f"{s.stem}: {s.n_points} points, nucleus {s.nucleus_fraction:.1%}, "
            f"ignored {s.ignore_fraction:.1%}"
        )
    click.echo(f"wrote label maps of {len(summaries)} image(s) to {out}")
