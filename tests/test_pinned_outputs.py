"""Pins what the commands write for the bundled sample, so that refactoring cannot change it.

Integer and geometric outputs (Voronoi labels, cell counts, the floor's metrics) must match
exactly. Float outputs that depend on the CPU's SIMD kernels (numpy's exp, oneDNN's
convolutions) are compared within a tolerance far below any change of method, so the pins hold
on machines other than the one that wrote them. Regenerate ``tests/data/pinned_sample.json``
only for an intended change of output: ``python tests/test_pinned_outputs.py``.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from pointcell.cli import main
from pointcell.io.images import read_label_image
from pointcell.sample import sample_dir

PINS = Path(__file__).parent / "data" / "pinned_sample.json"
METRICS = ("accuracy", "f1", "dice", "aji", "pq", "det_precision", "det_recall", "det_f1")


def _run(*args: str) -> None:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output


def _label_pins(folder: Path) -> dict:
    import tifffile
    from PIL import Image

    pins = {}
    for path in sorted((folder / "voronoi").glob("*.png")):
        voronoi = np.asarray(Image.open(path))
        cluster = np.asarray(Image.open(folder / "cluster" / path.name))
        repel = tifffile.imread(folder / "repel" / f"{path.stem}.tif")
        pins[path.stem] = {
            "voronoi_sha256": hashlib.sha256(voronoi.tobytes()).hexdigest(),
            "cluster_counts": np.bincount(cluster.ravel(), minlength=3).tolist(),
            "repel_sum": float(repel[repel > 0].sum()),
        }
    return pins


def _prediction_pins(folder: Path) -> dict:
    pins = {}
    for path in sorted(folder.glob("*.csv")):
        if path.name == "evaluation.csv":
            continue
        cells = np.loadtxt(path, delimiter=",", skiprows=1, usecols=(1, 2), ndmin=2)
        labels = read_label_image(folder / f"{path.stem}.tif")
        pins[path.stem] = {
            "cells_xy": np.round(cells, 3).tolist(),
            "nucleus_pixels": int((labels > 0).sum()),
        }
    return pins


def _metrics(folder: Path) -> dict:
    report = json.loads((folder / "evaluation.json").read_text())
    return {k: report["aggregate"][k] for k in METRICS if k in report["aggregate"]}


def measure(work: Path) -> dict:
    """Run labels, predict, baseline and evaluate on the sample; what they wrote, in numbers."""
    sample = sample_dir()
    images, points, masks = (str(sample / name) for name in ("images", "points", "masks"))
    _run("labels", "--images", images, "--points", points, "--out", str(work / "labels"))
    pred = ["--out", str(work / "pred"), "--device", "cpu", "--precision", "fp32"]
    _run("predict", "--images", images, *pred)
    _run("evaluate", "--pred", str(work / "pred"), "--gt", masks)
    _run("baseline", "--images", images, "--out", str(work / "floor"), "--no-overlay")
    _run("evaluate", "--pred", str(work / "floor"), "--gt", masks)
    return {
        "labels": _label_pins(work / "labels"),
        "predict": _prediction_pins(work / "pred"),
        "predict_metrics": _metrics(work / "pred"),
        "floor": _prediction_pins(work / "floor"),
        "floor_metrics": _metrics(work / "floor"),
    }


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> dict:
    return measure(tmp_path_factory.mktemp("pinned"))


@pytest.fixture(scope="module")
def pinned() -> dict:
    return json.loads(PINS.read_text())


def test_label_maps_are_pinned(measured, pinned):
    for stem, want in pinned["labels"].items():
        got = measured["labels"][stem]
        assert got["voronoi_sha256"] == want["voronoi_sha256"], stem
        np.testing.assert_allclose(got["cluster_counts"], want["cluster_counts"], atol=10)
        assert got["repel_sum"] == pytest.approx(want["repel_sum"], rel=1e-5)


@pytest.mark.parametrize("key", ["predict", "floor"])
def test_cells_and_masks_are_pinned(measured, pinned, key):
    for stem, want in pinned[key].items():
        got = measured[key][stem]
        assert len(got["cells_xy"]) == len(want["cells_xy"]), stem
        np.testing.assert_allclose(got["cells_xy"], want["cells_xy"], atol=0.05)
        assert got["nucleus_pixels"] == pytest.approx(want["nucleus_pixels"], abs=20)


def test_metrics_are_pinned(measured, pinned):
    assert measured["floor_metrics"] == pytest.approx(pinned["floor_metrics"], abs=1e-9)
    assert measured["predict_metrics"] == pytest.approx(pinned["predict_metrics"], abs=2e-3)


if __name__ == "__main__":  # regenerate the pins after an intended change of output
    with tempfile.TemporaryDirectory() as folder:
        PINS.write_text(json.dumps(measure(Path(folder)), indent=1) + "\n")
    sys.exit(0)
