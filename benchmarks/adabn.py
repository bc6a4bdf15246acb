"""What ``pointcell predict --adapt-norm`` (AdaBN: batch-norm statistics re-estimated on the
images predicted) does on images unlike the training ones.

Run: ``python benchmarks/adabn.py [--steps 800]`` with the data in ``../shared/data``. Three
cases, each predicted with and without ``--adapt-norm`` (pooled over the images of the case;
without ``--tta``, 8 times cheaper, as the comparison is of one model with itself):

- MoNuSeg, the 14 Kumar test images, with ``pointcell-he`` (which was trained on all 30
  images): the training domain, where adapting should change little;
- CRCHisto's 20 test images with ``pointcell-he``: another organ, scanner and magnification
  (20x) than MoNuSeg's;
- SHIDC patient p2 with the Ki67 model trained on patient p1 (the ``pale`` arm of
  ``benchmarks/ki67_shift.py``; trained here if ``runs/`` lacks it): another patient whose
  negative nuclei are three times paler.

Writes ``benchmarks/results/adabn.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, monuseg_dir, provenance, write_result  # noqa: E402
from _runs import (  # noqa: E402
    CRC_DATA,
    CRC_MPP,
    KI67_MPP,
    RUNS,
    fmt,
    predict_and_evaluate,
    shidc_patient_split,
    train,
    trained_steps,
    zero_based_points,
)
from ki67_shift import (  # noqa: E402
    ARMS,
    DATA,
    TABLE_HEAD,
    clicks_per_class,
    index_table,
    per_image,
    score_row,
)

MONUSEG_MPP = 0.25
ADAPT = ("--adapt-norm",)


def plain_and_adapted(
    name: str, model: Path, images: list[Path], gt: Path, mpp: float
) -> dict[str, tuple[Path, dict]]:
    """Prediction folder and scores of the model as trained and adapted to ``images``."""
    scores = {}
    for label, slug, extra in (("as trained", "plain", ()), ("adapted", "adapted", ADAPT)):
        out = RUNS / f"adabn-{name}-{slug}"
        scores[label] = (out, predict_and_evaluate(model, images, gt, mpp, out, extra, tta=False))
    return scores


def he_rows(case: str, scores: dict[str, tuple[Path, dict]]) -> list[str]:
    keys = ("det_precision", "det_recall", "det_f1", "count_ccc", "aji", "dice")
    return [
        f"| {case} | {label} | " + " | ".join(fmt(agg.get(k)) for k in keys) + " |"
        for label, (_, agg) in scores.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="training steps of the p1 model")
    args = parser.parse_args()
    start = time.time()

    monuseg = monuseg_dir()
    split = json.loads((REPO / "benchmarks" / "monuseg_split.json").read_text())
    kumar_test = [
        monuseg / "images" / f"{stem}.png"
        for stem in split["test_same_organ"] + split["test_different_organ"]
    ]
    he = Path("pointcell-he")
    monuseg_scores = plain_and_adapted("monuseg", he, kumar_test, monuseg / "masks", MONUSEG_MPP)

    published = json.loads((CRC_DATA / "split.json").read_text())
    crc_test = [CRC_DATA / "images" / f"{stem}.png" for stem in published["test"]]
    crc_gt = zero_based_points(CRC_DATA / "points", RUNS / "crchisto-points-0based")
    crc_scores = plain_and_adapted("crchisto", he, crc_test, crc_gt, CRC_MPP)

    name, extra, _ = ARMS["pale"]
    shidc_split = shidc_patient_split(DATA / "images")
    run = train(
        name, DATA / "images", DATA / "points", KI67_MPP, shidc_split, args.steps, extra=extra
    )
    p2 = [DATA / "images" / f"{stem}.jpg" for stem in shidc_split["test"]]
    p2_scores = plain_and_adapted("shidc-p2", run, p2, DATA / "points", KI67_MPP)
    clicks = clicks_per_class(p2)
    p2_indices = {label: per_image(out) for label, (out, _) in p2_scores.items()}
    p2_rows = [
        score_row(label, agg, p2_indices[label], clicks) for label, (_, agg) in p2_scores.items()
    ]

    text = "\n".join(
        [
            "# AdaBN: batch-norm statistics re-estimated on the images predicted",
            "",
            f"{provenance()}. Command: `python benchmarks/adabn.py --steps {args.steps}` "
            f"({(time.time() - start) / 60:.0f} min; finished runs and predictions reused).",
            "",
            "`pointcell predict` (no `--tta`), as trained and with `--adapt-norm` (statistics "
            "pooled over the images of each case). Detection matched within 3 µm, pooled over "
            "images.",
            "",
            "## H&E: `pointcell-he` (trained on all 30 MoNuSeg images)",
            "",
            "| images | model | det P | det R | det F1 | count CCC | AJI | object Dice |",
            "|---|---|---|---|---|---|---|---|",
            *he_rows("MoNuSeg, 14 Kumar test images (trained on)", monuseg_scores),
            *he_rows("CRCHisto, 20 test images (clicks)", crc_scores),
            "",
            f"## Ki67: SHIDC p2 with the model trained on p1 (stain strength arm of "
            f"`ki67_shift.py`, {trained_steps(run)[0]} steps)",
            "",
            *TABLE_HEAD,
            *p2_rows,
            "",
            *index_table(p2_indices),
            "",
        ]
    )
    print(text)
    write_result("adabn.md", text)


if __name__ == "__main__":
    main()
