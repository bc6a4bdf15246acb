import csv
import json

import numpy as np
import pytest
import shapely
import tifffile
from PIL import Image

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.inference import load_predictor
from pointcell.io.predictions import list_images
from pointcell.predict import predict_images


def test_predict_writes_every_output(sample, small_checkpoint, tmp_path):
    predictor = load_predictor(small_checkpoint, device="cpu")
    summaries = predict_images(
        predictor, [sample / "images"], tmp_path, save_probability=True, progress=False
    )
    assert [s.mpp for s in summaries] == [0.25, 0.25]
    for s in summaries:
        labels = tifffile.imread(tmp_path / f"{s.stem}.tif")
        assert labels.shape == (256, 256) and labels.dtype == np.uint16
        probability = tifffile.imread(tmp_path / f"{s.stem}_probability.tif")
        assert probability.shape == (256, 256) and 0 <= probability.min() <= probability.max() <= 1
        with open(tmp_path / f"{s.stem}.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        assert list(rows[0]) == ["id", "x", "y", "area_px", "area_um2", "score", "instance"]
        assert len(rows) == s.n_cells
        for row in rows:
            x, y, label = float(row["x"]), float(row["y"]), int(row["instance"])
            assert labels[round(y), round(x)] == label > 0  # every centre lies in its nucleus
            assert float(row["area_um2"]) == pytest.approx(int(row["area_px"]) * 0.0625, abs=1e-3)
        geo = json.loads((tmp_path / f"{s.stem}.geojson").read_text())
        assert geo["type"] == "FeatureCollection" and geo["features"]
        feature = geo["features"][0]
        assert feature["properties"]["objectType"] == "detection"
        ring = feature["geometry"]["coordinates"][0]
        assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
        assert (tmp_path / f"{s.stem}_overlay.png").is_file()
    record = json.loads((tmp_path / "predictions.json").read_text())
    assert set(record["images"]) == {s.stem for s in summaries}


def test_list_images_errors(tmp_path):
    with pytest.raises(PointcellInputError, match="no such image"):
        list_images([tmp_path / "missing.png"])
    with pytest.raises(PointcellInputError, match="no images"):
        list_images([tmp_path])
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "x.tif").write_bytes(b"")
    with pytest.raises(PointcellInputError, match="share the name 'x'"):
        list_images([tmp_path / "a", tmp_path / "x.tif"])


def read_centres(path):
    with open(path, newline="") as handle:
        return {(float(r["x"]), float(r["y"])) for r in csv.DictReader(handle)}


def test_a_region_of_interest_keeps_only_the_cells_inside(sample, small_checkpoint, tmp_path):
    predictor = load_predictor(small_checkpoint, device="cpu")
    image = sorted((sample / "images").iterdir())[0]
    (everywhere,) = predict_images(predictor, [image], tmp_path / "all", progress=False)
    region = shapely.box(0, 0, 128, 256)  # the left half of the 256-px image
    (inside,) = predict_images(
        predictor, [image], tmp_path / "roi", rois={image: region}, progress=False
    )
    all_centres = read_centres(tmp_path / "all" / f"{image.stem}.csv")
    kept = read_centres(tmp_path / "roi" / f"{image.stem}.csv")
    assert kept == {(x, y) for x, y in all_centres if x <= 128} and 0 < len(kept) < len(all_centres)
    assert inside.n_cells == len(kept) and everywhere.roi_area_um2 is None
    assert inside.roi_area_um2 == pytest.approx(128 * 256 * 0.25**2)
    labels = tifffile.imread(tmp_path / "roi" / f"{image.stem}.tif")
    assert len(np.unique(labels)) - 1 == len(kept) and not labels[:, 160:].any()
    overlay = np.asarray(Image.open(tmp_path / "roi" / f"{image.stem}_overlay.png"))
    edge = (overlay == (255, 230, 0)).all(axis=-1)
    assert edge[:, 126:130].any(axis=1).sum() > 200 and not edge[:, 140:].any()
    record = json.loads((tmp_path / "roi" / "predictions.json").read_text())
    assert record["images"][image.stem]["roi_area_um2"] == pytest.approx(2048.0)
    with pytest.warns(PointcellWarning, match="outside the image"):
        (outside,) = predict_images(
            predictor,
            [image],
            tmp_path / "x",
            rois={image: shapely.box(300, 0, 400, 50)},
            progress=False,
        )
    assert outside.n_cells == 0


@pytest.mark.filterwarnings("ignore:.*no settings tuned for ihc")
def test_refined_outlines_grow_the_nuclei_on_the_stain_named(sample, small_checkpoint, tmp_path):
    from pointcell.predict import PredictSettings, predict_paths

    def run(name, **postprocess):
        settings = PredictSettings(
            model=str(small_checkpoint), stain="ihc", postprocess=postprocess, overlay=False
        )
        predict_paths([sample / "images"], tmp_path / name, settings, progress=False)
        record = json.loads((tmp_path / name / "predictions.json").read_text())
        stems = sorted(record["images"])
        areas = [np.count_nonzero(tifffile.imread(tmp_path / name / f"{s}.tif")) for s in stems]
        counts = [record["images"][s]["n_cells"] for s in stems]
        return record["postprocess"], areas, counts

    _, plain_areas, plain_counts = run("plain", refine_outlines_um=0.0)
    params, areas, counts = run("refined", refine_outlines_um=1.0)
    assert params["refine_outlines_um"] == 1.0 and params["outline_stain"] == "ihc"
    assert counts == plain_counts  # the same cells, with larger outlines
    assert all(a > b for a, b in zip(areas, plain_areas, strict=True))
    overridden, _, _ = run("overridden", outline_stain="he")  # an override wins over --stain
    assert overridden["outline_stain"] == "he"
