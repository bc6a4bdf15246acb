"""Everything that touches the disk: images, point annotations, label maps, pairing of files."""

from pointcell.io.atomic import atomic_output
from pointcell.io.images import LoadedImage, read_image, write_float_tiff, write_label_png
from pointcell.io.pairing import ImagePointsPair, pair_images_with_points
from pointcell.io.points import Points, read_points, write_points_csv, write_points_geojson

__all__ = [
    "ImagePointsPair",
    "LoadedImage",
    "Points",
    "atomic_output",
    "pair_images_with_points",
    "read_image",
    "read_points",
    "write_float_tiff",
    "write_label_png",
    "write_points_csv",
    "write_points_geojson",
]
