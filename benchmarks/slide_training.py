"""Training from clicks on a whole slide: peak memory does not grow with the slide.

Run: ``python benchmarks/slide_training.py [--side 20000] [--regions 8] [--steps 10]``.
Uses the synthetic pyramidal slide of ``benchmarks/wsi.py`` (the bundled MoNuSeg crops tiled
inside an ellipse of tissue, 0.25 µm/px, cached in ``benchmarks/.cache``), clicks every nucleus
of the crops' points inside ``--regions`` square regions of 256 µm (QuPath annotation outlines
in a GeoJSON file), then in fresh processes runs ``pointcell labels`` and ``pointcell train``
(resnet18, batch 8, 256² patches, fp32) on the slide and records each one's peak resident
memory (``ru_maxrss``) and wall time. Writes ``benchmarks/results/training-slides.md``.
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
from _common import provenance, write_result  # noqa: E402
from pointcell.io.points import read_points  # noqa: E402
from pointcell.sample import sample_dir  # noqa: E402
from wsi import CACHE, synthetic_slide  # noqa: E402

REGION_PX = 1024  # 256 µm at 0.25 µm/px
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


def write_region_clicks(path: Path, side: int, n_regions: int) -> int:
    """Square annotation regions on a ring inside the tissue, with every click inside them."""
    features, n_clicks = [], 0
    for k in range(n_regions):
        angle = 2 * np.pi * k / n_regions
        x0 = int(side / 2 + 0.18 * side * np.cos(angle)) // BLOCK * BLOCK
        y0 = int(side / 2 + 0.22 * side * np.sin(angle)) // BLOCK * BLOCK
        box = [[x0 - 0.5, y0 - 0.5], [x0 + REGION_PX - 0.5, y0 - 0.5]]
        box += [[x0 + REGION_PX - 0.5, y0 + REGION_PX - 0.5], [x0 - 0.5, y0 + REGION_PX - 0.5]]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": [box + box[:1]]},
                "properties": {"objectType": "annotation"},
            }
        )
        for r in range(y0 // BLOCK, (y0 + REGION_PX) // BLOCK):
            for c in range(x0 // BLOCK, (x0 + REGION_PX) // BLOCK):
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
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    slide = synthetic_slide(CACHE / f"synthetic-{args.side}.tif", args.side)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "slides").mkdir()
        (work / "slides" / slide.name).symlink_to(slide)
        n_clicks = write_region_clicks(
            work / "slides" / f"{slide.stem}.geojson", args.side, args.regions
        )
        common = ["--images", str(work / "slides"), "--points", str(work / "slides")]
        pointcell = [sys.executable, "-m", "pointcell"]
        labels = measured([*pointcell, "labels", *common, "--out", str(work / "labels")])
        train = measured(
            [
                *pointcell,
                "train",
                *common,
                "--out",
                str(work / "run"),
                "--steps",
                str(args.steps),
                "--encoder",
                "resnet18",
                "--precision",
                "fp32",
                "--cache-dir",
                str(work / "cache"),
            ]
        )
    rows = [
        "| step | wall s | peak RSS GB |",
        "|---|---|---|",
        "| `pointcell labels` (every region's maps, level 0) | {:.1f} | {:.2f} |".format(*labels),
        f"| `pointcell train` ({args.steps} steps, encoding included) "
        "| {:.1f} | {:.2f} |".format(*train),
    ]
    text = "\n".join(
        [
            f"# Training from a whole slide ({args.side}² px)",
            "",
            f"Command: `python benchmarks/slide_training.py --side {args.side} --regions "
            f"{args.regions} --steps {args.steps}`; {provenance()}.",
            f"Synthetic {args.side}x{args.side} px pyramid at 0.25 µm/px "
            f"({args.side**2 * 3 / 1e9:.1f} GB of RGB at level 0), {args.regions} regions of "
            f"{REGION_PX}² px, {n_clicks} clicks; resnet18, batch 8, 256² patches, fp32. Peak "
            "RSS is the ru_maxrss of each fresh process. The slide is never read whole: "
            "memory follows the clicked area, not the slide.",
            "",
            *rows,
        ]
    )
    print(text)
    write_result("training-slides.md", text + "\n")


if __name__ == "__main__":
    main()
