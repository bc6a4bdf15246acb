import json

import numpy as np
from click.testing import CliRunner
from PIL import Image

from pointcell.cli import main
from pointcell.cli.predict import echo_image_summaries
from pointcell.io.images import read_label_image
from pointcell.io.predictions import PredictionSummary, class_summary


def test_labels_command(sample, tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "labels",
            "--images",
            str(sample / "images"),
            "--points",
            str(sample / "points"),
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "wrote label maps of 2 image(s)" in result.output
    assert len(list((tmp_path / "overlay").glob("*.png"))) == 2


def tiny_labels_job(tmp_path, points_csv: str) -> list[str]:
    """``pointcell labels`` arguments for a 32x32 PNG (no pixel size) and the given CSV."""
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "a.csv").write_text(points_csv)
    return [
        "labels",
        "--images",
        str(tmp_path / "a.png"),
        "--points",
        str(tmp_path / "a.csv"),
        "--out",
        str(tmp_path / "out"),
    ]


def test_png_without_pixel_size_needs_mpp(tmp_path):
    args = tiny_labels_job(tmp_path, "x,y\n10,10\n")
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1  # usage errors exit 1, as bad input does
    assert "a.png: the file does not record its pixel size; pass --mpp" in result.output
    assert "Traceback" not in result.output
    assert CliRunner().invoke(main, [*args, "--mpp", "0.5"]).exit_code == 0


def test_bad_points_give_one_clear_line(tmp_path):
    args = tiny_labels_job(tmp_path, "x,y\n10,oops\n")
    result = CliRunner().invoke(main, [*args, "--mpp", "0.5"])
    assert result.exit_code == 1  # usage errors exit 1, as bad input does
    assert "a.csv, line 2: column 'y' is 'oops', not a number" in result.output
    assert not (tmp_path / "out" / "voronoi").exists()


def test_clip_option_drops_outside_points(tmp_path):
    args = [*tiny_labels_job(tmp_path, "x,y\n10,10\n50,10\n"), "--mpp", "0.5"]
    assert "outside the 32x32 image" in CliRunner().invoke(main, args).output
    result = CliRunner().invoke(main, [*args, "--clip"])
    assert result.exit_code == 0
    assert "a: 1 points" in result.output


def test_demo_command_prints_the_library_result(tmp_path, monkeypatch):
    """The command only reports; tests/test_demo.py runs the demo itself."""
    import pointcell.demo
    from pointcell.demo import DemoResult
    from pointcell.evaluate import EvaluationReport

    def report(aji: float) -> EvaluationReport:
        return EvaluationReport(per_image={}, aggregate={"aji": aji, "dice": 0.5, "det_f1": 0.75})

    def fake_demo(out, *, steps):
        assert (out, steps) == (tmp_path, 7)
        return DemoResult(tmp_path / "report.html", report(0.25), report(0.5), 12.0)

    monkeypatch.setattr(pointcell.demo, "run_demo", fake_demo)
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--steps", "7"])
    assert result.exit_code == 0, result.output
    assert "shipped model: AJI 0.250, object Dice 0.500, detection F1 0.750" in result.output
    assert "fine-tuned: AJI 0.500" in result.output
    assert f"done in 12 s; open {tmp_path / 'report.html'}" in result.output


def tiny_train_args(images, points, tmp_path) -> list[str]:
    """``pointcell train`` for 2 steps of a small ResNet18 U-Net into ``tmp_path/run``."""
    return [
        "train",
        "--images",
        str(images),
        "--points",
        str(points),
        "--out",
        str(tmp_path / "run"),
        "--encoder",
        "resnet18",
        "--steps",
        "2",
        "--batch-size",
        "2",
        "--patch-size",
        "64",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]


def test_train_self_labels_need_a_mask_per_tile(tmp_path):
    import tifffile

    from conftest import write_disk_dataset

    data = write_disk_dataset(tmp_path / "data")
    own = tmp_path / "own"
    own.mkdir()
    args = tiny_train_args(data / "images", data / "points", tmp_path)
    args += ["--precision", "fp32", "--self-labels", str(own)]
    missing = CliRunner().invoke(main, args)
    assert missing.exit_code == 1 and "no self-training mask" in missing.output
    assert "Traceback" not in missing.output
    for image in (data / "images").iterdir():
        tifffile.imwrite(own / f"{image.stem}.tif", np.zeros((96, 96), np.uint16))
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["self_labels"] == str(own)


def test_train_and_resume_commands(tmp_path):
    from conftest import write_disk_dataset

    data = write_disk_dataset(tmp_path / "data")
    args = tiny_train_args(data / "images", data / "points", tmp_path)
    args += ["--precision", "fp32", "--val-every", "1", "--scale-range", "0.5", "2"]
    args += ["--stain-scale", "0.5", "1", "--lr-schedule", "flat-cosine", "--anneal-from", "0.5"]
    args += ["--detection-head", "--colour-jitter", "0.2"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["augment"]["scale_range"] == [0.5, 2.0]
    assert config["augment"]["stain_scale_range"] == [0.5, 1.0]
    assert config["augment"]["colour_jitter"] == 0.2
    assert (config["lr_schedule"], config["anneal_from"]) == ("flat-cosine", 0.5)
    assert config["model"]["detection_head"] is True
    # the closing hint tunes the head's threshold on the run's validation clicks
    hint = result.output.split("validation clicks: pointcell ")[1].split()
    tuned = CliRunner().invoke(main, [*hint, "--device", "cpu"])
    assert tuned.exit_code == 0, tuned.output
    assert "min_proximity" in tuned.output and (tmp_path / "run" / "tuned.pt").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already holds a run" in again.output
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "run")])
    assert resumed.exit_code == 0 and "trained 2 steps" in resumed.output
    out = tmp_path / "pred"
    predict = ["predict", "--model", str(tmp_path / "run" / "last.pt"), "--out", str(out)]
    predicted = CliRunner().invoke(
        main, [*predict, "--images", str(data / "images"), "--min-proximity", "0.01"]
    )
    assert predicted.exit_code == 0, predicted.output
    record = json.loads((out / "predictions.json").read_text())
    assert record["postprocess"]["min_proximity"] == 0.01


def test_train_needs_inputs_or_resume(tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 1  # usage errors exit 1, as bad input does
    assert "--images, --points and --out are required" in result.output
    bad = CliRunner().invoke(
        main,
        [
            "train",
            "--images",
            str(tmp_path),
            "--points",
            str(tmp_path),
            "--out",
            str(tmp_path / "r"),
            "--patch-size",
            "100",
        ],
    )
    assert bad.exit_code == 1 and "multiple of 32" in bad.output
    common = ["train", "--images", str(tmp_path), "--points", str(tmp_path), "--out"]
    typo = CliRunner().invoke(main, [*common, str(tmp_path / "t"), "--tasks", "voronoi,edges"])
    assert typo.exit_code == 1 and "tasks must be a non-empty subset" in typo.output
    assert not (tmp_path / "t").exists()  # refused before any encoding or run folder
    reversed_zoom = CliRunner().invoke(main, ["train", "--scale-range", "2", "0.5"])
    assert reversed_zoom.exit_code == 1 and "MIN must not exceed MAX" in reversed_zoom.output


def test_predict_and_evaluate_commands(sample, small_checkpoint, tmp_path):
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        main,
        [
            "predict",
            "--model",
            str(small_checkpoint),
            "--images",
            str(sample / "images"),
            "--out",
            str(out),
            "--instances",
            "connected",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "cells in 2 image(s)" in result.output
    evaluated = CliRunner().invoke(
        main, ["evaluate", "--pred", str(out), "--gt", str(sample / "masks")]
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "aggregate" in evaluated.output and "count CCC" in evaluated.output
    assert "misses:" in evaluated.output and "false detections:" in evaluated.output
    assert (out / "evaluation.json").is_file() and (out / "evaluation.csv").is_file()


def test_predict_min_distance_keeps_detections_apart(sample, tmp_path):
    """pointcell-he: by its own settings it puts peaks closer than 6 µm on the sample (the
    default model, at 2.5 µm too, happens to find just one such pair there)."""

    def centres(min_distance: list[str]) -> np.ndarray:
        out = tmp_path / f"out{len(min_distance)}"
        args = ["predict", "--images", str(sample / "images"), "--out", str(out), "--no-overlay"]
        args += ["--model", "pointcell-he"]
        result = CliRunner().invoke(main, [*args, *min_distance])
        assert result.exit_code == 0, result.output
        stem = sorted((sample / "images").iterdir())[0].stem
        table = np.genfromtxt(out / f"{stem}.csv", delimiter=",", names=True)
        return np.stack([table["x"], table["y"]], axis=1)

    def close_pairs(xy: np.ndarray, um: float = 6.0, mpp: float = 0.25) -> int:
        gaps = np.linalg.norm(xy[:, None] - xy[None], axis=-1) * mpp
        return int(np.triu(gaps < um, k=1).sum())

    default, spread = centres([]), centres(["--min-distance-um", "6"])
    assert 0 < len(spread) < len(default)
    # peaks keep 6 µm apart; only a separate object without its own peak may come closer
    assert close_pairs(spread) <= close_pairs(default) / 3


def test_predict_foreground_threshold_is_applied_and_recorded(sample, tmp_path):
    def predict(extra: list[str]) -> tuple[int, dict]:
        out = tmp_path / f"out{len(extra)}"
        args = ["predict", "--images", str(sample / "images"), "--out", str(out), "--no-overlay"]
        args += ["--refine-outlines", "0"]  # the network's own outlines: the threshold alone
        result = CliRunner().invoke(main, [*args, *extra])
        assert result.exit_code == 0, result.output
        record = json.loads((out / "predictions.json").read_text())
        nucleus_pixels = sum(
            (read_label_image(out / f"{s}.tif") > 0).sum() for s in record["images"]
        )
        return nucleus_pixels, record["postprocess"]

    (argmax_pixels, argmax), (low_pixels, low) = (
        predict([]),
        predict(["--foreground", "0.2", "--min-probability", "0.2"]),
    )
    assert argmax["foreground"] == 0.5 and low["foreground"] == low["min_probability"] == 0.2
    assert low_pixels > 1.3 * argmax_pixels  # outlines reach down to probability 0.2


def test_labels_unclicked_background(sample, tmp_path):
    def background(extra: list[str]) -> int:
        out = tmp_path / f"out{len(extra)}"
        args = ["labels", "--images", str(sample / "images"), "--points", str(sample / "points")]
        result = CliRunner().invoke(main, [*args, "--out", str(out), *extra])
        assert result.exit_code == 0, result.output
        return sum((np.asarray(Image.open(p)) == 0).sum() for p in (out / "cluster").iterdir())

    assert background(["--unclicked", "background"]) > background([])


def test_predict_rejects_bad_tiles_and_models(sample, tmp_path):
    args = ["predict", "--images", str(sample / "images"), "--out", str(tmp_path)]
    bad_tile = CliRunner().invoke(main, [*args, "--model", str(tmp_path), "--tile-size", "100"])
    assert bad_tile.exit_code == 1 and "multiples of 32" in bad_tile.output
    missing = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "none.pt")])
    assert missing.exit_code == 1 and "no such model file" in missing.output


def test_predict_adapt_norm_adapts_and_records_it(sample, small_checkpoint, tmp_path):
    args = ["predict", "--model", str(small_checkpoint), "--images", str(sample / "images")]
    plain = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "plain"), "--no-overlay"])
    adapted = CliRunner().invoke(
        main, [*args, "--out", str(tmp_path / "adapted"), "--no-overlay", "--adapt-norm"]
    )
    assert plain.exit_code == 0 and adapted.exit_code == 0, adapted.output
    record = json.loads((tmp_path / "adapted" / "predictions.json").read_text())
    assert record["model"] == f"{small_checkpoint} (AdaBN)"
    stem = next(iter(record["images"]))
    # the untrained network's maps move with its statistics: the cells are not the same
    assert (tmp_path / "adapted" / f"{stem}.csv").read_text() != (
        tmp_path / "plain" / f"{stem}.csv"
    ).read_text()
    slide = tmp_path / "slide.svs"
    slide.write_bytes(b"")
    refused = CliRunner().invoke(
        main, [*args[:3], "--images", str(slide), "--out", str(tmp_path), "--adapt-norm"]
    )
    assert refused.exit_code == 1 and "not whole slides" in refused.output


def write_qupath_points(path, centres, cls="Tumor"):
    """Point annotations exactly as QuPath's "Export objects as GeoJSON" writes them."""
    features = [
        {
            "type": "Feature",
            "id": f"0c8a5f0e-1b2c-4d5e-8f90-{index:012d}",
            "geometry": {"type": "MultiPoint", "coordinates": [[float(x), float(y)]]},
            "properties": {
                "objectType": "annotation",
                "classification": {"name": cls, "color": [200, 0, 0]},
                "isLocked": False,
            },
        }
        for index, (x, y) in enumerate(centres)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def test_qupath_round_trip_train_on_clicks_and_predict_a_slide(tmp_path):
    """Clicks exported from QuPath train a model; its cells on a whole slide come back as
    QuPath detections; a finished slide is not overwritten without --overwrite."""
    from conftest import make_disks
    from pointcell.io.points import read_points
    from pointcell.io.slides import write_pyramidal_tiff

    (tmp_path / "images").mkdir()
    (tmp_path / "points").mkdir()
    rng = np.random.default_rng(3)
    for index in range(3):
        centres = rng.uniform(12, 84, size=(6, 2))
        tile = make_disks(centres, radius=5.0, mpp=0.5, seed=index)
        Image.fromarray(tile.image).save(tmp_path / "images" / f"img{index}.png")
        write_qupath_points(tmp_path / "points" / f"img{index}.geojson", centres)
    trained = CliRunner().invoke(
        main,
        [*tiny_train_args(tmp_path / "images", tmp_path / "points", tmp_path), "--mpp", "0.5"],
    )
    assert trained.exit_code == 0, trained.output

    big = make_disks(rng.uniform(20, 480, size=(40, 2)), shape=(512, 512), radius=5.0)
    write_pyramidal_tiff(
        tmp_path / "slide.tif",
        (512, 512),
        lambda level, y, x, h, w: big.image[:: 4**level, :: 4**level][y : y + h, x : x + w],
        mpp=0.5,
        n_levels=2,
        tile=128,
    )
    args = [
        "predict",
        "--model",
        str(tmp_path / "run"),
        "--images",
        str(tmp_path / "slide.tif"),
        "--out",
        str(tmp_path / "pred"),
        "--slide-tile",
        "128",
        "--tile-size",
        "128",
        "--overlap",
        "32",
    ]
    predicted = CliRunner().invoke(main, args)
    assert predicted.exit_code == 0, predicted.output
    assert "tissue tiles" in predicted.output and "slide" in predicted.output
    collection = json.loads((tmp_path / "pred" / "slide.geojson").read_text())
    assert collection["type"] == "FeatureCollection"
    assert all(f["properties"]["objectType"] == "detection" for f in collection["features"])
    table = (tmp_path / "pred" / "slide.csv").read_text().splitlines()
    assert table[0] == "id,x,y,area_px,area_um2,score,tile"
    assert len(read_points(tmp_path / "pred" / "slide.geojson")) == len(table) - 1
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "--overwrite" in again.output
    replaced = CliRunner().invoke(main, [*args, "--overwrite"])
    assert replaced.exit_code == 0, replaced.output


def test_predict_tta_and_centroid_centres(sample, tmp_path):
    image = sorted((sample / "images").iterdir())[0]

    def run(name: str, extra: list[str]) -> tuple[np.ndarray, dict]:
        out = tmp_path / name
        args = ["predict", "--images", str(image), "--out", str(out), "--no-overlay", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        table = np.genfromtxt(out / f"{image.stem}.csv", delimiter=",", names=True)
        xy = np.stack([table["x"], table["y"]], axis=1)
        return xy, json.loads((out / "predictions.json").read_text())

    peaks, plain = run("peaks", ["--centre", "peak"])
    centroids, averaged = run("centroids", ["--tta"])
    assert plain["tta"] is False and averaged["tta"] is True
    assert plain["postprocess"]["centre"] == "peak"
    assert averaged["postprocess"]["centre"] == "centroid"  # the default
    assert abs(len(centroids) - len(peaks)) <= 0.1 * len(peaks)
    # centroids are means of pixel positions: most are not on the pixel grid as peaks are
    assert np.mean(centroids != np.rint(centroids)) > 0.5
    assert (peaks == np.rint(peaks)).all()


def test_predict_counts_cells_in_regions_of_interest(sample, small_checkpoint, tmp_path):
    images = sorted((sample / "images").iterdir())
    rois = tmp_path / "rois"
    rois.mkdir()
    for image in images:
        square = [[0, 0], [128, 0], [128, 128], [0, 128], [0, 0]]
        feature = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [square]}}
        (rois / f"{image.stem}.geojson").write_text(json.dumps([feature]))
    args = ["predict", "--model", str(small_checkpoint), "--images", str(sample / "images")]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out"), "--roi", str(rois)])
    assert result.exit_code == 0, result.output
    assert result.output.count("region of interest 0.0010 mm²") == 2
    wrong = CliRunner().invoke(
        main,
        [*args, "--out", str(tmp_path / "x"), "--roi", str(rois / f"{images[0].stem}.geojson")],
    )
    assert wrong.exit_code != 0 and "one file for 2 images" in wrong.output
    assert not (tmp_path / "x").exists()  # refused before any work


def test_image_summaries_report_classes_and_the_positive_index(capsys):
    names = ["positive"] * 3 + ["negative"] * 9 + ["lymphocyte"] * 4
    typed = PredictionSummary("ki67", 0.25, 16, 1.0, 0.5, 1.0, **class_summary(names))
    untyped = PredictionSummary("he", 0.25, 7, 1.0, 0.5, 1.0, roi_area_um2=2e5)
    echo_image_summaries([typed, untyped])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "cells", "model", "s", "post", "s"]
    assert lines[1].split() == ["ki67", "16", "1.00", "0.50"]
    assert lines[3] == "23 cells in 2 image(s)"
    # 3 of 12 tumour cells positive; Wilson 95% interval of 3/12: 8.9% to 53.2%
    counts = "lymphocyte 4, negative 9, positive 3"
    assert lines[4] == f"ki67: {counts}; positive 25.0% (95% CI 8.9-53.2)"
    assert lines[5] == "he: region of interest 0.2000 mm², 35 cells/mm²"


def test_predict_points_to_the_stain_settings_it_did_not_use(sample, small_checkpoint, tmp_path):
    """The default model is calibrated per stain: without --stain, predict says how to use
    those settings; with it, or with a model tuned for no stain, it says nothing."""
    image = str(sorted((sample / "images").iterdir())[0])

    def output(*extra: str) -> str:
        out = str(tmp_path / f"out{len(extra)}")
        args = ["predict", "--images", image, "--out", out, "--no-overlay", *extra]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        return result.output

    tip = "tip: the model has detection settings calibrated for --stain he|ihc"
    assert tip in output()
    assert "tip:" not in output("--stain", "he")
    assert "tip:" not in output("--model", str(small_checkpoint), "--device", "cpu", "--tta")
