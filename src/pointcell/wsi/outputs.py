"""A slide job's files: part files per tile, merged into the cells CSV and GeoJSON, labels."""

from __future__ import annotations

import csv
import functools
import gzip
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import numpy as np
import shapely

from pointcell.errors import PointcellInputError
from pointcell.io.atomic import atomic_output
from pointcell.io.cells import (
    detection_feature,
    polygon_pixels,
)
from pointcell.io.slides import Slide
from pointcell.wsi.plan import TileTask
from pointcell.wsi.tiles import SlideJob, part_path

MANIFEST = "manifest.json"


CSV_COLUMNS = ["id", "x", "y", "area_px", "area_um2", "score", "tile"]


CLASS_COLUMNS = ["class", "class_probability"]


def _drawable(outline: list) -> bool:
    return (
        detection_feature(
            np.asarray(outline), centre=(0.0, 0.0), area_px=0.0, area_um2=0.0, score=0.0
        )
        is not None
    )


def write_label_zarr(
    path: Path, parts: Path, tasks: list[TileTask], size: tuple[int, int], tile_level0: float
) -> None:
    """Rasterise the cells' outlines into a uint32 label image at level 0 (zarr, chunks of one
    core tile), with the ids of the CSV table. One core window is drawn at a time from the
    outlines of its tile and its eight neighbours (a nucleus reaches at most the margin beyond
    its core), so memory holds one chunk and the parts of about two rows of tiles; the array
    appears atomically."""
    import zarr

    width, height = size
    n_cols = int(np.ceil(width / tile_level0))
    done = {task.index for task in tasks}

    # tiles are drawn row by row: the parts of the last two rows and a bit are all it reuses
    @functools.lru_cache(maxsize=3 * n_cols + 3)
    def drawable_outlines(index: int) -> tuple:
        if index not in done:
            return ()
        record = json.loads(part_path(parts, index).read_text(encoding="utf-8"))
        return tuple(cell[5] for cell in record["cells"] if _drawable(cell[5]))

    offsets, total = {}, 0
    for task in tasks:  # ids as merge_parts numbers them: tile order, drawable cells only
        record = json.loads(part_path(parts, task.index).read_text(encoding="utf-8"))
        offsets[task.index] = total
        total += sum(_drawable(cell[5]) for cell in record["cells"])
    chunk = int(np.ceil(tile_level0))
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    array = zarr.open_array(
        tmp, mode="w", shape=(height, width), chunks=(chunk, chunk), dtype="uint32", fill_value=0
    )
    for task in tasks:
        r0, r1 = int(round(task.y0)), int(round(task.y1))
        c0, c1 = int(round(task.x0)), int(round(task.x1))
        window = np.zeros((r1 - r0, c1 - c0), np.uint32)
        row, col = divmod(task.index, n_cols)
        for dr in (-1, 0, 1):
            for dc in (-1, 0, 1):
                if not (0 <= col + dc < n_cols):
                    continue
                neighbour = (row + dr) * n_cols + col + dc
                for k, outline in enumerate(drawable_outlines(neighbour), start=1):
                    inside = polygon_pixels(np.asarray(outline) - (c0, r0), window.shape)
                    window[inside] = offsets[neighbour] + k
        array[r0:r1, c0:c1] = window
    shutil.rmtree(path, ignore_errors=True)
    os.replace(tmp, path)


def slide_outputs(out: Path, stem: str, *, gzip_geojson: bool) -> tuple[Path, Path, Path]:
    """Final cells table, final GeoJSON, and the folder of unfinished parts."""
    geojson = out / (f"{stem}.geojson.gz" if gzip_geojson else f"{stem}.geojson")
    return out / f"{stem}.csv", geojson, out / f"{stem}.parts"


def iter_part_cells(parts: Path, tasks: list[TileTask]) -> Iterator[tuple[int, list]]:
    for task in tasks:
        record = json.loads(part_path(parts, task.index).read_text(encoding="utf-8"))
        for cell in record["cells"]:
            yield task.index, cell


def merge_parts(
    parts: Path, tasks: list[TileTask], table: Path, geojson: Path, *, with_classes: bool = False
) -> int:
    """Write the cells of all parts as a CSV table and a QuPath GeoJSON FeatureCollection,
    one tile at a time; both appear atomically. Cells are numbered 1..n in tile order.
    Returns the number of cells."""
    n_cells = 0
    opener = gzip.open if geojson.suffix == ".gz" else open
    with atomic_output(table) as table_tmp, atomic_output(geojson) as geo_tmp:
        with (
            table_tmp.open("w", newline="", encoding="utf-8") as table_file,
            opener(geo_tmp, "wt", encoding="utf-8") as geo_file,
        ):
            writer = csv.writer(table_file)
            writer.writerow(CSV_COLUMNS + (CLASS_COLUMNS if with_classes else []))
            geo_file.write('{"type": "FeatureCollection", "features": [\n')
            for tile_index, cell in iter_part_cells(parts, tasks):
                x, y, area_px, area_um2, score, outline, name, probability = cell
                feature = detection_feature(
                    np.asarray(outline),
                    centre=(x, y),
                    area_px=area_px,
                    area_um2=area_um2,
                    score=score,
                    **({"cell_class": name, "class_probability": probability} if name else {}),
                )
                if feature is None:  # too small to draw; write_label_zarr skips it too
                    continue
                n_cells += 1
                feature["id"] = str(n_cells)
                row = [n_cells, x, y, area_px, area_um2, score, tile_index]
                writer.writerow(row + ([name, probability] if with_classes else []))
                geo_file.write((",\n" if n_cells > 1 else "") + json.dumps(feature))
            geo_file.write("\n]}\n")
    return n_cells


def manifest(job: SlideJob, slide: Slide, n_tasks: int) -> dict:
    stat = Path(job.slide).stat()
    return {
        "slide": str(Path(job.slide).resolve()),
        "slide_bytes": stat.st_size,
        "slide_mtime_ns": stat.st_mtime_ns,
        "mpp": slide.mpp,
        "level": job.level,
        "model": job.model,
        "postprocess": job.params.to_dict(),
        "settings": asdict(job.settings),
        "tissue_tiles": n_tasks,
        "roi": None if job.roi is None else hashlib.sha1(shapely.to_wkb(job.roi)).hexdigest(),
    }


def prepare_parts(
    parts: Path, manifest: dict, *, resume: bool, overwrite: bool, outputs: list[Path]
) -> None:
    finished = [p for p in outputs if p.exists()]
    if finished and not overwrite:
        raise PointcellInputError(f"{finished[0]} already exists; pass --overwrite to replace it")
    if parts.exists():
        if resume:
            recorded = parts / MANIFEST
            found = json.loads(recorded.read_text()) if recorded.is_file() else {}
            if found != manifest:
                changed = sorted(k for k in manifest if found.get(k) != manifest[k])
                raise PointcellInputError(
                    f"{parts}: the unfinished job used other settings ({', '.join(changed)}); "
                    "pass --overwrite to start again"
                )
            return
        if not overwrite:
            raise PointcellInputError(
                f"{parts} holds an unfinished job; pass --resume to continue it "
                "or --overwrite to start again"
            )
        shutil.rmtree(parts)
    parts.mkdir(parents=True)
    with atomic_output(parts / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
