"""Compiled inner loops of the encodings (numba, one core, cached on disk after first use).

The encodings touch every pixel of every image several times; in NumPy each pass
materialises (pixels × something) temporaries. These kernels make one pass per step instead:
the two-nearest-points search scatters each point over a disk around it, and the grouped
k-means fuses assignment with the centre sums of Lloyd's algorithm. They run on a single
thread on purpose: encodings are computed inside data-loader processes and Dask workers,
where a second thread pool would fight the caller's (and numba's default pools are not
fork-safe).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
from numba import njit

# fast-math without the no-NaN / no-infinity assumptions: the kernels compare against inf
FASTMATH = {"nsz", "arcp", "contract", "afn", "reassoc"}


def compiled(
    *, fastmath: bool | set[str] = False, inline: Literal["never", "always"] = "never"
) -> Callable[[Callable], Callable]:
    """``numba.njit`` (no GIL) with an on-disk cache where numba finds a writable folder for it
    (next to this file, or the user's cache); without one numba refuses ``cache=True`` at
    import, so the kernels are then compiled afresh in each process instead."""

    def decorate(function: Callable) -> Callable:
        try:
            return njit(cache=True, nogil=True, fastmath=fastmath, inline=inline)(function)
        except RuntimeError:  # "cannot cache function ...: no locator available"
            return njit(cache=False, nogil=True, fastmath=fastmath, inline=inline)(function)

    return decorate


@compiled()
def scatter_two_nearest(
    points_xy: np.ndarray,
    radius: float,
    d1_sq: np.ndarray,
    d2_sq: np.ndarray,
    i1: np.ndarray,
    i2: np.ndarray,
) -> None:
    """Update, in place, the two smallest squared distances (and their point indices) of
    every pixel centre within ``radius`` of each point.

    Pixels whose second distance stays above ``radius**2`` may have a nearer point outside
    every disk that reached them: the caller resolves those exactly another way. Ties keep
    the lower point index.
    """
    rows, cols = d1_sq.shape
    r_sq = radius * radius
    for p in range(points_xy.shape[0]):
        x = points_xy[p, 0]
        y = points_xy[p, 1]
        top = max(0, int(math.ceil(y - radius)))
        bottom = min(rows - 1, int(math.floor(y + radius)))
        for r in range(top, bottom + 1):
            dy_sq = (r - y) * (r - y)
            half = math.sqrt(max(r_sq - dy_sq, 0.0))
            left = max(0, int(math.ceil(x - half)))
            right = min(cols - 1, int(math.floor(x + half)))
            for c in range(left, right + 1):
                d = (c - x) * (c - x) + dy_sq
                if d < d1_sq[r, c]:
                    d2_sq[r, c] = d1_sq[r, c]
                    i2[r, c] = i1[r, c]
                    d1_sq[r, c] = d
                    i1[r, c] = p
                elif d < d2_sq[r, c]:
                    d2_sq[r, c] = d
                    i2[r, c] = p


@compiled()
def near_bisector(
    points_xy: np.ndarray,
    d1: np.ndarray,
    d2: np.ndarray,
    i1: np.ndarray,
    i2: np.ndarray,
    half_width: float,
) -> np.ndarray:
    """Pixels (H, W) bool whose centre lies within ``half_width`` of the bisector of their two
    nearest points ``a``, ``b``: the distance to it is ``(d2² - d1²) / (2 |a - b|)``. Pixels
    whose two nearest points coincide are on it; pixels without a second point are not."""
    rows, cols = d1.shape
    out = np.zeros((rows, cols), dtype=np.bool_)
    for r in range(rows):
        for c in range(cols):
            b = i2[r, c]
            if b < 0:
                continue
            a = i1[r, c]
            dx = points_xy[a, 0] - points_xy[b, 0]
            dy = points_xy[a, 1] - points_xy[b, 1]
            gap = d2[r, c] * d2[r, c] - d1[r, c] * d1[r, c]  # >= 0: d2 >= d1
            out[r, c] = gap * gap <= 4 * (dx * dx + dy * dy) * half_width * half_width
    return out


@compiled()
def repel(
    d1: np.ndarray, d2: np.ndarray, mpp: float, alpha_per_um: float, radius_um: float
) -> np.ndarray:
    """Repel code (H, W) float32: ``D = d1 (1 + d1/d2)`` in µm, ``1 / (1 + alpha D)`` where
    ``D < radius``, else 0; ``d1/d2`` counts as 0 without a second point or when d2 is 0."""
    rows, cols = d1.shape
    out = np.zeros((rows, cols), dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            near = d1[r, c]
            second = d2[r, c]
            ratio = near / second if (second > 0 and second < np.inf) else 0.0
            spread_um = near * (1.0 + ratio) * mpp
            if spread_um < radius_um:
                out[r, c] = 1.0 / (1.0 + alpha_per_um * spread_um)
    return out


@compiled(fastmath=FASTMATH, inline="always")
def _pixel_features(
    image: np.ndarray,
    d1: np.ndarray,
    r: int,
    c: int,
    scales: tuple[float, float, float],
) -> tuple[float, float, float, float]:
    """The k-means features of one pixel: scaled RGB and capped, scaled distance to its point;
    ``scales``: (colour weight, distance cap in px, distance weight per px)."""
    colour_weight, distance_cap_px, distance_weight_per_px = scales
    return (
        image[r, c, 0] * colour_weight,
        image[r, c, 1] * colour_weight,
        image[r, c, 2] * colour_weight,
        min(d1[r, c], distance_cap_px) * distance_weight_per_px,
    )


@compiled(fastmath=FASTMATH, inline="always")
def _nearest_centre(
    features: tuple[float, float, float, float], centres: np.ndarray, g: int
) -> int:
    best = np.inf
    nearest = 0
    for j in range(centres.shape[1]):
        distance = 0.0
        for f in range(4):
            diff = features[f] - centres[g, j, f]
            distance += diff * diff
        if distance < best:
            best = distance
            nearest = j
    return nearest


@compiled()
def _update_centres(sums: np.ndarray, counts: np.ndarray, centres: np.ndarray) -> None:
    """Centres become the means of their pixels; a cluster with no pixel keeps its centre."""
    n_groups, k, n_features = sums.shape
    for g in range(n_groups):
        for j in range(k):
            if counts[g, j] > 0:
                for f in range(n_features):
                    centres[g, j, f] = sums[g, j, f] / counts[g, j]


@compiled(fastmath=FASTMATH)
def local_kmeans(
    image: np.ndarray,
    d1: np.ndarray,
    owner: np.ndarray,
    disks: np.ndarray,
    n_groups: int,
    k: int,
    colour_weight: float,
    distance_cap_px: float,
    distance_weight_per_px: float,
    cell_radius_px: float,
    fit_step: int,
    iterations: int,
    tolerance: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lloyd's k-means on [R, G, B, distance] inside every Voronoi cell at once.

    Pixels farther than ``cell_radius_px`` from their point (``d1``) are background. Cluster
    ``j`` of a cell starts as the mean of the pixels in the ``j``-th of ``k`` equal bands of
    distance between 0 and the cell's largest distance: deterministic, no sorting, cluster 0
    starts at the point (an empty band's cluster never wins a pixel). Centres are fitted on
    the pixels of a grid with spacing ``fit_step``; iteration stops when at most ``tolerance``
    of them change cluster; then every pixel takes its nearest centre.

    Returns the cluster of every pixel (H, W) int8 (-1 beyond the cell radius) and, per cell
    and cluster (n_cells, k): its pixels on ``disks``, its pixel count and the sum of its
    pixels' distance feature -- what deciding the clusters' roles needs.
    """
    scales = (colour_weight, distance_cap_px, distance_weight_per_px)
    fit_features, fit_group, assign = _fit_pixels(
        image, d1, owner, n_groups, k, scales, cell_radius_px, fit_step
    )
    centres = _lloyd(fit_features, fit_group, assign, n_groups, k, iterations, tolerance)
    return _label_pixels(image, d1, owner, disks, centres, scales, cell_radius_px)


@compiled(fastmath=FASTMATH)
def _fit_pixels(
    image: np.ndarray,
    d1: np.ndarray,
    owner: np.ndarray,
    n_groups: int,
    k: int,
    scales: tuple[float, float, float],
    cell_radius_px: float,
    fit_step: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixels k-means is fitted on (a grid of spacing ``fit_step``, within the cell
    radius), gathered into contiguous arrays: their features (n, 4; ``scales`` as
    :func:`_pixel_features` takes them), cells, and starting clusters (their band of distance
    within the cell)."""
    rows, cols = d1.shape
    largest = np.zeros(n_groups)
    n_fit = 0
    for r in range(0, rows, fit_step):
        for c in range(0, cols, fit_step):
            if d1[r, c] <= cell_radius_px:
                n_fit += 1
                g = owner[r, c]
                largest[g] = max(largest[g], d1[r, c])
    fit_features = np.empty((n_fit, 4))
    fit_group = np.empty(n_fit, dtype=np.int64)
    assign = np.empty(n_fit, dtype=np.int64)
    t = 0
    for r in range(0, rows, fit_step):
        for c in range(0, cols, fit_step):
            if d1[r, c] > cell_radius_px:
                continue
            g = owner[r, c]
            features = _pixel_features(image, d1, r, c, scales)
            # the largest distance falls in the last band, one at a band edge in the lower band
            assign[t] = min(int(d1[r, c] / max(largest[g] * (1 + 1e-6), 1e-12) * k), k - 1)
            fit_group[t] = g
            for f in range(4):
                fit_features[t, f] = features[f]
            t += 1
    return fit_features, fit_group, assign


@compiled(fastmath=FASTMATH)
def _lloyd(
    fit_features: np.ndarray,
    fit_group: np.ndarray,
    assign: np.ndarray,
    n_groups: int,
    k: int,
    iterations: int,
    tolerance: float,
) -> np.ndarray:
    """Centres (n_cells, k, 4) of Lloyd's iterations from the clusters ``assign`` (updated in
    place), each cell's pixels competing for its own centres only."""
    n_fit, n_features = fit_features.shape
    sums = np.zeros((n_groups, k, n_features))
    counts = np.zeros((n_groups, k))
    for t in range(n_fit):
        counts[fit_group[t], assign[t]] += 1
        for f in range(n_features):
            sums[fit_group[t], assign[t], f] += fit_features[t, f]
    centres = np.full((n_groups, k, n_features), 1e6)  # an empty cluster never wins a pixel
    _update_centres(sums, counts, centres)
    for _ in range(iterations):
        sums[:] = 0.0
        counts[:] = 0.0
        changed = 0
        for t in range(n_fit):
            g = fit_group[t]
            features = (
                fit_features[t, 0],
                fit_features[t, 1],
                fit_features[t, 2],
                fit_features[t, 3],
            )
            j = _nearest_centre(features, centres, g)
            if j != assign[t]:
                changed += 1
                assign[t] = j
            counts[g, j] += 1
            for f in range(n_features):
                sums[g, j, f] += features[f]
        if changed <= tolerance * n_fit:
            break
        _update_centres(sums, counts, centres)
    return centres


@compiled(fastmath=FASTMATH)
def _label_pixels(
    image: np.ndarray,
    d1: np.ndarray,
    owner: np.ndarray,
    disks: np.ndarray,
    centres: np.ndarray,
    scales: tuple[float, float, float],
    cell_radius_px: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every pixel within the cell radius takes its cell's nearest centre; per cell and
    cluster, the tallies that decide the clusters' roles (see :func:`local_kmeans`)."""
    rows, cols = d1.shape
    n_groups, k = centres.shape[:2]
    cluster = np.full((rows, cols), -1, dtype=np.int8)
    votes = np.zeros((n_groups, k))
    counts = np.zeros((n_groups, k))
    distance_sums = np.zeros((n_groups, k))
    for r in range(rows):
        for c in range(cols):
            if d1[r, c] > cell_radius_px:
                continue
            g = owner[r, c]
            features = _pixel_features(image, d1, r, c, scales)
            j = _nearest_centre(features, centres, g)
            cluster[r, c] = j
            counts[g, j] += 1
            distance_sums[g, j] += features[3]
            if disks[r, c]:
                votes[g, j] += 1
    return cluster, votes, counts, distance_sums
