"""``pointcell baseline``, ``export`` and ``demo``: the floor, sharing a model, the tour."""

from __future__ import annotations

from pathlib import Path

import click

from pointcell.cli.options import (
    Command,
    FiniteFloatRange,
    many_images_option,
    mpp_option,
    output_folder_option,
    stain_option,
    writable_file,
    writable_folder,
)


@click.command(cls=Command)
@many_images_option
@output_folder_option("Output folder (same layout as predict).")
@mpp_option
@click.option(
    "--threshold",
    type=FiniteFloatRange(min=0),
    help="Nuclear optical density threshold. Default: Otsu's, per image.",
)
@stain_option("he: nuclei from hematoxylin; ihc: from hematoxylin + DAB.", default="he")
@click.option(
    "--dab-threshold",
    type=FiniteFloatRange(min=0),
    help="IHC: call a nucleus positive above this mean DAB optical density. Default: Otsu's.",
)
@click.option(
    "--overlay/--no-overlay",
    default=True,
    show_default=True,
    help="Write a PNG of the image with the nuclei drawn.",
)
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


@click.command(cls=Command)
@click.option("--model", required=True, help="Run folder or checkpoint file.")
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    callback=writable_file,
    help="Model file to write (.pt).",
)
@click.option(
    "--half/--full",
    default=True,
    show_default=True,
    help="Store the weights in fp16 (half the size) or fp32.",
)
def export(model: str, out: Path, half: bool) -> None:
    """Write a compact model file (weights only) from a run, for sharing or shipping."""
    from pointcell.pretrained import export_model, resolve_checkpoint

    written = export_model(resolve_checkpoint(model), out, half=half)
    click.echo(f"wrote {written} ({written.stat().st_size / 1e6:.1f} MB)")


@click.command(cls=Command)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    callback=writable_folder,
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
