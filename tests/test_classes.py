"""Cell classes from typed points: targets, loss, augmentation, metrics, outputs."""

import csv
import json

import numpy as np
import pytest
import torch

from conftest import tiny_config
from pointcell.data import (
    CLASS_IGNORE,
    class_target,
    hed_densities,
    hed_jitter,
    rgb_from_hed_densities,
)
from pointcell.encodings import IGNORE
from pointcell.evaluate import evaluate
from pointcell.inference import load_predictor
from pointcell.io.cells import write_cells_geojson
from pointcell.io.points import class_colour, read_points
from pointcell.io.predictions import class_summary
from pointcell.losses import class_loss, task_losses
from pointcell.masks import Cells
from pointcell.metrics import class_match_counts, positive_percentage, proportion_ci
from pointcell.model import ModelConfig, build_model
from pointcell.postprocess import classify
from pointcell.predict import predict_images
from pointcell.targets import point_class_names
from pointcell.train import adapt_output_head, fit

BROWN = (150, 90, 40)  # DAB-positive nucleus
BLUE = (70, 70, 160)  # hematoxylin-only nucleus
BACKGROUND = (230, 225, 225)


def test_untyped_spellings_become_empty():
    names = point_class_names([None, "positive", "unlabelled", " Negative ", "Unknown", ""])
    assert names.tolist() == ["", "positive", "", "Negative", "", ""]


def test_class_target_disks_follow_the_nearest_typed_click():
    xy = np.array([[2.0, 2.0], [6.0, 2.0], [2.0, 7.0]])
    names = np.array(["b", "a", ""])
    target = class_target((10, 10), xy, names, ("a", "b"), radius_px=1.0)
    expected = np.full((10, 10), CLASS_IGNORE, np.uint8)
    for (x, y), value in (((2, 2), 1), ((6, 2), 0)):  # radius 1: the pixel and 4 neighbours
        expected[y, x] = value
        expected[y - 1, x] = expected[y + 1, x] = expected[y, x - 1] = expected[y, x + 1] = value
    np.testing.assert_array_equal(target, expected)  # the untyped click at (2, 7) is ignored
    # two typed clicks 2 px apart: each pixel belongs to the nearer one
    close = class_target(
        (5, 8), np.array([[2.0, 2.0], [4.0, 2.0]]), names[:2], ("a", "b"), radius_px=2.0
    )
    assert close[2, 1] == 1 and close[2, 5] == 0


def test_every_class_index_is_learned_even_the_value_other_targets_ignore():
    """Class 2 must not be mistaken for the Voronoi/cluster IGNORE value (2)."""
    xy = np.array([[4.0, 4.0], [12.0, 4.0], [20.0, 4.0], [28.0, 4.0]])
    names = np.array(["a", "b", "c", "d"])
    target = class_target((8, 32), xy, names, ("a", "b", "c", "d"), radius_px=1.0)
    assert target[4, 20] == 2 and IGNORE == 2
    third = torch.from_numpy(target == 2)
    logits = torch.zeros(1, 6, 8, 32)
    logits[0, 2 + 2][third] = 10.0  # confident and right about class 2 around the third click
    only_third = torch.from_numpy(np.where(target == 2, 2, CLASS_IGNORE))[None].long()
    assert class_loss(logits, only_third) < 1e-3  # class-2 pixels are scored...
    logits[0, 2 + 2][third] = -10.0
    assert class_loss(logits, only_third) > 1.0  # ...and wrong answers there cost


def test_unlabelled_points_do_not_change_the_class_loss():
    xy = np.array([[8.0, 8.0], [24.0, 8.0]])
    typed = class_target((32, 32), xy, np.array(["a", "b"]), ("a", "b"), radius_px=2.0)
    with_untyped = class_target(
        (32, 32),
        np.vstack([xy, [[20.0, 26.0]]]),
        np.array(["a", "b", "unlabelled"]),
        ("a", "b"),
        radius_px=2.0,
    )
    logits = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(0))
    loss = class_loss(logits, torch.from_numpy(typed)[None].long())
    assert loss > 0
    assert torch.equal(loss, class_loss(logits, torch.from_numpy(with_untyped)[None].long()))
    losses = task_losses(
        logits,
        {"voronoi": torch.full((1, 32, 32), IGNORE), "class": torch.from_numpy(typed)[None].long()},
        ("voronoi",),
    )
    assert set(losses) == {"voronoi", "class"}


def test_hed_jitter_is_exactly_invertible_and_changes_stains():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 16, 16, 3), dtype=np.uint8)
    same = hed_jitter(images, np.ones((2, 3)), np.zeros((2, 3)))
    np.testing.assert_array_equal(same, images)
    darker = hed_jitter(
        np.full((1, 4, 4, 3), BLUE, np.uint8), np.array([[1.5, 1.0, 1.0]]), np.zeros((1, 3))
    )
    assert darker.astype(int).sum() < np.full((4, 4, 3), BLUE).sum()  # more hematoxylin


def test_hed_densities_of_white_are_zero_and_pure_stains_come_back():
    white = np.full((2, 2, 3), 255, np.uint8)
    np.testing.assert_allclose(hed_densities(white), 0.0, atol=1e-6)
    hematoxylin, dab = (
        rgb_from_hed_densities(np.array([[0.5, 0.0, 0.0]], np.float32)),
        rgb_from_hed_densities(np.array([[0.0, 0.0, 0.5]], np.float32)),
    )
    assert hematoxylin[0, 2] > hematoxylin[0, 0]  # hematoxylin is blue
    assert dab[0, 0] > dab[0, 2]  # DAB is brown
    np.testing.assert_allclose(hed_densities(hematoxylin), [[0.5, 0.0, 0.0]], atol=0.02)
    np.testing.assert_allclose(hed_densities(dab), [[0.0, 0.0, 0.5]], atol=0.02)


def test_class_counts_and_hovernet_fc_on_a_hand_made_example():
    true_xy = np.array([[0, 0], [10, 0], [20, 0], [30, 0]], float)
    true_class = np.array([0, 0, 1, -1])  # the last one is untyped
    pred_xy = np.array([[0.5, 0], [10.5, 0], [20.5, 0], [30.5, 0], [50, 0]], float)
    pred_class = np.array([0, 1, 1, 0, 1])
    counts = class_match_counts(true_xy, true_class, pred_xy, pred_class, n_classes=2, radius=2)
    np.testing.assert_array_equal(counts.confusion, [[1, 1], [0, 1]])
    np.testing.assert_array_equal(counts.unmatched_true, [0, 0])
    np.testing.assert_array_equal(counts.unmatched_pred, [0, 1])
    # class 0: TP 1, TN 1, FP 0, FN 1, FP_d 0 -> 4 / (4 + 2) ; class 1: TP 1, TN 1, FP 1,
    # FN 0, FP_d 1 -> 4 / (4 + 2 + 1)
    np.testing.assert_allclose(counts.class_f1(), [4 / 6, 4 / 7])
    macro, weighted, per_class = counts.matched_f1()
    np.testing.assert_allclose(per_class, [2 / 3, 2 / 3])
    assert macro == pytest.approx(2 / 3) and weighted == pytest.approx(2 / 3)
    # pairs computed beforehand are used as given: pairing only the first two points leaves
    # the other two true and three predicted cells unmatched
    paired = class_match_counts(
        true_xy,
        true_class,
        pred_xy,
        pred_class,
        n_classes=2,
        radius=2,
        matched=(np.array([0, 1]), np.array([0, 1])),
    )
    np.testing.assert_array_equal(paired.confusion, [[1, 1], [0, 0]])
    np.testing.assert_array_equal(paired.unmatched_true, [0, 1])
    np.testing.assert_array_equal(paired.unmatched_pred, [1, 2])


def test_positive_percentage_and_wilson_interval():
    assert positive_percentage(["positive", "negative", "negative", "lymphocyte"]) == pytest.approx(
        100 / 3
    )
    assert positive_percentage(["lymphocyte"]) is None
    low, high = proportion_ci(5, 10)
    assert (low, high) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert proportion_ci(0, 0) == (0.0, 1.0)
    summary = class_summary(["positive", "negative", "negative", "negative"])
    assert summary["class_counts"] == {"negative": 3, "positive": 1}
    assert summary["positive_percent"] == pytest.approx(25.0)
    assert summary["positive_ci"][0] < 25 < summary["positive_ci"][1]


def test_classify_reads_the_class_maps_at_each_centre():
    labels = np.zeros((20, 20), np.int32)
    cells = Cells(
        labels, np.array([[5.0, 5.0], [15.0, 15.0]]), np.ones(2, np.float32), np.zeros(2, np.int32)
    )
    maps = np.zeros((2, 20, 20), np.float32)
    maps[0, :10, :10] = 0.9
    maps[1, :10, :10] = 0.1
    maps[0, 10:, 10:] = 0.2
    maps[1, 10:, 10:] = 0.8
    classified = classify(cells, maps, mpp=1.0)
    assert classified.class_index.tolist() == [0, 1]
    assert classified.class_probability == pytest.approx([0.9, 0.8], abs=0.05)


def test_geojson_classification_round_trips(tmp_path):
    labels = np.zeros((30, 30), np.int32)
    labels[2:8, 2:8] = 1
    labels[15:22, 15:22] = 2
    cells = Cells(
        labels,
        np.array([[4.5, 4.5], [18.0, 18.0]]),
        np.array([0.9, 0.8], np.float32),
        np.array([1, 2], np.int32),
        class_index=np.array([1, 0], np.int32),
        class_probability=np.array([0.7, 0.95], np.float32),
    )
    write_cells_geojson(tmp_path / "c.geojson", cells, mpp=0.5, classes=("negative", "positive"))
    features = json.loads((tmp_path / "c.geojson").read_text())["features"]
    assert features[0]["properties"]["classification"] == {
        "name": "positive",
        "color": class_colour("positive"),
    }
    assert features[0]["properties"]["measurements"]["Class probability"] == 0.7
    assert list(read_points(tmp_path / "c.geojson").classes) == ["positive", "negative"]


def test_detection_head_is_kept_when_fine_tuning_into_a_classifier():
    detector = build_model(ModelConfig(encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8)))
    classifier = build_model(
        ModelConfig(encoder="resnet18", decoder_channels=(8, 8, 8, 8, 8), classes=("a", "b"))
    )
    adapted = adapt_output_head(detector.state_dict(), classifier.state_dict())
    classifier.load_state_dict(adapted)
    head = [k for k in adapted if k.startswith("segmentation_head")][0]
    assert torch.equal(classifier.state_dict()[head][:2], detector.state_dict()[head])


def two_class_dataset(folder, n_images=4, *, shape=(96, 96), seed=0):
    """Brown (positive) and blue (negative) disks; every fourth click left unlabelled."""
    from PIL import Image

    (folder / "images").mkdir(parents=True)
    (folder / "points").mkdir()
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    for index in range(n_images):
        image = np.empty(shape + (3,), float)
        image[:] = BACKGROUND
        grid = [(x, y) for x in (16, 48, 80) for y in (16, 48, 80)]
        lines = ["x,y,class"]
        for k, (x, y) in enumerate(grid):
            x, y = x + rng.uniform(-4, 4), y + rng.uniform(-4, 4)
            positive = rng.random() < 0.5
            image[(cols - x) ** 2 + (rows - y) ** 2 <= 36] = BROWN if positive else BLUE
            name = "unlabelled" if k % 4 == 3 else ("positive" if positive else "negative")
            lines.append(f"{x:.2f},{y:.2f},{name}")
        image += rng.normal(0, 4, image.shape)
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
            folder / "images" / f"img{index}.png"
        )
        (folder / "points" / f"img{index}.csv").write_text("\n".join(lines) + "\n")
    return folder


def test_two_class_model_learns_positive_and_negative(tmp_path):
    data = two_class_dataset(tmp_path / "data")
    config = tiny_config(
        data,
        tmp_path,
        mpp=0.5,
        steps=60,
        batch_size=4,
        optimizer="adam",
        val_every=60,
        checkpoint_every=60,
        split={"train": ["img0", "img1", "img2"], "val": ["img3"], "test": []},
    )
    fit(config, tmp_path / "run", progress=False)
    predictor = load_predictor(tmp_path / "run" / "last.pt")
    assert predictor.classes == ("negative", "positive")
    summaries = predict_images(
        predictor, [data / "images" / "img3.png"], tmp_path / "pred", mpp=0.5, progress=False
    )
    assert summaries[0].positive_percent is not None
    with open(tmp_path / "pred" / "img3.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {"class", "class_probability"} <= set(rows[0])
    truth = read_points(data / "points" / "img3.csv")
    predicted = np.array([[float(r["x"]), float(r["y"])] for r in rows])
    names = np.array([r["class"] for r in rows])
    correct = []
    for (x, y), name in zip(truth.xy, truth.classes, strict=True):
        nearest = np.hypot(*(predicted - (x, y)).T).argmin()
        if name in ("positive", "negative") and np.hypot(*(predicted[nearest] - (x, y))) < 4:
            correct.append(names[nearest] == name)
    assert len(correct) >= 4
    assert np.mean(correct) >= 0.85  # measured: 1.0 after 60 steps

    # evaluation against the typed clicks gives per-class scores and the positive index error
    (tmp_path / "gt").mkdir()
    (tmp_path / "gt" / "img3.csv").write_text((data / "points" / "img3.csv").read_text())
    report = evaluate(tmp_path / "pred", tmp_path / "gt", mpp=0.5)
    assert report.aggregate["classes"] == ["negative", "positive"]
    assert report.aggregate["class_macro_f1"] >= 0.8
    assert "positive_percent_abs_error" in report.per_image["img3"]


def test_predictions_without_classes_get_detection_metrics_only(tmp_path):
    from pointcell.io.images import write_label_tiff

    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    labels = np.zeros((40, 40), np.int32)
    labels[8:13, 8:13] = 1
    write_label_tiff(tmp_path / "pred" / "a.tif", labels)
    (tmp_path / "pred" / "a.csv").write_text("x,y\n10,10\n")
    (tmp_path / "gt" / "a.csv").write_text("x,y,class\n10,10,positive\n30,30,negative\n")
    report = evaluate(tmp_path / "pred", tmp_path / "gt", mpp=0.5)
    assert report.aggregate["det_recall"] == pytest.approx(0.5)
    assert "classes" not in report.aggregate
