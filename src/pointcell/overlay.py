"""Pictures a person can check: clicks, Voronoi lines, cluster outlines and repel heat-map."""

from __future__ import annotations

import numpy as np
from skimage.draw import disk
from skimage.segmentation import find_boundaries

from pointcell.encodings import BACKGROUND, NUCLEUS, Encodings

POINT_COLOUR = (255, 40, 40)
VORONOI_COLOUR = (0, 220, 255)
OUTLINE_COLOUR = (60, 255, 60)
MIN_OVERLAY_SIDE = 512


def heat_colours(values: np.ndarray) -> np.ndarray:
    """Map values in [0, 1] to a black-red-yellow-white ramp (H, W, 3) float in [0, 1]."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    return np.clip(np.concatenate([3 * v, 3 * v - 1, 3 * v - 2], axis=-1), 0.0, 1.0)


def upscale_factor(shape: tuple[int, int]) -> int:
    """Integer zoom so that small tiles are drawn at least MIN_OVERLAY_SIDE pixels wide."""
    return max(1, -(-MIN_OVERLAY_SIDE // max(shape)))


def encodings_overlay(image: np.ndarray, points_xy: np.ndarray, enc: Encodings) -> np.ndarray:
    """Overlay (H*z, W*z, 3) uint8: filtered-repel heat-map blended on the image, Voronoi
    lines, outlines of the cluster nucleus mask and the points; z enlarges small tiles."""
    zoom = upscale_factor(image.shape[:2])
    rgb = image.astype(np.float32) / 255.0
    repel = np.clip(enc.filtered_repel, 0.0, None)  # REPEL_IGNORE (skipped) drawn as 0
    alpha = 0.5 * repel[..., None]
    rgb = (1 - alpha) * rgb + alpha * heat_colours(repel)
    rgb = _zoom(rgb, zoom)
    outline = find_boundaries(_zoom(enc.cluster == NUCLEUS, zoom), mode="inner")
    rgb[outline] = np.array(OUTLINE_COLOUR) / 255.0
    rgb[_zoom(enc.voronoi == BACKGROUND, zoom)] = np.array(VORONOI_COLOUR) / 255.0
    out = np.rint(rgb * 255).astype(np.uint8)
    draw_points(out, points_xy * zoom + (zoom - 1) / 2, radius=max(2, zoom + 1))
    return out


def draw_points(
    canvas: np.ndarray,
    points_xy: np.ndarray,
    *,
    radius: float,
    colour: tuple[int, int, int] = POINT_COLOUR,
) -> None:
    """Draw filled dots with a white rim at (x, y) positions onto an RGB uint8 canvas."""
    for x, y in np.asarray(points_xy).reshape(-1, 2):
        rr, cc = disk((y, x), radius + 1, shape=canvas.shape[:2])
        canvas[rr, cc] = 255
        rr, cc = disk((y, x), radius, shape=canvas.shape[:2])
        canvas[rr, cc] = colour


def _zoom(array: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return array.copy()
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)
