"""Matching images to their points files by file stem."""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.images import IMAGE_SUFFIXES
from pointcell.io.points import MASK_SUFFIXES, POINT_SUFFIXES
from pointcell.io.slides import SLIDE_SUFFIXES, slide_stem


@dataclass(frozen=True)
class ImagePointsPair:
    image: Path
    points: Path

    @property
    def stem(self) -> str:
        return slide_stem(self.image)


def _files(location: Path, suffixes: tuple[str, ...], what: str) -> list[Path]:
    if location.is_file():
        return [location]
    if not location.is_dir():
        raise PointcellInputError(f"{location}: {what} path does not exist")
    return sorted(
        p
        for p in location.iterdir()
        if p.is_file() and p.suffix.lower() in suffixes and not p.name.startswith(".")
    )


def _by_stem(files: list[Path], what: str) -> dict[str, Path]:
    grouped: dict[str, list[Path]] = defaultdict(list)
    for path in files:
        grouped[slide_stem(path)].append(path)
    clashes = {stem: paths for stem, paths in grouped.items() if len(paths) > 1}
    if clashes:
        stem, paths = next(iter(clashes.items()))
        raise PointcellInputError(
            f"several {what} files share the stem {stem!r}: {', '.join(map(str, paths))}; "
            "keep one per image"
        )
    return {stem: paths[0] for stem, paths in grouped.items()}


def pair_images_with_points(
    images: str | os.PathLike[str],
    points: str | os.PathLike[str],
    *,
    points_without_image: bool = False,
) -> list[ImagePointsPair]:
    """Pair every points file with the image of the same stem.

    ``images`` and ``points`` are folders or single files. A points file without an image is an
    error (a typo would silently lose annotations) unless ``points_without_image`` (a subset
    of the annotated images, e.g. a validation split); an image without points is skipped with
    a warning. Points may also be instance-label masks (``.tif``/``.png`` in the points folder).
    """
    images, points = Path(images), Path(points)
    image_files = _by_stem(_files(images, IMAGE_SUFFIXES + SLIDE_SUFFIXES, "images"), "image")
    point_suffixes = POINT_SUFFIXES + MASK_SUFFIXES
    point_files = [
        p
        for p in _files(points, point_suffixes, "points")
        if not (
            images.is_dir()
            and p.parent.resolve() == images.resolve()
            and p.suffix.lower() in MASK_SUFFIXES
        )
    ]
    if points.is_file() and images.is_file():
        return [ImagePointsPair(images, points)]
    point_by_stem = _by_stem(point_files, "points")
    if images.is_file():
        stem = slide_stem(images)
        if stem not in point_by_stem:
            raise PointcellInputError(f"{points}: no points file named {stem}.*")
        return [ImagePointsPair(images, point_by_stem[stem])]
    orphans = sorted(set(point_by_stem) - set(image_files))
    if orphans and not points_without_image:
        raise PointcellInputError(
            f"no image for points file(s) {', '.join(str(point_by_stem[s]) for s in orphans)} "
            f"in {images}; images are matched to points by file name without extension"
        )
    unlabelled = sorted(set(image_files) - set(point_by_stem))
    if unlabelled and points.is_dir():
        warnings.warn(
            f"{len(unlabelled)} image(s) without a points file skipped: "
            f"{', '.join(unlabelled[:5])}{' ...' if len(unlabelled) > 5 else ''}",
            PointcellWarning,
            stacklevel=2,
        )
    paired = sorted(set(point_by_stem) & set(image_files))
    return [ImagePointsPair(image_files[s], point_by_stem[s]) for s in paired]
