"""Point-label encodings: pixel-level training targets made from cell centres and the image.

Three encodings (Chamanzar & Nie 2020, section 2.3):

* **Voronoi label** — partition lines are background, a small disk at each point is nucleus,
  everything else is ignored (Qu et al. 2019 convention).
* **Cluster label** — k-means on [R, G, B, distance to the point] separates nucleus from
  background; *locally* inside each Voronoi cell (the paper) or once over the whole image
  (the Qu et al. 2019 baseline).
* **Repel code** — Liang et al. 2019: a peak at each point that decays faster where
  neighbours are close. The *filtered* repel is the repel code times the cluster nucleus mask.

Stained nuclei that no click reaches are left to the clustering by default (its background
clusters take most of them: 76% of their pixels on 30 CRCHisto tiles). Where clicks are
complete for the cells of interest (``EncodingParams(unclicked="background")``) they are all
background; where clicks are sparse (``unclicked="exclude"``) none of them is: the cluster
and repel losses skip them (cluster label IGNORE, filtered repel ``REPEL_IGNORE``), so a
nucleus nobody clicked does not teach the network that it is not one.

Label maps use ``BACKGROUND = 0``, ``NUCLEUS = 1``, ``IGNORE = 2``. Points are (x, y) pixels;
arrays are (row, col). All sizes are given in micrometres and converted with the pixel size.
The per-pixel passes (two nearest points, Voronoi lines, local k-means, repel code) are
compiled kernels in :mod:`pointcell.kernels`; this module holds the method and its parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, get_args

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu

from pointcell.floor import WatershedParams, hematoxylin_watershed, stain_density
from pointcell.kernels import local_kmeans, near_bisector, repel, scatter_two_nearest
from pointcell.masks import fill_small_holes, remove_small_objects

BACKGROUND, NUCLEUS, IGNORE = 0, 1, 2
CLASS_IGNORE = 255  # class target of pixels with no class (class indices start at 0)
REPEL_IGNORE = -1.0  # filtered repel of pixels the repel loss skips (any negative value)

ClusteringMode = Literal["local", "global"]
UnclickedMode = Literal["ignore", "background", "exclude"]
FloorFusion = Literal["off", "he", "ihc"]


@dataclass(frozen=True)
class EncodingParams:
    """Parameters of the three encodings, in physical units.

    Defaults reproduce Qu et al. 2019 (sizes given there in pixels at 0.25 µm/px) and the
    repel code of the paper (alpha = 0.05 per pixel and r = 70 pixels at 0.5 µm/px).
    """

    point_radius_um: float = 0.5  # Qu: points dilated by a radius-2 disk at 0.25 µm/px
    repel_alpha_per_um: float = 0.1  # paper: 0.05 / px at 0.5 µm/px
    repel_radius_um: float = 35.0  # paper: r = 70 px at 0.5 µm/px
    colour_weight: float = 0.1  # Qu: R/10, G/10, B/10
    distance_cap_um: float = 5.0  # Qu: min(distance, 20 px) at 0.25 µm/px
    distance_weight_per_um: float = 4.0  # Qu: distance in pixels at 0.25 µm/px
    n_clusters: int = 3  # nucleus, background, ignored
    kmeans_iterations: int = 8  # label quality is flat beyond ~8 (measured)
    max_hole_um2: float = 20.0  # holes inside a nucleus mask up to this area are filled
    cell_radius_um: float = 12.0  # local clustering only: farther pixels are background
    clustering: ClusteringMode = "local"
    seed: int = 0  # global k-means initialisation (the local variant is deterministic)
    # stained blobs with no click within unclicked_distance_um: "ignore" (left to the
    # clustering), "background" (every cell of interest is clicked, as when an IHC score counts
    # tumour cells and skips stroma: the model should learn to skip them too) or "exclude"
    # (clicks may miss cells: the cluster and repel losses skip them)
    unclicked: UnclickedMode = "ignore"
    unclicked_distance_um: float = 4.0
    # fused labels: the training-free floor's nuclei (hematoxylin "he", or hematoxylin + DAB
    # "ihc") that hold exactly one click, within that click's Voronoi cell, join the cluster
    # label's nuclei ("off": the cluster label alone, as in the paper)
    fuse_floor: FloorFusion = "off"

    def __post_init__(self) -> None:
        if self.clustering not in ("local", "global"):
            raise ValueError(f"clustering must be 'local' or 'global', got {self.clustering!r}")
        if self.unclicked not in get_args(UnclickedMode):
            raise ValueError(
                f"unclicked must be 'ignore', 'background' or 'exclude', got {self.unclicked!r}"
            )
        if self.fuse_floor not in get_args(FloorFusion):
            raise ValueError(f"fuse_floor must be 'off', 'he' or 'ihc', got {self.fuse_floor!r}")
        if self.n_clusters not in (2, 3):
            raise ValueError(f"n_clusters must be 2 or 3, got {self.n_clusters}")
        for name in (
            "point_radius_um",
            "repel_alpha_per_um",
            "repel_radius_um",
            "distance_cap_um",
            "unclicked_distance_um",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Encodings:
    """The training targets of one image; all arrays are (H, W)."""

    voronoi: np.ndarray  # uint8 in {BACKGROUND, NUCLEUS, IGNORE}
    cluster: np.ndarray  # uint8 in {BACKGROUND, NUCLEUS, IGNORE}
    repel: np.ndarray  # float32 in [0, 1]
    filtered_repel: np.ndarray  # float32, repel * (cluster == NUCLEUS); REPEL_IGNORE: skipped


@dataclass(frozen=True)
class NearestPoints:
    """Per pixel: distances (px) to the nearest and second-nearest point and their indices.

    Where fewer than two points exist the missing distance is ``inf`` and the index is ``-1``.
    """

    d1: np.ndarray
    d2: np.ndarray
    i1: np.ndarray
    i2: np.ndarray


SEARCH_SPACINGS = 2.0  # scatter radius of the nearest-points search, in mean point spacings


def nearest_points(points_xy: np.ndarray, shape: tuple[int, int]) -> NearestPoints:
    """Distances from every pixel centre to its two nearest points, exactly.

    Each point scatters its distance over a disk of about two mean point spacings (compiled,
    one pass); the few pixels that no two disks reach (empty tissue, image corners) are
    resolved by a KD-tree query.
    """
    rows, cols = shape
    n = len(points_xy)
    if n == 0:
        inf = np.full(shape, np.inf)
        none = np.full(shape, -1, dtype=np.int32)
        return NearestPoints(inf, inf.copy(), none, none.copy())
    points_xy = np.ascontiguousarray(points_xy, dtype=np.float64)
    d1_sq = np.full(shape, np.inf)
    d2_sq = np.full(shape, np.inf)
    i1 = np.full(shape, -1, dtype=np.int32)
    i2 = np.full(shape, -1, dtype=np.int32)
    radius = max(SEARCH_SPACINGS * np.sqrt(rows * cols / n), 2.0)
    scatter_two_nearest(points_xy, radius, d1_sq, d2_sq, i1, i2)
    unresolved_rc = np.nonzero(d2_sq > radius**2)
    if len(unresolved_rc[0]):
        query = np.stack([unresolved_rc[1], unresolved_rc[0]], axis=1).astype(np.float64)
        k = min(2, n)
        dist, idx = cKDTree(points_xy).query(query, k=k)
        dist, idx = dist.reshape(len(query), k), idx.reshape(len(query), k)
        d1_sq[unresolved_rc], i1[unresolved_rc] = dist[:, 0] ** 2, idx[:, 0]
        if k == 2:
            d2_sq[unresolved_rc], i2[unresolved_rc] = dist[:, 1] ** 2, idx[:, 1]
    return NearestPoints(np.sqrt(d1_sq, out=d1_sq), np.sqrt(d2_sq, out=d2_sq), i1, i2)


def voronoi_edges(points_xy: np.ndarray, near: NearestPoints) -> np.ndarray:
    """Voronoi partition lines, one pixel wide, that block 4-connectivity between cells.

    A pixel is on a line when its centre lies within half a pixel of the bisector of its two
    nearest points: the distance from p to the bisector of a and b is
    ``(|p-b|^2 - |p-a|^2) / (2 |a-b|)``. Near Voronoi vertices two 4-neighbours can belong to
    different cells while neither is that close to *its* bisector; of such a pair, the pixel
    nearer the bisector of the two cells' points is added to the line.
    """
    if len(points_xy) < 2:
        return np.zeros(near.d1.shape, dtype=bool)
    points_xy = np.ascontiguousarray(points_xy, dtype=np.float64)
    edges = near_bisector(points_xy, near.d1, near.d2, near.i1, near.i2, 0.5)
    for axis in (0, 1):
        _close_gaps(edges, near.i1, points_xy, axis=axis)
    return edges


def _close_gaps(edges: np.ndarray, owner: np.ndarray, points_xy: np.ndarray, *, axis: int) -> None:
    """Mark one pixel of every pair of neighbours (along ``axis``) that joins two cells."""
    first = [slice(None), slice(None)]
    second = [slice(None), slice(None)]
    first[axis], second[axis] = slice(None, -1), slice(1, None)
    first_t, second_t = tuple(first), tuple(second)
    leak = (owner[first_t] != owner[second_t]) & ~edges[first_t] & ~edges[second_t]
    if not leak.any():
        return
    rows, cols = np.nonzero(leak)
    step = np.array([1, 0]) if axis == 0 else np.array([0, 1])
    p_rc = np.stack([rows, cols], axis=1)
    q_rc = p_rc + step
    a = points_xy[owner[rows, cols]][:, ::-1]
    b = points_xy[owner[q_rc[:, 0], q_rc[:, 1]]][:, ::-1]
    p_gap = ((p_rc - b) ** 2).sum(1) - ((p_rc - a) ** 2).sum(1)
    q_gap = ((q_rc - a) ** 2).sum(1) - ((q_rc - b) ** 2).sum(1)
    pick = np.where((p_gap <= q_gap)[:, None], p_rc, q_rc)
    edges[pick[:, 0], pick[:, 1]] = True


def point_disks(points_xy: np.ndarray, near: NearestPoints, *, radius_px: float) -> np.ndarray:
    """Pixels within ``radius_px`` of a point, always including the pixel holding each point."""
    disks = near.d1 <= radius_px
    if len(points_xy):
        rows, cols = near.d1.shape
        r = np.clip(np.rint(points_xy[:, 1]).astype(int), 0, rows - 1)
        c = np.clip(np.rint(points_xy[:, 0]).astype(int), 0, cols - 1)
        disks[r, c] = True
    return disks


def voronoi_label(
    points_xy: np.ndarray,
    shape: tuple[int, int],
    *,
    mpp: float,
    params: EncodingParams = EncodingParams(),
    near: NearestPoints | None = None,
    edges: np.ndarray | None = None,
) -> np.ndarray:
    """Voronoi label (H, W) uint8: partition lines BACKGROUND, point disks NUCLEUS, rest IGNORE.

    ``near`` and ``edges`` may be passed when already computed for these points.
    """
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    near = near if near is not None else nearest_points(points_xy, shape)
    edges = edges if edges is not None else voronoi_edges(points_xy, near)
    label = np.full(shape, IGNORE, dtype=np.uint8)
    label[edges] = BACKGROUND
    label[point_disks(points_xy, near, radius_px=params.point_radius_um / mpp)] = NUCLEUS
    return label


def repel_code(
    points_xy: np.ndarray,
    shape: tuple[int, int],
    *,
    mpp: float,
    params: EncodingParams = EncodingParams(),
    near: NearestPoints | None = None,
) -> np.ndarray:
    """Repel code (Liang et al. 2019, eq. 4) as float32 (H, W).

    With d1, d2 the distances to the nearest and second-nearest point,
    ``D = d1 * (1 + d1 / d2)`` and ``C = 1 / (1 + alpha * D)`` where ``D < r``, else 0.
    D is measured in µm, so alpha is per µm and r in µm.
    """
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    near = near if near is not None else nearest_points(points_xy, shape)
    if len(points_xy) == 0:
        return np.zeros(shape, dtype=np.float32)
    return repel(near.d1, near.d2, mpp, params.repel_alpha_per_um, params.repel_radius_um)


FIT_SPACING_UM = 0.5  # k-means centres are fitted on pixels this far apart
KMEANS_TOLERANCE = 1e-3  # Lloyd iterations stop when at most this share of pixels move


def cluster_features(
    image: np.ndarray, near: NearestPoints, *, mpp: float, params: EncodingParams
) -> np.ndarray:
    """Per-pixel features (H*W, 4) float32: scaled RGB and capped distance to the nearest point."""
    rgb = image.reshape(-1, 3).astype(np.float32) * params.colour_weight
    distance_um = np.minimum(near.d1.reshape(-1) * mpp, params.distance_cap_um)
    distance = (distance_um * params.distance_weight_per_um).astype(np.float32)
    return np.concatenate([rgb, distance[:, None]], axis=1)


def _role_table(votes: np.ndarray, counts: np.ndarray, distance_sums: np.ndarray) -> np.ndarray:
    """BACKGROUND / NUCLEUS / IGNORE of each cluster of each group (n_groups, k), as in Qu et
    al., from per-cluster tallies: its point-disk pixels, its pixels, their summed distance.

    Nucleus: the cluster holding most point-disk pixels. Background: of the others, the one
    farthest from the point on average. Any remaining cluster is ignored.
    """
    n_groups, k = votes.shape
    nucleus = np.argmax(votes, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_distance = np.where(counts > 0, distance_sums / counts, -np.inf)
    mean_distance[np.arange(n_groups), nucleus] = -np.inf
    background = np.argmax(mean_distance, axis=1)
    roles = np.full((n_groups, k), IGNORE, dtype=np.uint8)
    roles[np.arange(n_groups), background] = BACKGROUND
    roles[np.arange(n_groups), nucleus] = NUCLEUS
    return roles


def cluster_label(
    image: np.ndarray,
    points_xy: np.ndarray,
    *,
    mpp: float,
    params: EncodingParams = EncodingParams(),
    near: NearestPoints | None = None,
    edges: np.ndarray | None = None,
    unclicked: np.ndarray | None = None,
    nuclei: np.ndarray | None = None,
) -> np.ndarray:
    """Cluster label (H, W) uint8 from k-means on colour and distance, local or global.

    After clustering, each nucleus mask is cleaned as in Qu et al.: only the connected part
    touching its point is kept (the rest becomes IGNORE), small holes are filled, and Voronoi
    lines are set to BACKGROUND so touching nuclei stay apart. ``unclicked``: the mask of
    :func:`unclicked_nuclei`, when already computed. ``nuclei``: instance labels (H, W) of a
    model's own prediction, joined where they hold one click (a round of self-training).
    """
    shape = image.shape[:2]
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    if len(points_xy) == 0:
        return np.full(shape, BACKGROUND, dtype=np.uint8)
    near = near if near is not None else nearest_points(points_xy, shape)
    disks = point_disks(points_xy, near, radius_px=params.point_radius_um / mpp)
    k = params.n_clusters
    if params.clustering == "local":
        roles = _local_roles(image, near, disks, k=k, mpp=mpp, params=params)
    else:
        features = cluster_features(image, near, mpp=mpp, params=params)
        assign = _global_kmeans(features, k=k, seed=params.seed)
        tallies = (
            np.bincount(assign[disks.reshape(-1)], minlength=k),
            np.bincount(assign, minlength=k),
            np.bincount(assign, weights=features[:, -1], minlength=k),
        )
        roles = _role_table(*(t[None, :] for t in tallies))[0, assign].reshape(shape)
    edges = edges if edges is not None else voronoi_edges(points_xy, near)
    label = _clean_nuclei(roles, edges, disks, max_hole_px=params.max_hole_um2 / mpp**2)
    if unclicked is None:
        unclicked = unclicked_mask(image, near, mpp=mpp, params=params)
    if unclicked is not None:
        if params.unclicked == "background":
            label[unclicked & (label == IGNORE)] = BACKGROUND
        else:
            label[unclicked & (label == BACKGROUND)] = IGNORE
    if params.fuse_floor != "off":
        floor = hematoxylin_watershed(
            image, mpp=mpp, params=WatershedParams(stain=params.fuse_floor)
        )
        label = with_single_click_nuclei(label, floor.labels, points_xy, near, edges)
    if nuclei is not None:
        label = with_single_click_nuclei(label, nuclei, points_xy, near, edges)
    return label


def with_single_click_nuclei(
    label: np.ndarray,
    nuclei: np.ndarray,
    points_xy: np.ndarray,
    near: NearestPoints,
    edges: np.ndarray,
) -> np.ndarray:
    """A copy of the cluster ``label`` with the instances of another segmentation (the floor's,
    or a model's for self-training) that hold exactly one click set to NUCLEUS, Voronoi lines
    kept as they are."""
    fused = label.copy()
    fused[single_click_nuclei(nuclei, points_xy, near) & ~edges] = NUCLEUS
    return fused


def single_click_nuclei(
    nuclei: np.ndarray, points_xy: np.ndarray, near: NearestPoints
) -> np.ndarray:
    """Pixels (H, W) bool of the instances in ``nuclei`` that hold exactly one point, within
    that point's Voronoi cell: where a segmentation outlines a nucleus cleanly around one click,
    it is a better label than a k-means blob (measured against the MoNuSeg masks)."""
    height, width = nuclei.shape
    cols = np.clip(np.round(points_xy[:, 0]).astype(np.intp), 0, width - 1)
    rows = np.clip(np.round(points_xy[:, 1]).astype(np.intp), 0, height - 1)
    hit = nuclei[rows, cols]
    clicks = np.bincount(hit, minlength=int(nuclei.max()) + 1)
    clicks[0] = 0
    owner = np.full(len(clicks), -1, dtype=np.intp)  # the one point of each single-click nucleus
    single = clicks[hit] == 1
    owner[hit[single]] = np.nonzero(single)[0]
    return (owner[nuclei] >= 0) & (near.i1 == owner[nuclei])


def unclicked_mask(
    image: np.ndarray, near: NearestPoints, *, mpp: float, params: EncodingParams
) -> np.ndarray | None:
    """The :func:`unclicked_nuclei` that ``params.unclicked`` acts on (None when it leaves
    them to the clustering)."""
    if params.unclicked == "ignore":
        return None
    return unclicked_nuclei(image, near.d1, mpp=mpp, max_distance_um=params.unclicked_distance_um)


def unclicked_nuclei(
    image: np.ndarray,
    distance_px: np.ndarray,
    *,
    mpp: float,
    max_distance_um: float,
    min_area_um2: float = 5.0,
) -> np.ndarray:
    """Stained blobs (H, W) bool that no click touches: nuclei the annotator chose to skip.

    A blob is a connected region above the Otsu threshold of the smoothed nuclear-stain
    density, at least ``min_area_um2``; it is unclicked when none of its pixels lies within
    ``max_distance_um`` of a point (``distance_px``: per-pixel distance to the nearest point).
    """
    density = ndimage.gaussian_filter(stain_density(image), sigma=0.5 / mpp)
    if np.ptp(density) <= 0:
        return np.zeros(density.shape, dtype=bool)
    blobs, _ = ndimage.label(density > threshold_otsu(density))
    blobs = remove_small_objects(blobs, min_area_um2 / mpp**2)
    unclicked = np.ones(int(blobs.max()) + 1, dtype=bool)
    unclicked[blobs[distance_px * mpp <= max_distance_um]] = False
    unclicked[0] = False
    return unclicked[blobs]


def _local_roles(
    image: np.ndarray,
    near: NearestPoints,
    disks: np.ndarray,
    *,
    k: int,
    mpp: float,
    params: EncodingParams,
) -> np.ndarray:
    """Roles (H, W) from k-means inside each Voronoi cell, restricted to ``cell_radius_um``
    (farther pixels are background); centres are fitted on a regular grid of pixels about
    0.5 µm apart (all pixels at 0.5 µm/px and coarser), see
    :func:`pointcell.kernels.local_kmeans`."""
    cluster, votes, counts, distance_sums = local_kmeans(
        np.ascontiguousarray(image),
        np.ascontiguousarray(near.d1),
        np.ascontiguousarray(near.i1),
        np.ascontiguousarray(disks),
        int(near.i1.max()) + 1,
        k,
        params.colour_weight,
        params.distance_cap_um / mpp,
        params.distance_weight_per_um * mpp,
        params.cell_radius_um / mpp,
        max(1, int(round(FIT_SPACING_UM / mpp))),
        params.kmeans_iterations,
        KMEANS_TOLERANCE,
    )
    roles = _role_table(votes, counts, distance_sums)[near.i1, cluster]
    return np.where(cluster >= 0, roles, BACKGROUND).astype(np.uint8)


def _global_kmeans(
    features: np.ndarray, *, k: int, seed: int, max_samples: int = 200_000
) -> np.ndarray:
    """One k-means over the whole image (Qu et al.), fitted on a seeded subsample for speed."""
    from sklearn.cluster import KMeans  # 1 s to import; only this baseline mode needs it

    rng = np.random.default_rng(seed)
    sample = features
    if len(features) > max_samples:
        sample = features[rng.choice(len(features), size=max_samples, replace=False)]
    model = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(sample)
    return model.predict(features)


def _clean_nuclei(
    roles: np.ndarray, edges: np.ndarray, disks: np.ndarray, *, max_hole_px: float
) -> np.ndarray:
    nucleus = (roles == NUCLEUS) & ~edges
    components, _ = ndimage.label(nucleus)
    touching = np.zeros(components.max() + 1, dtype=bool)
    touching[components[disks]] = True
    touching[0] = False
    kept = fill_small_holes(touching[components], max_hole_px) & ~edges
    label = np.where(roles == BACKGROUND, BACKGROUND, IGNORE).astype(np.uint8)
    label[edges] = BACKGROUND
    label[kept] = NUCLEUS
    return label


def encode(
    image: np.ndarray,
    points_xy: np.ndarray,
    *,
    mpp: float,
    params: EncodingParams = EncodingParams(),
    nuclei: np.ndarray | None = None,
) -> Encodings:
    """Compute all three encodings of one image (H, W, 3) uint8 with points (N, 2) as (x, y);
    ``nuclei``: a model's instance labels of the image for self-training (:func:`cluster_label`)."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}")
    if mpp <= 0:
        raise ValueError(f"pixel size must be positive, got {mpp}")
    points_xy = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)
    shape = image.shape[:2]
    if nuclei is not None and nuclei.shape != shape:
        raise ValueError(f"nuclei must have the image's shape {shape}, got {nuclei.shape}")
    near = nearest_points(points_xy, shape)
    edges = voronoi_edges(points_xy, near)
    voronoi = voronoi_label(points_xy, shape, mpp=mpp, params=params, near=near, edges=edges)
    unclicked = unclicked_mask(image, near, mpp=mpp, params=params)
    cluster = cluster_label(
        image,
        points_xy,
        mpp=mpp,
        params=params,
        near=near,
        edges=edges,
        unclicked=unclicked,
        nuclei=nuclei,
    )
    repel = repel_code(points_xy, shape, mpp=mpp, params=params, near=near)
    filtered = np.where(cluster == NUCLEUS, repel, 0.0).astype(np.float32)
    if params.unclicked == "exclude" and unclicked is not None:
        # the repel target is 0 wherever no click is near: without this, an unclicked nucleus
        # still learns "not a nucleus" from the repel loss. Skipped where the cluster loss
        # skips it too (an image without clicks keeps its all-background cluster label).
        filtered[unclicked & (cluster == IGNORE)] = REPEL_IGNORE
    return Encodings(voronoi=voronoi, cluster=cluster, repel=repel, filtered_repel=filtered)
