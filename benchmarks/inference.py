"""Speed of the whole ``predict`` path on the 30 MoNuSeg images at 0.25 µm/px.

Run: ``python benchmarks/inference.py --model runs/monuseg-paper-cpu``. Splits the time into
model (resampling + network) and post-processing, and compares the network's achieved FLOP/s
with this machine's measured matmul FLOP/s. Writes ``benchmarks/results/inference.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import monuseg_dir, provenance, write_result  # noqa: E402
from pointcell.inference import load_predictor, predict_image  # noqa: E402
from pointcell.io import read_image  # noqa: E402
from pointcell.postprocess import postprocess  # noqa: E402
from pointcell.targets import resample  # noqa: E402

MPP = 0.25


def matmul_flops(dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    """Measured FLOP/s of a square matrix product (the machine's practical peak)."""
    a = torch.randn(size, size, dtype=dtype)
    b = torch.randn(size, size, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def network_flops(predictor, side: int = 512) -> float:
    """FLOPs of one forward pass per working-resolution pixel."""
    x = torch.zeros(1, 3, side, side)
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        predictor.model(x.to(predictor.device))
    return counter.get_total_flops() / side**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="runs/monuseg-paper-cpu")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    predictor = load_predictor(args.model, device=args.device)
    root = monuseg_dir()
    flops_per_pixel = network_flops(predictor)
    model_s, post_s, megapixels, working_pixels = [], [], 0.0, 0
    for path in sorted((root / "images").glob("*.png")):
        image = read_image(path).pixels
        start = time.perf_counter()
        probability = predict_image(predictor, image, mpp=MPP)
        middle = time.perf_counter()
        postprocess(probability, mpp=MPP, params=predictor.postprocess)
        end = time.perf_counter()
        model_s.append(middle - start)
        post_s.append(end - middle)
        megapixels += image.shape[0] * image.shape[1] / 1e6
        working = resample(image, np.empty((0, 2)), MPP / predictor.working_mpp)[0]
        working_pixels += working.shape[0] * working.shape[1]
        print(
            f"{path.stem}: model {model_s[-1]:.2f} s, post-processing {post_s[-1]:.2f} s",
            flush=True,
        )
    total = sum(model_s) + sum(post_s)
    achieved = flops_per_pixel * working_pixels / sum(model_s)
    dtype = predictor.dtype or torch.float32
    peak = matmul_flops(dtype if predictor.device.type == "cpu" else torch.float32)
    lines = [
        "# Inference speed (predict path, 30 MoNuSeg images, 1000x1000 at 0.25 µm/px)",
        "",
        f"Command: `python benchmarks/inference.py --model {args.model}`; {provenance()}; "
        f"device {predictor.device.type}, autocast {predictor.dtype}, model {predictor.source}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| throughput, whole predict path | {megapixels / total:.2f} megapixels/s |",
        f"| model time (resampling + network + resampling back) | {sum(model_s):.1f} s "
        f"({sum(model_s) / total:.0%} of total) |",
        f"| post-processing time (peaks, watershed) | {sum(post_s):.1f} s "
        f"({sum(post_s) / total:.0%}) |",
        f"| network cost | {flops_per_pixel / 1e3:.0f} kFLOP per working pixel "
        f"(working size {predictor.working_mpp} µm/px) |",
        f"| achieved network FLOP/s (incl. resampling) | {achieved / 1e9:.0f} GFLOP/s |",
        f"| measured matmul peak ({dtype}) | {peak / 1e9:.0f} GFLOP/s |",
        f"| share of the peak | {achieved / peak:.0%} |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_result("inference.md", text)


if __name__ == "__main__":
    main()
