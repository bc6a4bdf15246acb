"""Fine-tuning the shipped model vs training from scratch, on a small subset of new data.

Run: ``python benchmarks/finetune.py [--images 10 --steps 300]``. Data: CRCHistoPhenotypes
(H&E colorectal, 20x, real clicks, never seen by ``pointcell-he``), its first N training
images; both runs get the same steps, seed and settings, one starting from ``pointcell-he``
(``--init-from``), one from random weights; scored by detection on the 20 test images of the
published split (3 µm). Writes ``benchmarks/results/finetune.md``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, provenance, write_result  # noqa: E402
from _runs import CRC_MPP, RUNS, cli, predict_and_evaluate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    data = SHARED / "crchisto"
    published = json.loads((data / "split.json").read_text())
    split = {
        "train": published["train"][: args.images],
        "val": published["validation"][:2],
        "test": published["test"],
    }
    split_file = RUNS / "finetune-split.json"
    split_file.parent.mkdir(parents=True, exist_ok=True)
    split_file.write_text(json.dumps(split))
    test = [data / "images" / f"{stem}.png" for stem in split["test"]]
    rows = []
    starts = {
        "scratch": ("from scratch", []),
        "pointcell-he": ("fine-tuned from pointcell-he", ["--init-from", "pointcell-he"]),
    }
    for key, (name, extra) in starts.items():
        run = RUNS / f"finetune-{key}"
        shutil.rmtree(run, ignore_errors=True)
        start = time.perf_counter()
        cli(
            "train",
            "--images", str(data / "images"),
            "--points", str(data / "points"),
            "--mpp", str(CRC_MPP),
            "--clip",  # real clicks: a few sit a fraction of a pixel past the image edge
            "--split", str(split_file),
            "--classes", "none",
            "--steps", str(args.steps),
            "--val-every", str(args.steps),
            "--out", str(run),
            *extra,
        )  # fmt: skip
        minutes = (time.perf_counter() - start) / 60
        scores = predict_and_evaluate(run, test, data / "points", CRC_MPP, run / "pred")
        rows.append((name, minutes, scores))
    lines = [
        "# Fine-tuning the shipped model on a small subset",
        "",
        f"{provenance()}. Command: `python benchmarks/finetune.py --images {args.images} "
        f"--steps {args.steps}`.",
        "",
        f"CRCHistoPhenotypes (H&E colorectal, {CRC_MPP} µm/px, real clicks; data never seen by "
        f"`pointcell-he`, which was trained on MoNuSeg at 40x): {args.images} training images, "
        f"{args.steps} steps of the CPU preset (ResNet18, Ranger, batch 8), detection only; "
        "scored on the 20 test images of the published split (Hungarian matching within 3 µm).",
        "",
        "| start | train min | det P | det R | det F1 | count CCC |",
        "|---|---|---|---|---|---|",
    ]
    for name, minutes, s in rows:
        lines.append(
            f"| {name} | {minutes:.1f} | {s['det_precision']:.3f} | {s['det_recall']:.3f} | "
            f"{s['det_f1']:.3f} | {s.get('count_ccc', float('nan')):.3f} |"
        )
    write_result("finetune.md", "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
