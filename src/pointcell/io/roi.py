"""Regions of interest: the area a pathologist scores (a Ki67 hotspot, the tumour), drawn in
QuPath or ImageScope. Cells are counted only inside it.

Read from GeoJSON (QuPath "Export objects as GeoJSON": (Multi)Polygon features, holes kept) or
Aperio XML (regions; those marked ``NegativeROA="1"`` are cut out). Coordinates are pixels of
the image as stored (level 0 for slides), ``x`` = column, ``y`` = row.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry.base import BaseGeometry

from pointcell.errors import PointcellInputError
from pointcell.io.cells import polygon_pixels
from pointcell.io.jsonfiles import read_json
from pointcell.io.points import geojson_features, read_xml_root, region_vertices
from pointcell.io.slides import slide_stem

ROI_SUFFIXES = (".geojson", ".json", ".xml")


def read_roi(path: str | os.PathLike[str]) -> BaseGeometry:
    """The union of the polygons of an annotation file, as one (Multi)Polygon."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in ROI_SUFFIXES:
        raise PointcellInputError(f"{path}: regions are read from .geojson or Aperio .xml")
    if not path.is_file():
        raise PointcellInputError(f"{path}: no such region file")
    region = _read_xml(path) if suffix == ".xml" else _read_geojson(path)
    if region.is_empty or region.area == 0:
        raise PointcellInputError(f"{path}: no polygon with an area (regions must be outlines)")
    return region


def _read_geojson(path: Path) -> BaseGeometry:
    data = read_json(path, "features")
    bare_geometry = isinstance(data, dict) and "coordinates" in data
    features = [{"geometry": data}] if bare_geometry else geojson_features(data)
    if features is None:
        raise PointcellInputError(f"{path}: not a GeoJSON feature collection")
    polygons = []
    for index, feature in enumerate(features):
        geometry = (feature or {}).get("geometry") or {}
        if geometry.get("type") not in ("Polygon", "MultiPolygon"):
            continue  # points and lines outline no area
        try:
            polygons.append(shapely.make_valid(shapely.geometry.shape(geometry)))
        except (ValueError, TypeError, IndexError) as exc:
            raise PointcellInputError(f"{path}: feature {index} is not a valid polygon") from exc
    return _areas_of(shapely.union_all(polygons))


def _read_xml(path: Path) -> BaseGeometry:
    kept: list[BaseGeometry] = []
    cut: list[BaseGeometry] = []
    for region in read_xml_root(path).iter("Region"):
        vertices = region_vertices(region, path)
        if len(vertices) < 3:
            continue
        polygon = shapely.make_valid(shapely.Polygon(vertices))
        (cut if region.get("NegativeROA") == "1" else kept).append(polygon)
    return _areas_of(shapely.difference(shapely.union_all(kept), shapely.union_all(cut)))


def _areas_of(geometry: BaseGeometry) -> BaseGeometry:
    """Only the polygonal parts (make_valid may leave lines from degenerate rings)."""
    parts = getattr(geometry, "geoms", [geometry])
    return shapely.union_all([p for p in parts if p.geom_type in ("Polygon", "MultiPolygon")])


def roi_for_images(roi: str | os.PathLike[str], images: list[Path]) -> dict[Path, BaseGeometry]:
    """The region of every image: ``roi`` is one file (for a single image) or a folder holding
    ``<stem>.geojson`` or ``<stem>.xml`` per image. An image without a region is an error: its
    counts would silently cover the whole image."""
    roi = Path(roi)
    if roi.is_file():
        if len(images) != 1:
            raise PointcellInputError(
                f"--roi {roi} is one file for {len(images)} images; give a folder with a "
                "<image stem>.geojson (or .xml) per image"
            )
        return {images[0]: read_roi(roi)}
    if not roi.is_dir():
        raise PointcellInputError(f"{roi}: no such region file or folder")
    regions, missing = {}, []
    for image in images:
        found = [roi / f"{slide_stem(image)}{suffix}" for suffix in ROI_SUFFIXES]
        found = [p for p in found if p.is_file()]
        if len(found) > 1:
            raise PointcellInputError(f"several regions for {image.name}: {found[0]}, {found[1]}")
        if found:
            regions[image] = read_roi(found[0])
        else:
            missing.append(slide_stem(image))
    if missing:
        raise PointcellInputError(
            f"no region in {roi} for {len(missing)} image(s): {', '.join(missing[:5])}"
            f"{' ...' if len(missing) > 5 else ''} (expected <stem>.geojson or <stem>.xml)"
        )
    return regions


def region_mask(roi: BaseGeometry, shape: tuple[int, int]) -> np.ndarray:
    """The pixels whose centre lies in a (Multi)Polygon region, holes left out."""
    mask = np.zeros(shape, dtype=bool)
    for polygon in getattr(roi, "geoms", [roi]):
        mask[polygon_pixels(polygon.exterior.coords, shape)] = True
        for hole in polygon.interiors:
            mask[polygon_pixels(hole.coords, shape)] = False
    return mask
