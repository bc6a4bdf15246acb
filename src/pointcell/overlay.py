"""Pictures a person can check: clicks, Voronoi lines, cluster outlines and repel heat-map."""

from __future__ import annotations

import numpy as np
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
    """Draw filled dots with a white rim at (x, y) positions onto an RGB uint8 canvas.

    Point by point, each rim then its dot, as ``skimage.draw.disk`` would draw them one after
    another (same pixels, later points on top), in one vectorised pass.
    """
    xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if not len(xy):
        return
    shape = canvas.shape[:2]
    rim, rim_point = disk_pixels(xy, radius + 1, shape)
    dot, dot_point = disk_pixels(xy, radius, shape)
    last = np.full(shape[0] * shape[1], -1, dtype=np.int64)  # last drawing step per pixel
    np.maximum.at(last, rim, 2 * rim_point)
    np.maximum.at(last, dot, 2 * dot_point + 1)
    flat = canvas.reshape(-1, canvas.shape[-1])
    drawn = last >= 0
    flat[drawn & (last % 2 == 0)] = 255
    flat[drawn & (last % 2 == 1)] = colour


def disk_pixels(
    points_xy: np.ndarray, radius: float, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices of the pixels of ``skimage.draw.disk((y, x), radius, shape=shape)`` for
    every point, and the point each belongs to (the same pixels, computed as it does)."""
    centres = points_xy[:, ::-1]  # (row, col)
    upper_left = np.maximum(np.ceil(centres - radius).astype(np.int64), 0)
    lower_right = np.minimum(np.floor(centres + radius).astype(np.int64), np.array(shape[:2]) - 1)
    shifted = centres - upper_left
    offsets = np.arange(int(np.ceil(2 * radius)) + 2, dtype=np.float64)
    dr = offsets[None, :, None] - shifted[:, 0, None, None]
    dc = offsets[None, None, :] - shifted[:, 1, None, None]
    rows = upper_left[:, 0, None, None] + offsets[None, :, None].astype(np.int64)
    cols = upper_left[:, 1, None, None] + offsets[None, None, :].astype(np.int64)
    inside = ((dr / radius) ** 2 + (dc / radius) ** 2 < 1) & (
        (rows <= lower_right[:, 0, None, None]) & (cols <= lower_right[:, 1, None, None])
    )
    point = np.broadcast_to(np.arange(len(points_xy))[:, None, None], inside.shape)
    return (rows * shape[1] + cols)[inside], point[inside]


def _zoom(array: np.ndarray, factor: int) -> np.ndarray:
    if factor == 1:
        return array.copy()
    return np.repeat(np.repeat(array, factor, axis=0), factor, axis=1)
