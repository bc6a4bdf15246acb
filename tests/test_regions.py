"""Training regions on whole slides: clicks made in QuPath regions teach, the rest is ignored."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import shapely

from conftest import tiny_config
from pointcell.encodings import IGNORE, REPEL_IGNORE, EncodingParams
from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.images import read_image
from pointcell.io.pairing import ImagePointsPair, pair_images_with_points
from pointcell.io.points import read_annotations, read_points
from pointcell.io.slides import open_slide, write_pyramidal_tiff
from pointcell.labels import write_labels
from pointcell.regions import label_sources, region_parts
from pointcell.targets import prepare_image, prepare_slide_region
from pointcell.train import TrainConfig, fit, resolve_split

GLASS = (242, 242, 242)
OFFSETS = [(64, 64), (576, 576)]  # (x, y) of the two sample crops on the slide
SIDE = 256


def crop_box(x, y, side=SIDE):
    """The polygon covering pixels x..x+side-1 (pixel centres at integer coordinates)."""
    return shapely.box(x - 0.5, y - 0.5, x + side - 0.5, y + side - 0.5)


def annotation(geometry, object_type="annotation"):
    return {"type": "Feature", "geometry": geometry, "properties": {"objectType": object_type}}


def write_clicks(path, clicks_xy, regions=(), classes=None):
    """A QuPath GeoJSON export: one Point per click, one annotation polygon per region."""
    features = []
    for index, (x, y) in enumerate(clicks_xy):
        feature = annotation({"type": "Point", "coordinates": [float(x), float(y)]}, "detection")
        if classes is not None:
            feature["properties"]["classification"] = {"name": classes[index]}
        features.append(feature)
    features += [annotation(shapely.geometry.mapping(r)) for r in regions]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


@pytest.fixture
def sample_slide(tmp_path, sample):
    """The two bundled MoNuSeg crops on glass, as a 1024² pyramid at 0.25 µm/px, with their
    clicks moved onto the slide; ``crops`` lists (pixels, clicks) of each crop."""
    crops = []
    mosaic = np.full((1024, 1024, 3), GLASS, np.uint8)
    clicks = []
    for image, (x, y) in zip(sorted((sample / "images").glob("*.tif")), OFFSETS, strict=True):
        pixels = read_image(image).pixels
        points = read_points(sample / "points" / f"{image.stem}.csv")
        mosaic[y : y + SIDE, x : x + SIDE] = pixels
        crops.append((pixels, points.xy))
        clicks.append(points.xy + [x, y])

    def tile_at(level, y, x, h, w):
        return mosaic[:: 4**level, :: 4**level][y : y + h, x : x + w]

    slide = tmp_path / "slides" / "mosaic.tif"
    slide.parent.mkdir()
    write_pyramidal_tiff(slide, mosaic.shape[:2], tile_at, mpp=0.25, n_levels=2, tile=256)
    return slide, np.concatenate(clicks), crops


def test_annotation_outlines_are_regions_and_detections_are_clicks(tmp_path):
    square = shapely.box(0, 0, 50, 50)
    path = write_clicks(tmp_path / "a.geojson", [(10, 10), (20, 30)], regions=[square])
    found = read_annotations(path)
    np.testing.assert_allclose(found.points.xy, [[10, 10], [20, 30]])
    assert found.regions.equals(square)
    only_outlines = write_clicks(tmp_path / "b.geojson", [], regions=[square])
    found = read_annotations(only_outlines)  # outlines without clicks: cells, as before
    assert found.regions is None
    np.testing.assert_allclose(found.points.xy, [[25, 25]])


def test_slide_regions_encode_as_the_regions_cut_out_as_tiles(tmp_path, sample_slide, sample):
    slide, clicks, crops = sample_slide
    regions = [crop_box(x, y) for x, y in OFFSETS]
    points = write_clicks(tmp_path / "mosaic.geojson", clicks, regions)
    pair = ImagePointsPair(slide, points)
    sources = label_sources([pair])
    assert [s.stem for s in sources] == ["mosaic_r1", "mosaic_r2"]
    assert {s.group for s in sources} == {"mosaic"}
    params = EncodingParams()
    with open_slide(slide) as opened:
        from_slide = [
            prepare_slide_region(s, opened, working_mpp=0.5, params=params) for s in sources
        ]
    for region, image, (_, xy) in zip(
        from_slide, sorted((sample / "images").glob("*.tif")), crops, strict=True
    ):
        tile_pair = ImagePointsPair(image, sample / "points" / f"{image.stem}.csv")
        tile = prepare_image(tile_pair, working_mpp=0.5, params=params, mpp=0.25)
        assert region.image.shape == tile.image.shape == (128, 128, 3)
        assert np.abs(region.image.astype(int) - tile.image).max() <= 1  # rounding only
        np.testing.assert_allclose(region.points_xy, (xy + 0.5) / 2 - 0.5, atol=1e-9)
        np.testing.assert_allclose(region.points_xy, tile.points_xy, atol=1e-9)
        assert (region.voronoi == tile.voronoi).mean() > 0.99
        assert (region.cluster == tile.cluster).mean() > 0.95
        assert region.inside.all()


def test_outside_a_region_every_target_is_ignored_pixel_by_pixel(tmp_path, sample_slide):
    slide, clicks, _ = sample_slide
    triangle = shapely.Polygon([(60, 60), (330, 60), (60, 330)])
    keep = shapely.contains_xy(triangle, clicks[:, 0], clicks[:, 1])
    points = write_clicks(tmp_path / "mosaic.geojson", clicks[keep], [triangle])
    (source,) = label_sources([ImagePointsPair(slide, points)])
    with open_slide(slide) as opened:
        region = prepare_slide_region(source, opened, working_mpp=0.5, params=EncodingParams())
    rows, cols = np.mgrid[0 : region.image.shape[0], 0 : region.image.shape[1]]
    x0, y0 = np.ceil(triangle.bounds[:2])  # the region's top-left pixel
    level0_x, level0_y = x0 + (cols + 0.5) * 2 - 0.5, y0 + (rows + 0.5) * 2 - 0.5
    expected = shapely.contains_xy(triangle, level0_x, level0_y)
    clear = shapely.distance(triangle.boundary, shapely.points(level0_x, level0_y)) > 2.0
    assert (region.inside == expected)[clear].all()
    outside = ~region.inside
    assert outside.sum() > 0.4 * outside.size
    assert (region.voronoi[outside] == IGNORE).all()
    assert (region.cluster[outside] == IGNORE).all()
    assert (region.repel[outside] == REPEL_IGNORE).all()
    assert (region.cluster[region.inside] != IGNORE).mean() > 0.5


def test_without_outlines_each_click_neighbourhood_is_a_region(tmp_path, sample_slide):
    slide, _, _ = sample_slide
    clicks = [(100, 100), (110, 120), (700, 700)]  # two groups 150 µm apart
    points = write_clicks(tmp_path / "mosaic.geojson", clicks)
    sources = label_sources([ImagePointsPair(slide, points)], neighbourhood_um=10.0)
    assert [len(s.points) for s in sources] == [2, 1]
    disk = shapely.Point(700, 700).buffer(40.0)  # 10 µm at 0.25 µm/px
    assert shapely.symmetric_difference(sources[1].region, disk).area < 1e-6


def test_bad_slide_clicks_end_in_one_clear_line(tmp_path, sample_slide):
    slide, _, _ = sample_slide
    pair = ImagePointsPair(slide, tmp_path / "mosaic.geojson")
    region = crop_box(64, 64)
    write_clicks(pair.points, [(100, 100), (900, 900)], [region])
    with pytest.raises(PointcellInputError, match="1 click.* outside every training region"):
        label_sources([pair])
    with pytest.warns(PointcellWarning, match="dropped 1 click"):
        assert len(label_sources([pair], clip=True)) == 1
    write_clicks(pair.points, [(100, 100), (2000, 10)], [region])
    with pytest.raises(PointcellInputError, match="outside the 1024x1024 image"):
        label_sources([pair])
    write_clicks(pair.points, [(100, 100)], [region, crop_box(576, 576)])
    with pytest.warns(PointcellWarning, match="region 2 of mosaic.tif has no click"):
        assert [s.stem for s in label_sources([pair])] == ["mosaic_r1"]
    write_clicks(pair.points, [(10, 10), (100, 200), (200, 100)])
    with pytest.warns(PointcellWarning, match="another pyramid level"):
        label_sources([pair])
    with pytest.raises(PointcellInputError, match="pixel size"):
        plain = tmp_path / "no_mpp.tif"
        write_pyramidal_tiff(
            plain, (512, 512), lambda *a: np.zeros((a[3], a[4], 3), np.uint8), mpp=0.25, n_levels=2
        )
        _strip_resolution(plain)
        label_sources([ImagePointsPair(plain, pair.points)])


def test_self_labels_refuse_slide_regions_before_encoding_anything(tmp_path, sample_slide):
    from conftest import write_disk_dataset
    from pointcell.train.dataset import prepare_dataset

    slide, _, _ = sample_slide
    points = write_clicks(tmp_path / "mosaic.geojson", [(100, 100)], [crop_box(64, 64)])
    tile = pair_images_with_points(
        *(write_disk_dataset(tmp_path / "tiles", 1) / n for n in ("images", "points"))
    )
    sources = label_sources([*tile, ImagePointsPair(slide, points)])  # a tile comes first
    cache = tmp_path / "cache"
    config = tiny_config(tmp_path, tmp_path, self_labels=str(tmp_path), cache_dir=str(cache))
    with pytest.raises(PointcellInputError, match="mosaic_r1: --self-labels works on image tiles"):
        prepare_dataset(config, sources, progress=False)
    assert not cache.exists()  # nothing was encoded, not even the tile


def _strip_resolution(path):
    """Rewrite a pyramid without its pixel size (a scanner that records none)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        levels = [level.asarray() for level in tif.series[0].levels]
    with tifffile.TiffWriter(path, bigtiff=True) as out:
        for index, level in enumerate(levels):
            out.write(
                level,
                tile=(256, 256),
                photometric="rgb",
                subifds=len(levels) - 1 if index == 0 else None,
                subfiletype=1 if index else 0,
            )


def test_split_never_divides_a_slide_unless_it_is_the_only_one():
    groups = {f"s{k}_r{j}": f"s{k}" for k in range(5) for j in (1, 2, 3)}
    config = TrainConfig(images="i", points="p", steps=1)
    split = resolve_split(config, groups)
    for side in ("train", "val"):
        for other in ("val", "test"):
            if side != other:
                assert not {groups[s] for s in split[side]} & {groups[s] for s in split[other]}
    assert sum(map(len, split.values())) == 15
    named = TrainConfig(
        images="i", points="p", steps=1, split={"train": ["s0", "s1:r2"], "val": ["s1_r1"]}
    )
    assert resolve_split(named, groups) == {
        "train": ["s0_r1", "s0_r2", "s0_r3", "s1_r2"],
        "val": ["s1_r1"],
        "test": [],
    }
    with pytest.warns(PointcellWarning, match="one slide"):
        single = resolve_split(config, {f"s_r{j}": "s" for j in range(1, 11)})
    assert single["val"] and single["train"]


def test_slides_and_tiles_train_together_and_labels_writes_each_region(
    tmp_path, sample_slide, sample
):
    slide, clicks, _ = sample_slide
    regions = [crop_box(x, y) for x, y in OFFSETS]
    write_clicks(slide.parent / "mosaic.geojson", clicks, regions)
    tile = sample / "images" / "TCGA-18-5592-01Z-00-DX1_r500_c300.tif"
    (slide.parent / tile.name).symlink_to(tile)
    (slide.parent / f"{tile.stem}.csv").symlink_to(sample / "points" / f"{tile.stem}.csv")
    assert len(pair_images_with_points(slide.parent, slide.parent)) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning on good input
        summaries = write_labels(slide.parent, slide.parent, tmp_path / "labels", mpp=0.25)
    assert sorted(s.stem for s in summaries) == sorted(["mosaic_r1", "mosaic_r2", tile.stem])
    assert (tmp_path / "labels" / "cluster" / "mosaic_r2.png").is_file()
    config = tiny_config(
        slide.parent,
        tmp_path,
        images=str(slide.parent),
        points=str(slide.parent),
        mpp=0.25,
        steps=2,
        split={"train": ["mosaic:r1", tile.stem], "val": ["mosaic:r2"]},
    )
    result = fit(config, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "best.pt").is_file()
    assert result.steps == 2
    assert result.best_score is not None  # scored on the validation region
    assert len(list((tmp_path / "cache").glob("mosaic_r*-*"))) == 2


def test_region_parts_come_in_reading_order():
    right, left_low, top = (
        shapely.box(50, 0, 60, 10),
        shapely.box(0, 40, 10, 50),
        shapely.box(0, 0, 5, 5),
    )
    parts = region_parts(shapely.union_all([right, left_low, top]))
    assert [p.bounds for p in parts] == [top.bounds, right.bounds, left_low.bounds]


def test_roi_folder_replaces_the_regions_of_the_points_file(tmp_path, sample_slide):
    slide, clicks, _ = sample_slide
    points = write_clicks(tmp_path / "mosaic.geojson", clicks, [crop_box(*OFFSETS[0])])
    roi = tmp_path / "roi"
    roi.mkdir()
    write_clicks(roi / "mosaic.geojson", [], [crop_box(*OFFSETS[0]), crop_box(*OFFSETS[1])])
    pair = ImagePointsPair(slide, points)
    with pytest.raises(PointcellInputError, match="outside every training region"):
        label_sources([pair])  # the file's one region leaves the second crop's clicks out
    assert [s.stem for s in label_sources([pair], roi=roi)] == ["mosaic_r1", "mosaic_r2"]
