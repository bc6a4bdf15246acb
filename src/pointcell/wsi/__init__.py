"""Whole-slide inference: tissue detection, tiles streamed through the model, each cell once.

The slide is cut into square *core* tiles (``tile`` px at the working pixel size) that
partition the plane. Each core is read with ``margin`` px of context on every side from the
pyramid level closest to the working pixel size, predicted and post-processed on its own, and
keeps exactly the nuclei whose centroid lies in the core (the owning-tile rule): a nucleus on a
border is segmented whole in the tile that owns it and dropped by its neighbours, so it is
neither duplicated nor cut as long as it is smaller than the margin. Only tiles that touch tissue
(found on a thumbnail) are read, and memory holds a few tiles at a time, whatever the slide size.

Every finished tile is written at once (atomically) as a part file; a killed job restarts from
the parts (``resume``). When all tiles are done, the parts are merged into the final cells table
(CSV) and QuPath GeoJSON (optionally gzipped), also atomically. Tile groups may run in this
process or on a Dask cluster; the parts, and so the outputs, are the same either way.
"""

from pointcell.wsi.outputs import merge_parts, write_label_zarr
from pointcell.wsi.plan import (
    SlideRun,
    SlideSettings,
    TileTask,
    plan_tiles,
    tiles_touching,
    tissue_mask,
)
from pointcell.wsi.run import SlideSummary, dask_client, predict_slide, predict_slides
from pointcell.wsi.tiles import owned_cells, process_tiles

__all__ = [
    "SlideRun",
    "SlideSettings",
    "SlideSummary",
    "TileTask",
    "dask_client",
    "merge_parts",
    "owned_cells",
    "plan_tiles",
    "predict_slide",
    "predict_slides",
    "process_tiles",
    "tiles_touching",
    "tissue_mask",
    "write_label_zarr",
]
