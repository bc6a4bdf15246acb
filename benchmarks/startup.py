"""Start-up and ``pointcell labels`` wall time, end to end, as a user runs them.

Times ``pointcell --help`` (median of 5 runs), the modules ``import pointcell.cli`` loads, and
``pointcell labels`` on the first N MoNuSeg 1000x1000 images with their mask centroids as
clicks (end to end, start-up included, divided by N). Run it once per code version under
comparison, naming the row (``--label before`` with ``PYTHONPATH=<old checkout>/src``;
``--workers`` is passed to ``pointcell labels``); ``benchmarks/results/startup.md`` keeps one
row per label.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import RESULTS, monuseg_dir, provenance, write_result

HEAVY = ("torch", "sklearn", "dask", "distributed", "numpy", "scipy")


def wall(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pointcell", *args], check=True, capture_output=True)
    return time.perf_counter() - start


def heavy_imports() -> list[str]:
    code = f"import sys, pointcell.cli; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.replace("'", '"'))


def labels_per_image(n_images: int, workers: list[str]) -> float:
    """Seconds per image of one ``pointcell labels`` run over ``n_images`` images."""
    source = monuseg_dir()
    stems = sorted(p.stem for p in (source / "images").glob("*.png"))[:n_images]
    with tempfile.TemporaryDirectory() as work:
        images, points = Path(work, "images"), Path(work, "points")
        images.mkdir()
        points.mkdir()
        for stem in stems:
            shutil.copy(source / "images" / f"{stem}.png", images)
            shutil.copy(source / "masks" / f"{stem}.tif", points)
        args = ["labels", "--images", str(images), "--points", str(points), *workers]
        return wall([*args, "--out", str(Path(work, "out")), "--mpp", "0.25"]) / len(stems)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", default="current", help="name of this row")
    parser.add_argument("--images", type=int, default=10, help="MoNuSeg images to encode")
    parser.add_argument("--workers", help="pointcell labels --workers (default: its own)")
    args = parser.parse_args()
    help_s = statistics.median(wall(["--help"]) for _ in range(5))
    row = {
        "help_s": round(help_s, 3),
        "imports": heavy_imports(),
        "labels_s_per_image": round(
            labels_per_image(args.images, ["--workers", args.workers] if args.workers else []), 3
        ),
        "n_images": args.images,
        "pythonpath": os.environ.get("PYTHONPATH", ""),
        "provenance": provenance(),
    }
    print(json.dumps(row))
    store = RESULTS / "startup.json"
    rows = json.loads(store.read_text()) if store.is_file() else {}
    rows[args.label] = row
    store.write_text(json.dumps(rows, indent=1) + "\n", encoding="utf-8")
    lines = [
        "# Start-up and `pointcell labels` time",
        "",
        "Written by `benchmarks/startup.py`. `--help`: median wall time of 5 runs. Labels: one "
        "`pointcell labels` run over N MoNuSeg 1000x1000 images (clicks: mask centroids), "
        "end to end with start-up, divided by N.",
        "",
        "| version | `pointcell --help` (s) | heavy modules `import pointcell.cli` loads "
        "| `labels` s per image (N) | measured on |",
        "|---|---|---|---|---|",
    ]
    for label, r in rows.items():
        lines.append(
            f"| {label} | {r['help_s']:.2f} | {', '.join(r['imports']) or 'none'} "
            f"| {r['labels_s_per_image']:.2f} ({r['n_images']}) | {r['provenance']} |"
        )
    write_result("startup.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
