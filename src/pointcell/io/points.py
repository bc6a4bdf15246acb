"""Point annotations (one click per cell): reading, validating and writing.

Coordinates are ``x`` = column and ``y`` = row in pixels of the image as stored, origin at the
top-left pixel, taken as written in the file (no half-pixel shift).
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from shapely.geometry.base import BaseGeometry

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.atomic import atomic_output
from pointcell.io.jsonfiles import read_json

POINT_SUFFIXES = (".csv", ".geojson", ".json", ".xml")
MASK_SUFFIXES = (".tif", ".tiff", ".png")
DUPLICATE_RADIUS_PX = 1.0


@dataclass(frozen=True)
class Points:
    """Cell centres ``xy`` (N, 2) float64 as (x, y) and an optional class name per point."""

    xy: np.ndarray
    classes: tuple[str | None, ...] = field(default=())

    def __post_init__(self) -> None:
        xy = np.asarray(self.xy, dtype=np.float64).reshape(-1, 2)
        object.__setattr__(self, "xy", xy)
        classes = tuple(self.classes) if self.classes else (None,) * len(xy)
        if len(classes) != len(xy):
            raise ValueError(f"{len(xy)} points but {len(classes)} class names")
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.xy)

    @property
    def rc(self) -> np.ndarray:
        """Coordinates as (row, col), the order NumPy arrays are indexed in."""
        return self.xy[:, ::-1]


def read_points(
    path: str | os.PathLike[str],
    *,
    image_shape: tuple[int, int] | None = None,
    clip: bool = False,
) -> Points:
    """Read points from CSV, QuPath GeoJSON, Aperio XML or an instance-label mask.

    With ``image_shape`` (rows, cols), points outside the image raise an error naming them,
    or are dropped when ``clip`` is true. Points closer than one pixel are merged, with a warning.
    """
    path = Path(path)
    if not path.is_file():
        raise PointcellInputError(f"{path}: points file not found")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        points = _read_csv(path)
    elif suffix in (".geojson", ".json"):
        points = _read_geojson(path)
    elif suffix == ".xml":
        points = _read_aperio_xml(path)
    elif suffix in MASK_SUFFIXES:
        points = _read_mask(path)
    else:
        raise PointcellInputError(
            f"{path}: unsupported points format {suffix!r}; "
            f"use one of {', '.join(POINT_SUFFIXES + MASK_SUFFIXES)}"
        )
    if image_shape is not None:
        points = check_inside(points, image_shape, clip=clip, source=path)
    return merge_duplicates(points, source=path)


def _read_csv(path: Path) -> Points:
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return Points(np.empty((0, 2)))
        names = [name.strip().lower() for name in header]
        missing = [col for col in ("x", "y") if col not in names]
        if missing:
            raise PointcellInputError(
                f"{path}: missing column(s) {', '.join(missing)} in header {header!r}; "
                "expected a header 'x,y' or 'x,y,class'"
            )
        ix, iy = names.index("x"), names.index("y")
        icls = names.index("class") if "class" in names else None
        xy: list[tuple[float, float]] = []
        classes: list[str | None] = []
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            line = reader.line_num
            xy.append((_number(row, ix, "x", path, line), _number(row, iy, "y", path, line)))
            name = row[icls].strip() if icls is not None and icls < len(row) else ""
            classes.append(name or None)
    return Points(np.array(xy, dtype=np.float64).reshape(-1, 2), tuple(classes))


def _number(row: Sequence[str], index: int, column: str, path: Path, line: int) -> float:
    text = row[index].strip() if index < len(row) else ""
    try:
        value = float(text)
    except ValueError:
        raise PointcellInputError(
            f"{path}, line {line}: column {column!r} is {text!r}, not a number"
        ) from None
    if not math.isfinite(value):
        raise PointcellInputError(f"{path}, line {line}: column {column!r} is {text!r}")
    return value


def geojson_features(data: object) -> list | None:
    """The features of a GeoJSON FeatureCollection, a single Feature or QuPath's older
    "export as array" list; None for anything else."""
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        return data.get("features") or []
    if isinstance(data, dict) and data.get("type") == "Feature":
        return [data]
    if isinstance(data, list):
        return data
    return None


def read_geojson_features(path: Path) -> list:
    """The features of a GeoJSON file; a clear error when it holds none of the known shapes."""
    features = geojson_features(read_json(path, "features"))
    if features is None:
        raise PointcellInputError(f"{path}: expected a GeoJSON FeatureCollection or Feature list")
    return features


def _read_geojson(path: Path) -> Points:
    return _feature_points(read_geojson_features(path), path)


def _feature_points(features: list, path: Path) -> Points:
    xy: list[tuple[float, float]] = []
    classes: list[str | None] = []
    for index, feature in enumerate(features):
        centres = _feature_centres(feature, path, index)
        xy.extend(centres)
        classes.extend([_feature_class(feature)] * len(centres))
    return Points(np.array(xy, dtype=np.float64).reshape(-1, 2), tuple(classes))


def is_region_feature(feature: object) -> bool:
    """QuPath's distinction: an *annotation* outline is a region someone worked in; detections,
    cells and features without an objectType are objects (their centroid is a click)."""
    if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
        return False
    properties = feature.get("properties") or {}
    return (
        feature["geometry"].get("type") in ("Polygon", "MultiPolygon")
        and isinstance(properties, dict)
        and properties.get("objectType") == "annotation"
    )


@dataclass(frozen=True)
class Annotations:
    """The clicks of a points file and the regions in which every cell was clicked (the union
    of its QuPath annotation outlines; None when it outlines none)."""

    points: Points
    regions: BaseGeometry | None = None


def read_annotations(path: str | os.PathLike[str]) -> Annotations:
    """Clicks and regions of a points file, by QuPath's rule (:func:`is_region_feature`).

    A GeoJSON file whose features are all annotation outlines holds no click to learn from
    in a region: its outlines are then read as cells (their centroids are the clicks), as
    :func:`read_points` reads every file. Other formats outline no regions."""
    path = Path(path)
    if path.suffix.lower() not in (".geojson", ".json") or not path.is_file():
        return Annotations(read_points(path))
    features = read_geojson_features(path)
    outlines = [f for f in features if is_region_feature(f)]
    clicks = [f for f in features if not is_region_feature(f)]
    if not outlines or not clicks:
        return Annotations(merge_duplicates(_feature_points(features, path), source=path))
    regions = []
    for index, feature in enumerate(outlines):
        try:
            regions.append(shapely.make_valid(shapely.geometry.shape(feature["geometry"])))
        except (ValueError, TypeError, IndexError, KeyError) as exc:
            raise PointcellInputError(f"{path}: region {index} is not a valid polygon") from exc
    points = merge_duplicates(_feature_points(clicks, path), source=path)
    return Annotations(points, shapely.union_all(regions))


def _feature_centres(feature: object, path: Path, index: int) -> list[tuple[float, float]]:
    where = f"{path}, feature {index}"
    if not isinstance(feature, dict) or not isinstance(feature.get("geometry"), dict):
        raise PointcellInputError(f"{where}: not a GeoJSON Feature with a geometry")
    geometry = feature["geometry"]
    kind = geometry.get("type")
    try:
        if kind == "Point":
            x, y = geometry["coordinates"][:2]
            centres = [(float(x), float(y))]
        elif kind == "MultiPoint":
            centres = [(float(c[0]), float(c[1])) for c in geometry["coordinates"]]
        elif kind in ("Polygon", "MultiPolygon"):
            centroid = shapely.geometry.shape(geometry).centroid
            centres = [(centroid.x, centroid.y)]
        else:
            raise PointcellInputError(f"{where}: geometry type {kind!r} is not a point or polygon")
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise PointcellInputError(f"{where}: malformed {kind} coordinates ({exc})") from exc
    if not all(math.isfinite(v) for c in centres for v in c):
        raise PointcellInputError(f"{where}: coordinates are not finite numbers")
    return centres


def _feature_class(feature: dict) -> str | None:
    properties = feature.get("properties") or {}
    classification = properties.get("classification") or {}
    name = classification.get("name") if isinstance(classification, dict) else None
    return str(name) if name else None


def read_xml_root(path: Path) -> ET.Element:
    """The root element of an XML file; a clear error when it is not XML."""
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise PointcellInputError(f"{path}: not valid XML ({exc})") from exc


def _read_aperio_xml(path: Path) -> Points:
    root = read_xml_root(path)
    xy: list[tuple[float, float]] = []
    classes: list[str | None] = []
    for annotation in root.iter("Annotation"):
        name = annotation.get("Name") or None
        for region in annotation.iter("Region"):
            xy.append(_region_centroid(region, path))
            classes.append(name)
    return Points(np.array(xy, dtype=np.float64).reshape(-1, 2), tuple(classes))


def _region_where(region: ET.Element, path: Path) -> str:
    return f"{path}, Region Id={region.get('Id')!r}"


def region_vertices(region: ET.Element, path: Path) -> np.ndarray:
    """(N, 2) vertices (x, y) of an Aperio XML region."""
    try:
        xy = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
    except (KeyError, ValueError) as exc:
        where = _region_where(region, path)
        raise PointcellInputError(f"{where}: vertex without numeric X/Y ({exc})") from exc
    return np.array(xy, dtype=np.float64).reshape(-1, 2)


def _region_centroid(region: ET.Element, path: Path) -> tuple[float, float]:
    vertices = region_vertices(region, path)
    if len(vertices) == 0:
        raise PointcellInputError(f"{_region_where(region, path)}: region has no vertices")
    if len(vertices) >= 3:
        polygon = shapely.Polygon(vertices)
        if polygon.area > 0:
            return polygon.centroid.x, polygon.centroid.y
    return tuple(vertices.mean(axis=0))


def _read_mask(path: Path) -> Points:
    from pointcell.io.images import read_label_image
    from pointcell.masks import instance_centroids

    return Points(instance_centroids(read_label_image(path)))


def check_inside(points: Points, shape: tuple[int, int], *, clip: bool, source: Path) -> Points:
    """The points inside an image of ``shape`` (rows, cols): an error naming those outside,
    or (``clip``) a warning and the rest."""
    rows, cols = shape
    x, y = points.xy[:, 0], points.xy[:, 1]
    outside = (x < -0.5) | (y < -0.5) | (x > cols - 0.5) | (y > rows - 0.5)
    if not outside.any():
        return points
    if clip:
        warnings.warn(
            f"{source}: dropped {int(outside.sum())} point(s) outside the {cols}x{rows} image",
            PointcellWarning,
            stacklevel=3,
        )
        return subset(points, ~outside)
    bad = np.flatnonzero(outside)
    listed = ", ".join(f"#{i} (x={x[i]:g}, y={y[i]:g})" for i in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise PointcellInputError(
        f"{source}: {len(bad)} point(s) outside the {cols}x{rows} image: {listed}{more}; "
        "fix the file, check it belongs to this image, or pass --clip to drop them"
    )


def subset(points: Points, keep: np.ndarray) -> Points:
    """The points where ``keep`` (a boolean mask) is true, with their classes."""
    return Points(points.xy[keep], tuple(c for c, k in zip(points.classes, keep, strict=True) if k))


def merge_duplicates(
    points: Points,
    *,
    radius: float = DUPLICATE_RADIUS_PX,
    source: str | os.PathLike[str] = "<points>",
) -> Points:
    """Merge points closer than ``radius`` pixels (double clicks) into their mean position.

    Each merged group keeps the class of its first point. A warning says how many were merged.
    """
    if len(points) < 2:
        return points
    pairs = cKDTree(points.xy).query_pairs(r=radius, output_type="ndarray")
    if len(pairs) == 0:
        return points
    n = len(points)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    n_groups, group = connected_components(graph, directed=False)
    counts = np.bincount(group, minlength=n_groups)
    xy = np.stack(
        [np.bincount(group, weights=points.xy[:, k], minlength=n_groups) / counts for k in (0, 1)],
        axis=1,
    )
    first = np.full(n_groups, n)
    np.minimum.at(first, group, np.arange(n))
    warnings.warn(
        f"{source}: merged {n - n_groups} duplicate point(s) closer than {radius:g} px",
        PointcellWarning,
        stacklevel=3,
    )
    return Points(xy, tuple(points.classes[i] for i in first))


def write_points_csv(path: str | os.PathLike[str], points: Points) -> None:
    """Write points as CSV with header ``x,y,class`` (class column only when any is set)."""
    with_class = any(c is not None for c in points.classes)
    with atomic_output(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["x", "y", "class"] if with_class else ["x", "y"])
        for (x, y), name in zip(points.xy, points.classes, strict=True):
            row = [f"{x:.2f}", f"{y:.2f}"]
            writer.writerow(row + [name or ""] if with_class else row)


def class_colour(name: str) -> list[int]:
    """A stable RGB colour for a class name (QuPath shows annotations in their class colour)."""
    known = {"positive": [200, 0, 0], "negative": [0, 0, 200], "nucleus": [0, 200, 0]}
    if name.lower() in known:
        return known[name.lower()]
    digest = sum((i + 1) * ord(ch) for i, ch in enumerate(name))
    hue = (digest * 0.618033988749895) % 1.0
    return [int(255 * (0.5 + 0.5 * math.cos(2 * math.pi * (hue + k / 3)))) for k in range(3)]


def write_points_geojson(path: str | os.PathLike[str], points: Points) -> None:
    """Write points as a QuPath-importable GeoJSON FeatureCollection.

    As QuPath's own Points tool does, each class becomes one annotation with a MultiPoint
    geometry; unclassified points form one annotation without a classification.
    """
    features = []
    names = list(dict.fromkeys(points.classes))
    for name in names:
        mask = np.array([c == name for c in points.classes])
        properties: dict[str, object] = {"objectType": "annotation", "isLocked": False}
        if name is not None:
            properties["classification"] = {"name": name, "color": class_colour(name)}
        features.append(
            {
                "type": "Feature",
                "geometry": {
                    "type": "MultiPoint",
                    "coordinates": [[round(x, 3), round(y, 3)] for x, y in points.xy[mask]],
                },
                "properties": properties,
            }
        )
    with atomic_output(path) as tmp:
        tmp.write_text(
            json.dumps({"type": "FeatureCollection", "features": features}), encoding="utf-8"
        )


def read_polygons(path: str | os.PathLike[str]) -> list[np.ndarray]:
    """Outlines (K, 2) as (x, y) from Aperio XML regions or GeoJSON (Multi)Polygon features.

    Point features are skipped; a file without any outline gives an empty list.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".xml":
        regions = (region_vertices(r, path) for r in read_xml_root(path).iter("Region"))
        return [vertices for vertices in regions if len(vertices) >= 3]
    if suffix in (".geojson", ".json"):
        outlines = []
        for feature in read_geojson_features(path):
            geometry = (feature or {}).get("geometry") or {}
            if geometry.get("type") in ("Polygon", "MultiPolygon"):
                shape = shapely.geometry.shape(geometry)
                parts = getattr(shape, "geoms", [shape])
                largest = max(parts, key=lambda part: part.area)
                outlines.append(np.asarray(largest.exterior.coords))
        return outlines
    raise PointcellInputError(f"{path}: outlines can be read from .xml or .geojson only")
