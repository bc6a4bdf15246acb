import json

import pytest
import shapely

from pointcell.errors import PointcellInputError
from pointcell.io.roi import read_roi, region_mask, roi_for_images

SQUARE = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
HOLE = [[40, 40], [60, 40], [60, 60], [40, 60], [40, 40]]
FAR = [[200, 0], [220, 0], [220, 10], [200, 10], [200, 0]]


def qupath_annotations(path, *geometries):
    """A QuPath "Export objects as GeoJSON" file of annotations (plus a point, which has no
    area and must be ignored)."""
    features = [
        {"type": "Feature", "geometry": g, "properties": {"objectType": "annotation"}}
        for g in geometries
    ]
    features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_geojson_polygons_with_holes_and_multipolygons(tmp_path):
    path = qupath_annotations(
        tmp_path / "a.geojson",
        {"type": "Polygon", "coordinates": [SQUARE, HOLE]},
        {"type": "MultiPolygon", "coordinates": [[FAR]]},
    )
    roi = read_roi(path)
    assert roi.area == pytest.approx(100 * 100 - 20 * 20 + 20 * 10)
    inside = shapely.contains_xy(roi, [10, 50, 210, 150], [10, 50, 5, 50])
    assert inside.tolist() == [True, False, True, False]  # the hole is cut out


def test_overlapping_annotations_count_once(tmp_path):
    shifted = [[x + 50, y] for x, y in SQUARE]
    path = qupath_annotations(
        tmp_path / "a.geojson",
        {"type": "Polygon", "coordinates": [SQUARE]},
        {"type": "Polygon", "coordinates": [shifted]},
    )
    assert read_roi(path).area == pytest.approx(150 * 100)


def test_aperio_xml_regions_minus_negative_regions(tmp_path):
    def region(points, negative="0"):
        vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in points[:-1])
        return f'<Region NegativeROA="{negative}"><Vertices>{vertices}</Vertices></Region>'

    xml = f"<Annotations><Annotation><Regions>{region(SQUARE)}{region(HOLE, '1')}"
    xml += "</Regions></Annotation></Annotations>"
    (tmp_path / "a.xml").write_text(xml)
    assert read_roi(tmp_path / "a.xml").area == pytest.approx(100 * 100 - 20 * 20)


def test_region_files_without_an_area_are_refused(tmp_path):
    with pytest.raises(PointcellInputError, match="no polygon"):
        read_roi(qupath_annotations(tmp_path / "points.geojson"))
    (tmp_path / "bad.geojson").write_text("{not json")
    with pytest.raises(PointcellInputError, match="cannot read the features as JSON"):
        read_roi(tmp_path / "bad.geojson")
    with pytest.raises(PointcellInputError, match=r"\.geojson or Aperio"):
        read_roi(tmp_path / "a.csv")


def test_regions_pair_with_images_by_stem(tmp_path):
    images = [tmp_path / "img" / "a.png", tmp_path / "img" / "slide.ome.tif"]
    rois = tmp_path / "rois"
    rois.mkdir()
    qupath_annotations(rois / "a.geojson", {"type": "Polygon", "coordinates": [SQUARE]})
    qupath_annotations(rois / "slide.geojson", {"type": "Polygon", "coordinates": [FAR]})
    found = roi_for_images(rois, images)
    assert found[images[0]].area == 10_000 and found[images[1]].area == 200
    with pytest.raises(PointcellInputError, match="no region .* for 1 image"):
        roi_for_images(rois, [*images, tmp_path / "img" / "b.png"])
    with pytest.raises(PointcellInputError, match="one file for 2 images"):
        roi_for_images(rois / "a.geojson", images)
    assert roi_for_images(rois / "a.geojson", images[:1])[images[0]].area == 10_000


def test_region_mask_fills_polygons_and_leaves_their_holes():
    ring = shapely.box(2, 2, 8, 8).difference(shapely.box(4, 4, 6, 6))
    far = shapely.box(12, 0, 30, 3)  # runs past the image edge
    mask = region_mask(shapely.union_all([ring, far]), (10, 16))
    assert mask[3, 3] and not mask[5, 5] and not mask[0, 0]
    assert mask[1, 13:].all() and not mask[5:, 12:].any()
