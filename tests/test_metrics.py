"""Metrics on tiny hand-made label images whose answers are worked out in the comments."""

import numpy as np
import pytest

from pointcell.metrics import (
    DetectionErrors,
    aggregated_jaccard,
    concordance,
    detection_errors,
    detection_scores,
    match_points,
    object_dice,
    panoptic_quality,
    pixel_scores,
    segmentation_scores,
    systematic_offset,
)


def blank(shape=(4, 8)):
    return np.zeros(shape, dtype=np.int32)


def test_perfect_prediction_scores_one_everywhere():
    true = blank()
    true[0:2, 0:2] = 1
    true[2:4, 4:8] = 2
    pred = np.where(true == 1, 7, np.where(true == 2, 3, 0))  # other ids, same objects
    scores = segmentation_scores(true, pred)
    assert scores.to_dict() == {k: 1.0 for k in scores.to_dict()}


def test_pixel_accuracy_and_f1():
    true = blank((2, 2))
    true[0, :] = 1  # two foreground pixels
    pred = blank((2, 2))
    pred[0, 0] = pred[1, 1] = 1  # one right, one wrong
    accuracy, f1 = pixel_scores(true, pred)
    assert accuracy == 0.5  # pixels (0,0) and (1,0) agree
    assert f1 == pytest.approx(2 * 1 / (2 + 2))


def test_aji_with_an_unmatched_prediction():
    true = blank()
    true[0:2, 0:2] = 1  # 4 px
    pred = blank()
    pred[0:2, 0:2] = 1  # exact match
    pred[2:4, 6:8] = 2  # 4 px false positive, never paired
    # C = 4, U = 4 + 4 (unused prediction)
    assert aggregated_jaccard(true, pred) == pytest.approx(4 / 8)


def test_aji_with_an_unmatched_true_nucleus():
    true = blank()
    true[0:2, 0:2] = 1
    true[2:4, 6:8] = 2  # missed: adds only its own 4 px to U
    pred = blank()
    pred[0:2, 0:2] = 5
    assert aggregated_jaccard(true, pred) == pytest.approx(4 / 8)


def test_aji_split_and_merge():
    # split: one true object of 8 px predicted as two halves of 4 px
    true = blank()
    true[0:2, 0:4] = 1
    pred = blank()
    pred[0:2, 0:2] = 1
    pred[0:2, 2:4] = 2
    # both halves have IoU 0.5; argmax picks the first: C = 4, U = 8; the other half is
    # unused: U += 4 -> 4 / 12
    assert aggregated_jaccard(true, pred) == pytest.approx(4 / 12)
    # merge: two true objects of 4 px predicted as one of 8 px
    # each true object pairs with it: C = 4 + 4, U = 8 + 8 -> 0.5
    assert aggregated_jaccard(pred, true) == pytest.approx(8 / 16)


def test_object_dice_split():
    true = blank()
    true[0:2, 0:4] = 1  # 8 px
    pred = blank()
    pred[0:2, 0:2] = 1
    pred[0:2, 2:4] = 2  # 4 + 4 px
    # true side: G1's best match is a half: Dice = 2*4/(8+4) = 2/3, weight 1
    # predicted side: each half's best match is G1: Dice 2/3, weights 1/2 each
    assert object_dice(true, pred) == pytest.approx(0.5 * (2 / 3 + 2 / 3))


def test_panoptic_quality_by_hand():
    true = blank()
    true[0:2, 0:2] = 1  # 4 px
    true[0:2, 4:8] = 2  # 8 px
    pred = blank()
    pred[0:2, 0:2] = 1  # IoU 1 with true 1
    pred[0:2, 4:6] = 2  # IoU 4/8 = 0.5 with true 2: not > 0.5, no match
    pred[3, 0:2] = 3  # false positive
    pq = panoptic_quality(true, pred)
    assert (pq.tp, pq.fp, pq.fn) == (1, 2, 1)
    assert pq.dq == pytest.approx(1 / (1 + 1 + 0.5))
    assert pq.sq == pytest.approx(1.0)
    assert pq.pq == pytest.approx(pq.dq)


def test_empty_images():
    empty = blank()
    assert aggregated_jaccard(empty, empty) == 1.0
    assert panoptic_quality(empty, empty).pq == 1.0
    one = blank()
    one[0, 0] = 1
    assert aggregated_jaccard(one, empty) == 0.0 and object_dice(one, empty) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        segmentation_scores(blank((4, 4)), blank((4, 5)))


def test_detection_matching_is_one_to_one_within_the_radius():
    true = np.array([[0.0, 0.0], [10.0, 0.0]])
    pred = np.array([[1.0, 0.0], [2.0, 0.0], [30.0, 0.0]])
    # greedy nearest would pair pred 0 with true 0 and leave nothing for true 1 (10 - 2 = 8 > 3)
    scores = detection_scores(true, pred, radius=3.0)
    assert (scores.tp, scores.fp, scores.fn) == (1, 2, 1)
    assert scores.precision == pytest.approx(1 / 3)
    assert scores.recall == pytest.approx(1 / 2)
    assert scores.f1 == pytest.approx(2 / 5)


def test_hungarian_prefers_more_pairs_over_shorter_ones():
    true = np.array([[0.0, 0.0], [4.0, 0.0]])
    pred = np.array([[2.5, 0.0], [-2.0, 0.0]])
    # nearest-first pairs (true 1, pred 0) at 1.5 and leaves true 0 with pred 1 at 2.0: both
    t, p = match_points(true, pred, radius=3.0)
    assert len(t) == 2
    assert sorted(zip(t.tolist(), p.tolist(), strict=True)) == [(0, 1), (1, 0)]


def test_detection_with_no_points():
    assert detection_scores(np.empty((0, 2)), np.empty((0, 2)), radius=3).f1 == 1.0
    assert detection_scores(np.array([[1, 1]]), np.empty((0, 2)), radius=3).recall == 0.0


def test_concordance():
    identical = concordance([3, 5, 9, 12], [3, 5, 9, 12])
    assert (identical.ccc, identical.low, identical.high) == (1.0, 1.0, 1.0)
    # x = [1, 2, 3], y = [2, 3, 4]: var 2/3 each, cov 2/3, mean shift 1
    # ccc = 2 * 2/3 / (2/3 + 2/3 + 1) = 4/7
    shifted = concordance([1, 2, 3], [2, 3, 4])
    assert shifted.ccc == pytest.approx(4 / 7)
    noisy = concordance(np.arange(20), np.arange(20) + np.tile([1, -1], 10))
    assert noisy.low < noisy.ccc < noisy.high < 1
    with pytest.raises(ValueError):
        concordance([1], [1])


def test_detection_errors_are_sorted_by_cause():
    labels = np.zeros((40, 40), np.int32)
    labels[0:10, 0:10] = 1  # detected, and holds a second click: merged
    labels[20:30, 0:10] = 2  # its detection lies 3.5 px from its click: displaced, and near
    true = np.array([[5, 5], [8, 8], [5, 28.5], [35, 35]])  # the last in background
    pred = np.array([[5, 5], [5, 25], [35, 5]])  # the last far from every click
    errors = detection_errors(true, pred, labels, radius=2.0)
    assert errors == DetectionErrors(
        fn_background=1, fn_merged=1, fn_displaced=1, fp_far=1, fp_near=1
    )
    scores = detection_scores(true, pred, radius=2.0)
    assert errors.fn_background + errors.fn_merged + errors.fn_displaced == scores.fn
    assert errors.fp_far + errors.fp_near == scores.fp
    assert (errors + errors).fp_far == 2 and errors.to_dict()["fn_merged"] == 1
    matched = match_points(true, pred, radius=2.0)  # a matching computed once serves both
    assert detection_errors(true, pred, labels, radius=2.0, matched=matched) == errors
    assert detection_scores(true, pred, radius=2.0, matched=matched) == scores


def test_detection_errors_without_points():
    labels = np.zeros((10, 10), np.int32)
    assert detection_errors(np.empty((0, 2)), [[3, 3]], labels, radius=2.0).fp_far == 1
    assert detection_errors([[3, 3]], np.empty((0, 2)), labels, radius=2.0).fn_background == 1


def test_a_shift_of_the_whole_point_set_is_told_from_noise():
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 1.5, size=(200, 2))
    np.testing.assert_allclose(systematic_offset(noise + [1, 1]), [1, 1], atol=0.3)
    assert systematic_offset(noise - noise.mean(axis=0)) is None  # centred: no shift
    assert systematic_offset(noise[:20] + [1, 1]) is None  # too few pairs to tell
    assert systematic_offset(noise * 0.01 + [0.2, 0]) is None  # real, but under half a pixel
