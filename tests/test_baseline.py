import numpy as np
from click.testing import CliRunner

from conftest import make_disks
from pointcell.baseline import WatershedParams, hematoxylin, hematoxylin_watershed
from pointcell.cli import main
from pointcell.metrics import aggregated_jaccard, detection_scores


def test_hematoxylin_is_high_on_nuclei(disks):
    density = hematoxylin(disks.image)
    assert density[disks.truth > 0].mean() > 3 * density[disks.truth == 0].mean()


def test_floor_recovers_separate_disks(disks):
    cells = hematoxylin_watershed(disks.image, mpp=disks.mpp)
    assert cells.labels.max() == len(disks.centres_xy)
    assert aggregated_jaccard(disks.truth, cells.labels) > 0.8
    assert detection_scores(disks.centres_xy, cells.xy, radius=4).f1 == 1.0


def test_floor_splits_two_touching_disks():
    tile = make_disks([(30, 40), (44, 40)], shape=(80, 80), radius=8.0)
    cells = hematoxylin_watershed(tile.image, mpp=0.25)
    assert cells.labels.max() == 2


def test_blank_image_gives_no_cells():
    blank = np.full((40, 40, 3), 235, np.uint8)
    cells = hematoxylin_watershed(blank, mpp=0.5, params=WatershedParams(threshold=0.1))
    assert cells.labels.max() == 0 and len(cells.xy) == 0


def test_baseline_command_writes_predict_layout(sample, tmp_path):
    result = CliRunner().invoke(
        main, ["baseline", "--images", str(sample / "images"), "--out", str(tmp_path)]
    )
    assert result.exit_code == 0, result.output
    for suffix in (".tif", ".csv", ".geojson", "_overlay.png"):
        assert len(list(tmp_path.glob(f"*{suffix}"))) == 2
    evaluated = CliRunner().invoke(
        main, ["evaluate", "--pred", str(tmp_path), "--gt", str(sample / "masks")]
    )
    assert evaluated.exit_code == 0, evaluated.output
