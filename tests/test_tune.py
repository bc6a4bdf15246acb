"""Tuning the detection threshold on clicked images: known maps with known best settings."""

from __future__ import annotations

import json
import re
import shutil
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from pointcell.cli import main
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.inference import cells_from_maps, load_predictor, predict_image_maps
from pointcell.io.images import read_image, write_label_tiff
from pointcell.postprocess import PostprocessParams
from pointcell.predict import PredictSettings, predict_paths
from pointcell.tune import (
    DISTANCE_GRID,
    FOREGROUND_GRID,
    GROWTH_GRID,
    THRESHOLD_GRID,
    ClickedMaps,
    HeldOutImages,
    OutlinedMaps,
    candidate_params,
    near_best,
    outline_candidates,
    predict_clicked,
    predict_outlined,
    score_params,
    tune_outlines,
    tune_postprocess,
    validation_images,
    write_tuned_model,
)

SHAPE = (64, 64)


def blob_map(centres_xy, heights, *, radius=4.0) -> np.ndarray:
    """A probability map of flat-topped disks of the given heights on 0.02."""
    rows, cols = np.mgrid[0 : SHAPE[0], 0 : SHAPE[1]]
    prob = np.full(SHAPE, 0.02, np.float32)
    for (x, y), height in zip(centres_xy, heights, strict=True):
        prob[(cols - x) ** 2 + (rows - y) ** 2 <= radius**2] = height
    return prob


# two confident clicked nuclei, two faint clicked ones, one faint unclicked one
CENTRES = [(12, 12), (50, 12), (12, 50), (50, 50), (31, 31)]
HEIGHTS = [0.9, 0.9, 0.4, 0.4, 0.4]
CLICKS = np.array(CENTRES[:4], float)


def test_candidates_start_with_the_current_setting():
    base = PostprocessParams()
    plain = candidate_params(base, detection_head=False)
    assert plain[0] == base
    pairs = {(p.min_probability, p.min_distance_um) for p in plain}
    assert pairs == {(t, d) for t in THRESHOLD_GRID for d in DISTANCE_GRID}
    assert len(plain) == len(pairs)
    # the mask threshold follows a lower detection threshold down, never a higher one up
    assert all(p.foreground == min(0.5, p.min_probability) for p in plain)
    head = candidate_params(replace(base, min_proximity=0.17), detection_head=True, distances=[3])
    assert head[0].min_proximity == 0.17
    assert {p.min_distance_um for p in head} == {2.5, 3.0}  # the model's own is always tried
    assert len({(p.min_proximity, p.min_distance_um) for p in head}) == len(head)
    assert all(p.foreground == base.foreground for p in head)


def test_a_lower_foreground_finds_faint_clicked_nuclei(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    predictor.postprocess = PostprocessParams()
    item = ClickedMaps("a", blob_map(CENTRES, HEIGHTS)[None], CLICKS, 0.5)
    at_argmax = score_params(predictor, [item], PostprocessParams(), radius_um=3.0)
    assert (at_argmax.tp, at_argmax.fp, at_argmax.fn) == (2, 0, 2)
    trials = tune_postprocess(predictor, [item], radius_um=3.0)
    best = trials[0]
    # 0.3 and 0.35 both find all five blobs (F1 8/9); the one nearer 0.5 is kept
    assert best.params.foreground == best.params.min_probability == 0.35
    assert (best.scores.tp, best.scores.fp, best.scores.fn) == (4, 1, 0)
    assert best.scores.f1 == pytest.approx(8 / 9)
    assert best.params.min_distance_um == 2.5  # distance did not matter: the model's is kept
    assert len(trials) == len(THRESHOLD_GRID) * len(DISTANCE_GRID)


def test_a_stricter_threshold_keeps_the_outlines_of_the_cells_it_keeps(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    predictor.postprocess = PostprocessParams()
    # four clicked nuclei with a 0.9 core and a 0.52 rim; one unclicked blob at 0.55
    probability = blob_map(CENTRES, [0.52] * 4 + [0.55], radius=6)
    probability = np.maximum(probability, blob_map(CENTRES[:4], [0.9] * 4, radius=3))
    item = ClickedMaps("a", probability[None], CLICKS, 0.5)
    best = tune_postprocess(predictor, [item], radius_um=3.0)[0]
    assert best.params.min_probability == 0.6 and best.scores.f1 == 1.0
    assert best.params.foreground == 0.5  # not raised with the detection threshold
    cells = cells_from_maps(predictor, item.maps, mpp=0.5, params=best.params)
    rim_and_core = np.count_nonzero(blob_map([CENTRES[0]], [1.0], radius=6) > 0.5)
    assert np.bincount(cells.labels.ravel())[1:].tolist() == [rim_and_core] * 4


def test_the_current_setting_wins_a_tie(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    predictor.postprocess = PostprocessParams()
    confident = ClickedMaps("a", blob_map(CENTRES[:2], HEIGHTS[:2])[None], CLICKS[:2], 0.5)
    best = tune_postprocess(predictor, [confident])[0]
    assert best.params == PostprocessParams()
    with pytest.raises(PointcellInputError, match="no clicked images"):
        tune_postprocess(predictor, [])


def test_a_small_gap_that_every_image_shows_is_real_an_erratic_one_is_noise():
    steady = np.array([[0.9, 0.5, 0.9, 0.5], [0.89, 0.49, 0.89, 0.49]])  # 0.01 behind on each
    erratic = np.array([[0.9, 0.5, 0.9, 0.5], [0.5, 0.9, 0.5, 0.89]])  # 0.0025 behind on average
    for scores, expected in ((steady, [True, False]), (erratic, [True, True])):
        near = near_best(lambda chosen, s=scores: s[:, chosen].mean(axis=2), 4)
        assert near.tolist() == expected
    # one image has no spread, nor has a bootstrap without resamples: only ties are near
    single = np.array([[0.9], [0.9], [0.8]])
    assert near_best(lambda chosen: single[:, chosen].mean(axis=2), 1).tolist() == [1, 1, 0]
    no_resamples = near_best(lambda chosen: erratic[:, chosen].mean(axis=2), 4, resamples=0)
    assert no_resamples.tolist() == [True, False]


def faint_cell_images(faint_clicked: list[bool]) -> list[ClickedMaps]:
    """Images of two confident clicked nuclei and one faint nucleus (0.37: found only below
    0.4), clicked or not."""
    prob = blob_map(CENTRES[:3], [0.9, 0.9, 0.37])[None]
    return [
        ClickedMaps(f"i{k}", prob, CLICKS[: 3 if clicked else 2], 0.5)
        for k, clicked in enumerate(faint_clicked)
    ]


def test_a_lead_within_the_noise_of_the_images_keeps_the_models_setting(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    predictor.postprocess = PostprocessParams()
    # half the faint cells are clicked: 0.35 leads by F1 20/22 against 16/18, image by image
    # it wins two and loses two
    erratic = faint_cell_images([True, False, True, False])
    best = tune_postprocess(predictor, erratic, pick="best")[0]
    assert best.params.min_probability == 0.35 and best.scores.f1 == pytest.approx(20 / 22)
    kept = tune_postprocess(predictor, erratic)
    assert kept[0].params == PostprocessParams() and kept[0].scores.f1 == pytest.approx(16 / 18)
    assert {t.params.min_probability for t in kept if not t.near_best} == set()
    # every faint cell clicked: the lower threshold wins on every image and is taken
    steady = tune_postprocess(predictor, faint_cell_images([True] * 4))
    assert steady[0].params.min_probability == 0.35 and steady[0].scores.f1 == 1.0
    assert not any(t.near_best for t in steady if t.params.min_probability >= 0.4)


def test_a_detection_head_tunes_its_peak_threshold(small_checkpoint):
    predictor = replace(load_predictor(small_checkpoint, device="cpu"), detection_head=True)
    predictor.postprocess = PostprocessParams()
    prob = blob_map(CENTRES, HEIGHTS)
    # proximity peaks: two clear, one weak clicked (0.17), one weaker unclicked (0.12)
    proximity = blob_map(CENTRES[:3] + CENTRES[4:], [0.9, 0.9, 0.17, 0.12], radius=0)
    item = ClickedMaps("a", np.stack([prob, proximity]), CLICKS[:3], 0.5)
    trials = tune_postprocess(predictor, [item])
    assert trials[0].params.min_proximity == 0.15
    assert (trials[0].scores.tp, trials[0].scores.fp, trials[0].scores.fn) == (3, 0, 0)
    by_value = {t.params.min_proximity: t.scores for t in trials}
    assert (by_value[0.2].tp, by_value[0.2].fn) == (2, 1)
    assert (by_value[0.1].tp, by_value[0.1].fp) == (3, 1)


def test_tuned_model_keeps_its_weights_and_carries_the_setting(small_checkpoint, tmp_path):
    chosen = PostprocessParams(foreground=0.35, min_probability=0.35)
    out = write_tuned_model(small_checkpoint, tmp_path / "tuned.pt", chosen)
    tuned, source = load_predictor(out, device="cpu"), load_predictor(small_checkpoint)
    assert tuned.postprocess == chosen
    weights = source.model.state_dict()
    for name, tensor in tuned.model.state_dict().items():
        assert torch.equal(tensor, weights[name]), name


def test_settings_tuned_per_stain_are_kept_side_by_side(small_checkpoint, tmp_path):
    ihc = PostprocessParams(foreground=0.3, min_probability=0.3, min_distance_um=3.5)
    he = PostprocessParams(foreground=0.55, min_probability=0.55)
    first = write_tuned_model(small_checkpoint, tmp_path / "ihc.pt", ihc, stain="ihc")
    both = write_tuned_model(first, tmp_path / "both.pt", he, stain="he")
    predictor = load_predictor(both, device="cpu")
    own = load_predictor(small_checkpoint, device="cpu").postprocess
    assert predictor.postprocess == own  # the default is untouched
    assert predictor.postprocess_by_stain == {"ihc": ihc, "he": he}
    assert predictor.postprocess_for("ihc") == ihc and predictor.postprocess_for(None) == own
    only_ihc = load_predictor(first, device="cpu")
    with pytest.warns(PointcellWarning, match="no settings tuned for he"):
        assert only_ihc.postprocess_for("he") == own
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tuning he for the first time is no reason to warn
        assert only_ihc.postprocess_for("he", warn=False) == own


def test_predict_uses_the_settings_of_the_stain_asked_for(small_checkpoint, disk_dataset, tmp_path):
    never = PostprocessParams(foreground=0.999, min_probability=0.999)  # nothing is a cell
    model = write_tuned_model(small_checkpoint, tmp_path / "ihc.pt", never, stain="ihc")
    image = disk_dataset / "images" / "img0.tif"
    counts = {}
    for stain in (None, "ihc"):
        settings = PredictSettings(model=str(model), device="cpu", overlay=False, stain=stain)
        job = predict_paths([image], tmp_path / f"out-{stain}", settings, progress=False)
        counts[stain] = job.images[0].n_cells
        record = json.loads((tmp_path / f"out-{stain}" / "predictions.json").read_text())
        # the stain named also chooses the stain outlines are refined on
        own = load_predictor(small_checkpoint).postprocess
        expected = replace(never, outline_stain="ihc") if stain else own
        assert record["postprocess"] == expected.to_dict()
    assert counts["ihc"] == 0 < counts[None]


def test_predict_clicked_pairs_maps_with_clicks(small_checkpoint, disk_dataset):
    predictor = load_predictor(small_checkpoint, device="cpu")
    (disk_dataset / "points" / "not-held-out.csv").write_text("x,y\n5,5\n")  # ignored
    held_out = HeldOutImages(disk_dataset / "images", disk_dataset / "points")
    items = predict_clicked(predictor, held_out, progress=False)
    assert [i.stem for i in items] == ["img0", "img1", "img2"]
    for item in items:
        clicks = np.loadtxt(disk_dataset / "points" / f"{item.stem}.csv", delimiter=",", skiprows=1)
        np.testing.assert_allclose(item.clicks_xy, clicks)
        image = read_image(disk_dataset / "images" / f"{item.stem}.tif").pixels
        expected = predict_image_maps(predictor, image, mpp=0.5)
        np.testing.assert_allclose(item.maps, expected, atol=1e-6)
        assert item.mpp == pytest.approx(0.5)
    some = replace(held_out, stems=("img2",), mpp=0.25)
    (item,) = predict_clicked(predictor, some, progress=False)
    assert item.stem == "img2" and item.mpp == 0.25
    with pytest.raises(PointcellInputError, match="img7"):
        predict_clicked(predictor, replace(held_out, stems=("img7",)), progress=False)


def fake_run(folder, checkpoint, data, val: list[str]):
    """A run folder as training leaves it: best.pt, config.json and split.json."""
    folder.mkdir()
    shutil.copy(checkpoint, folder / "best.pt")
    config = {"images": str(data / "images"), "points": str(data / "points"), "mpp": 0.5}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "split.json").write_text(json.dumps({"train": ["img0"], "val": val}))
    return folder


def test_validation_images_of_a_run(small_checkpoint, disk_dataset, tmp_path):
    run = fake_run(tmp_path / "run", small_checkpoint, disk_dataset, ["img1", "img2"])
    held_out = validation_images(run)
    assert held_out == HeldOutImages(
        disk_dataset / "images", disk_dataset / "points", ("img1", "img2"), 0.5
    )
    assert validation_images(run / "best.pt") == held_out
    with pytest.raises(PointcellInputError, match="not a training run"):
        validation_images(tmp_path)
    empty = fake_run(tmp_path / "empty", small_checkpoint, disk_dataset, [])
    with pytest.raises(PointcellInputError, match="no validation images"):
        validation_images(empty)


def test_tune_command_writes_the_best_model(small_checkpoint, disk_dataset, tmp_path):
    out = tmp_path / "tuned.pt"
    args = ["tune", "--model", str(small_checkpoint), "--out", str(out), "--device", "cpu"]
    data = ["--images", str(disk_dataset / "images"), "--points", str(disk_dataset / "points")]
    result = CliRunner().invoke(main, [*args, *data])
    assert result.exit_code == 0, result.output
    assert "min_probability" in result.output and "(model's" in result.output
    assert "on 3 image(s)" in result.output and "within one standard error" in result.output
    found = re.search(r"chose min_probability ([\d.]+), min_distance_um ([\d.]+)", result.output)
    assert found, result.output
    tuned = load_predictor(out, device="cpu").postprocess
    assert tuned.min_probability == pytest.approx(float(found[1]))
    assert tuned.min_distance_um == pytest.approx(float(found[2]))
    per_stain = CliRunner().invoke(main, [*args, *data, "--stain", "ihc"])
    assert per_stain.exit_code == 0 and "--stain ihc" in per_stain.output
    stained = load_predictor(out, device="cpu")
    assert stained.postprocess == load_predictor(small_checkpoint).postprocess
    assert stained.postprocess_by_stain["ihc"].min_probability == pytest.approx(float(found[1]))
    argmax = CliRunner().invoke(main, [*args, *data, "--pick", "best"])
    assert argmax.exit_code == 0, argmax.output
    picked = re.search(
        r"chose min_probability [\d.]+, .* detection F1 ([\d.]+) \(best ([\d.]+)\)", argmax.output
    )
    assert picked and picked[1] == picked[2], argmax.output  # the best score is the one chosen
    half = CliRunner().invoke(main, [*args, *data[:2]])
    assert half.exit_code == 1 and "both --images and --points" in half.output


def test_tune_command_defaults_to_the_runs_validation_images(
    small_checkpoint, disk_dataset, tmp_path
):
    run = fake_run(tmp_path / "run", small_checkpoint, disk_dataset, ["img1", "img2"])
    out = tmp_path / "tuned.pt"
    result = CliRunner().invoke(main, ["tune", "--model", str(run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "on 2 image(s)" in result.output and out.is_file()
    shipped = CliRunner().invoke(main, ["tune", "--model", "pointcell-he", "--out", str(out)])
    assert shipped.exit_code == 1 and "--images and --points" in shipped.output


def test_the_distance_between_detections_is_tuned_too(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    predictor.postprocess = PostprocessParams()
    # two clicked nuclei 2.5 µm apart (5 px at 0.5 µm/px) and a lone one
    centres = [(20, 30), (25, 30), (50, 12)]
    probability = blob_map(centres, [0.9, 0.85, 0.9], radius=2)
    item = ClickedMaps("a", probability[None], np.array(centres, float), 0.5)
    spaced = {d: replace(PostprocessParams(), min_distance_um=d) for d in DISTANCE_GRID}
    by_distance = {
        d: score_params(predictor, [item], params, radius_um=1.5) for d, params in spaced.items()
    }
    assert {d: s.tp for d, s in by_distance.items()} == {2.0: 3, 2.5: 2, 3.0: 2, 3.5: 2, 4.0: 2}
    best = tune_postprocess(predictor, [item], radius_um=1.5)[0]
    assert best.params.min_distance_um == 2.0 and best.scores.tp == 3
    assert best.params.foreground == 0.5  # the threshold did not matter: the model's is kept


def test_outline_candidates_never_raise_the_mask_above_the_detection_threshold():
    base = PostprocessParams(min_probability=0.4, foreground=0.4)
    tried = outline_candidates(base)
    assert tried[0] == base
    assert {p.foreground for p in tried} == {f for f in FOREGROUND_GRID if f <= 0.4}
    assert {p.refine_outlines_um for p in tried} == set(GROWTH_GRID) | {1.0}
    assert len(set(tried)) == len(tried)
    # detection settings are never touched
    assert {(p.min_probability, p.min_distance_um) for p in tried} == {(0.4, 2.5)}


def test_outlines_are_fitted_to_the_true_nuclei(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    base = PostprocessParams()
    # each true nucleus (radius 6 px) is seen at 0.9 in its core (radius 4) and 0.42 in its rim:
    # the 0.5 contour lies inside it, a 0.4 mask matches it
    probability = np.maximum(blob_map(CENTRES, [0.42] * 5, radius=6), blob_map(CENTRES, [0.9] * 5))
    truth = np.zeros(SHAPE, np.int32)
    for label, centre in enumerate(CENTRES, start=1):
        truth[blob_map([centre], [1.0], radius=6) > 0.5] = label
    white = np.full((*SHAPE, 3), 255, np.uint8)  # nothing stained: growth changes nothing
    item = OutlinedMaps("a", probability[None], white, truth, 0.5)
    trials = tune_outlines(predictor, [item], base=base)
    best = trials[0]
    # 0.4 and below all match (AJI 1); the one nearest 0.5 wins, and the growth ties: 1 µm kept
    assert best.params.foreground == 0.4 and best.params.refine_outlines_um == 1.0
    assert best.aji == pytest.approx(1.0) and best.pixel_f1 == pytest.approx(1.0)
    at_base = next(t for t in trials if t.params == base)
    core = np.count_nonzero(blob_map([CENTRES[0]], [1.0]) > 0.5)
    assert at_base.aji == pytest.approx(core / np.count_nonzero(truth == 1))
    found = [
        cells_from_maps(predictor, item.maps, mpp=0.5, params=p).xy for p in (base, best.params)
    ]
    np.testing.assert_allclose(found[0], found[1])  # disks: the same cells, other outlines
    with pytest.raises(PointcellInputError, match="no images with outlines"):
        tune_outlines(predictor, [])


def test_outlines_that_suit_only_some_images_keep_the_models_setting(small_checkpoint):
    predictor = load_predictor(small_checkpoint, device="cpu")
    base = PostprocessParams()
    # a 0.9 core (radius 4) in a 0.42 rim (radius 6): two images whose nuclei are core and rim
    # (a 0.4 mask matches them) and one whose nuclei are the core alone (the 0.5 mask does)
    probability = np.maximum(blob_map(CENTRES, [0.42] * 5, radius=6), blob_map(CENTRES, [0.9] * 5))
    white = np.full((*SHAPE, 3), 255, np.uint8)

    def outlined(radius: float) -> OutlinedMaps:
        truth = np.zeros(SHAPE, np.int32)
        for label, centre in enumerate(CENTRES, start=1):
            truth[blob_map([centre], [1.0], radius=radius) > 0.5] = label
        return OutlinedMaps(f"r{radius}", probability[None], white, truth, 0.5)

    items = [outlined(6), outlined(4), outlined(6)]
    best = tune_outlines(predictor, items, base=base, pick="best")[0]
    assert best.params.foreground == 0.4
    kept = tune_outlines(predictor, items, base=base)[0]
    assert kept.params == base and kept.aji < best.aji
    steady = tune_outlines(predictor, [outlined(6)] * 3, base=base)[0]
    assert steady.params.foreground == 0.4 and steady.aji == pytest.approx(1.0)


def write_masks(data) -> None:
    """``data/masks/<stem>.tif``: the true disks of the images of :func:`write_disk_dataset`."""
    (data / "masks").mkdir()
    for points in sorted((data / "points").glob("*.csv")):
        centres = np.loadtxt(points, delimiter=",", skiprows=1)
        rows, cols = np.mgrid[0:96, 0:96]
        labels = np.zeros((96, 96), np.int32)
        for label, (x, y) in enumerate(centres, start=1):
            labels[(cols - x) ** 2 + (rows - y) ** 2 <= 25] = label
        write_label_tiff(data / "masks" / f"{points.stem}.tif", labels)


def test_predict_outlined_needs_outlines(small_checkpoint, disk_dataset):
    predictor = load_predictor(small_checkpoint, device="cpu")
    write_masks(disk_dataset)
    items = predict_outlined(
        predictor, HeldOutImages(disk_dataset / "images", disk_dataset / "masks"), progress=False
    )
    assert [i.stem for i in items] == ["img0", "img1", "img2"]
    for item in items:
        assert item.labels.max() == 6 and item.image.shape == (96, 96, 3)
        assert item.maps.shape[1:] == (96, 96) and item.mpp == pytest.approx(0.5)
    clicks = HeldOutImages(disk_dataset / "images", disk_dataset / "points")
    with pytest.raises(PointcellInputError, match="img0: its ground truth holds points"):
        predict_outlined(predictor, clicks, progress=False)


def test_tune_outlines_command_keeps_detection_and_sets_the_stains_outlines(
    small_checkpoint, disk_dataset, tmp_path
):
    write_masks(disk_dataset)
    out = tmp_path / "tuned.pt"
    args = ["tune", "--model", str(small_checkpoint), "--out", str(out), "--outlines"]
    data = ["--images", str(disk_dataset / "images"), "--points", str(disk_dataset / "masks")]
    result = CliRunner().invoke(main, [*args, *data, "--stain", "he"])
    assert result.exit_code == 0, result.output
    assert "refine_outlines_um" in result.output and "(model's" in result.output
    found = re.search(r"chose foreground ([\d.]+), refine_outlines_um ([\d.]+)", result.output)
    assert found and "on 3 image(s)" in result.output, result.output
    own = load_predictor(small_checkpoint).postprocess
    tuned = load_predictor(out, device="cpu")
    assert tuned.postprocess == own
    expected = replace(own, foreground=float(found[1]), refine_outlines_um=float(found[2]))
    assert tuned.postprocess_by_stain["he"] == expected
    clicked = ["--images", str(disk_dataset / "images"), "--points", str(disk_dataset / "points")]
    refused = CliRunner().invoke(main, [*args, *clicked])
    assert refused.exit_code == 1 and "holds points, not outlines" in refused.output


def test_outline_scores_match_what_predict_would_draw(small_checkpoint):
    """The trials reuse instances and the stained mask across candidates; each must score
    exactly what cells_from_maps draws with that setting."""
    from conftest import make_disks
    from pointcell.metrics import segmentation_scores

    predictor = load_predictor(small_checkpoint, device="cpu")
    tile = make_disks(CENTRES, shape=SHAPE, radius=6.0, mpp=0.5)
    # the network sees a 0.9 core (radius 3) and a 0.45 ring out to 5 px: growth matters
    probability = np.maximum(
        blob_map(CENTRES, [0.45] * 5, radius=5), blob_map(CENTRES, [0.9] * 5, radius=3)
    )
    item = OutlinedMaps("a", probability[None], tile.image, tile.truth, 0.5)
    trials = tune_outlines(predictor, [item], base=PostprocessParams())
    assert len({round(t.aji, 6) for t in trials}) > 3  # the settings differ in what they draw
    for trial in trials:
        drawn = cells_from_maps(
            predictor, item.maps, mpp=0.5, params=trial.params, image=tile.image
        )
        assert trial.aji == pytest.approx(segmentation_scores(tile.truth, drawn.labels).aji)
