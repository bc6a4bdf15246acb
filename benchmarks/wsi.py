"""Whole-slide inference: speed, peak memory, time per stage, and Dask scaling.

Run: ``python benchmarks/wsi.py`` (add ``--sizes 20000 28284`` for the sizes, ``--device``).
Builds synthetic pyramidal slides at 0.25 µm/px from the bundled MoNuSeg crops (an ellipse of
tissue covering about 35% of the slide, glass around it), then predicts each with the shipped
model, every run in a fresh process whose whole process tree's resident memory is sampled.
Reports tissue megapixels per second (level-0 pixels of tissue tiles), peak RSS, the busy share
of the model / reading / post-processing / writing stages, and the speed-up from 1 to 2 local
Dask workers. Writes ``benchmarks/results/wsi.md``. Slides are cached in ``benchmarks/.cache``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, provenance, write_result  # noqa: E402
from pointcell.io.images import read_image  # noqa: E402
from pointcell.io.slides import write_pyramidal_tiff  # noqa: E402
from pointcell.sample import sample_dir  # noqa: E402

CACHE = REPO / "benchmarks" / ".cache"
MPP = 0.25
GLASS = 244


def synthetic_slide(path: Path, side: int) -> Path:
    """A ``side``² slide: the bundled crops, flipped per 256-px block, inside an ellipse."""
    if path.is_file():
        return path
    crops = np.stack([read_image(p).pixels for p in sorted((sample_dir() / "images").glob("*"))])
    block = crops.shape[1]

    def tile_at(level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        scale = 4**level
        rows = (np.arange(y, y + h) * scale)[:, None]
        cols = (np.arange(x, x + w) * scale)[None, :]
        variant = (rows // block * 7 + cols // block * 13) % 8  # which crop, which flip
        r, c = rows % block, cols % block
        r = np.where(variant & 2, block - 1 - r, r)
        c = np.where(variant & 4, block - 1 - c, c)
        pixels = crops[variant % 2, r, c]
        inside = ((rows - side / 2) / (0.36 * side)) ** 2 + ((cols - side / 2) / (0.3 * side)) ** 2
        return np.where((inside <= 1)[..., None], pixels, GLASS).astype(np.uint8)

    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.tif")
    write_pyramidal_tiff(partial, (side, side), tile_at, mpp=MPP, n_levels=4, tile=512)
    partial.rename(path)
    return path


def run_measured(arguments: list[str]) -> tuple[dict, float]:
    """Run this script's ``--one`` mode in a fresh process; return its summary and the peak
    resident memory (GB) of its whole process tree (Dask workers included)."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--one", *arguments], stdout=subprocess.PIPE, text=True
    )
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        process = psutil.Process(child.pid)
        while not stop.is_set():
            try:
                tree = [process, *process.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    output, _ = child.communicate()
    stop.set()
    watcher.join()
    if child.returncode:
        raise SystemExit(f"run {arguments} failed")
    return json.loads(output.strip().splitlines()[-1]), peak / 1e9


def one_run(slide: str, out: str, workers: int, threads: int, device: str) -> None:
    from dataclasses import asdict

    from pointcell.wsi import SlideRun, predict_slides

    summary = predict_slides(
        [Path(slide)],
        out,
        model="pointcell-he",
        workers=workers or None,
        worker_threads=threads or None,
        run=SlideRun(device=device, overwrite=True),
        progress=False,
    )[0]
    print(json.dumps(asdict(summary)))


def describe(summary: dict, rss_gb: float, side: int) -> dict:
    times = summary["times"]
    tissue_mp = summary["n_tissue_tiles"] / summary["n_tiles"] * side * side / 1e6
    wall = summary["wall_s"]
    return {
        "side": side,
        "tissue_tiles": f"{summary['n_tissue_tiles']}/{summary['n_tiles']}",
        "tissue_mp": tissue_mp,
        "cells": summary["n_cells"],
        "wall_s": wall,
        "mp_per_s": tissue_mp / wall,
        "rss_gb": rss_gb,
        "model": times["model_s"] / wall,
        "read": times["read_s"] / wall,
        "post": times["post_s"] / wall,
        "write": times["write_s"] / wall,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[20000, 28284])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--one", nargs=4, metavar=("SLIDE", "OUT", "WORKERS", "THREADS"))
    args = parser.parse_args()
    if args.one:
        one_run(args.one[0], args.one[1], int(args.one[2]), int(args.one[3]), args.device)
        return
    rows = []
    for side in args.sizes:
        slide = synthetic_slide(CACHE / f"synthetic-{side}.tif", side)
        print(f"slide {side}² ready", flush=True)
        summary, rss = run_measured(
            [str(slide), str(CACHE / "out"), "0", "0", "--device", args.device]
        )
        rows.append({"mode": "1 process", **describe(summary, rss, side)})
        print(rows[-1], flush=True)
    side = args.sizes[0]
    slide = CACHE / f"synthetic-{side}.tif"
    for workers, threads in ((1, 1), (2, 1), (1, 2)):
        summary, rss = run_measured(
            [str(slide), str(CACHE / "out"), str(workers), str(threads), "--device", args.device]
        )
        mode = f"Dask, {workers} worker(s) x {threads} thread(s)"
        rows.append({"mode": mode, **describe(summary, rss, side)})
        print(rows[-1], flush=True)
    dask = [r for r in rows if r["mode"].startswith("Dask")]
    speedup = dask[0]["wall_s"] / dask[1]["wall_s"]
    lines = [
        "# Whole-slide inference",
        "",
        f"{provenance()}. Command: `python benchmarks/wsi.py --sizes "
        f"{' '.join(map(str, args.sizes))} --device {args.device}`.",
        "",
        "Synthetic pyramidal slides at 0.25 µm/px built from the bundled MoNuSeg crops (an "
        "ellipse of tissue, ~35% of the area), the shipped `pointcell-he` model, default "
        "slide settings (core tiles of 1024 px at 0.5 µm/px, 64 px context). Tissue MP/s counts "
        "level-0 pixels of the tissue tiles. Stage shares are busy time / wall time; reading and "
        "post-processing run in their own threads, overlapped with the model, so shares may sum "
        "above 100%. Peak RSS is the whole process tree (Dask workers included), sampled every "
        "0.2 s.",
        "",
        "| mode | slide | tissue tiles | tissue MP | cells | wall s | tissue MP/s | peak RSS GB "
        "| model | read | post | write |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['side']}² | {r['tissue_tiles']} | {r['tissue_mp']:.0f} | "
            f"{r['cells']} | {r['wall_s']:.1f} | {r['mp_per_s']:.2f} | {r['rss_gb']:.2f} | "
            f"{r['model']:.0%} | {r['read']:.0%} | {r['post']:.0%} | {r['write']:.0%} |"
        )
    lines += [
        "",
        f"Dask speed-up from 1 to 2 local workers (one torch thread each): {speedup:.2f}x. "
        "One worker with two torch threads is shown for comparison: on this 2-core machine "
        "the same cores can be used by intra-op threads instead of a second worker.",
        "",
    ]
    write_result("wsi.md", "\n".join(lines))


if __name__ == "__main__":
    main()
