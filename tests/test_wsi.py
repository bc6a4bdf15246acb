import csv
import gzip
import json
from dataclasses import replace

import numpy as np
import pytest
import shapely
import torch

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.inference import Predictor
from pointcell.io.images import read_image
from pointcell.io.points import read_points
from pointcell.io.slides import write_pyramidal_tiff
from pointcell.postprocess import PostprocessParams
from pointcell.wsi import (
    SlideRun,
    SlideSettings,
    dask_client,
    plan_tiles,
    predict_slide,
    predict_slides,
    tiles_touching,
    tissue_mask,
)

GLASS = (245, 245, 245)
STROMA = (235, 200, 225)
NUCLEUS = (90, 50, 140)
RADIUS = 12  # level-0 px at 0.25 µm/px: 3 µm
# core tiles of 64 working px = 128 level-0 px; these centres sit on, beside and between borders
CENTRES = [(128, 128), (126, 300), (258, 130), (384, 384), (200, 200), (640, 250), (500, 520)]


class DarknessNet(torch.nn.Module):
    """Nucleus logit rises as the pixel darkens: dark disks are nuclei, nothing else is."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.zero_()
            self.conv.weight[1] = -10.0
            self.conv.bias[1] = 18.0

    def forward(self, x):
        return self.conv(x)


class DarknessWithProximityNet(DarknessNet):
    """DarknessNet plus a last, proximity channel: darkness averaged over a box a little wider
    than a nucleus, which peaks at its centre."""

    def forward(self, x):
        logits = self.conv(x)
        dark = (logits[:, 1:] > 0).float()
        proximity = torch.nn.functional.avg_pool2d(dark, 15, stride=1, padding=7)
        return torch.cat([logits, 20.0 * proximity - 10.0], dim=1)


def darkness_predictor(detection_head=False):
    net = DarknessWithProximityNet() if detection_head else DarknessNet()
    return Predictor(
        net.eval(),
        [0.0] * 3,
        [1.0] * 3,
        0.5,
        PostprocessParams(min_area_um2=3.0),
        torch.device("cpu"),
        None,
        "darkness",
        detection_head=detection_head,
    )


def disk_slide(path, *, shape=(768, 1024), tissue_box=(0, 768, 0, 1024), centres=CENTRES):
    """A pyramidal slide at 0.25 µm/px: stroma in ``tissue_box`` (rows, cols), glass around
    it, nuclei of known radius at ``centres`` (x, y)."""

    def tile_at(level, y, x, h, w):
        scale = 4**level
        rows, cols = np.mgrid[y : y + h, x : x + w] * scale
        r0, r1, c0, c1 = tissue_box
        tissue = (rows >= r0) & (rows < r1) & (cols >= c0) & (cols < c1)
        out = np.where(tissue[..., None], STROMA, GLASS).astype(np.uint8)
        for cx, cy in centres:
            out[(cols - cx) ** 2 + (rows - cy) ** 2 <= RADIUS**2] = NUCLEUS
        return out

    write_pyramidal_tiff(path, shape, tile_at, mpp=0.25, n_levels=3, tile=256)
    return path


SMALL_TILES = SlideSettings(tile=64, margin=16, network_tile=64, network_overlap=0)


def read_cells(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_tissue_mask_finds_stroma_not_glass_or_black_padding():
    thumb = np.full((100, 120, 3), GLASS, np.uint8)
    thumb[20:60, 30:90] = STROMA
    thumb[:, 110:] = 0  # scanner padding
    mask = tissue_mask(thumb, pixel_um=4.0)
    assert mask[25:55, 35:85].all()
    assert not mask[70:, :].any() and not mask[:, 100:].any()
    assert not tissue_mask(np.full((50, 50, 3), GLASS, np.uint8), pixel_um=4.0).any()


def test_plan_tiles_keeps_only_tiles_touching_tissue():
    tissue = np.zeros((40, 40), bool)
    tissue[5:8, 25:28] = True  # thumbnail at 10 level-0 px per pixel
    tasks, n_tiles = plan_tiles((400, 400), 100.0, tissue, 10.0)
    assert n_tiles == 16
    assert [t.index for t in tasks] == [2]
    assert (tasks[0].x0, tasks[0].y0, tasks[0].x1, tasks[0].y1) == (200.0, 0.0, 300.0, 100.0)
    everything, _ = plan_tiles((350, 250), 100.0)
    assert len(everything) == 12 and everything[-1].x1 == 350 and everything[-1].y1 == 250


def predict_darkness(slide, out, detection_head=False, **options):
    """``predict_slide`` with the context-free darkness model on small tiles."""
    options = {"settings": SMALL_TILES, "progress": False, **options}
    predictor = darkness_predictor(detection_head)
    return predict_slide(slide, out, model="darkness", predictor=predictor, **options)


@pytest.mark.parametrize("detection_head", [False, True])
def test_every_nucleus_once_and_whole_across_tile_borders(tmp_path, detection_head):
    slide = disk_slide(tmp_path / "disks.tif")
    summary = predict_darkness(slide, tmp_path / "out", detection_head)
    cells = read_cells(tmp_path / "out" / "disks.csv")
    assert summary.n_cells == len(cells) == len(CENTRES)
    found = np.array([[float(c["x"]), float(c["y"])] for c in cells])
    for centre in CENTRES:
        distances = np.hypot(*(found - centre).T)
        assert (distances < 2.0).sum() == 1, centre  # once, not duplicated
    areas = np.array([float(c["area_px"]) for c in cells])
    np.testing.assert_allclose(areas, np.pi * RADIUS**2, rtol=0.15)  # whole, not cut
    assert len({c["tile"] for c in cells}) >= 5
    assert not (tmp_path / "out" / "disks.parts").exists()
    scores = np.array([float(c["score"]) for c in cells])
    # the score is the map whose peaks made the cells: the proximity (a disk fills about half
    # of its box) or the nucleus probability
    assert np.all((0.3 < scores) & (scores < 0.7)) if detection_head else np.all(scores > 0.9)


def test_tta_on_a_slide_runs_every_tile_in_8_poses_and_keeps_the_cells(tmp_path):
    slide = disk_slide(tmp_path / "disks.tif")
    counts = {}
    for tta in (False, True):
        predictor = darkness_predictor()
        calls = []
        predictor.model.register_forward_hook(lambda *_, calls=calls: calls.append(1))
        settings = replace(SMALL_TILES, tta=tta)
        out = tmp_path / f"out-{tta}"
        predict_slide(slide, out, model="d", predictor=predictor, settings=settings, progress=False)
        counts[tta] = (len(calls), read_cells(out / "disks.csv"))
    assert counts[True][0] == 8 * counts[False][0] > 0
    assert counts[True][1] == counts[False][1]  # an orientation-free model: same cells


def test_label_zarr_holds_every_nucleus_whole_with_the_table_ids(tmp_path):
    import zarr

    slide = disk_slide(tmp_path / "disks.tif")
    predict_darkness(slide, tmp_path / "out", run=SlideRun(labels_zarr=True))
    labels = zarr.open_array(tmp_path / "out" / "disks.labels.zarr", mode="r")[:]
    assert labels.shape == (768, 1024) and labels.dtype == np.uint32
    for cell in read_cells(tmp_path / "out" / "disks.csv"):
        x, y = round(float(cell["x"])), round(float(cell["y"]))
        assert labels[y, x] == int(cell["id"])
        assert (labels == int(cell["id"])).sum() == pytest.approx(float(cell["area_px"]), rel=0.1)
    assert len(np.unique(labels)) == len(CENTRES) + 1


def test_geojson_opens_as_qupath_detections_and_round_trips(tmp_path):
    slide = disk_slide(tmp_path / "disks.tif")
    predict_darkness(slide, tmp_path / "out", run=SlideRun(gzip_geojson=True))
    with gzip.open(tmp_path / "out" / "disks.geojson.gz", "rt") as handle:
        collection = json.load(handle)
    assert collection["type"] == "FeatureCollection"
    feature = collection["features"][0]
    assert feature["properties"]["objectType"] == "detection"
    assert feature["properties"]["classification"]["name"] == "Nucleus"
    ring = feature["geometry"]["coordinates"][0]
    assert feature["geometry"]["type"] == "Polygon" and ring[0] == ring[-1]
    plain = tmp_path / "cells.geojson"
    plain.write_text(json.dumps(collection))
    points = read_points(plain)  # polygon features give their centroid
    for centre in CENTRES:
        assert np.hypot(*(points.xy - centre).T).min() < 1.5


def test_mostly_empty_slide_reads_only_its_tissue(tmp_path):
    centres = [(6000, 300), (6200, 420)]
    slide = disk_slide(
        tmp_path / "big.tif",
        shape=(8192, 8192),
        tissue_box=(100, 700, 5800, 6500),
        centres=centres,
    )
    summary = predict_darkness(
        slide,
        tmp_path / "out",
        settings=SlideSettings(tile=256, margin=16, network_tile=256, network_overlap=0),
    )
    assert summary.n_tiles == 256
    assert summary.n_tissue_tiles <= 6
    assert summary.n_cells == 2
    assert summary.tissue_fraction < 0.02


def test_region_of_interest_reads_only_its_tiles_and_keeps_only_its_cells(tmp_path):
    slide = disk_slide(tmp_path / "disks.tif")
    everywhere = predict_darkness(slide, tmp_path / "all")
    # level-0 region around three nuclei (128, 128), (258, 130), (200, 200); its edge crosses
    # the nucleus at (258, 130), whose centre is inside
    roi = shapely.box(100, 100, 265, 230)
    (summary,) = predict_slides(
        [slide],
        tmp_path / "roi",
        model="darkness",
        predictor=darkness_predictor(),
        settings=SMALL_TILES,
        progress=False,
        rois={slide: roi},
    )
    cells = read_cells(tmp_path / "roi" / "disks.csv")
    found = sorted((round(float(c["x"])), round(float(c["y"]))) for c in cells)
    assert found == [(128, 128), (200, 200), (258, 130)]
    np.testing.assert_allclose([float(c["area_px"]) for c in cells], np.pi * RADIUS**2, rtol=0.15)
    assert summary.n_tissue_tiles == 3 * 2 < everywhere.n_tissue_tiles  # 128-px cores overlapped
    assert summary.roi_area_um2 == pytest.approx(165 * 130 * 0.25**2)
    assert everywhere.roi_area_um2 is None
    with pytest.warns(PointcellWarning, match="covers no tissue"):
        elsewhere = predict_darkness(slide, tmp_path / "none", roi=shapely.box(5000, 0, 6000, 99))
    assert elsewhere.n_cells == 0 and read_cells(tmp_path / "none" / "disks.csv") == []


def test_tiles_touching_a_region_share_area_with_it():
    tasks, _ = plan_tiles((400, 300), 100.0)
    kept = tiles_touching(tasks, shapely.box(150, 50, 200, 150))  # edge on x = 200
    assert [t.index for t in kept] == [1, 5]
    ring = shapely.box(0, 0, 400, 300).difference(shapely.box(10, 10, 390, 290))
    assert len(tiles_touching(tasks, ring)) == 10  # a frame misses the 2 inner tiles


class Boom(RuntimeError):
    pass


def test_killed_job_resumes_where_it_stopped(tmp_path, monkeypatch):
    import pointcell.wsi.tiles as wsi

    RESUME = SlideRun(resume=True)

    slide = disk_slide(tmp_path / "disks.tif")
    options = {
        "model": "darkness",
        "predictor": darkness_predictor(),
        "settings": SMALL_TILES,
        "progress": False,
    }
    predict_slide(slide, tmp_path / "fresh", **options)
    expected = (tmp_path / "fresh" / "disks.csv").read_text()

    real = wsi.owned_cells
    calls = {"n": 0}

    def dies_on_fifth_tile(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise Boom("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(wsi, "owned_cells", dies_on_fifth_tile)
    with pytest.raises(Boom):
        predict_slide(slide, tmp_path / "out", **options)
    parts = tmp_path / "out" / "disks.parts"
    done = len(list(parts.glob("tile-*.json")))
    assert 1 <= done < 12  # 12 tissue tiles in this slide
    assert not (tmp_path / "out" / "disks.csv").exists()  # nothing half-written

    with pytest.raises(PointcellInputError, match="--resume"):
        predict_slide(slide, tmp_path / "out", **options)
    with pytest.raises(PointcellInputError, match="postprocess"):
        changed = PostprocessParams(min_area_um2=9)
        predict_slide(slide, tmp_path / "out", run=RESUME, params=changed, **options)
    with pytest.raises(PointcellInputError, match="roi"):
        predict_slide(slide, tmp_path / "out", run=RESUME, roi=shapely.box(0, 0, 99, 99), **options)
    calls["n"] = -1000  # no more failures
    summary = predict_slide(slide, tmp_path / "out", run=RESUME, **options)
    assert calls["n"] == -1000 + summary.n_tissue_tiles - done  # only the missing tiles ran
    assert (tmp_path / "out" / "disks.csv").read_text() == expected

    with pytest.raises(PointcellInputError, match="--overwrite"):
        predict_slide(slide, tmp_path / "out", **options)
    predict_slide(slide, tmp_path / "out", run=SlideRun(overwrite=True), **options)
    assert (tmp_path / "out" / "disks.csv").read_text() == expected


def sample_mosaic_slide(path, sample):
    """The two bundled MoNuSeg crops tiled on glass, as a 0.25 µm/px pyramid."""
    crops = [read_image(p).pixels for p in sorted((sample / "images").glob("*.tif"))]
    mosaic = np.full((768, 768, 3), GLASS, np.uint8)
    for index, (y, x) in enumerate([(64, 64), (64, 320), (320, 192), (512, 448)]):
        mosaic[y : y + 256, x : x + 256] = crops[index % 2]

    def tile_at(level, y, x, h, w):
        return mosaic[:: 4**level, :: 4**level][y : y + h, x : x + w]

    write_pyramidal_tiff(path, mosaic.shape[:2], tile_at, mpp=0.25, n_levels=2, tile=256)
    return path


def test_dask_cluster_gives_the_single_process_result(tmp_path, sample):
    slide = sample_mosaic_slide(tmp_path / "mosaic.tif", sample)
    settings = SlideSettings(tile=128, margin=32, network_tile=192, network_overlap=0)
    options = {"model": "pointcell-he", "settings": settings, "progress": False}
    local = predict_slide(slide, tmp_path / "local", torch_threads=1, **options)
    with dask_client(workers=2) as (client, threads):
        assert threads == 1
        distributed = predict_slide(
            slide,
            tmp_path / "dask",
            client=client,
            torch_threads=1,
            run=SlideRun(group_size=2),
            **options,
        )
    assert local.n_cells == distributed.n_cells > 50
    assert (tmp_path / "local" / "mosaic.csv").read_text() == (
        tmp_path / "dask" / "mosaic.csv"
    ).read_text()
