import math
import os

import pytest

from pointcell.checks import (
    MAX_WORKING_PIXELS,
    check_mpp,
    check_output_dir,
    check_output_file,
    check_positive,
    check_resampled_size,
)
from pointcell.errors import PointcellInputError


@pytest.mark.parametrize("value", [0.05, 0.25, 20.0])
def test_plausible_pixel_sizes_pass(value):
    assert check_mpp(value, "--mpp") == value


@pytest.mark.parametrize("value", [math.nan, math.inf, 0.0, -0.25, 0.049, 20.5, 1e13])
def test_implausible_pixel_sizes_name_their_source(value):
    with pytest.raises(PointcellInputError, match="from a.tif metadata is not plausible"):
        check_mpp(value, "a.tif metadata")


def test_a_bad_mpp_option_is_not_told_to_pass_mpp():
    with pytest.raises(PointcellInputError) as refused:
        check_mpp(1000, "--mpp")
    assert "pass --mpp" not in str(refused.value)


@pytest.mark.parametrize("value", [math.nan, -math.inf, math.inf, 0.0, -1.0])
def test_check_positive_refuses_what_is_not_a_positive_number(value):
    with pytest.raises(PointcellInputError, match="radius must be a finite number above 0"):
        check_positive("radius", value)
    assert check_positive("radius", 3) == 3.0


def test_resampled_size_follows_the_pixel_sizes_and_stops_absurd_buffers():
    assert check_resampled_size((1000, 500), 0.25, 0.5, "a.tif") == (500, 250)
    side = int(math.sqrt(MAX_WORKING_PIXELS)) + 1
    assert check_resampled_size((side - 2, side - 2), 0.5, 0.5, "a.tif") == (side - 2, side - 2)
    with pytest.raises(PointcellInputError, match="a.tif: 1000x1000 px at 1000 µm/px"):
        check_resampled_size((1000, 1000), 1000.0, 0.5, "a.tif")


def test_output_folders_may_exist_or_be_created_but_are_never_made(tmp_path):
    assert check_output_dir(tmp_path) == tmp_path
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert sorted(tmp_path.iterdir()) == []  # nothing created, the probe cleaned up


def test_output_paths_inside_or_onto_a_file_are_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(PointcellInputError, match="the output folder is a file"):
        check_output_dir(tmp_path / "f")
    with pytest.raises(PointcellInputError, match="cannot create it"):
        check_output_dir(tmp_path / "f" / "sub")
    with pytest.raises(PointcellInputError, match="cannot create it"):
        check_output_file(tmp_path / "f" / "model.pt")
    with pytest.raises(PointcellInputError, match="the output file is a folder"):
        check_output_file(tmp_path)
    assert check_output_file(tmp_path / "f") == tmp_path / "f"  # an existing file is replaced


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through mode bits")
def test_a_read_only_folder_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    with pytest.raises(PointcellInputError, match="cannot write there"):
        check_output_dir(locked / "out")
