import numpy as np
from click.testing import CliRunner
from PIL import Image

from pointcell.cli import main


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
    assert result.exit_code == 1
    assert "a.png: the file does not record its pixel size; pass --mpp" in result.output
    assert "Traceback" not in result.output
    assert CliRunner().invoke(main, [*args, "--mpp", "0.5"]).exit_code == 0


def test_bad_points_give_one_clear_line(tmp_path):
    args = tiny_labels_job(tmp_path, "x,y\n10,oops\n")
    result = CliRunner().invoke(main, [*args, "--mpp", "0.5"])
    assert result.exit_code == 1
    assert "a.csv, line 2: column 'y' is 'oops', not a number" in result.output
    assert not (tmp_path / "out" / "voronoi").exists()


def test_clip_option_drops_outside_points(tmp_path):
    args = [*tiny_labels_job(tmp_path, "x,y\n10,10\n50,10\n"), "--mpp", "0.5"]
    assert "outside the 32x32 image" in CliRunner().invoke(main, args).output
    result = CliRunner().invoke(main, [*args, "--clip"])
    assert result.exit_code == 0
    assert "a: 1 points" in result.output


def test_demo_command_end_to_end(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--out", str(tmp_path), "--steps", "2"])
    assert result.exit_code == 0, result.output
    assert "shipped model: AJI" in result.output and "report.html" in result.output
    assert len(list((tmp_path / "labels" / "overlay").glob("*.png"))) == 2
    assert len(list((tmp_path / "predictions").glob("*_overlay.png"))) == 2
    page = (tmp_path / "report.html").read_text()
    assert "detection F1" in page and "predictions/" in page


def test_train_and_resume_commands(tmp_path):
    from conftest import write_disk_dataset

    data = write_disk_dataset(tmp_path / "data")
    args = [
        "train",
        "--images",
        str(data / "images"),
        "--points",
        str(data / "points"),
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
        "--precision",
        "fp32",
        "--val-every",
        "1",
        "--cache-dir",
        str(tmp_path / "cache"),
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "trained 2 steps" in result.output
    assert (tmp_path / "run" / "best.pt").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 1 and "already holds a run" in again.output
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "run")])
    assert resumed.exit_code == 0 and "trained 2 steps" in resumed.output


def test_train_needs_inputs_or_resume(tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
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
    assert bad.exit_code == 2 and "multiple of 32" in bad.output


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
    assert (out / "evaluation.json").is_file() and (out / "evaluation.csv").is_file()


def test_predict_rejects_bad_tiles_and_models(sample, tmp_path):
    args = ["predict", "--images", str(sample / "images"), "--out", str(tmp_path)]
    bad_tile = CliRunner().invoke(main, [*args, "--model", str(tmp_path), "--tile-size", "100"])
    assert bad_tile.exit_code == 2 and "multiples of 32" in bad_tile.output
    missing = CliRunner().invoke(main, [*args, "--model", str(tmp_path / "none.pt")])
    assert missing.exit_code == 1 and "no such model file" in missing.output
