import numpy as np
import pytest
from scipy import ndimage
from scipy.spatial import cKDTree

from pointcell.encodings import (
    BACKGROUND,
    IGNORE,
    NUCLEUS,
    REPEL_IGNORE,
    EncodingParams,
    cluster_label,
    encode,
    nearest_points,
    repel_code,
    single_click_nuclei,
    unclicked_nuclei,
    voronoi_label,
    with_single_click_nuclei,
)
from pointcell.floor import hematoxylin_watershed


def test_voronoi_line_lies_exactly_between_two_points():
    label = voronoi_label(np.array([[10.0, 20.0], [30.0, 20.0]]), (40, 41), mpp=0.5)
    edge_cols = np.unique(np.nonzero(label == BACKGROUND)[1])
    assert edge_cols.tolist() == [20]
    assert (label[:, 20] == BACKGROUND).all()


def test_voronoi_line_between_pixels_marks_both_neighbours():
    label = voronoi_label(np.array([[10.0, 5.0], [31.0, 5.0]]), (11, 41), mpp=0.5)
    assert np.unique(np.nonzero(label == BACKGROUND)[1]).tolist() == [20, 21]


def test_voronoi_point_disks_and_ignore_elsewhere():
    # mpp 0.25 and radius 0.5 µm -> disk of radius 2 px around each point (Qu et al.)
    label = voronoi_label(np.array([[10.0, 20.0], [30.0, 20.0]]), (40, 41), mpp=0.25)
    rows, cols = np.nonzero(label == NUCLEUS)
    assert len(rows) == 2 * 13  # a radius-2 digital disk has 13 pixels
    assert set(np.unique(label)) == {BACKGROUND, NUCLEUS, IGNORE}
    assert label[5, 5] == IGNORE


def test_voronoi_lines_separate_every_cell_under_4_connectivity():
    rng = np.random.default_rng(1)
    points = rng.uniform(0, 120, size=(40, 2))
    label = voronoi_label(points, (120, 120), mpp=0.5)
    components, _ = ndimage.label(label != BACKGROUND)
    owners = components[np.rint(points[:, 1]).astype(int), np.rint(points[:, 0]).astype(int)]
    assert (owners > 0).all()
    assert len(np.unique(owners)) == len(points)  # no two points share a component


def test_voronoi_with_zero_and_one_point():
    assert (voronoi_label(np.empty((0, 2)), (8, 8), mpp=0.5) == IGNORE).all()
    one = voronoi_label(np.array([[4.0, 4.0]]), (8, 8), mpp=0.5)
    assert not (one == BACKGROUND).any()
    assert one[4, 4] == NUCLEUS


def test_repel_is_one_at_a_point_and_matches_the_formula():
    points = np.array([[20.0, 50.0], [28.0, 50.0], [70.0, 50.0]])
    params = EncodingParams(repel_alpha_per_um=0.1, repel_radius_um=35.0)
    code = repel_code(points, (100, 100), mpp=0.5, params=params)
    assert code[50, 20] == pytest.approx(1.0)
    # 3 px below the first point: d1 = 3, d2 = sqrt(8^2 + 3^2), D = d1 (1 + d1/d2) px
    d1, d2 = 3.0, np.hypot(8.0, 3.0)
    expected = 1.0 / (1.0 + 0.1 * d1 * (1 + d1 / d2) * 0.5)
    assert code[53, 20] == pytest.approx(expected, rel=1e-6)


def test_repel_decays_faster_for_the_point_with_a_closer_neighbour():
    points = np.array([[20.0, 50.0], [28.0, 50.0], [70.0, 50.0]])
    code = repel_code(points, (100, 100), mpp=0.5)
    crowded = code[53, 20]  # 3 px from a point whose neighbour is 8 px away
    isolated = code[53, 70]  # 3 px from a point whose neighbour is 42 px away
    assert crowded < isolated < 1.0


def test_repel_is_zero_beyond_its_radius():
    code = repel_code(
        np.array([[0.0, 0.0]]), (1, 200), mpp=0.5, params=EncodingParams(repel_radius_um=35.0)
    )
    assert code[0, 69] > 0  # 34.5 µm
    assert code[0, 70] == 0  # 35 µm
    assert (repel_code(np.empty((0, 2)), (5, 5), mpp=0.5) == 0).all()


def test_nearest_points_distances():
    near = nearest_points(np.array([[0.0, 0.0], [4.0, 0.0]]), (1, 5))
    np.testing.assert_allclose(near.d1[0], [0, 1, 2, 1, 0])
    np.testing.assert_allclose(near.d2[0], [4, 3, 2, 3, 4])


@pytest.mark.parametrize(
    ("n_points", "corner_only"), [(1, False), (2, False), (7, False), (300, False), (40, True)]
)
def test_nearest_points_are_exact_against_a_kd_tree(n_points, corner_only):
    # points clustered in one corner leave most pixels beyond every scatter disk
    rng = np.random.default_rng(n_points)
    shape = (180, 240)
    high = [40, 40] if corner_only else [shape[1] - 0.5, shape[0] - 0.5]
    points = rng.uniform(-0.5, high, size=(n_points, 2))
    near = nearest_points(points, shape)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    grid = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(float)
    k = min(2, n_points)
    distance, index = cKDTree(points).query(grid, k=k)
    distance, index = distance.reshape(-1, k), index.reshape(-1, k)
    np.testing.assert_allclose(near.d1.ravel(), distance[:, 0])
    np.testing.assert_array_equal(near.i1.ravel(), index[:, 0])
    if k == 2:
        np.testing.assert_allclose(near.d2.ravel(), distance[:, 1])
    else:
        assert np.isinf(near.d2).all() and (near.i2 == -1).all()


def test_local_clustering_adapts_to_each_cells_own_stain():
    # a dark nucleus on a mid background beside a pale nucleus on a light background: the
    # pale nucleus is lighter than the dark cell's background, yet each cell finds its own
    shape, radius = (40, 80), 6
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    left = cols < 40
    image = np.where(left[..., None], 150, 225).astype(float) * np.ones(3)
    dark = (cols - 20) ** 2 + (rows - 20) ** 2 <= radius**2
    pale = (cols - 60) ** 2 + (rows - 20) ** 2 <= radius**2
    image[dark], image[pale] = 60, 175
    image += np.random.default_rng(0).normal(0, 3, image.shape)
    image = np.clip(image, 0, 255).astype(np.uint8)
    label = cluster_label(image, np.array([[20.0, 20.0], [60.0, 20.0]]), mpp=0.25)
    found = label == NUCLEUS
    assert not (found & ~ndimage.binary_dilation(dark | pale, iterations=2)).any()
    for nucleus in (dark, pale):
        assert found[ndimage.binary_erosion(nucleus, iterations=2)].all()


@pytest.mark.parametrize("clustering", ["local", "global"])
def test_cluster_label_recovers_dark_disks_within_two_pixels(disks, clustering):
    params = EncodingParams(clustering=clustering)
    label = cluster_label(disks.image, disks.centres_xy, mpp=disks.mpp, params=params)
    truth = disks.truth > 0
    nucleus = label == NUCLEUS
    assert not (nucleus & ~ndimage.binary_dilation(truth, iterations=2)).any()
    assert not (ndimage.binary_erosion(truth, iterations=2) & ~nucleus).any()
    assert (label[~ndimage.binary_dilation(truth, iterations=4)] != NUCLEUS).all()


def test_cluster_label_is_deterministic(disks):
    for clustering in ("local", "global"):
        params = EncodingParams(clustering=clustering, seed=3)
        first = cluster_label(disks.image, disks.centres_xy, mpp=disks.mpp, params=params)
        second = cluster_label(disks.image, disks.centres_xy, mpp=disks.mpp, params=params)
        np.testing.assert_array_equal(first, second)


def test_cluster_label_keeps_only_the_part_touching_the_point(disks):
    image = disks.image.copy()
    image[2:6, 85:92] = (90, 50, 140)  # dark debris far from any point
    label = cluster_label(image, disks.centres_xy, mpp=disks.mpp)
    assert (label[2:6, 85:92] != NUCLEUS).all()


def test_unclicked_nuclei_are_the_stained_blobs_no_click_reaches(disks):
    clicked = disks.centres_xy[:4]  # the fifth disk, at (48, 48), has no click
    near = nearest_points(clicked, disks.image.shape[:2])
    found = unclicked_nuclei(disks.image, near.d1, mpp=disks.mpp, max_distance_um=4.0)
    skipped = disks.truth == 5
    assert found[ndimage.binary_erosion(skipped, iterations=2)].all()
    assert not found[(disks.truth > 0) & ~skipped].any()
    assert not found[~ndimage.binary_dilation(skipped, iterations=3)].any()
    # a click within reach of the blob claims it
    reach = (26.8 - 6) * disks.mpp  # µm from the nearest click to the blob's edge
    near_click = unclicked_nuclei(disks.image, near.d1, mpp=disks.mpp, max_distance_um=reach + 1)
    assert not near_click.any()


def test_unclicked_nuclei_become_background_only_when_asked(disks):
    clicked = disks.centres_xy[:4]
    skipped = disks.truth == 5
    default = cluster_label(disks.image, clicked, mpp=disks.mpp)
    strict = cluster_label(
        disks.image, clicked, mpp=disks.mpp, params=EncodingParams(unclicked="background")
    )
    assert (default[skipped] == IGNORE).mean() > 0.5
    assert (strict[skipped] == BACKGROUND).all()
    np.testing.assert_array_equal(strict == NUCLEUS, default == NUCLEUS)
    with pytest.raises(ValueError, match="unclicked"):
        EncodingParams(unclicked="drop")


def test_excluded_unclicked_nuclei_leave_the_cluster_loss(disks):
    clicked = disks.centres_xy[:1]  # (20, 20); the disk at (75, 72) lies 18 µm away
    far = disks.truth == 4
    default = cluster_label(disks.image, clicked, mpp=disks.mpp)
    assert (default[far] == BACKGROUND).all()  # beyond the 12 µm cell radius
    excluded = cluster_label(
        disks.image, clicked, mpp=disks.mpp, params=EncodingParams(unclicked="exclude")
    )
    inner = ndimage.binary_erosion(far, iterations=2)
    assert (excluded[inner] == IGNORE).all()
    # only unclicked blobs change: the clicked nucleus and plain background stay as they were
    changed = excluded != default
    assert not changed[~ndimage.binary_dilation(disks.truth > 1, iterations=3)].any()
    np.testing.assert_array_equal(excluded == NUCLEUS, default == NUCLEUS)


def test_excluded_unclicked_nuclei_leave_the_repel_loss(disks):
    clicked = disks.centres_xy[:1]
    far = disks.truth == 4  # unclicked, 18 µm from the click
    default = encode(disks.image, clicked, mpp=disks.mpp)
    excluded = encode(
        disks.image, clicked, mpp=disks.mpp, params=EncodingParams(unclicked="exclude")
    )
    assert (default.filtered_repel[far] == 0).all()  # "not a nucleus" to the repel loss
    assert (
        excluded.filtered_repel[ndimage.binary_erosion(far, iterations=2)] == REPEL_IGNORE
    ).all()
    skipped = excluded.filtered_repel < 0
    assert not skipped[~ndimage.binary_dilation(disks.truth > 1, iterations=3)].any()
    np.testing.assert_array_equal(
        excluded.filtered_repel[~skipped], default.filtered_repel[~skipped]
    )
    # without clicks the cluster label is all background, and the repel loss agrees with it
    unclicked_only = encode(
        disks.image, np.empty((0, 2)), mpp=disks.mpp, params=EncodingParams(unclicked="exclude")
    )
    assert (unclicked_only.filtered_repel == 0).all()


def test_encode_zero_points_is_all_background_for_clusters(disks):
    enc = encode(disks.image, np.empty((0, 2)), mpp=0.25)
    assert (enc.cluster == BACKGROUND).all()
    assert (enc.voronoi == IGNORE).all()
    assert (enc.repel == 0).all() and (enc.filtered_repel == 0).all()


def test_filtered_repel_is_repel_inside_nuclei_only(disks):
    enc = encode(disks.image, disks.centres_xy, mpp=disks.mpp)
    inside = enc.cluster == NUCLEUS
    np.testing.assert_array_equal(enc.filtered_repel[inside], enc.repel[inside])
    assert (enc.filtered_repel[~inside] == 0).all()
    assert enc.voronoi.dtype == enc.cluster.dtype == np.uint8
    assert enc.repel.dtype == np.float32


def test_encode_rejects_bad_arguments(disks):
    with pytest.raises(ValueError, match="H, W, 3"):
        encode(disks.image[..., 0], disks.centres_xy, mpp=0.25)
    with pytest.raises(ValueError, match="positive"):
        encode(disks.image, disks.centres_xy, mpp=0)
    with pytest.raises(ValueError, match="clustering"):
        EncodingParams(clustering="kmeans")


def test_single_click_nuclei_keeps_objects_around_one_click_within_its_voronoi_cell():
    nuclei = np.zeros((10, 30), np.int32)
    nuclei[2:6, 1:5] = 1  # holds click A only
    nuclei[2:6, 10:19] = 2  # holds clicks B and C: a merge, not a label
    nuclei[7:9, 25:29] = 3  # no click
    nuclei[2:6, 21:25] = 4  # holds click D (x=21), but col 24 is nearer to E (x=26)
    points = np.array([[2.0, 4.0], [11.0, 4.0], [16.0, 4.0], [21.0, 4.0], [26.0, 4.0]])
    kept = single_click_nuclei(nuclei, points, nearest_points(points, nuclei.shape))
    expected = nuclei == 1
    expected[2:6, 21:24] = True
    assert (kept == expected).all()


def test_a_models_nuclei_join_the_label_but_not_on_voronoi_lines():
    label = np.full((6, 12), IGNORE, np.uint8)
    label[5, 0] = BACKGROUND
    nuclei = np.zeros((6, 12), np.int32)
    nuclei[0:3, 0:3] = 1  # around click A alone
    nuclei[1:5, 7:12] = 2  # around click B alone, crossing the line drawn at column 8
    points = np.array([[1.0, 1.0], [10.0, 3.0]])
    near = nearest_points(points, label.shape)
    edges = np.zeros(label.shape, bool)
    edges[:, 8] = True
    fused = with_single_click_nuclei(label, nuclei, points, near, edges)
    assert (label[:5] == IGNORE).all()  # the input is not changed
    expected = label.copy()
    expected[0:3, 0:3] = NUCLEUS
    expected[1:5, 9:12] = NUCLEUS
    expected[1:5, 7] = NUCLEUS  # column 7 is nearer B than A
    assert (fused == expected).all()


def test_fused_labels_add_the_floor_nuclei_around_one_click(disks):
    points = np.vstack([disks.centres_xy, [[49.0, 48.0]]])  # two clicks on the centre disk
    plain = cluster_label(disks.image, points, mpp=disks.mpp, params=EncodingParams())
    fused = cluster_label(
        disks.image, points, mpp=disks.mpp, params=EncodingParams(fuse_floor="he")
    )
    near = nearest_points(points, plain.shape)
    floor = hematoxylin_watershed(disks.image, mpp=disks.mpp).labels
    edges = voronoi_label(points, plain.shape, mpp=disks.mpp, near=near) == BACKGROUND
    added = single_click_nuclei(floor, points, near) & ~edges
    assert added.sum() > 4 * 100  # four disks of ~113 px
    assert (fused[added] == NUCLEUS).all()
    assert (fused[~added] == plain[~added]).all()  # the rest, and the twice-clicked disk, kept
    assert not added[disks.truth == 5].any()
    with pytest.raises(ValueError, match="fuse_floor must be"):
        EncodingParams(fuse_floor="yes")


def test_self_labels_add_a_models_nuclei_around_one_click(disks):
    points = np.vstack([disks.centres_xy, [[49.0, 48.0]]])  # two clicks on the centre disk
    plain = encode(disks.image, points, mpp=disks.mpp)
    own = encode(disks.image, points, mpp=disks.mpp, nuclei=disks.truth)  # a perfect model
    near = nearest_points(points, plain.cluster.shape)
    edges = plain.voronoi == BACKGROUND
    added = single_click_nuclei(disks.truth, points, near) & ~edges
    assert added.sum() > 4 * 100 and not added[disks.truth == 5].any()
    assert (own.cluster[added] == NUCLEUS).all()
    assert (own.cluster[~added] == plain.cluster[~added]).all()
    assert (own.filtered_repel[added] > 0).all()  # the repel target follows the cluster label
    with pytest.raises(ValueError, match="image's shape"):
        encode(disks.image, points, mpp=disks.mpp, nuclei=disks.truth[1:])
