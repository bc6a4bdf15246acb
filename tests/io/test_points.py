import json

import numpy as np
import pytest
import tifffile

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.points import (
    Points,
    merge_duplicates,
    read_points,
    read_polygons,
    write_points_csv,
    write_points_geojson,
)
from pointcell.masks import instance_centroids


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_classes(tmp_path):
    pts = read_points(write(tmp_path / "a.csv", "x,y,class\n1.5,2,tumour\n3,4,\n"))
    np.testing.assert_allclose(pts.xy, [[1.5, 2], [3, 4]])
    assert pts.classes == ("tumour", None)
    np.testing.assert_allclose(pts.rc, [[2, 1.5], [4, 3]])


def test_csv_header_is_case_and_space_insensitive(tmp_path):
    pts = read_points(write(tmp_path / "a.csv", " Y , X \n2,1\n"))
    np.testing.assert_allclose(pts.xy, [[1, 2]])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("col,row\n1,2\n", r"missing column\(s\) x, y"),
        ("x,y\n1,2\n3,abc\n", r"line 3: column 'y' is 'abc', not a number"),
        ("x,y\n1,2\nnan,4\n", r"line 3: column 'x' is 'nan'"),
        ("x,y\n1\n", r"line 2: column 'y' is ''"),
    ],
)
def test_csv_errors_name_file_and_row(tmp_path, text, message):
    path = write(tmp_path / "bad.csv", text)
    with pytest.raises(PointcellInputError, match=message) as info:
        read_points(path)
    assert "bad.csv" in str(info.value)


@pytest.mark.parametrize("text", ["", "x,y\n", "x,y,class\n\n"])
def test_empty_points_files_are_legal(tmp_path, text):
    pts = read_points(write(tmp_path / "empty.csv", text), image_shape=(10, 10))
    assert len(pts) == 0 and pts.xy.shape == (0, 2)


def test_points_outside_the_image_fail_or_are_clipped(tmp_path):
    path = write(tmp_path / "p.csv", "x,y\n5,5\n12,3\n-3,2\n")
    with pytest.raises(PointcellInputError, match=r"2 point\(s\) outside the 10x8 image.*--clip"):
        read_points(path, image_shape=(8, 10))
    with pytest.warns(PointcellWarning, match="dropped 2"):
        pts = read_points(path, image_shape=(8, 10), clip=True)
    np.testing.assert_allclose(pts.xy, [[5, 5]])


def test_duplicate_points_are_merged_with_a_warning(tmp_path):
    path = write(tmp_path / "p.csv", "x,y,class\n5,5,a\n5.4,5,b\n20,20,c\n")
    with pytest.warns(PointcellWarning, match="merged 1 duplicate"):
        pts = read_points(path)
    np.testing.assert_allclose(pts.xy, [[5.2, 5], [20, 20]])
    assert pts.classes == ("a", "c")


def test_merge_duplicates_leaves_distinct_points_alone():
    pts = Points(np.array([[0.0, 0.0], [2.0, 0.0]]))
    assert merge_duplicates(pts) is pts


def qupath_feature(geometry, name=None):
    properties = {"objectType": "annotation"}
    if name:
        properties["classification"] = {"name": name, "color": [255, 0, 0]}
    return {"type": "Feature", "id": "x", "geometry": geometry, "properties": properties}


def test_geojson_points_multipoints_and_polygon_centroids(tmp_path):
    square = [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]
    collection = {
        "type": "FeatureCollection",
        "features": [
            qupath_feature({"type": "Point", "coordinates": [10, 11]}, "Positive"),
            qupath_feature({"type": "MultiPoint", "coordinates": [[20, 21], [30, 31]]}, "Negative"),
            qupath_feature({"type": "Polygon", "coordinates": square}),
        ],
    }
    pts = read_points(write(tmp_path / "a.geojson", json.dumps(collection)))
    np.testing.assert_allclose(pts.xy, [[10, 11], [20, 21], [30, 31], [2, 2]])
    assert pts.classes == ("Positive", "Negative", "Negative", None)


def test_geojson_feature_list_as_older_qupath_exports(tmp_path):
    features = [qupath_feature({"type": "Point", "coordinates": [1, 2]})]
    pts = read_points(write(tmp_path / "a.json", json.dumps(features)))
    np.testing.assert_allclose(pts.xy, [[1, 2]])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read the features as JSON"),
        ('{"type": "Topology"}', "FeatureCollection"),
        (
            json.dumps([qupath_feature({"type": "LineString", "coordinates": [[0, 0], [1, 1]]})]),
            r"feature 0: geometry type 'LineString'",
        ),
        (json.dumps([{"type": "Feature", "geometry": None}]), "feature 0: not a GeoJSON Feature"),
        (
            json.dumps([qupath_feature({"type": "Point", "coordinates": ["a"]})]),
            "feature 0: malformed Point",
        ),
        (
            json.dumps([qupath_feature({"type": "MultiPoint", "coordinates": [[1, 2], [3]]})]),
            "feature 0: malformed MultiPoint",
        ),
    ],
)
def test_geojson_errors_name_the_feature(tmp_path, content, message):
    path = write(tmp_path / "bad.geojson", content)
    with pytest.raises(PointcellInputError, match=message):
        read_points(path)


def test_aperio_xml_region_centroids(tmp_path):
    xml = """<Annotations MicronsPerPixel="0.25"><Annotation Id="1" Name="">
    <Regions><Region Id="1"><Vertices>
      <Vertex X="0" Y="0"/><Vertex X="10" Y="0"/><Vertex X="10" Y="6"/><Vertex X="0" Y="6"/>
    </Vertices></Region>
    <Region Id="2"><Vertices><Vertex X="40" Y="30"/></Vertices></Region></Regions>
    </Annotation></Annotations>"""
    pts = read_points(write(tmp_path / "a.xml", xml))
    np.testing.assert_allclose(pts.xy, [[5, 3], [40, 30]])


def test_aperio_xml_errors(tmp_path):
    with pytest.raises(PointcellInputError, match="not valid XML"):
        read_points(write(tmp_path / "a.xml", "<Annotations><Region"))
    bad = '<Annotations><Annotation><Regions><Region Id="7"><Vertices><Vertex X="a" Y="1"/>'
    bad += "</Vertices></Region></Regions></Annotation></Annotations>"
    with pytest.raises(PointcellInputError, match="Region Id='7'"):
        read_points(write(tmp_path / "b.xml", bad))


def test_outlines_from_aperio_xml_skip_regions_without_an_area(tmp_path):
    square = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(0, 0), (4, 0), (4, 4), (0, 4)])
    line = '<Vertex X="1" Y="1"/><Vertex X="2" Y="2"/>'
    xml = "<Annotations><Annotation><Regions>"
    xml += f"<Region Id='1'><Vertices>{square}</Vertices></Region>"
    xml += f"<Region Id='2'><Vertices>{line}</Vertices></Region>"
    xml += "</Regions></Annotation></Annotations>"
    outlines = read_polygons(write(tmp_path / "a.xml", xml))
    assert len(outlines) == 1
    np.testing.assert_allclose(outlines[0], [[0, 0], [4, 0], [4, 4], [0, 4]])


def test_outlines_from_geojson_keep_the_largest_part_and_skip_points(tmp_path):
    small = [[[0, 0], [1, 0], [1, 1], [0, 0]]]
    large = [[[10, 10], [20, 10], [20, 20], [10, 10]]]
    features = [
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [small, large]}},
        {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}},
    ]
    collection = {"type": "FeatureCollection", "features": features}
    outlines = read_polygons(write(tmp_path / "a.geojson", json.dumps(collection)))
    assert len(outlines) == 1
    np.testing.assert_allclose(outlines[0], large[0])
    single = read_polygons(write(tmp_path / "b.geojson", json.dumps(features[0])))
    np.testing.assert_allclose(single[0], large[0])


def test_outline_errors(tmp_path):
    with pytest.raises(PointcellInputError, match="cannot read the features as JSON"):
        read_polygons(write(tmp_path / "a.geojson", "{"))
    with pytest.raises(PointcellInputError, match="expected a GeoJSON"):
        read_polygons(write(tmp_path / "b.geojson", '{"type": "Point"}'))
    with pytest.raises(PointcellInputError, match="vertex without numeric"):
        bad = '<Annotations><Region><Vertex X="a" Y="1"/></Region></Annotations>'
        read_polygons(write(tmp_path / "c.xml", bad))
    with pytest.raises(PointcellInputError, match=".xml or .geojson only"):
        read_polygons(write(tmp_path / "d.csv", "x,y\n"))


def test_real_monuseg_xml_matches_mask_centroids(shared_monuseg):
    stem = "TCGA-21-5784-01Z-00-DX1"
    pts = read_points(shared_monuseg / "xml" / f"{stem}.xml", image_shape=(1000, 1000))
    from_mask = read_points(shared_monuseg / "masks" / f"{stem}.tif")
    assert len(pts) == len(from_mask) == 398
    from scipy.spatial import cKDTree

    # the masks were rasterised from these polygons: centres agree to about a pixel
    distance, _ = cKDTree(from_mask.xy).query(pts.xy)
    assert np.median(distance) < 2.0 and np.quantile(distance, 0.95) < 4.0


def test_mask_centroids(tmp_path):
    labels = np.zeros((10, 12), dtype=np.uint16)
    labels[1:4, 1:4] = 3  # centre (x=2, y=2)
    labels[6:8, 8:12] = 7  # centre (x=9.5, y=6.5)
    np.testing.assert_allclose(instance_centroids(labels), [[2, 2], [9.5, 6.5]])
    tifffile.imwrite(tmp_path / "m.tif", labels)
    np.testing.assert_allclose(read_points(tmp_path / "m.tif").xy, [[2, 2], [9.5, 6.5]])
    assert len(instance_centroids(np.zeros((4, 4), int))) == 0


def test_unknown_format_and_missing_file(tmp_path):
    with pytest.raises(PointcellInputError, match="unsupported points format '.txt'"):
        read_points(write(tmp_path / "a.txt", "1 2"))
    with pytest.raises(PointcellInputError, match="not found"):
        read_points(tmp_path / "missing.csv")


def test_csv_round_trip(tmp_path):
    pts = Points(np.array([[1.25, 2.5], [3.0, 4.0]]), ("a", None))
    write_points_csv(tmp_path / "out.csv", pts)
    back = read_points(tmp_path / "out.csv")
    np.testing.assert_allclose(back.xy, pts.xy)
    assert back.classes == pts.classes


def test_geojson_is_shaped_like_qupath_and_round_trips(tmp_path):
    pts = Points(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), ("Positive", None, "Positive"))
    write_points_geojson(tmp_path / "out.geojson", pts)
    data = json.loads((tmp_path / "out.geojson").read_text())
    assert data["type"] == "FeatureCollection"
    first = data["features"][0]
    assert first["geometry"]["type"] == "MultiPoint"
    assert first["properties"]["objectType"] == "annotation"
    assert first["properties"]["classification"]["name"] == "Positive"
    assert len(first["properties"]["classification"]["color"]) == 3
    assert "classification" not in data["features"][1]["properties"]
    back = read_points(tmp_path / "out.geojson")
    assert sorted(zip(back.xy[:, 0], back.classes, strict=True), key=lambda t: t[0]) == [
        (1.0, "Positive"),
        (3.0, None),
        (5.0, "Positive"),
    ]
