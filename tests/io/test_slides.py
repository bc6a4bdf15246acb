import numpy as np
import pytest
import tifffile

from pointcell.errors import PointcellInputError
from pointcell.io.slides import (
    is_whole_slide,
    open_slide,
    slide_stem,
    write_pyramidal_tiff,
)


def gradient_image(height=700, width=900):
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([rows % 256, cols % 256, (rows + cols) % 256], axis=-1).astype(np.uint8)


def write_array_slide(path, image, *, mpp=0.25, n_levels=3, tile=256):
    def tile_at(level, y, x, h, w):
        scale = 4**level
        return image[::scale, ::scale][y : y + h, x : x + w]

    write_pyramidal_tiff(path, image.shape[:2], tile_at, mpp=mpp, n_levels=n_levels, tile=tile)
    return path


def test_pyramid_levels_pixel_size_and_regions(tmp_path):
    image = gradient_image()
    with open_slide(write_array_slide(tmp_path / "s.tif", image)) as slide:
        assert slide.dimensions == (900, 700)
        assert slide.level_dimensions == ((900, 700), (225, 175), (57, 44))
        assert slide.mpp == pytest.approx(0.25)
        assert slide.level_mpp(1) == pytest.approx(1.0)
        np.testing.assert_array_equal(slide.read(0, 300, 200, 50, 40), image[200:240, 300:350])
        np.testing.assert_array_equal(slide.read(1, 10, 20, 5, 6), image[::4, ::4][20:26, 10:15])
        with pytest.raises(ValueError, match="outside"):
            slide.read(0, 880, 0, 50, 10)


def test_best_level_never_upsamples(tmp_path):
    with open_slide(write_array_slide(tmp_path / "s.tif", gradient_image())) as slide:
        assert slide.best_level(0.5) == 0  # level 1 is 1.0 µm/px: too coarse
        assert slide.best_level(1.0) == 1
        assert slide.best_level(3.0) == 1
        assert slide.best_level(4.0) == 2
        assert slide.best_level(0.1) == 0  # finer than any level: read level 0


def test_thumbnail_is_bounded_and_scaled(tmp_path):
    image = np.full((700, 900, 3), 255, np.uint8)
    image[:350] = 0
    with open_slide(write_array_slide(tmp_path / "s.tif", image, n_levels=1)) as slide:
        thumb, downsample = slide.thumbnail(max_size=100)
    assert max(thumb.shape[:2]) <= 100
    assert downsample == 9
    assert thumb[:35].max() == 0 and thumb[40:].min() == 255


def test_pixel_size_from_ome_metadata_override_and_missing(tmp_path):
    image = gradient_image(256, 256)
    ome = tmp_path / "x.ome.tif"
    with tifffile.TiffWriter(ome, ome=True) as tif:
        tif.write(
            image,
            tile=(128, 128),
            photometric="rgb",
            metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5},
        )
    with open_slide(ome) as slide:
        assert slide.mpp == pytest.approx(0.5)
    bare = tmp_path / "bare.tif"
    tifffile.imwrite(bare, image, tile=(128, 128), photometric="rgb")
    with pytest.raises(PointcellInputError, match="--mpp"):
        open_slide(bare)
    with open_slide(bare, mpp=0.3) as slide:
        assert slide.mpp == pytest.approx(0.3)


def test_bad_slides_are_named(tmp_path):
    with pytest.raises(PointcellInputError, match="not found"):
        open_slide(tmp_path / "missing.svs")
    corrupt = tmp_path / "corrupt.svs"
    corrupt.write_bytes(b"not a tiff at all")
    with pytest.raises(PointcellInputError, match="corrupt.svs"):
        open_slide(corrupt)


def test_openslide_reads_the_same_pixels(tmp_path):
    pytest.importorskip("openslide")
    image = gradient_image()
    path = write_array_slide(tmp_path / "s.tif", image)
    with open_slide(path, reader="openslide") as by_openslide, open_slide(path) as by_tiffslide:
        # OpenSlide's generic-TIFF driver sees level 0 only (it ignores SubIFD pyramids)
        assert by_openslide.dimensions == by_tiffslide.dimensions
        assert by_openslide.mpp == pytest.approx(by_tiffslide.mpp)
        np.testing.assert_array_equal(
            by_openslide.read(0, 3, 4, 60, 50), by_tiffslide.read(0, 3, 4, 60, 50)
        )


def test_which_files_are_whole_slides(tmp_path):
    small = tmp_path / "tile.tif"
    tifffile.imwrite(small, gradient_image(64, 64), photometric="rgb")
    assert not is_whole_slide(small)
    assert is_whole_slide(write_array_slide(tmp_path / "pyramid.tif", gradient_image()))
    assert is_whole_slide(tmp_path / "scan.svs")  # by its format alone
    assert not is_whole_slide(tmp_path / "photo.png")
    assert slide_stem("a/b/case.ome.tif") == "case"
    assert slide_stem("case.v2.svs") == "case.v2"
