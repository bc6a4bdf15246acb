"""What stain (HED) jitter does across stains: H&E-trained models scored on H&E and on IHC.

Run: ``python benchmarks/stain.py [--steps 600] [--jitters 0,0.05,0.15]`` with the data in
``../shared/data``. Every arm fine-tunes the shipped ``pointcell-he`` on the points of all 30
MoNuSeg images (H&E, 40x) for the same steps with one strength of HED jitter (0 is the
control: the same extra training without jitter). Every arm, the untouched ``pointcell-he``
and the training-free floor then detect cells, zero-shot, in the CRCHisto test split (H&E from
another lab and scanner, 20x) and in all 26 SHIDC-B-Ki-67 tiles (Ki67 IHC: hematoxylin and
DAB). Detection is scored against the clicks within 3 µm. Runs are kept in ``runs/`` and
resumed when interrupted. Writes ``benchmarks/results/stain.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, monuseg_dir, provenance, write_result  # noqa: E402
from _runs import (  # noqa: E402
    CRC_MPP,
    KI67_MPP,
    REUSED,
    RUNS,
    floor,
    predict_and_evaluate,
    train,
    trained_steps,
)

MONUSEG_MPP = 0.25
SPLIT = Path(__file__).resolve().parent / "monuseg_all30_split.json"


def test_sets() -> dict[str, tuple[list[Path], Path, float, list[str]]]:
    """name -> (images, clicks folder, pixel size, floor options)."""
    crc = SHARED / "crchisto"
    crc_test = json.loads((crc / "split.json").read_text())["test"]
    ki67 = SHARED / "shidc_ki67"
    return {
        "CRCHisto test (H&E, 20x)": (
            [crc / "images" / f"{stem}.png" for stem in crc_test],
            crc / "points",
            CRC_MPP,
            [],
        ),
        "SHIDC, all tiles (Ki67 IHC)": (
            sorted((ki67 / "images").glob("*.jpg")),
            ki67 / "points",
            KI67_MPP,
            ["--stain", "ihc"],
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--jitters", default="0,0.05,0.15", help="comma-separated HED jitters")
    args = parser.parse_args()
    jitters = [float(j) for j in args.jitters.split(",")]
    start = time.perf_counter()
    root = monuseg_dir()
    split = {k: v for k, v in json.loads(SPLIT.read_text()).items() if not k.startswith("_")}
    arms = {"pointcell-he (no extra training)": "pointcell-he"}
    for jitter in jitters:
        name = f"stain-monuseg-j{jitter:g}"
        run = train(name, root / "images", root / "masks", MONUSEG_MPP, split, args.steps, jitter)
        arms[f"+{trained_steps(run)[0]} steps, HED jitter {jitter:g}"] = str(run)
    rows: dict[str, dict[str, dict]] = {}
    for set_name, (images, clicks, mpp, floor_options) in test_sets().items():
        slug = "crchisto" if set_name.startswith("CRC") else "shidc"
        scores = {"floor (stain watershed)": floor(
            images, clicks, mpp, RUNS / f"stain-floor-{slug}", floor_options
        )}  # fmt: skip
        for label, model in arms.items():
            out = RUNS / f"stain-{slug}-{Path(model).name}-pred"
            scores[label] = predict_and_evaluate(Path(model), images, clicks, mpp, out)
        rows[set_name] = scores
    minutes = (time.perf_counter() - start) / 60
    lines = [
        "# Stain jitter across stains",
        "",
        f"{provenance()}. Command: `python benchmarks/stain.py --steps {args.steps} "
        f"--jitters {args.jitters}` ({minutes:.0f} min, 2 CPU cores"
        + (f"; finished training runs reused: {', '.join(REUSED)}" if REUSED else "")
        + "). Every arm fine-tunes `pointcell-he` on the points of all 30 MoNuSeg images "
        "(H&E, 40x; CPU preset, batch 8, same seed) with the HED jitter given; jitter 0 is the "
        "control. Zero-shot detection (`--tta`, cells at instance centroids), Hungarian "
        "matching within 3 µm against the clicks, pooled over the images. SHIDC clicks skip "
        "stromal nuclei, so precision there is a lower bound; recall is the telling figure.",
        "",
    ]
    for set_name, scores in rows.items():
        lines += [
            f"## {set_name}",
            "",
            "| model | det P | det R | det F1 | count CCC |",
            "|---|---|---|---|---|",
        ]
        for label, agg in scores.items():
            figures = (agg.get(k) for k in ("det_precision", "det_recall", "det_f1", "count_ccc"))
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in figures) + " |")
        lines.append("")
    write_result("stain.md", "\n".join(lines))


if __name__ == "__main__":
    main()
