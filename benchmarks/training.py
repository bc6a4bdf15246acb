"""Training throughput on this machine: patches/s per encoder and precision, loader share.

Run: ``python benchmarks/training.py [--encoders resnet18 resnet34 resnet50] [--steps 6]``.
Uses the bundled sample (the loader cost does not depend on the data set). Writes
``benchmarks/results/training.md``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_name, provenance, write_section  # noqa: E402
from pointcell.data import PatchSampler, channel_stats  # noqa: E402
from pointcell.encodings import EncodingParams  # noqa: E402
from pointcell.io.pairing import pair_images_with_points  # noqa: E402
from pointcell.model import ModelConfig  # noqa: E402
from pointcell.sample import sample_dir  # noqa: E402
from pointcell.targets import prepare_image  # noqa: E402
from pointcell.train import TrainConfig, Trainer  # noqa: E402


def measure(encoder: str, precision: str, steps: int, images, batch: int, patch: int) -> dict:
    mean, std = channel_stats([img.image for img in images])
    config = TrainConfig(
        images="-",
        points="-",
        model=ModelConfig(encoder=encoder),
        steps=steps,
        batch_size=batch,
        patch_size=patch,
        precision=precision,
    )
    trainer = Trainer(config, mean=mean, std=std)
    sampler = PatchSampler(
        images,
        patch_size=patch,
        batch_size=batch,
        mean=mean,
        std=std,
        augment=config.augment,
        seed=0,
    )
    loader, compute = [], []
    for step in range(steps + 2):  # two warm-up steps
        start = time.perf_counter()
        images_batch, targets = sampler.batch(step)
        loaded = time.perf_counter()
        trainer.step(step, images_batch, targets)
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        done = time.perf_counter()
        if step >= 2:
            loader.append(loaded - start)
            compute.append(done - loaded)
    step_time = np.median(np.add(loader, compute))
    return {
        "encoder": encoder,
        "precision": precision,
        "device": trainer.device.type,
        "step_s": step_time,
        "patches_per_s": batch / step_time,
        "loader_share": np.median(loader) / step_time,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--encoders", nargs="+", default=["resnet18", "resnet34", "resnet50"])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--patch", type=int, default=256)
    args = parser.parse_args()
    sample = sample_dir()
    pairs = pair_images_with_points(sample / "images", sample / "points")
    images = [prepare_image(p, working_mpp=0.25, params=EncodingParams()) for p in pairs]
    rows = []
    for encoder in args.encoders:
        for precision in args.precisions:
            row = measure(encoder, precision, args.steps, images, args.batch, args.patch)
            rows.append(row)
            print(row, flush=True)
    device = rows[0]["device"]
    hardware = torch.cuda.get_device_name() if device == "cuda" else cpu_name()
    lines = [
        f"# Training throughput ({device}: {hardware}, {torch.get_num_threads()} threads)",
        "",
        f"Command: `python benchmarks/training.py --steps {args.steps} --batch {args.batch} "
        f"--patch {args.patch}`; {provenance()}. U-Net, batch {args.batch}, "
        f"{args.patch}x{args.patch} patches, channels_last, median over {args.steps} steps "
        "after 2 warm-up steps; loader = drawing and augmenting the batch in the main "
        "process.",
        "",
        "| encoder | precision | s/step | patches/s | loader share of step |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['encoder']} | {r['precision']} | {r['step_s']:.2f} | "
            f"{r['patches_per_s']:.1f} | {r['loader_share']:.1%} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    suffix = "" if device == "cpu" else f"-{device}"
    write_section(f"training{suffix}.md", "throughput", text)


if __name__ == "__main__":
    main()
