"""Post-processing thresholds tuned on clicked images, as StarDist tunes its probability and
overlap thresholds on validation images after training.

The paper's argmax mask (nucleus probability > 0.5) is right when the network's probability
is calibrated; a network taught by cluster pseudo-labels is not, and the clicks a lab makes
set what counts as a cell. On CRCHisto the nucleus probability at the clicks the fine-tuned
model misses has a median of 0.26: they are nuclei it saw, but faintly. So the detection
threshold (``min_probability``) is chosen to maximise detection F1 against held-out clicks. The
nucleus mask threshold (``foreground``) follows it down, never up: a peak must lie inside the
mask to be found, but a stricter threshold that drops doubtful cells should not shrink the
outlines of the cells it keeps (tying the two cost 0.013 AJI on MoNuSeg). For a model with a
detection head,
which places cells at the proximity peaks, the peak threshold (``min_proximity``) is. Each
threshold is tried with every minimum distance between detections of a grid (``min_distance_um``:
how close two clicked cells of this stain and magnification may lie). The network runs once per
image; each candidate costs only its post-processing.

Outlines are tuned apart, on images with true outlines (instance masks): the nucleus-mask
threshold (at most the detection threshold, so every peak still lies in the mask) and how far the
outlines grow into the stained nucleus (``refine_outlines_um``), by mean AJI. On the 16 Kumar
training and validation images (masks no model was trained on) the default model's 0.5 contour
lay inside the nuclei: a 0.4 mask, grown 1 µm, raised AJI from 0.476 to 0.482 and pixel F1
from 0.738 to 0.757.

A handful of tuning images cannot tell settings apart whose scores differ by less than their
noise, and the argmax of a flat surface is chance: on six validation images a second
self-training round chose probability 0.6 over its own 0.5 for an F1 gain that 90 images showed
to be 0.002, and lost 0.009 detection F1 on held-out images. So tuning follows the one-standard-
error rule of cross-validation (Breiman et al. 1984; glmnet's ``lambda.1se``): of the settings
whose score lies within one standard error of the best's (the error of their difference,
bootstrapped over images), the one nearest the model's own is chosen. ``pick="best"`` takes the
plain argmax.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from tqdm.auto import tqdm

from pointcell.errors import PointcellInputError
from pointcell.evaluate import GroundTruth, read_ground_truth
from pointcell.inference import Predictor, cells_from_maps, predict_image_maps
from pointcell.io.checkpoints import load_checkpoint
from pointcell.io.images import read_image, resolve_mpp
from pointcell.io.pairing import pair_images_with_points
from pointcell.metrics import (
    DetectionScores,
    SegmentationScores,
    detection_scores,
    segmentation_scores,
)
from pointcell.postprocess import PostprocessParams, refine_outlines, stained_pixels
from pointcell.pretrained import export_model, resolve_checkpoint

THRESHOLD_GRID = (0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)
DISTANCE_GRID = (2.0, 2.5, 3.0, 3.5, 4.0)  # µm between detections; the paper fixes 2.5
PROXIMITY_GRID = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5)
FOREGROUND_GRID = (0.5, 0.45, 0.4, 0.35, 0.3, 0.25)  # nucleus-mask thresholds (outlines)
GROWTH_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)  # µm the outlines grow into the stain (refinement)
RESAMPLES = 1000  # bootstrap resamples of the images behind the one-standard-error rule

Pick = Literal["one-se", "best"]


@dataclass(frozen=True)
class ClickedMaps:
    """The network's maps of one image (see :func:`pointcell.inference.predict_maps`), its
    clicks (N, 2) as (x, y) and its pixel size."""

    stem: str
    maps: np.ndarray
    clicks_xy: np.ndarray
    mpp: float


@dataclass(frozen=True)
class Trial:
    """One candidate setting, its pooled detection scores and whether its F1 lies within one
    standard error of the best's (see :func:`near_best`)."""

    params: PostprocessParams
    scores: DetectionScores
    near_best: bool = True


def near_best(
    statistic: Callable[[np.ndarray], np.ndarray],
    n_images: int,
    *,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> np.ndarray:
    """Which candidates score within one standard error of the best: ``statistic`` maps image
    index sets (R, n) to the candidates' scores (C, R); the error is that of each candidate's
    gap to the best, over bootstrap resamples of the images (paired: the same resamples for
    all). One image, or no resamples, has no spread: only ties with the best are near it."""
    full = statistic(np.arange(n_images)[None])[:, 0]
    best = int(np.argmax(full))
    if n_images < 2 or resamples < 1:
        return full >= full[best]
    resampled = np.random.default_rng(seed).integers(0, n_images, (resamples, n_images))
    boot = statistic(resampled)
    error = (boot[best] - boot).std(axis=1)
    return full[best] - full <= error


def chosen_first(
    trials: Sequence[Any],
    *,
    score: Callable[[Any], float],
    closeness: Callable[[Any], tuple[float, float]],
) -> list[Any]:
    """``trials`` (each with ``near_best``) in the order tuning ranks them: those near the best
    by ``closeness`` to the model's own setting, then by ``score``; the rest by ``score``."""

    def rank(trial: Any) -> tuple[bool, float, float, float]:
        if trial.near_best:
            return (False, *closeness(trial), -score(trial))
        return (True, -score(trial), *closeness(trial))

    return sorted(trials, key=rank)


def pooled_f1(counts: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """The :func:`near_best` statistic of detection: the F1 of the true positive, false positive
    and false negative counts (C, n, 3) of each candidate, pooled over the chosen images."""

    def statistic(chosen: np.ndarray) -> np.ndarray:
        tp, fp, fn = np.moveaxis(counts[:, chosen].sum(axis=2), -1, 0)
        return np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros(tp.shape), where=tp > 0)

    return statistic


def candidate_params(
    base: PostprocessParams,
    *,
    detection_head: bool,
    distances: Sequence[float] = DISTANCE_GRID,
) -> list[PostprocessParams]:
    """The settings tried, ``base`` first: the proximity threshold for a detection head, else
    the detection threshold, with the nucleus-mask threshold lowered to it where it is lower
    than ``base``'s; each with every minimum distance between detections in ``distances`` (the
    model's own is always tried)."""
    spacings = [base.min_distance_um, *(d for d in distances if d != base.min_distance_um)]
    if detection_head:
        grid = [base.min_proximity, *(t for t in PROXIMITY_GRID if t != base.min_proximity)]
        tried = [replace(base, min_proximity=t, min_distance_um=d) for t in grid for d in spacings]
    else:
        grid = [base.min_probability, *(t for t in THRESHOLD_GRID if t != base.min_probability)]
        tried = [
            replace(base, foreground=min(base.foreground, t), min_probability=t, min_distance_um=d)
            for t in grid
            for d in spacings
        ]
    return [base, *(p for p in tried if p != base)]


def score_params(
    predictor: Predictor,
    items: Sequence[ClickedMaps],
    params: PostprocessParams,
    *,
    radius_um: float,
) -> DetectionScores:
    """Detection scores pooled over the images, detections matched to clicks within
    ``radius_um``."""
    tp, fp, fn = image_counts(predictor, items, params, radius_um=radius_um).sum(axis=0)
    return DetectionScores(int(tp), int(fp), int(fn))


def image_counts(
    predictor: Predictor,
    items: Sequence[ClickedMaps],
    params: PostprocessParams,
    *,
    radius_um: float,
) -> np.ndarray:
    """True positives, false positives and false negatives (n, 3) of each image."""
    counts = []
    for item in items:
        cells = cells_from_maps(predictor, item.maps, mpp=item.mpp, params=params)
        found = detection_scores(item.clicks_xy, cells.xy, radius=radius_um / item.mpp)
        counts.append((found.tp, found.fp, found.fn))
    return np.array(counts, np.int64).reshape(len(items), 3)


def tune_postprocess(
    predictor: Predictor,
    items: Sequence[ClickedMaps],
    *,
    radius_um: float = 3.0,
    base: PostprocessParams | None = None,
    distances: Sequence[float] = DISTANCE_GRID,
    pick: Pick = "one-se",
) -> list[Trial]:
    """Every candidate of :func:`candidate_params` scored on ``items``, the chosen first: of
    those within one standard error of the best detection F1 (``pick="best"``: of those tied
    with it), the one nearest the current setting (threshold, then distance); the rest follow
    by F1."""
    if not items:
        raise PointcellInputError("no clicked images to tune on")
    base = base or predictor.postprocess
    knob = tuned_setting(predictor)
    candidates = candidate_params(
        base, detection_head=predictor.detection_head, distances=distances
    )
    counts = np.stack([image_counts(predictor, items, p, radius_um=radius_um) for p in candidates])
    statistic = pooled_f1(counts)
    near = near_best(statistic, len(items), resamples=_resamples(pick))
    trials = [
        Trial(p, DetectionScores(*map(int, counts[k].sum(axis=0))), bool(near[k]))
        for k, p in enumerate(candidates)
    ]

    def closeness(trial: Trial) -> tuple[float, float]:
        return (
            abs(getattr(trial.params, knob) - getattr(base, knob)),
            abs(trial.params.min_distance_um - base.min_distance_um),
        )

    return chosen_first(trials, score=lambda t: t.scores.f1, closeness=closeness)


def _resamples(pick: Pick) -> int:
    """Bootstrap resamples behind ``pick``: none for the plain best (only ties are near it)."""
    return RESAMPLES if pick == "one-se" else 0


def tuned_setting(predictor: Predictor) -> str:
    """The name of the :class:`PostprocessParams` field that tuning chooses for this model."""
    return "min_proximity" if predictor.detection_head else "min_probability"


@dataclass(frozen=True)
class HeldOutImages:
    """Clicked images a model was not trained on: ``stems`` of the pairs in ``images`` and
    ``points`` (None: all of them)."""

    images: Path
    points: Path
    stems: tuple[str, ...] | None = None
    mpp: float | None = None


def validation_images(run: str | os.PathLike[str]) -> HeldOutImages:
    """The validation split of a training run folder (its ``config.json`` and ``split.json``),
    on which ``best.pt`` was chosen; a checkpoint file stands for the run folder holding it."""
    run = Path(run)
    run = run.parent if run.is_file() else run
    config_file, split_file = run / "config.json", run / "split.json"
    if not (config_file.is_file() and split_file.is_file()):
        raise PointcellInputError(
            f"{run} is not a training run folder (no config.json and split.json); pass "
            "--images and --points of held-out clicked images"
        )
    config = json.loads(config_file.read_text(encoding="utf-8"))
    stems = tuple(json.loads(split_file.read_text(encoding="utf-8")).get("val", []))
    if not stems:
        raise PointcellInputError(
            f"{run} has no validation images; pass --images and --points of held-out clicked images"
        )
    return HeldOutImages(Path(config["images"]), Path(config["points"]), stems, config["mpp"])


def _predicted(
    predictor: Predictor, held_out: HeldOutImages, *, mpp: float | None, tta: bool, progress: bool
) -> Iterator[tuple[str, np.ndarray, float, GroundTruth, np.ndarray]]:
    """(stem, RGB pixels, pixel size, ground truth, maps) of each held-out image with a points
    or mask file; points files of other images are ignored."""
    pairs = pair_images_with_points(held_out.images, held_out.points, points_without_image=True)
    if held_out.stems is not None:
        missing = sorted(set(held_out.stems) - {p.stem for p in pairs})
        if missing:
            raise PointcellInputError(
                f"held-out image(s) without an image and points file: {', '.join(missing)}"
            )
        pairs = [p for p in pairs if p.stem in set(held_out.stems)]
    mpp = mpp if mpp is not None else held_out.mpp
    for pair in tqdm(pairs, desc="predicting", unit="image", disable=not progress):
        loaded = read_image(pair.image)
        pixel_size = resolve_mpp(loaded, mpp, working_mpp=predictor.working_mpp)
        truth = read_ground_truth(pair.points, loaded.pixels.shape[:2])
        maps = predict_image_maps(predictor, loaded.pixels, mpp=pixel_size, tta=tta)
        yield pair.stem, loaded.pixels, pixel_size, truth, maps


def predict_clicked(
    predictor: Predictor,
    held_out: HeldOutImages,
    *,
    mpp: float | None = None,
    tta: bool = False,
    progress: bool = True,
) -> list[ClickedMaps]:
    """The network's maps of the held-out images, each with its points file (or instance
    mask: its centroids are the clicks); points files of other images are ignored. ``mpp``
    overrides the pixel size of ``held_out`` and of the files."""
    items = [
        ClickedMaps(stem, maps, truth.points_xy, pixel_size)
        for stem, _, pixel_size, truth, maps in _predicted(
            predictor, held_out, mpp=mpp, tta=tta, progress=progress
        )
    ]
    if not sum(len(item.clicks_xy) for item in items):
        raise PointcellInputError(
            f"no clicks in the {len(items)} held-out image(s) of {held_out.points}: "
            "there is nothing to tune the detection threshold on"
        )
    return items


@dataclass(frozen=True)
class OutlinedMaps:
    """The network's maps of one image with its RGB pixels (outlines are refined on its stain),
    its true instance labels and its pixel size."""

    stem: str
    maps: np.ndarray
    image: np.ndarray
    labels: np.ndarray
    mpp: float


@dataclass(frozen=True)
class OutlineTrial:
    """One outline setting, its segmentation scores (means over the images) and whether its
    AJI lies within one standard error of the best's (see :func:`near_best`)."""

    params: PostprocessParams
    aji: float
    pixel_f1: float
    near_best: bool = True


def predict_outlined(
    predictor: Predictor,
    held_out: HeldOutImages,
    *,
    mpp: float | None = None,
    tta: bool = False,
    progress: bool = True,
) -> list[OutlinedMaps]:
    """The network's maps of held-out images that have true outlines (instance masks, or
    polygons in XML or GeoJSON), with their pixels and labels."""
    items = []
    for stem, pixels, pixel_size, truth, maps in _predicted(
        predictor, held_out, mpp=mpp, tta=tta, progress=progress
    ):
        if truth.labels is None:
            raise PointcellInputError(
                f"{stem}: its ground truth holds points, not outlines; tuning the outlines "
                "needs instance masks (or polygons)"
            )
        items.append(OutlinedMaps(stem, maps, pixels, truth.labels, pixel_size))
    if not items:
        raise PointcellInputError(f"no held-out image with outlines in {held_out.points}")
    return items


def outline_candidates(
    base: PostprocessParams,
    *,
    foregrounds: Sequence[float] = FOREGROUND_GRID,
    growths: Sequence[float] = GROWTH_GRID,
) -> list[PostprocessParams]:
    """``base`` first, then every nucleus-mask threshold of ``foregrounds`` no higher than the
    detection threshold (a peak must lie inside the mask to be found) with every outline growth
    of ``growths``. The detection settings are not changed, but the cells can move: a cell sits
    at its instance's centroid, and a mask without a peak gains one."""
    tried = [
        replace(base, foreground=f, refine_outlines_um=g)
        for f in foregrounds
        if f <= base.min_probability
        for g in growths
    ]
    return [base, *(p for p in tried if p != base)]


def tune_outlines(
    predictor: Predictor,
    items: Sequence[OutlinedMaps],
    *,
    base: PostprocessParams | None = None,
    pick: Pick = "one-se",
) -> list[OutlineTrial]:
    """Every candidate of :func:`outline_candidates` scored against true outlines, the chosen
    first: of those within one standard error of the best mean AJI (it weighs outline and split
    errors together; ``pick="best"``: of those tied with it), the one nearest the current
    setting (mask threshold, then growth); the rest follow by AJI.

    A network taught by pseudo-labels that cover three quarters of each nucleus is not
    calibrated at the nucleus edge: its 0.5 contour lies inside it, by an amount that depends
    on the model, so the mask threshold and the growth are fitted per model and stain."""
    if not items:
        raise PointcellInputError("no images with outlines to tune on")
    base = base or predictor.postprocess
    candidates = outline_candidates(base)
    per_image = [_outline_scores(predictor, item, candidates) for item in items]
    aji = np.array([[scores[k].aji for scores in per_image] for k in range(len(candidates))])
    near = near_best(
        lambda chosen: aji[:, chosen].mean(axis=2).round(9),
        len(items),
        resamples=_resamples(pick),
    )
    trials = [
        OutlineTrial(
            params,
            float(aji[k].mean()),
            float(np.mean([scores[k].f1 for scores in per_image])),
            bool(near[k]),
        )
        for k, params in enumerate(candidates)
    ]

    def closeness(trial: OutlineTrial) -> tuple[float, float]:
        return (
            abs(trial.params.foreground - base.foreground),
            abs(trial.params.refine_outlines_um - base.refine_outlines_um),
        )

    return chosen_first(trials, score=lambda t: t.aji, closeness=closeness)


def _outline_scores(
    predictor: Predictor, item: OutlinedMaps, candidates: Sequence[PostprocessParams]
) -> list[SegmentationScores]:
    """Segmentation scores of each candidate of :func:`outline_candidates` (one base: the
    same detection settings and outline stain, other outlines) on one image: the network's
    instances are found once per mask threshold and the stained mask once, then refined per
    growth, as :func:`pointcell.inference.cells_from_maps` would."""
    probability = item.maps[0]
    stained = stained_pixels(item.image, mpp=item.mpp, stain=candidates[0].outline_stain)
    network: dict[float, np.ndarray] = {}
    scores = []
    for params in candidates:
        if params.foreground not in network:
            unrefined = replace(params, refine_outlines_um=0.0)
            cells = cells_from_maps(predictor, item.maps, mpp=item.mpp, params=unrefined)
            network[params.foreground] = cells.labels
        labels = network[params.foreground]
        if params.refine_outlines_um > 0:
            grow_px = params.refine_outlines_um / item.mpp
            labels = refine_outlines(labels, probability, stained, grow_px=grow_px)
        scores.append(segmentation_scores(item.labels, labels))
    return scores


def write_tuned_model(
    source: str | os.PathLike[str],
    out: str | os.PathLike[str],
    params: PostprocessParams,
    *,
    stain: str | None = None,
) -> Path:
    """A copy of the model (weights as they are) that post-processes with ``params``: always,
    or (with ``stain``) when predicting images of that stain, its other settings kept."""
    path = resolve_checkpoint(source)
    if stain is None:
        extra: dict[str, Any] = {"postprocess": params.to_dict()}
    else:
        by_stain = dict(load_checkpoint(path).get("postprocess_by_stain", {}))
        extra = {"postprocess_by_stain": {**by_stain, stain: params.to_dict()}}
    return export_model(path, out, half=False, extra=extra)
