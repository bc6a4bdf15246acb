from dataclasses import replace

import numpy as np
import pytest
import shapely
from scipy import ndimage

from pointcell.masks import instance_centroids
from pointcell.postprocess import (
    PostprocessParams,
    add_disks,
    cells_within,
    detect,
    instances,
    postprocess,
    refine_outlines,
)


def blobs(centres_rc, shape=(60, 80), sigma=5.0):
    """A probability map: the maximum of Gaussian bumps of height 0.95."""
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    maps = [np.exp(-((rr - r) ** 2 + (cc - c) ** 2) / (2 * sigma**2)) for r, c in centres_rc]
    return (0.95 * np.max(maps, axis=0)).astype(np.float32)


def test_watershed_splits_touching_nuclei_connected_components_do_not():
    prob = blobs([(30, 30), (30, 40)])  # 10 px apart: one connected mask (0.58 between)
    params = PostprocessParams(min_area_um2=0, centre="peak")
    split = postprocess(prob, mpp=0.5, params=params)
    merged = postprocess(
        prob, mpp=0.5, params=PostprocessParams(instances="connected", min_area_um2=0)
    )
    assert split.labels.max() == 2 and merged.labels.max() == 1
    np.testing.assert_allclose(sorted(split.xy.tolist()), [[30, 30], [40, 30]])
    assert set(split.instance.tolist()) == {1, 2}
    assert len(merged.xy) == 2 and set(merged.instance.tolist()) == {1}


def test_detections_respect_the_minimum_distance():
    prob = blobs([(30, 30), (30, 34)], sigma=2.0)  # peaks 4 px = 1 µm apart at 0.25 µm/px
    assert len(detect(prob, mpp=0.25, params=PostprocessParams())) == 1
    assert (
        len(detect(prob, mpp=0.25, params=PostprocessParams(min_distance_um=0.5, smooth_um=0))) == 2
    )


def test_detections_need_the_minimum_probability_and_the_mask():
    prob = blobs([(30, 30)]) * 0.6 / 0.95  # peak 0.6
    assert len(detect(prob, mpp=0.25, params=PostprocessParams(min_probability=0.7))) == 0
    cells = postprocess(prob, mpp=0.5)
    assert len(cells.xy) == 1
    r, c = cells.xy[0, ::-1].astype(int)
    assert cells.labels[r, c] == cells.instance[0] > 0
    assert cells.score[0] == pytest.approx(0.6, abs=1e-3)


def test_small_objects_are_removed_with_their_detections():
    prob = blobs([(30, 20), (30, 60)], sigma=5.0)
    prob[:, 40:] = blobs([(30, 60)], sigma=1.0)[:, 40:]  # a tiny object on the right
    params = PostprocessParams(min_area_um2=1.0)  # 16 px at 0.25 µm/px
    cells = postprocess(prob, mpp=0.25, params=params)
    assert cells.labels.max() == 1 and len(cells.xy) == 1
    assert (np.bincount(cells.labels.ravel())[1:] >= 16).all()


def test_every_instance_gets_a_detection():
    prob = np.zeros((40, 40), np.float32)
    prob[10:20, 10:20] = 0.8  # flat plateau: peak_local_max may still find it, or not
    prob[25:35, 25:35] = 0.55
    cells = postprocess(prob, mpp=0.5, params=PostprocessParams(min_area_um2=0))
    assert cells.labels.max() == 2
    assert sorted(set(cells.instance.tolist())) == [1, 2]
    assert (cells.areas() == 100).all()


def test_objects_less_probable_than_the_minimum_are_dropped():
    prob = np.zeros((40, 40), np.float32)
    prob[5:15, 5:15] = 0.55  # below the threshold: dropped with its instance
    prob[25:35, 25:35] = 0.8
    params = PostprocessParams(min_probability=0.6, min_area_um2=0)
    cells = postprocess(prob, mpp=0.5, params=params)
    assert cells.labels.max() == 1 and (cells.labels[25:35, 25:35] == 1).all()
    assert cells.labels[5:15, 5:15].max() == 0
    assert len(cells.xy) == 1 and cells.score.min() >= 0.6
    strict = PostprocessParams(min_probability=0.9, min_area_um2=0)
    assert len(postprocess(prob, mpp=0.5, params=strict).xy) == 0


def test_a_lower_foreground_keeps_faint_nuclei_and_widens_outlines():
    prob = np.zeros((40, 40), np.float32)
    prob[5:15, 5:15] = 0.4  # a faint nucleus
    prob[24:36, 24:36] = 0.4  # a confident one with a faint rim
    prob[26:34, 26:34] = 0.8
    cells = postprocess(prob, mpp=0.5, params=PostprocessParams(min_area_um2=0))
    assert len(cells.xy) == 1 and cells.areas().tolist() == [64]
    low = PostprocessParams(min_area_um2=0, foreground=0.35, min_probability=0.35)
    cells = postprocess(prob, mpp=0.5, params=low)
    assert len(cells.xy) == 2 and sorted(cells.areas().tolist()) == [100, 144]
    with pytest.raises(ValueError, match="foreground"):
        PostprocessParams(foreground=1.0)


def test_empty_map_gives_no_cells():
    cells = postprocess(np.zeros((20, 20), np.float32), mpp=0.5)
    assert cells.labels.max() == 0 and cells.xy.shape == (0, 2)


def test_instances_are_numbered_consecutively():
    prob = blobs([(15, 15), (15, 60), (45, 40)])
    peaks = detect(prob, mpp=0.25, params=PostprocessParams())
    labels = instances(prob, peaks, mpp=0.25, params=PostprocessParams())
    assert np.unique(labels).tolist() == [0, 1, 2, 3]


def test_bad_instance_method():
    with pytest.raises(ValueError, match="watershed"):
        PostprocessParams(instances="stardist")


def test_fill_small_holes_fills_only_small_enclosed_holes():
    from pointcell.masks import fill_small_holes

    mask = np.zeros((12, 12), bool)
    mask[1:5, 1:5] = True
    mask[2, 2] = False  # a 1-pixel hole
    mask[6:12, 6:12] = True
    mask[7:11, 7:11] = False  # a 16-pixel hole
    filled = fill_small_holes(mask, max_hole_px=4)
    assert filled[2, 2] and not filled[8, 8]
    assert filled.sum() == mask.sum() + 1
    mask[0, 3] = False  # a notch open to the border is not a hole
    assert not fill_small_holes(mask, max_hole_px=4)[0, 3]


def test_fill_small_holes_without_a_size_limit_is_binary_fill_holes():
    from pointcell.masks import fill_small_holes

    mask = np.random.default_rng(0).random((64, 64)) < 0.55
    np.testing.assert_array_equal(
        fill_small_holes(mask, max_hole_px=np.inf), ndimage.binary_fill_holes(mask)
    )


def test_centroid_centres_sit_at_the_middle_of_a_nucleus_that_peaks_off_centre():
    rr, cc = np.mgrid[0:60, 0:60]
    inside = (rr - 30) ** 2 + (cc - 30) ** 2 <= 10**2  # disk of radius 10 at (30, 30)
    prob = np.where(inside, 0.7 + 0.25 * (cc - 20) / 20, 0.0).astype(np.float32)  # peak at rim
    at_peak = postprocess(prob, mpp=0.5, params=PostprocessParams(min_area_um2=0, centre="peak"))
    at_centroid = postprocess(prob, mpp=0.5, params=PostprocessParams(min_area_um2=0))
    assert len(at_peak.xy) == len(at_centroid.xy) == 1
    assert at_peak.xy[0, 0] > 36  # the peak sits near the right rim
    np.testing.assert_allclose(at_centroid.xy[0], [30, 30], atol=1e-9)
    assert at_centroid.instance.tolist() == at_peak.instance.tolist()
    assert at_centroid.score[0] == pytest.approx(at_peak.score[0])


def test_instance_centroids_of_known_rectangles():
    labels = np.zeros((10, 12), np.int32)
    labels[1:4, 2:5] = 1  # rows 1-3, cols 2-4: centre (x=3, y=2)
    labels[6:10, 8:12] = 2  # rows 6-9, cols 8-11: centre (x=9.5, y=7.5)
    np.testing.assert_allclose(instance_centroids(labels), [[3, 2], [9.5, 7.5]])


def test_a_centroid_outside_its_nucleus_gives_way_to_the_peak():
    prob = np.zeros((40, 40), np.float32)
    prob[5:35, 5:9] = 0.8  # an L-shaped nucleus: its centroid lies in the bend's gap
    prob[31:35, 5:35] = 0.8
    prob[20, 7] = 0.9
    one_peak = PostprocessParams(min_area_um2=0, smooth_um=0, min_distance_um=50)
    cells = postprocess(prob, mpp=0.5, params=one_peak)
    assert len(cells.xy) == 1
    x, y = cells.xy[0]
    assert cells.labels[round(y), round(x)] == cells.instance[0] == 1
    assert (x, y) == (7, 20)


def test_bad_centre_method():
    with pytest.raises(ValueError, match="centroid"):
        PostprocessParams(centre="middle")
    with pytest.raises(ValueError, match="min_proximity"):
        PostprocessParams(min_proximity=1.5)


def test_cells_within_a_region_keep_their_whole_nucleus_and_class():
    prob = blobs([(20, 20), (20, 60), (45, 40)])
    cells = postprocess(prob, mpp=0.5, params=PostprocessParams(min_area_um2=0))
    cells = replace(
        cells,
        class_index=np.arange(3, dtype=np.int32),
        class_probability=np.array([0.5, 0.6, 0.7], np.float32),
    )
    # a region over the left part: its edge at x = 23 cuts the first nucleus off-centre
    region = shapely.box(0, 0, 23, 60)
    kept = cells_within(cells, region)
    row = np.argmin(cells.xy[:, 0])
    first = cells.instance[row]
    assert len(kept.xy) == 1 and kept.instance.tolist() == [first]
    np.testing.assert_allclose(kept.xy, [[20, 20]], atol=0.5)
    assert kept.class_index.tolist() == [row]
    assert kept.class_probability.tolist() == [cells.class_probability[row]]
    assert set(np.unique(kept.labels).tolist()) == {0, first}
    assert ((kept.labels == first) == (cells.labels == first)).all()  # whole, past the edge
    assert (cells.labels == first)[:, 24:].any()
    nothing = cells_within(cells, shapely.box(70, 0, 80, 10))
    assert len(nothing.xy) == 0 and nothing.labels.max() == 0


def test_proximity_peaks_choose_split_and_add_cells():
    nuclei = blobs([(30, 20), (30, 30), (30, 65)])  # two touching nuclei and a lone one
    proximity = blobs([(30, 20), (30, 30), (10, 50)], sigma=2.0) / 0.95  # peaks of 1
    proximity = np.maximum(proximity, 0.1 * blobs([(50, 10)], sigma=2.0) / 0.95)  # too low
    params = PostprocessParams(min_area_um2=0, min_proximity=0.15)
    cells = postprocess(nuclei, mpp=0.5, params=params, proximity=proximity)
    order = np.lexsort((cells.xy[:, 0], cells.xy[:, 1]))
    assert cells.xy[order].tolist() == [[50, 10], [20, 30], [30, 30]]  # centres at the peaks
    assert cells.score[order] == pytest.approx([1, 1, 1], abs=1e-6)
    assert sorted(cells.instance.tolist()) == [1, 2, 3]  # one instance each, nothing else
    assert cells.labels.max() == 3 and not cells.labels[30, 65]  # the unclicked-like nucleus
    assert cells.labels[30, 18] != cells.labels[30, 32]  # the touching pair is split
    faint = cells.labels == cells.instance[order[0]]  # the peak on background: a disk of 2 µm
    assert faint.sum() == np.count_nonzero(np.hypot(*np.mgrid[-4:5, -4:5]) <= 4)


def test_proximity_peaks_respect_the_minimum_distance():
    proximity = blobs([(30, 20), (30, 23)], sigma=1.0) / 0.95  # two peaks 1.5 µm apart
    cells = postprocess(
        np.zeros_like(proximity), mpp=0.5, params=PostprocessParams(), proximity=proximity
    )
    assert len(cells.xy) == 1


def test_disks_grow_only_on_background_and_split_between_neighbours():
    labels = np.zeros((10, 20), np.int32)
    labels[:, :3] = 1
    grown = add_disks(labels, np.array([[5, 3], [5, 9], [5, 12], [0, 0]]), radius_px=2.0)
    assert grown[5, 3] == 2 and grown[5, 1] == 1  # (0, 0) was taken: no disk for it
    assert grown[5, 9] == 3 and grown[5, 12] == 4 and grown[5, 10] == 3 and grown[5, 11] == 4
    assert grown.max() == 4 and grown[5, 15] == 0


def disk(shape, centre_rc, radius):
    rr, cc = np.mgrid[0 : shape[0], 0 : shape[1]]
    return (rr - centre_rc[0]) ** 2 + (cc - centre_rc[1]) ** 2 <= radius**2


def test_refined_outlines_grow_to_the_stained_edge_within_reach():
    shape = (40, 60)
    # the network saw radius-3 cores of two nuclei whose stain reaches radius 5
    labels = (disk(shape, (20, 15), 3) * 1 + disk(shape, (20, 40), 3) * 2).astype(np.int32)
    stained = disk(shape, (20, 15), 5) | disk(shape, (20, 40), 5) | disk(shape, (5, 55), 3)
    prob = blobs([(20, 15), (20, 40)], shape=shape)
    grown = refine_outlines(labels, prob, stained, grow_px=2.5)
    np.testing.assert_array_equal(grown == 1, disk(shape, (20, 15), 5))
    np.testing.assert_array_equal(grown == 2, disk(shape, (20, 40), 5))
    # a stained blob far from every nucleus stays background; no reach, no change
    assert not grown[disk(shape, (5, 55), 3)].any()
    np.testing.assert_array_equal(refine_outlines(labels, prob, stained, grow_px=0), labels)
    short = refine_outlines(labels, prob, stained, grow_px=1.0)
    assert np.count_nonzero(labels) < np.count_nonzero(short) < np.count_nonzero(grown)


def test_refined_outlines_share_a_stained_bridge_by_probability():
    shape = (30, 40)
    labels = (disk(shape, (15, 12), 3) * 1 + disk(shape, (15, 26), 3) * 2).astype(np.int32)
    stained = np.zeros(shape, bool)
    stained[12:19, 8:31] = True  # one stained band over both nuclei
    prob = blobs([(15, 12), (15, 26)], shape=shape, sigma=4.0)
    grown = refine_outlines(labels, prob, stained, grow_px=10)
    band = grown[15, 15:24]  # the gap between the cores: the nearer, more probable one wins
    assert band.tolist() == [1, 1, 1, 1, 1, 2, 2, 2, 2]
    assert set(np.unique(grown).tolist()) == {0, 1, 2}


def test_cells_from_maps_refines_outlines_on_the_image_stain(small_checkpoint):
    from pointcell.inference import cells_from_maps, load_predictor

    predictor = load_predictor(small_checkpoint, device="cpu")
    shape = (48, 48)
    image = np.full((*shape, 3), 235, np.uint8)  # pale background
    image[disk(shape, (24, 24), 8)] = (60, 40, 120)  # a hematoxylin-dark nucleus, radius 8 px
    prob = np.where(disk(shape, (24, 24), 5), 0.9, 0.05).astype(np.float32)
    plain = PostprocessParams(min_area_um2=0)
    refined = replace(plain, refine_outlines_um=2.0)
    before = cells_from_maps(predictor, prob[None], mpp=0.5, params=refined)  # no image
    after = cells_from_maps(predictor, prob[None], mpp=0.5, params=refined, image=image)
    assert np.count_nonzero(before.labels) == np.count_nonzero(disk(shape, (24, 24), 5))
    # out to the stained edge (radius 8, blurred by the stain's 0.5 µm smoothing), no farther
    nucleus = after.labels > 0
    assert nucleus[disk(shape, (24, 24), 7)].all() and not nucleus[~disk(shape, (24, 24), 9)].any()
    np.testing.assert_array_equal(after.xy, before.xy)  # detections are untouched
    with pytest.raises(ValueError, match="refine_outlines_um"):
        PostprocessParams(refine_outlines_um=-1)
