"""Training data: class and proximity targets, the split, and augmented batches.

The images and their encodings come from :mod:`pointcell.targets` (read, resampled, encoded
and cached). Batches are random patches with augmentation; everything random about step ``i``
comes from a generator seeded with ``(seed, i)``, so a resumed run draws exactly the batches an
uninterrupted run would.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed_from_rgb as HED_FROM_RGB
from skimage.color import rgb_from_hed as RGB_FROM_HED
from torchvision.transforms.v2 import functional as TF

from pointcell.encodings import CLASS_IGNORE, IGNORE, nearest_points
from pointcell.errors import PointcellInputError
from pointcell.targets import PreparedImage


def class_target(
    shape: tuple[int, int],
    points_xy: np.ndarray,
    point_classes: np.ndarray,
    classes: Sequence[str],
    *,
    radius_px: float,
) -> np.ndarray:
    """Per-pixel class target: the index (in ``classes``) of the nearest typed click within
    ``radius_px``; CLASS_IGNORE elsewhere, and around untyped clicks or classes not in ``classes``
    (the nearest click decides, so neighbouring disks never overlap)."""
    target = np.full(shape, CLASS_IGNORE, dtype=np.uint8)
    if len(points_xy) == 0 or not classes:
        return target
    if len(classes) >= CLASS_IGNORE:
        raise PointcellInputError(f"at most {CLASS_IGNORE} cell classes, got {len(classes)}")
    lookup = {name: index for index, name in enumerate(classes)}
    index_of_point = np.array([lookup.get(str(n), CLASS_IGNORE) for n in point_classes], np.uint8)
    near = nearest_points(points_xy, shape)
    inside = near.d1 <= radius_px
    target[inside] = index_of_point[near.i1[inside]]
    return target


def with_class_map(
    img: PreparedImage, classes: Sequence[str], *, radius_px: float
) -> PreparedImage:
    """The image with its class target for ``classes``."""
    target = class_target(
        img.image.shape[:2], img.points_xy, img.point_classes, classes, radius_px=radius_px
    )
    return replace(img, class_map=target)


def proximity_target(
    shape: tuple[int, int], points_xy: np.ndarray, *, sigma_px: float
) -> np.ndarray:
    """Proximity to the nearest click: a Gaussian of the distance (1 at the click, about 0.61
    at ``sigma_px``), cut to 0 beyond 3 sigma — the regression target of SC-CNN
    (Sirinukunwattana et al. 2016), smooth so that a click a few pixels off its nucleus' centre
    still teaches where cells are."""
    distance = nearest_points(points_xy, shape).d1
    proximity = np.exp(-(distance**2) / (2.0 * sigma_px**2))
    proximity[distance > 3.0 * sigma_px] = 0.0
    return proximity.astype(np.float32)


def with_proximity(img: PreparedImage, *, sigma_px: float) -> PreparedImage:
    """The image with its proximity target."""
    target = proximity_target(img.image.shape[:2], img.points_xy, sigma_px=sigma_px)
    return replace(img, proximity=target)


def split_stems(
    stems: Sequence[str], *, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 0
) -> dict[str, list[str]]:
    """Seeded split by image into train / val / test.

    Validation gets at least one image when there are three or more; training always keeps at
    least one.
    """
    if not math.isclose(sum(fractions), 1.0) or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    order = list(np.random.default_rng(seed).permutation(sorted(stems)))
    n = len(order)
    n_val = max(1, round(n * fractions[1])) if n >= 3 and fractions[1] > 0 else 0
    n_test = min(round(n * fractions[2]), max(0, n - n_val - 1))
    return {
        "val": sorted(order[:n_val]),
        "test": sorted(order[n_val : n_val + n_test]),
        "train": sorted(order[n_val + n_test :]),
    }


def channel_stats(images: Sequence[np.ndarray]) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation (of values in [0, 1]) over all pixels."""
    total = sum(img.shape[0] * img.shape[1] for img in images)
    sums = sum(img.reshape(-1, 3).astype(np.float64).sum(0) for img in images) / 255.0
    squares = sum((img.reshape(-1, 3).astype(np.float64) ** 2).sum(0) for img in images) / 65025.0
    mean = sums / total
    std = np.sqrt(np.maximum(squares / total - mean**2, 1e-12))
    return mean.tolist(), std.tolist()


@dataclass(frozen=True)
class AugmentParams:
    """Random geometric augmentation (identical for the image and its three targets)."""

    flips: bool = True
    rot90: bool = True
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.8, 1.25)  # random resize
    max_shear_deg: float = 5.0
    # stain jitter (Tellez et al. 2018): each of the hematoxylin, eosin and DAB optical
    # densities scaled by U(1-s, 1+s) and shifted by U(-s, s); 0 = off
    hed_jitter: float = 0.0
    # stain strength: all three densities of a patch scaled by one log-uniform factor from
    # this range (0.3 = a patch stained three times lighter); (1, 1) = off
    stain_scale_range: tuple[float, float] = (1.0, 1.0)
    # colour jitter (as torchvision's ColorJitter): brightness, contrast and saturation of a
    # patch times U(1-c, 1+c), hue turned by U(-c/3, c/3) of a full turn; reaches what stain
    # jitter cannot: the violet, low-contrast look of frozen sections; 0 = off
    colour_jitter: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def hed_densities(pixels: np.ndarray) -> np.ndarray:
    """Hematoxylin, eosin and DAB optical densities (..., 3) of RGB uint8 pixels (..., 3), by
    Ruifrok & Johnston colour deconvolution; :func:`rgb_from_hed_densities` inverts it."""
    density = -np.log((pixels.astype(np.float32) + 1.0) / 256.0)
    return density @ HED_FROM_RGB.astype(np.float32)


def rgb_from_hed_densities(stains: np.ndarray) -> np.ndarray:
    """RGB uint8 pixels (..., 3) of hematoxylin, eosin and DAB optical densities (..., 3)."""
    back = 256.0 * np.exp(-(stains @ RGB_FROM_HED.astype(np.float32))) - 1.0
    return np.clip(np.rint(back), 0, 255).astype(np.uint8)


def hed_jitter(images: np.ndarray, alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """Perturb the stains of RGB uint8 images (B, H, W, 3): their hematoxylin / eosin / DAB
    optical densities become ``od * alpha + beta`` per image and stain (B, 3). Invertible:
    alpha 1 and beta 0 return the input."""
    stains = hed_densities(images) * alpha[:, None, None, :] + beta[:, None, None, :]
    return rgb_from_hed_densities(stains)


def colour_jitter(images: torch.Tensor, factors: np.ndarray) -> torch.Tensor:
    """RGB images (B, 3, H, W) in [0, 1] with their brightness, contrast and saturation
    multiplied by ``factors[:, :3]`` and their hue turned by ``factors[:, 3]`` (a fraction of a
    turn, in [-0.5, 0.5]), in that order, by torchvision's ColorJitter operations. Factors
    (1, 1, 1, 0) return the input."""
    steps = (TF.adjust_brightness, TF.adjust_contrast, TF.adjust_saturation, TF.adjust_hue)
    unchanged = (1.0, 1.0, 1.0, 0.0)
    out = []
    for image, row in zip(images, factors.tolist(), strict=True):
        for adjust, factor, identity in zip(steps, row, unchanged, strict=True):
            image = adjust(image, factor) if factor != identity else image
        out.append(image)
    return torch.stack(out)


NO_AUGMENT = AugmentParams(
    flips=False, rot90=False, max_rotation_deg=0.0, scale_range=(1.0, 1.0), max_shear_deg=0.0
)


def sampling_weights(areas: Sequence[float], sources: Sequence[str] | None = None) -> np.ndarray:
    """Each image's chance to give the next patch: its share of the area, so every pixel is
    as likely; with ``sources`` (one name per image), each source an equal share first, so a
    source of many large tiles does not drown a small one."""
    weights = np.asarray(areas, dtype=float)
    if sources is not None:
        if len(sources) != len(weights):
            raise ValueError("give one source per image")
        names, index = np.unique(np.asarray(sources), return_inverse=True)
        weights = weights / np.bincount(index, weights=weights)[index] / len(names)
    return weights / weights.sum()


class PatchSampler:
    """Draws augmented training batches; batch ``i`` depends only on ``(seed, i)``.

    The numpy side cuts a window around a random centre (padding outside the image: the mean
    colour, IGNORE labels, zero repel and proximity); the torch side applies one affine warp per
    patch with ``grid_sample`` — bilinear for the image, repel and proximity, nearest for the
    labels.
    """

    def __init__(
        self,
        images: Sequence[PreparedImage],
        *,
        patch_size: int,
        batch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: AugmentParams,
        seed: int,
        sources: Sequence[str] | None = None,
    ) -> None:
        if not images:
            raise PointcellInputError("no training images: every image needs a points file")
        self.images = list(images)
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.fill = np.rint(np.asarray(mean) * 255).astype(np.uint8)
        self.augment = augment
        self.seed = seed
        areas = [img.image.shape[0] * img.image.shape[1] for img in self.images]
        self.weights = sampling_weights(areas, sources)
        # large enough for any rotation and the largest zoom-out (a patch zoomed by s covers
        # patch / s pixels); window - patch is even so that unrotated patches sample whole
        # pixels (labels and image stay aligned)
        zoom_out = 1.0 / min(augment.scale_range)
        margin = patch_size * max(zoom_out, 1.0) * (math.sqrt(2) + 0.1) - patch_size
        self.window = patch_size + 2 * math.ceil(max(margin, 0.0) / 2)

    def batch(self, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Normalised images (B, 3, P, P) and targets {voronoi, cluster, class: long,
        repel, proximity: float}."""
        rng = np.random.default_rng([self.seed, step])
        windows = [self._window(rng) for _ in range(self.batch_size)]
        thetas = np.stack([self._theta(rng) for _ in range(self.batch_size)])
        images = self._stain_jittered(rng, np.stack([w[0] for w in windows]))
        windows = [(image, *w[1:]) for image, w in zip(images, windows, strict=True)]
        colour = None
        if self.augment.colour_jitter > 0:  # drawn only when asked: older runs keep their stream
            spread = self.augment.colour_jitter * np.array([1.0, 1.0, 1.0, 1 / 3])
            colour = np.array([1.0, 1.0, 1.0, 0.0]) + spread * rng.uniform(
                -1.0, 1.0, size=(self.batch_size, 4)
            )
        return self.warp(windows, torch.from_numpy(thetas).float(), colour=colour)

    def _stain_jittered(self, rng: np.random.Generator, images: np.ndarray) -> np.ndarray:
        """A batch of RGB uint8 windows with their stains perturbed (HED jitter, strength)."""
        aug = self.augment
        strength = tuple(aug.stain_scale_range)
        if aug.hed_jitter == 0 and strength == (1.0, 1.0):
            return images
        alpha = rng.uniform(1 - aug.hed_jitter, 1 + aug.hed_jitter, size=(len(images), 3))
        beta = rng.uniform(-aug.hed_jitter, aug.hed_jitter, size=(len(images), 3))
        if strength != (1.0, 1.0):  # drawn only when asked: older runs keep their stream
            low, high = np.log(strength)
            alpha *= np.exp(rng.uniform(low, high, size=(len(images), 1)))
        return hed_jitter(images, alpha, beta)

    def _window(self, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        img = self.images[rng.choice(len(self.images), p=self.weights)]
        h, w = img.image.shape[:2]
        centre = (rng.uniform(0, h), rng.uniform(0, w))
        return crop_window(img, centre, self.window, self.fill)

    def _theta(self, rng: np.random.Generator) -> np.ndarray:
        aug = self.augment
        matrix = np.eye(2)
        if aug.flips and rng.random() < 0.5:
            matrix = matrix @ np.diag([-1.0, 1.0])
        if aug.rot90:
            matrix = matrix @ np.linalg.matrix_power(
                np.array([[0.0, -1.0], [1.0, 0.0]]), int(rng.integers(4))
            )
        angle = math.radians(rng.uniform(-aug.max_rotation_deg, aug.max_rotation_deg))
        rotation = np.array(
            [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
        )
        shear = math.tan(math.radians(rng.uniform(-aug.max_shear_deg, aug.max_shear_deg)))
        scale = math.exp(rng.uniform(*np.log(aug.scale_range)))
        matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ matrix / scale
        theta = np.zeros((2, 3))
        theta[:, :2] = matrix * (self.patch_size / self.window)
        return theta

    def warp(
        self,
        windows: Sequence[tuple[np.ndarray, ...]],
        thetas: torch.Tensor,
        *,
        colour: np.ndarray | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Each window warped by its affine ``thetas`` (B, 2, 3) into a patch, the images with
        their ``colour`` jitter factors (B, 4; see :func:`colour_jitter`) if given."""
        images = torch.from_numpy(np.stack([w[0] for w in windows])).permute(0, 3, 1, 2)
        # zero padding = the mean colour; normalised before the warp unless colour jitter
        # needs the warped pixels (the order older runs used, kept: same batches, bit for bit)
        images = images.float() / 255.0 - self.mean
        if colour is None:
            images = images / self.std
        labels = torch.from_numpy(np.stack([np.stack([w[1], w[2], w[4]]) for w in windows])).float()
        smooth = torch.from_numpy(np.stack([np.stack([w[3], w[5]]) for w in windows]))
        size = (len(windows), 1, self.patch_size, self.patch_size)
        grid = F.affine_grid(thetas, list(size), align_corners=False)
        images = F.grid_sample(
            images, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        if colour is not None:  # on the patch, not the larger window: a third of the pixels
            images = colour_jitter((images + self.mean).clamp(0, 1), colour) - self.mean
            images = images / self.std
        # shift labels by one so that zero padding means "outside" and becomes the ignore
        # value of each target (IGNORE for Voronoi and cluster, CLASS_IGNORE for classes)
        labels = F.grid_sample(
            labels + 1, grid, mode="nearest", padding_mode="zeros", align_corners=False
        )
        outside = torch.tensor([IGNORE + 1.0, IGNORE + 1.0, CLASS_IGNORE + 1.0]).view(1, 3, 1, 1)
        labels = torch.where(labels == 0, outside, labels) - 1
        smooth = F.grid_sample(
            smooth, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return images, {
            "voronoi": labels[:, 0].long(),
            "cluster": labels[:, 1].long(),
            "repel": smooth[:, 0],
            "class": labels[:, 2].long(),
            "proximity": smooth[:, 1],
        }


def crop_window(
    img: PreparedImage, centre: tuple[float, float], size: int, fill: np.ndarray
) -> tuple[np.ndarray, ...]:
    """A ``size`` x ``size`` window of the image and targets around ``centre`` (row, col),
    padded where it leaves the image."""
    top = int(math.floor(centre[0])) - size // 2
    left = int(math.floor(centre[1])) - size // 2
    h, w = img.image.shape[:2]
    r0, r1 = max(top, 0), min(top + size, h)
    c0, c1 = max(left, 0), min(left + size, w)
    out_image = np.empty((size, size, 3), np.uint8)
    out_image[:] = fill
    out_vor = np.full((size, size), IGNORE, np.uint8)
    out_clu = np.full((size, size), IGNORE, np.uint8)
    out_rep = np.zeros((size, size), np.float32)
    out_cls = np.full((size, size), CLASS_IGNORE, np.uint8)
    out_prox = np.zeros((size, size), np.float32)
    if r1 > r0 and c1 > c0:
        dst = (slice(r0 - top, r1 - top), slice(c0 - left, c1 - left))
        src = (slice(r0, r1), slice(c0, c1))
        out_image[dst] = img.image[src]
        out_vor[dst] = img.voronoi[src]
        out_clu[dst] = img.cluster[src]
        out_rep[dst] = img.repel[src]
        if img.class_map is not None:
            out_cls[dst] = img.class_map[src]
        if img.proximity is not None:
            out_prox[dst] = img.proximity[src]
    return out_image, out_vor, out_clu, out_rep, out_cls, out_prox


def grid_batches(
    images: Sequence[PreparedImage],
    *,
    patch_size: int,
    batch_size: int,
    mean: Sequence[float],
    std: Sequence[float],
):
    """Validation batches: every image cut into a grid of patches, no augmentation."""
    sampler = PatchSampler(
        images,
        patch_size=patch_size,
        batch_size=batch_size,
        mean=mean,
        std=std,
        augment=NO_AUGMENT,
        seed=0,
    )
    sampler.window = patch_size
    identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    windows = []
    for img in images:
        h, w = img.image.shape[:2]
        for top in range(0, h, patch_size):
            for left in range(0, w, patch_size):
                centre = (top + patch_size // 2, left + patch_size // 2)
                windows.append(crop_window(img, centre, patch_size, sampler.fill))
    for start in range(0, len(windows), batch_size):
        chunk = windows[start : start + batch_size]
        yield sampler.warp(chunk, identity.expand(len(chunk), 2, 3))
