"""The training-free floor's segmentation: stain optical densities, threshold, distance
watershed (what QuPath's cell detection does), as pure functions of an image.

Used by ``pointcell baseline`` (the floor users already have) and by the fused pseudo-labels
of :mod:`pointcell.encodings` (a floor nucleus around exactly one click is a label).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from pointcell.masks import Cells, fill_small_holes, remove_small_objects


def stain_density(image: np.ndarray) -> np.ndarray:
    """Optical density of the nuclear stains (hematoxylin + DAB, Ruifrok & Johnston) (H, W):
    high on nuclei in H&E and in IHC whether or not they are positive."""
    hed = rgb2hed(image)
    return np.clip(hed[..., 0], 0, None) + np.clip(hed[..., 2], 0, None)


@dataclass(frozen=True)
class WatershedParams:
    """Settings of the floor, in physical units."""

    smooth_um: float = 0.5  # Gaussian smoothing of the hematoxylin channel
    threshold: float | None = None  # hematoxylin optical density; None = Otsu per image
    min_distance_um: float = 2.5  # between seeds of the distance watershed
    min_area_um2: float = 5.0
    max_hole_um2: float = 10.0
    stain: str = "he"  # "he": nuclei from hematoxylin; "ihc": hematoxylin + DAB
    # IHC: a nucleus whose mean DAB optical density exceeds this is "positive", else
    # "negative" (tune it on annotated images with tune_dab_threshold); None = no classes
    dab_threshold: float | None = None

    def __post_init__(self) -> None:
        if self.stain not in ("he", "ihc"):
            raise ValueError(f"stain must be 'he' or 'ihc', got {self.stain!r}")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


IHC_CLASSES = ("negative", "positive")


def hematoxylin(image: np.ndarray) -> np.ndarray:
    """Hematoxylin optical density (H, W) by Ruifrok & Johnston colour deconvolution."""
    return np.clip(rgb2hed(image)[..., 0], 0, None).astype(np.float32)


def dab(image: np.ndarray) -> np.ndarray:
    """DAB optical density (H, W): the brown of positive IHC nuclei."""
    return np.clip(rgb2hed(image)[..., 2], 0, None).astype(np.float32)


def nuclear_density(image: np.ndarray, stain: str) -> np.ndarray:
    """What makes a nucleus dark: hematoxylin in H&E, hematoxylin or DAB in IHC."""
    return stain_density(image).astype(np.float32) if stain == "ihc" else hematoxylin(image)


def mean_dab(image: np.ndarray, cells: Cells) -> np.ndarray:
    """Mean DAB optical density of each detected cell's nucleus."""
    if len(cells.xy) == 0:
        return np.zeros(0, np.float32)
    means = ndimage.mean(dab(image), cells.labels, np.arange(1, cells.labels.max() + 1))
    return np.asarray(means, np.float32)[np.maximum(cells.instance, 1) - 1]


def tune_dab_threshold(dab_means: np.ndarray, positive: np.ndarray) -> float:
    """The DAB threshold that classifies training nuclei best (balanced accuracy), given
    each nucleus's mean DAB and whether its click said positive."""
    dab_means, positive = np.asarray(dab_means, float), np.asarray(positive, bool)
    if positive.all() or not positive.any():
        raise ValueError("tuning needs both positive and negative nuclei")
    candidates = np.unique(dab_means)
    above = dab_means[None, :] > candidates[:, None]
    sensitivity = (above & positive).sum(1) / positive.sum()
    specificity = (~above & ~positive).sum(1) / (~positive).sum()
    return float(candidates[np.argmax(sensitivity + specificity)])


def smoothed_density(
    image: np.ndarray, *, mpp: float, params: WatershedParams = WatershedParams()
) -> np.ndarray:
    """The nuclear-stain optical density of ``params.stain`` (H, W), lightly smoothed."""
    return ndimage.gaussian_filter(nuclear_density(image, params.stain), params.smooth_um / mpp)


def stained_mask(
    density: np.ndarray, *, mpp: float, params: WatershedParams = WatershedParams()
) -> np.ndarray:
    """The floor's nucleus mask (H, W) bool: density above ``params.threshold`` (Otsu's of
    the image when None), small holes filled. An image of one density has no nucleus."""
    if np.ptp(density) <= 0:
        return np.zeros(density.shape, dtype=bool)
    level = params.threshold if params.threshold is not None else threshold_otsu(density)
    return fill_small_holes(density > level, params.max_hole_um2 / mpp**2)


def hematoxylin_watershed(
    image: np.ndarray, *, mpp: float, params: WatershedParams = WatershedParams()
) -> Cells:
    """Nuclei of an H&E or IHC RGB image without any training; for IHC with a DAB threshold,
    each nucleus is also called positive or negative (classes ``IHC_CLASSES``)."""
    density = smoothed_density(image, mpp=mpp, params=params)
    mask = stained_mask(density, mpp=mpp, params=params)
    distance = ndimage.distance_transform_edt(mask)
    distance = ndimage.gaussian_filter(distance, 1.0)
    seeds = peak_local_max(
        distance,
        min_distance=max(1, round(params.min_distance_um / mpp)),
        labels=mask.astype(np.int32),
        exclude_border=False,
    ).reshape(-1, 2)
    markers = np.zeros(mask.shape, np.int32)
    markers[seeds[:, 0], seeds[:, 1]] = np.arange(1, len(seeds) + 1)
    labels = watershed(-distance, markers, mask=mask)
    labels = remove_small_objects(labels, params.min_area_um2 / mpp**2)
    ids = np.arange(1, labels.max() + 1)
    if len(ids) == 0:
        empty = np.zeros(0)
        return Cells(labels, np.zeros((0, 2)), empty.astype(np.float32), empty.astype(np.int32))
    centres = np.array(ndimage.maximum_position(distance, labels, ids)).reshape(-1, 2)
    score = np.asarray(ndimage.mean(density, labels, ids), dtype=np.float32)
    cells = Cells(
        labels=labels,
        xy=centres[:, ::-1].astype(np.float64),
        score=score,
        instance=ids.astype(np.int32),
    )
    if params.dab_threshold is None:
        return cells
    means = mean_dab(image, cells)
    return replace(
        cells,
        class_index=(means > params.dab_threshold).astype(np.int32),
        class_probability=np.ones(len(means), np.float32),
    )
