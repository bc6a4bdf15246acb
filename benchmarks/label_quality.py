"""How much of each true nucleus the pseudo-labels cover, on the 30 MoNuSeg images.

The cluster label is the segmentation target, so it caps what a model trained on it can
segment. Compared: local clustering (paper), global clustering (Qu et al.), and the fused
labels (local clustering joined by the training-free floor's nuclei that hold exactly one
click), at the image's own pixel size and at the working pixel size where ``pointcell train``
encodes. Precision / recall / Dice: nucleus pixels of the label against the true masks, pooled
over the images; AJI: the label's nuclei (connected parts, split by the Voronoi lines) as
instances, mean over images; ignored: the share of pixels no cluster loss sees.

Run: ``python benchmarks/label_quality.py [--self-labels PREDICTIONS ...]``. With folders of a
model's instance masks (``pointcell predict`` output, ``<stem>.tif`` for the 30 images), adds
the self-trained labels: local clustering joined by the model's nuclei around one click (one
round of self-training). Writes ``benchmarks/results/label_quality.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import monuseg_dir, provenance, write_result  # noqa: E402
from pointcell.encodings import (  # noqa: E402
    IGNORE,
    NUCLEUS,
    EncodingParams,
    cluster_label,
    nearest_points,
    voronoi_edges,
)
from pointcell.io import read_image, read_points  # noqa: E402
from pointcell.io.images import read_label_image  # noqa: E402
from pointcell.metrics import aggregated_jaccard  # noqa: E402
from pointcell.targets import resample, resample_labels  # noqa: E402

MPP = 0.25
WORKING_MPP = 0.5
VARIANTS = {
    "local clustering (paper)": EncodingParams(),
    "global clustering (Qu et al.)": EncodingParams(clustering="global"),
    "fused: local + floor nuclei around one click (hematoxylin)": EncodingParams(fuse_floor="he"),
    "fused: local + floor nuclei around one click (hematoxylin + DAB)": EncodingParams(
        fuse_floor="ihc"
    ),
}


def scores(label: np.ndarray, truth: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """(true positives, label pixels, true pixels, AJI, ignored share) of one image."""
    nucleus, true = label == NUCLEUS, truth > 0
    instances, _ = ndimage.label(nucleus & ~edges)
    return np.array(
        [
            (nucleus & true).sum(),
            nucleus.sum(),
            true.sum(),
            aggregated_jaccard(truth, instances),
            (label == IGNORE).mean(),
        ],
        dtype=float,
    )


def at_pixel_size(image, points, truth, mpp):  # noqa: ANN001, ANN201
    if mpp == MPP:
        return image, points, truth
    small, small_points = resample(image, points, MPP / mpp)
    shape = small.shape[:2]
    return small, small_points, resample_labels(truth, shape)


SELF_TRAINED = "self-trained: local + the model's nuclei around one click"


def model_nuclei(folders: list[Path], stem: str) -> np.ndarray | None:
    """The model's instance mask of ``stem`` from the first folder that has one."""
    for folder in folders:
        if (folder / f"{stem}.tif").is_file():
            return read_label_image(folder / f"{stem}.tif")
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--self-labels", type=Path, nargs="*", default=[])
    args = parser.parse_args()
    root = monuseg_dir()
    stems = sorted(p.stem for p in (root / "images").glob("*.png"))
    names = [*VARIANTS, *([SELF_TRAINED] if args.self_labels else [])]
    totals = {(name, mpp): [] for mpp in (MPP, WORKING_MPP) for name in names}
    for stem in stems:
        full = read_image(root / "images" / f"{stem}.png").pixels
        full_points = read_points(root / "masks" / f"{stem}.tif").xy
        full_truth = read_label_image(root / "masks" / f"{stem}.tif")
        full_model = model_nuclei(args.self_labels, stem) if args.self_labels else None
        if args.self_labels and full_model is None:
            raise SystemExit(f"no prediction of {stem} in {args.self_labels}")
        for mpp in (MPP, WORKING_MPP):
            image, points, truth = at_pixel_size(full, full_points, full_truth, mpp)
            near = nearest_points(points, image.shape[:2])
            edges = voronoi_edges(points, near)
            for name, params in VARIANTS.items():
                label = cluster_label(image, points, mpp=mpp, params=params, near=near, edges=edges)
                totals[(name, mpp)].append(scores(label, truth, edges))
            if full_model is not None:
                nuclei = at_pixel_size(full, full_points, full_model, mpp)[2]
                fused = cluster_label(  # as pointcell train --self-labels encodes
                    image, points, mpp=mpp, near=near, edges=edges, nuclei=nuclei
                )
                totals[(SELF_TRAINED, mpp)].append(scores(fused, truth, edges))
        print(stem, flush=True)
    lines = [
        "# Pseudo-label quality against the MoNuSeg masks (30 images)",
        "",
        f"Command: `python {' '.join(sys.argv)}`; {provenance()}.",
        "",
        __doc__.split("\n\n")[1].replace("\n", " "),
        "",
        "| labels | µm/px | precision | recall | Dice | AJI | ignored |",
        "|---|---|---|---|---|---|---|",
    ]
    for (name, mpp), rows in totals.items():
        table = np.array(rows)
        tp, predicted, true = table[:, :3].sum(0)
        lines.append(
            f"| {name} | {mpp} | {tp / predicted:.3f} | {tp / true:.3f} | "
            f"{2 * tp / (predicted + true):.3f} | {table[:, 3].mean():.3f} | "
            f"{table[:, 4].mean():.3f} |"
        )
    text = "\n".join(lines) + "\n"
    print(text)
    write_result("label_quality.md", text)


if __name__ == "__main__":
    main()
