import json
import warnings

import numpy as np
import pytest
import tifffile

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.evaluate import evaluate, rasterise, write_report
from pointcell.io.points import Points, read_points, write_points_csv
from pointcell.masks import instance_centroids


@pytest.fixture
def perfect(sample, tmp_path):
    """Predictions that are exactly the sample's ground-truth masks."""
    pred = tmp_path / "pred"
    pred.mkdir()
    for mask in sorted((sample / "masks").glob("*.tif")):
        labels = tifffile.imread(mask)
        tifffile.imwrite(pred / mask.name, labels)
        write_points_csv(pred / f"{mask.stem}.csv", Points(instance_centroids(labels)))
    return pred


def test_ground_truth_against_itself_scores_one(perfect, sample):
    report = evaluate(perfect, sample / "masks", mpp=0.25)
    for key in ("accuracy", "f1", "dice", "aji", "pq", "det_f1", "count_ccc"):
        assert report.aggregate[key] == pytest.approx(1.0), key
    assert report.aggregate["n_images"] == 2 and report.aggregate["radius_um"] == 3.0


def test_points_only_ground_truth_gives_detection_metrics_only(perfect, sample):
    report = evaluate(perfect, sample / "points", mpp=0.25)
    assert "aji" not in report.aggregate
    assert report.aggregate["det_f1"] == pytest.approx(1.0)


def test_misses_and_false_detections_are_sorted_by_cause(perfect, sample):
    stem = sorted(p.stem for p in perfect.glob("*.tif"))[0]
    table = perfect / f"{stem}.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:-1] + ["5000,5000"]) + "\n")  # drop one, add a far one
    report = evaluate(perfect, sample / "masks", mpp=0.25)
    errors = report.per_image[stem]
    # the nucleus of the dropped centre is still in the labels, but its detection is gone
    assert errors["det_fn"] == 1 and errors["det_fn_displaced"] == 1
    assert errors["det_fp"] == 1 and errors["det_fp_far"] == 1
    assert report.aggregate["det_fn_background"] == report.aggregate["det_fn_merged"] == 0


def test_polygon_ground_truth_is_rasterised(perfect, tmp_path):
    stem = sorted(p.stem for p in perfect.glob("*.tif"))[0]
    labels = tifffile.imread(perfect / f"{stem}.tif")
    gt = tmp_path / "gt"
    gt.mkdir()
    square = [[[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]]]
    (gt / f"{stem}.geojson").write_text(
        json.dumps(
            {
                "type": "FeatureCollection",
                "features": [
                    {
                        "type": "Feature",
                        "geometry": {"type": "Polygon", "coordinates": square},
                        "properties": {"objectType": "annotation"},
                    }
                ],
            }
        )
    )
    for other in perfect.glob("*.tif"):
        if other.stem != stem:
            other.unlink()
    report = evaluate(perfect, gt, mpp=0.25)
    assert report.per_image[stem]["n_true"] == 1
    assert 0 <= report.aggregate["aji"] < 0.2  # one square versus many nuclei
    assert labels.shape == (256, 256)


def test_rasterise_fills_polygons():
    labels = rasterise([np.array([[1, 1], [4, 1], [4, 3], [1, 3]])], (6, 6))
    assert labels.sum() == 12 and labels[2, 2] == 1  # rows 1-3 x cols 1-4 (skimage.draw)


def test_evaluation_errors(perfect, sample, tmp_path):
    with pytest.raises(PointcellInputError, match="pixel size of .* unknown"):
        evaluate(perfect, sample / "masks")
    wrong = tmp_path / "wrong"
    wrong.mkdir()
    for mask in (sample / "masks").glob("*.tif"):
        tifffile.imwrite(wrong / mask.name, np.zeros((100, 100), np.uint16))
    with pytest.raises(
        PointcellInputError, match="ground truth is 100x100 but the prediction is 256x256"
    ):
        evaluate(perfect, wrong, mpp=0.25)
    partial = tmp_path / "partial"
    partial.mkdir()
    first = sorted((sample / "masks").glob("*.tif"))[0]
    tifffile.imwrite(partial / first.name, tifffile.imread(first))
    with pytest.raises(PointcellInputError, match="no ground truth for prediction"):
        evaluate(perfect, partial, mpp=0.25)
    with pytest.raises(PointcellInputError, match="predictions folder not found"):
        evaluate(tmp_path / "none", sample / "masks", mpp=0.25)


def test_report_files(perfect, sample, tmp_path):
    report = evaluate(perfect, sample / "masks", mpp=0.25)
    write_report(report, tmp_path / "r.json", tmp_path / "r.csv")
    data = json.loads((tmp_path / "r.json").read_text())
    assert "mean over images" in data["aggregation"]
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("image,") and len(lines) == 3


def test_a_shifted_point_set_is_reported(perfect, sample):
    for table in perfect.glob("*.csv"):
        points = read_points(table)
        write_points_csv(table, Points(points.xy - 1.0))  # predictions counted 1 px lower
    with pytest.warns(PointcellWarning, match=r"\(\+1\.00, \+1\.00\) px.*count pixels from 1"):
        report = evaluate(perfect, sample / "masks", mpp=0.25)
    assert report.aggregate["det_offset_x_px"] == pytest.approx(1.0, abs=0.01)
    assert report.aggregate["det_offset_y_px"] == pytest.approx(1.0, abs=0.01)


def test_unshifted_points_raise_no_warning(perfect, sample):
    with warnings.catch_warnings():
        warnings.simplefilter("error", PointcellWarning)
        report = evaluate(perfect, sample / "masks", mpp=0.25)
    assert report.aggregate["det_offset_x_px"] == pytest.approx(0.0, abs=0.01)


def test_ground_truth_without_prediction_is_refused_or_counted(perfect, sample):
    first = sorted(perfect.glob("*.tif"))[0]
    first.unlink()
    (perfect / f"{first.stem}.csv").unlink()
    with pytest.raises(PointcellInputError, match="1 ground-truth image"):
        evaluate(perfect, sample / "masks", mpp=0.25)
    report = evaluate(perfect, sample / "masks", mpp=0.25, allow_missing=True)
    assert report.aggregate["n_gt_without_prediction"] == 1
    assert report.aggregate["n_images"] == 1 and first.stem not in report.per_image
