"""``pointcell baseline``: the training-free floor (:mod:`pointcell.floor`) run on image
files, with outputs laid out exactly as ``predict`` writes them.

This is what a user already has without pointcell (QuPath's built-in cell detection works this
way); a learned model has to beat it clearly.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from pointcell.floor import IHC_CLASSES, WatershedParams, hematoxylin_watershed
from pointcell.io.cells import cell_class_names
from pointcell.io.images import read_image, resolve_mpp
from pointcell.io.predictions import (
    PredictionSummary,
    class_summary,
    list_images,
    write_prediction,
    write_summary,
)


def segment_without_training(
    images: list[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    params: WatershedParams = WatershedParams(),
    overlay: bool = True,
    progress: bool = True,
) -> list[PredictionSummary]:
    """Run the floor on many images; outputs are laid out exactly as ``predict`` writes them."""
    out = Path(out)
    summaries = []
    for path in tqdm(list_images(images), desc="watershed", unit="image", disable=not progress):
        loaded = read_image(path)
        pixel_size = resolve_mpp(loaded, mpp)
        start = time.perf_counter()
        cells = hematoxylin_watershed(loaded.pixels, mpp=pixel_size, params=params)
        elapsed = time.perf_counter() - start
        classes = IHC_CLASSES if params.dab_threshold is not None else ()
        write_prediction(
            out,
            path.stem,
            loaded.pixels,
            cells,
            mpp=pixel_size,
            overlay=overlay,
            classes=classes,
        )
        summaries.append(
            PredictionSummary(
                path.stem,
                pixel_size,
                len(cells.xy),
                0.0,
                elapsed,
                loaded.pixels.size / 3e6,
                **class_summary(cell_class_names(cells, classes) or []),
            )
        )
    write_summary(out, "hematoxylin watershed (no training)", params.to_dict(), summaries)
    return summaries
