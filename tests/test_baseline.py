import numpy as np
import pytest
from click.testing import CliRunner

from conftest import make_disks
from pointcell.cli import main
from pointcell.floor import (
    IHC_CLASSES,
    WatershedParams,
    hematoxylin,
    hematoxylin_watershed,
    tune_dab_threshold,
)
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


def test_tuned_dab_threshold_separates_positive_from_negative():
    means = np.array([0.01, 0.02, 0.03, 0.08, 0.09, 0.2])
    positive = np.array([False, False, False, True, True, True])
    assert tune_dab_threshold(means, positive) == pytest.approx(0.03)
    with pytest.raises(ValueError, match="both"):
        tune_dab_threshold(means, np.ones(6, bool))


def test_ihc_floor_calls_brown_nuclei_positive():
    rows, cols = np.mgrid[0:80, 0:80]
    image = np.full((80, 80, 3), (235, 230, 225), np.uint8)
    centres = {(20, 20): (150, 90, 40), (60, 20): (70, 70, 160), (40, 60): (150, 90, 40)}
    for (x, y), colour in centres.items():
        image[(cols - x) ** 2 + (rows - y) ** 2 <= 49] = colour
    cells = hematoxylin_watershed(
        image, mpp=0.5, params=WatershedParams(stain="ihc", dab_threshold=0.05)
    )
    assert len(cells.xy) == 3
    called = {
        tuple(np.rint(xy).astype(int)): int(c)
        for xy, c in zip(cells.xy, cells.class_index, strict=True)
    }
    assert called == {(20, 20): 1, (60, 20): 0, (40, 60): 1}
    assert [IHC_CLASSES[i] for i in sorted(called.values())] == ["negative", "positive", "positive"]
    with pytest.raises(ValueError, match="stain"):
        WatershedParams(stain="pas")
