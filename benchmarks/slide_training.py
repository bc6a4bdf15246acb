"""Training from clicks on a whole slide: peak memory does not grow with the slide.

Run: ``python benchmarks/slide_training.py [--side 20000] [--regions 8] [--region-px 1024]
[--steps 10]``. Uses the synthetic pyramidal slide of ``benchmarks/wsi.py`` (the bundled MoNuSeg
crops tiled inside an ellipse of tissue, 0.25 µm/px, cached in ``benchmarks/.cache``), clicks
every nucleus of the crops' points inside ``--regions`` square regions of ``--region-px`` px
(QuPath annotation outlines in a GeoJSON file, spread over the tissue), then in fresh processes
runs ``pointcell labels`` and ``pointcell train`` (resnet18, batch 8, 256² patches, fp32) on the
slide and records each one's peak resident memory (``ru_maxrss``) and wall time. Writes its
section of ``benchmarks/results/training.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import provenance, write_section  # noqa: E402
from pointcell.io.points import read_points  # noqa: E402
from pointcell.sample import sample_dir  # noqa: E402
from wsi import CACHE, synthetic_slide  # noqa: E402

BLOCK = 256  # the crops' side, as synthetic_slide tiles them


def block_clicks(rows: int, cols: int) -> np.ndarray:
    """The clicks (x, y) of the crop that synthetic_slide puts in block (rows, cols)."""
    crops = [read_points(p).xy for p in sorted((sample_dir() / "points").glob("*.csv"))]
    variant = (rows * 7 + cols * 13) % 8
    xy = crops[variant % 2].copy()
    if variant & 2:
        xy[:, 1] = BLOCK - 1 - xy[:, 1]
    if variant & 4:
        xy[:, 0] = BLOCK - 1 - xy[:, 0]
    return xy + [cols * BLOCK, rows * BLOCK]


def region_corners(side: int, n_regions: int, region_px: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of ``n_regions`` squares spread over the tissue ellipse of
    synthetic_slide: a checkerboard of region-sized cells (no two share an edge), every
    cell inside the ellipse, taken evenly along the list."""
    cells = side // region_px
    corners = []
    for row in range(cells):
        for col in range(row % 2, cells, 2):
            ys, xs = np.array([row, row + 1]) * region_px, np.array([col, col + 1]) * region_px
            ry, rx = (ys - side / 2) / (0.36 * side), (xs - side / 2) / (0.3 * side)
            if ((ry[:, None] ** 2 + rx[None, :] ** 2) <= 1).all():
                corners.append((col * region_px, row * region_px))
    if len(corners) < n_regions:
        raise SystemExit(f"only {len(corners)} regions of {region_px} px fit this slide")
    chosen = np.linspace(0, len(corners) - 1, n_regions).round().astype(int)
    return [corners[i] for i in chosen]


def write_region_clicks(path: Path, side: int, n_regions: int, region_px: int) -> int:
    """Square annotation regions inside the tissue, with every click inside them."""
    features, n_clicks = [], 0
    for x0, y0 in region_corners(side, n_regions, region_px):
        box = [[x0 - 0.5, y0 - 0.5], [x0 + region_px - 0.5, y0 - 0.5]]
        box += [[x0 + region_px - 0.5, y0 + region_px - 0.5], [x0 - 0.5, y0 + region_px - 0.5]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [box + box[:1]]},
                "properties": {"objectType": "annotation"},
            }
        )
        for r in range(y0 // BLOCK, (y0 + region_px) // BLOCK):
            for c in range(x0 // BLOCK, (x0 + region_px) // BLOCK):
                xy = block_clicks(r, c)
                n_clicks += len(xy)
                features.append(
                    {
                        "type": "Feature",
                        "geometry": {"type": "MultiPoint", "coordinates": xy.round(2).tolist()},
                        "properties": {"objectType": "detection"},
                    }
                )
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return n_clicks


def measured(command: list[str]) -> tuple[float, float]:
    """Wall time (s) and peak resident memory (GB) of a command, run under a fresh Python
    whose only child it is (ru_maxrss of its children is then the command's own)."""
    wrapper = (
        "import resource, subprocess, sys; "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", wrapper, *command], check=True, capture_output=True, text=True
    )
    wall = time.perf_counter() - start
    return wall, int(done.stdout.split()[-1]) / 1e6  # kB -> GB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--regions", type=int, default=8)
    parser.add_argument("--region-px", type=int, default=1024, help="multiple of 256")
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    slide = synthetic_slide(CACHE / f"synthetic-{args.side}.tif", args.side)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "slides").mkdir()
        (work / "slides" / slide.name).symlink_to(slide)
        n_clicks = write_region_clicks(
            work / "slides" / f"{slide.stem}.geojson", args.side, args.regions, args.region_px
        )
        common = ["--images", str(work / "slides"), "--points", str(work / "slides")]
        pointcell = [sys.executable, "-m", "pointcell"]
        labels = measured([*pointcell, "labels", *common, "--out", str(work / "labels")])
        train_command = [
            *pointcell,
            "train",
            *common,
            "--steps",
            str(args.steps),
            "--encoder",
            "resnet18",
            "--precision",
            "fp32",
            "--cache-dir",
            str(work / "cache"),
        ]
        train = measured([*train_command, "--out", str(work / "run")])
        again = measured([*train_command, "--out", str(work / "run-again")])
    report(args, n_clicks, {"labels": labels, "train": train, "again": again})


def report(args: argparse.Namespace, n_clicks: int, runs: dict[str, tuple[float, float]]) -> None:
    rows = [
        "| step | wall s | peak RSS GB |",
        "|---|---|---|",
        "| `pointcell labels` (every region's maps, level 0) | {:.1f} | {:.2f} |".format(
            *runs["labels"]
        ),
        f"| `pointcell train` ({args.steps} steps, encoding included) "
        "| {:.1f} | {:.2f} |".format(*runs["train"]),
        f"| `pointcell train` again ({args.steps} steps, encodings from the cache) "
        "| {:.1f} | {:.2f} |".format(*runs["again"]),
    ]
    shape = f"{args.regions} regions of {args.region_px}² px"
    text = "\n".join(
        [
            f"## Training from a whole slide ({args.side}² px, {shape})",
            "",
            f"Command: `python benchmarks/slide_training.py --side {args.side} --regions "
            f"{args.regions} --region-px {args.region_px} --steps {args.steps}`; "
            f"{provenance()}.",
            f"Synthetic {args.side}x{args.side} px pyramid at 0.25 µm/px "
            f"({args.side**2 * 3 / 1e9:.1f} GB of RGB at level 0), {shape}, {n_clicks} clicks; "
            "resnet18, batch 8, 256² patches, fp32. Peak RSS is the ru_maxrss of each fresh "
            "process (memory-mapped cache pages it touched included). The slide is never read "
            "whole, and the encodings are memory-mapped from the cache while training.",
            "",
            *rows,
        ]
    )
    print(text)
    write_section("training.md", f"slides-{args.side}-{args.regions}x{args.region_px}", text)


if __name__ == "__main__":
    main()
