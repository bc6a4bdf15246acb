"""Why a Ki67 model trained on SHIDC patient p1 fails on patient p2, and what augmentation
does about it.

Run: ``python benchmarks/ki67_shift.py [--steps 800]`` with the data in ``../shared/data``.
Part 1 (no model, a minute) measures how the two patients differ: nucleus size and
hematoxylin density at the clicks, and which share of the nuclei the training-free watershed
finds carries a click. Part 2 trains on p1 (fine-tuned from ``pointcell-he``, as in
``benchmarks/classes.py``) with the default augmentation, a wide zoom range
(``--scale-range 0.7 2.5``) and paler and darker stains (``--stain-scale 0.3 1.2``), predicts
p2 with ``--tta`` and scores detection and the Ki67 index (``--arms`` picks variants). The
``restained`` arm adds MoNuSeg's 30 H&E images as an IHC slide would show them (eosin removed;
hematoxylin kept, as a negative counterstain, or turned brown, as DAB, in turn) with their mask
centroids as untyped clicks: nuclei of seven organs for detection, classes still from p1;
``counterstained`` adds them with hematoxylin only. Part 3
(``--test-gains``) darkens p2's stains at test time instead -- hematoxylin and DAB optical
densities multiplied by fixed gains -- and predicts it with the stain strength arm. Runs are
kept in ``runs/`` and reused. Writes ``benchmarks/results/ki67_shift.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import SHARED, monuseg_dir, provenance, write_result  # noqa: E402
from _runs import (  # noqa: E402
    KI67_MPP,
    RUNS,
    predict_and_evaluate,
    shidc_patient_split,
    train,
    trained_steps,
)
from pointcell.data import hed_densities, hed_jitter, rgb_from_hed_densities  # noqa: E402
from pointcell.floor import hematoxylin, hematoxylin_watershed, nuclear_density  # noqa: E402
from pointcell.io.images import read_image, write_rgb_png  # noqa: E402
from pointcell.io.points import read_points, write_points_csv  # noqa: E402

DATA = SHARED / "shidc_ki67"
COVER_RADIUS_UM = 4.0  # a watershed nucleus "carries a click" when one lies this close
DISK_UM = 1.5  # hematoxylin density is averaged over this radius around a click

# training variants on p1: run name, extra `pointcell train` options, label
PALE = ("--stain-scale", "0.3", "1.2")
ARMS = {
    "control": ("classes-shidc", (), "default augmentation"),
    "zoom": ("classes-shidc-zoom", ("--scale-range", "0.7", "2.5"), "zoom 0.7-2.5"),
    "pale": ("classes-shidc-pale", PALE, "stain strength 0.3-1.2"),
    "restained": (
        "classes-shidc-restained",
        PALE,
        "stain strength 0.3-1.2 + MoNuSeg restained (half brown)",
    ),
    "counterstained": (
        "classes-shidc-counterstained",
        PALE,
        "stain strength 0.3-1.2 + MoNuSeg as hematoxylin only",
    ),
}
# arms adding MoNuSeg restained: DAB share of its images in turn (0: counterstain only)
MONUSEG_DAB = {"restained": (0.0, 0.7), "counterstained": (0.0,)}
# test-time (hematoxylin, DAB) optical density gains on p2, predicted with the "pale" arm
TEST_GAINS = ((2.0, 1.0), (3.0, 1.0), (2.0, 2.0))


def patient(stem: str) -> str:
    return stem.split("_", 1)[0]


def pixel_of(xy: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of click coordinates, clipped into the image."""
    cells = np.rint(xy).astype(int)
    return np.clip(cells[:, 1], 0, shape[0] - 1), np.clip(cells[:, 0], 0, shape[1] - 1)


def half_maximum_diameters(density: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Nucleus diameter (µm) at each click: twice the radius where the density, averaged over
    16 rays, first falls half-way from its peak (within 3 µm of the click) to its lowest value
    within 10 µm -- robust to neighbouring nuclei and to pale, rim-stained ones."""
    radii = np.arange(0.0, 10.0 + 1e-9, 0.25) / KI67_MPP
    angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    rows = xy[:, 1, None, None] + radii[None, :, None] * np.sin(angles)[None, None, :]
    cols = xy[:, 0, None, None] + radii[None, :, None] * np.cos(angles)[None, None, :]
    samples = ndimage.map_coordinates(density, [rows.ravel(), cols.ravel()], order=1)
    profile = samples.reshape(rows.shape).mean(axis=2)
    inner = radii <= 3.0 / KI67_MPP
    peak_at = profile[:, inner].argmax(axis=1)
    half = (profile[:, inner].max(axis=1) + profile.min(axis=1)) / 2
    beyond_peak = np.arange(len(radii))[None, :] >= peak_at[:, None]
    first_below = np.argmax((profile < half[:, None]) & beyond_peak, axis=1)
    return 2 * radii[first_below] * KI67_MPP


def tile_audit(path: Path) -> dict[str, np.ndarray]:
    """Per tile: nucleus diameter at tumour clicks (µm), hematoxylin density at negative
    clicks, and whether each watershed nucleus has a click within 4 µm."""
    image = read_image(path).pixels
    clicks = read_points(DATA / "points" / f"{path.stem}.csv")
    names = np.array([c or "" for c in clicks.classes])
    tumour = clicks.xy[np.isin(names, ["positive", "negative"])]
    smooth = ndimage.gaussian_filter(nuclear_density(image, "ihc"), 0.25 / KI67_MPP)
    diameters = half_maximum_diameters(smooth, tumour)
    density = ndimage.uniform_filter(hematoxylin(image), size=round(2 * DISK_UM / KI67_MPP))
    rows, cols = pixel_of(clicks.xy[names == "negative"], image.shape)
    nuclei = hematoxylin_watershed(image, mpp=KI67_MPP).xy
    covered = np.zeros(len(nuclei), bool)
    if len(clicks.xy) and len(nuclei):
        covered = cKDTree(clicks.xy).query(nuclei)[0] <= COVER_RADIUS_UM / KI67_MPP
    return {"diameter": diameters, "negative_h": density[rows, cols], "covered": covered}


def audit() -> list[str]:
    by_patient: dict[str, list[dict[str, np.ndarray]]] = {}
    for path in sorted((DATA / "images").glob("*.jpg")):
        by_patient.setdefault(patient(path.stem), []).append(tile_audit(path))
    lines = [
        "| patient | tiles | nucleus diameter at tumour clicks (µm, median, half maximum) "
        "| hematoxylin OD at negative "
        "clicks (median) | watershed nuclei with a click within 4 µm |",
        "|---|---|---|---|---|",
    ]
    for name, tiles in by_patient.items():
        diameter = np.concatenate([t["diameter"] for t in tiles])
        negative_h = np.concatenate([t["negative_h"] for t in tiles])
        covered = np.concatenate([t["covered"] for t in tiles])
        lines.append(
            f"| {name} | {len(tiles)} | {np.median(diameter):.1f} | {np.median(negative_h):.3f} "
            f"| {covered.mean():.0%} of {len(covered)} |"
        )
    return lines


def per_image_report(out: Path) -> dict[str, dict]:
    """The per-image rows of the evaluation report in prediction folder ``out``."""
    return json.loads((out / "evaluation.json").read_text())["per_image"]


def per_image(out: Path) -> dict[str, tuple[float, float]]:
    """Ki67 index (true, predicted) per test image from an evaluation report."""
    return {
        image: (row["positive_percent_true"], row["positive_percent_pred"])
        for image, row in per_image_report(out).items()
        if "positive_percent_true" in row
    }


def stain_gained_copies(paths: list[Path], gains: tuple[float, float], folder: Path) -> list[Path]:
    """PNG copies of the images with hematoxylin and DAB densities multiplied by ``gains``."""
    folder.mkdir(parents=True, exist_ok=True)
    alpha = np.array([[gains[0], 1.0, gains[1]]], np.float32)
    copies = []
    for path in paths:
        pixels = hed_jitter(read_image(path).pixels[None], alpha, np.zeros_like(alpha))[0]
        copies.append(folder / f"{path.stem}.png")
        write_rgb_png(copies[-1], pixels)
    return copies


def restained(pixels: np.ndarray, dab_share: float) -> np.ndarray:
    """An H&E image as an IHC slide would show it: eosin removed and the hematoxylin density
    split between hematoxylin and DAB (0: a negative counterstain, 1: all nuclei brown)."""
    hematoxylin = hed_densities(pixels)[..., :1]
    stains = np.concatenate(
        [(1 - dab_share) * hematoxylin, np.zeros_like(hematoxylin), dab_share * hematoxylin],
        axis=-1,
    )
    return rgb_from_hed_densities(stains)


def with_restained_monuseg(split: dict, dab_shares: tuple[float, ...]) -> tuple[Path, Path, dict]:
    """Images and points folders holding SHIDC's tiles (linked) and MoNuSeg's images restained
    (DAB shares taken in turn) with their mask centroids as untyped clicks, and ``split`` with
    those added to the training images."""
    root = RUNS / ("ki67-shift-restained-" + "-".join(f"{share:g}" for share in dab_shares))
    images, points = root / "images", root / "points"
    images.mkdir(parents=True, exist_ok=True)
    points.mkdir(parents=True, exist_ok=True)
    monuseg = monuseg_dir()
    stems = [path.stem for path in sorted((monuseg / "images").glob("*.png"))]
    for index, stem in enumerate(stems):
        if not (images / f"{stem}.png").is_file():
            pixels = read_image(monuseg / "images" / f"{stem}.png").pixels
            share = dab_shares[index % len(dab_shares)]
            write_rgb_png(images / f"{stem}.png", restained(pixels, share))
        if not (points / f"{stem}.csv").is_file():
            write_points_csv(points / f"{stem}.csv", read_points(monuseg / "masks" / f"{stem}.tif"))
    for folder, pattern in ((images, "*.jpg"), (points, "*.csv")):
        for path in sorted((DATA / folder.name).glob(pattern)):
            if not (folder / path.name).exists():
                (folder / path.name).symlink_to(path)
    return images, points, {**split, "train": split["train"] + stems}


def clicks_per_class(images: list[Path]) -> dict[str, int]:
    names = [
        c for path in images for c in read_points(DATA / "points" / f"{path.stem}.csv").classes
    ]
    return {name: names.count(name) for name in ("positive", "negative")}


def score_row(
    label: str, scores: dict, indices: dict[str, tuple[float, float]], clicks: dict[str, int]
) -> str:
    """One table row; a class's recall is the share of its clicks matched by a detection
    (whatever class the detection was given)."""
    matched = dict(zip(scores["classes"], np.sum(scores["class_confusion"], axis=1), strict=True))
    close = sum(abs(pred - true) <= 5 for true, pred in indices.values())
    return (
        f"| {label} | {scores['det_precision']:.3f} | {scores['det_recall']:.3f} "
        f"| {scores['det_f1']:.3f} | {matched['positive'] / clicks['positive']:.3f} "
        f"| {matched['negative'] / clicks['negative']:.3f} "
        f"| {scores['positive_percent_mae']:.1f} | {scores['positive_percent_max_error']:.1f} "
        f"| {close} of {len(indices)} |"
    )


def index_table(indices: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """True and predicted Ki67 index per image, one column per variant."""
    images = sorted(next(iter(indices.values())))
    lines = [
        "| image | true index (%) | " + " | ".join(indices) + " |",
        "|---|---|" + "---|" * len(indices),
    ]
    for image in images:
        true = next(iter(indices.values()))[image][0]
        lines.append(
            f"| {image} | {true:.1f} | "
            + " | ".join(f"{v[image][1]:.1f}" for v in indices.values())
            + " |"
        )
    return lines


TABLE_HEAD = [
    "| variant | det P | det R | det F1 | R positive clicks | R negative clicks "
    "| index MAE (points) | index max error | images within 5 points |",
    "|---|---|---|---|---|---|---|---|---|",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument(
        "--arms", nargs="+", choices=sorted(ARMS), default=list(ARMS), help="training variants"
    )
    parser.add_argument(
        "--test-gains", action="store_true", help="part 3: stains darkened at test time"
    )
    args = parser.parse_args()
    start = time.time()
    audit_lines = audit()
    images, points = DATA / "images", DATA / "points"
    split = shidc_patient_split(images)
    test = [images / f"{s}.jpg" for s in split["test"]]
    clicks = clicks_per_class(test)
    scored: dict[Path, dict] = {}  # prediction folder -> scores, each predicted once

    def score(run: Path, paths: list[Path], out: Path) -> dict:
        if out not in scored:
            scored[out] = predict_and_evaluate(run, paths, points, KI67_MPP, out)
        return scored[out]

    rows, indices = [], {}
    for arm in args.arms:
        name, extra, label = ARMS[arm]
        arm_images, arm_points, arm_split = (
            with_restained_monuseg(split, MONUSEG_DAB[arm])
            if arm in MONUSEG_DAB
            else (images, points, split)
        )
        run = train(name, arm_images, arm_points, KI67_MPP, arm_split, args.steps, extra=extra)
        out = RUNS / f"{name}-pred"
        scores = score(run, test, out)
        label = f"{label}, {trained_steps(run)[0]} steps"
        indices[label] = per_image(out)
        rows.append(score_row(label, scores, indices[label], clicks))
    gain_lines = []
    if args.test_gains:
        name, extra, label = ARMS["pale"]
        run = train(name, images, points, KI67_MPP, split, args.steps, extra=extra)
        gain_rows, gain_indices = [], {}
        for gains in ((1.0, 1.0), *TEST_GAINS):
            if gains == (1.0, 1.0):  # the unchanged tiles: part 2's prediction of this arm
                paths, out = test, RUNS / f"{name}-pred"
            else:
                tag = f"gain-h{gains[0]:g}-dab{gains[1]:g}"
                paths = stain_gained_copies(test, gains, RUNS / f"ki67-shift-{tag}-images")
                out = RUNS / f"{name}-{tag}-pred"
            scores = score(run, paths, out)
            gain_label = f"hematoxylin x{gains[0]:g}, DAB x{gains[1]:g}"
            gain_indices[gain_label] = per_image(out)
            gain_rows.append(score_row(gain_label, scores, gain_indices[gain_label], clicks))
        gain_lines = [
            "## Stains darkened at test time (p2, model: stain strength arm)",
            "",
            "The p2 tiles' hematoxylin and DAB optical densities multiplied by fixed gains "
            "(colour deconvolution, as in training's stain augmentation) before prediction.",
            "",
            *TABLE_HEAD,
            *gain_rows,
            "",
            *index_table(gain_indices),
            "",
        ]
    text = "\n".join(
        [
            "# Ki67 across patients: SHIDC p1 → p2",
            "",
            f"{provenance()}. Command: `python benchmarks/ki67_shift.py --steps {args.steps} "
            f"--arms {' '.join(args.arms)}{' --test-gains' if args.test_gains else ''}` "
            f"({(time.time() - start) / 60:.0f} min; finished runs reused). 0.25 µm/px assumed.",
            "",
            "## The two patients (no model)",
            "",
            *audit_lines,
            "",
            "## Trained on p1, tested on p2",
            "",
            "ResNet18 U-Net fine-tuned from `pointcell-he`, HED jitter 0.05, class head on 2 µm "
            "disks around typed clicks; prediction with `--tta`, cells at nucleus centroids; "
            "detection matched within 3 µm; index = positive / (positive + negative).",
            "",
            *TABLE_HEAD,
            *rows,
            "",
            *index_table(indices),
            "",
            *gain_lines,
        ]
    )
    print(text)
    write_result("ki67_shift.md", text)


if __name__ == "__main__":
    main()
