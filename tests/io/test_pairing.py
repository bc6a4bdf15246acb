import pytest

from pointcell.errors import PointcellInputError, PointcellWarning
from pointcell.io.pairing import pair_images_with_points


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_pairs_by_stem_and_skips_unlabelled_images(tmp_path):
    touch(tmp_path / "img" / "a.png")
    touch(tmp_path / "img" / "b.tif")
    touch(tmp_path / "pts" / "a.csv")
    with pytest.warns(PointcellWarning, match="1 image"):
        pairs = pair_images_with_points(tmp_path / "img", tmp_path / "pts")
    assert [(p.image.name, p.points.name) for p in pairs] == [("a.png", "a.csv")]


def test_points_without_image_is_an_error(tmp_path):
    touch(tmp_path / "img" / "a.png")
    touch(tmp_path / "pts" / "a.csv")
    touch(tmp_path / "pts" / "typo.csv")
    with pytest.raises(PointcellInputError, match="no image for points file.*typo.csv"):
        pair_images_with_points(tmp_path / "img", tmp_path / "pts")
    # pairing a subset of the annotated images (a validation split) is allowed when asked
    pairs = pair_images_with_points(tmp_path / "img", tmp_path / "pts", points_without_image=True)
    assert [(p.image.name, p.points.name) for p in pairs] == [("a.png", "a.csv")]


def test_two_points_files_for_one_image_is_an_error(tmp_path):
    touch(tmp_path / "img" / "a.png")
    touch(tmp_path / "pts" / "a.csv")
    touch(tmp_path / "pts" / "a.geojson")
    with pytest.raises(PointcellInputError, match="share the stem 'a'"):
        pair_images_with_points(tmp_path / "img", tmp_path / "pts")


def test_single_files_and_masks_as_points(tmp_path):
    image = touch(tmp_path / "img" / "a.png")
    mask = touch(tmp_path / "masks" / "a.tif")
    assert pair_images_with_points(image, mask)[0].points == mask
    assert pair_images_with_points(image, tmp_path / "masks")[0].points == mask
    assert pair_images_with_points(tmp_path / "img", mask)[0].image == image


def test_missing_location(tmp_path):
    with pytest.raises(PointcellInputError, match="does not exist"):
        pair_images_with_points(tmp_path / "nothing", tmp_path)
