import numpy as np
import pytest
import tifffile
from PIL import Image

from pointcell.errors import PointcellInputError
from pointcell.io.images import (
    read_image,
    read_label_image,
    resolve_mpp,
    write_float_tiff,
    write_label_png,
)


def test_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 2, 4), dtype=np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[1, 1] = (0, 0, 0, 0)  # transparent -> white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels = read_image(tmp_path / "a.png").pixels
    assert pixels.shape == (2, 2, 3)
    assert pixels[0, 0].tolist() == [255, 0, 0]
    assert pixels[1, 1].tolist() == [255, 255, 255]


def test_grayscale_is_repeated_to_rgb(tmp_path):
    Image.fromarray(np.array([[0, 128]], dtype=np.uint8)).save(tmp_path / "g.png")
    assert read_image(tmp_path / "g.png").pixels.tolist() == [[[0, 0, 0], [128, 128, 128]]]


def test_16_bit_tiff_is_scaled(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", np.array([[0, 65535, 32896]], dtype=np.uint16))
    assert read_image(tmp_path / "a.tif").pixels[0, :, 0].tolist() == [0, 255, 128]


def test_jpeg_is_read(tmp_path):
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(tmp_path / "a.jpg")
    assert abs(int(read_image(tmp_path / "a.jpg").pixels.mean()) - 100) <= 2


def test_tiff_pixel_size_from_resolution_tags(tmp_path):
    tifffile.imwrite(
        tmp_path / "a.tif",
        np.zeros((4, 4, 3), np.uint8),
        resolution=(40000, 40000),
        resolutionunit="CENTIMETER",
    )
    image = read_image(tmp_path / "a.tif")
    assert image.mpp == pytest.approx(0.25)
    assert resolve_mpp(image, None) == pytest.approx(0.25)
    assert resolve_mpp(image, 0.5) == 0.5


def test_aperio_description_pixel_size(tmp_path):
    tifffile.imwrite(
        tmp_path / "a.tif",
        np.zeros((4, 4, 3), np.uint8),
        description="Aperio Image Library v12|AppMag = 40|MPP = 0.2520",
    )
    assert read_image(tmp_path / "a.tif").mpp == pytest.approx(0.252)


def test_missing_pixel_size_asks_for_mpp(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.mpp is None
    with pytest.raises(PointcellInputError, match="pass --mpp"):
        resolve_mpp(image, None)


def test_corrupt_image_is_reported_by_name(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not a png")
    with pytest.raises(PointcellInputError, match="broken.png: cannot read image"):
        read_image(tmp_path / "broken.png")
    (tmp_path / "broken.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(PointcellInputError, match="broken.tif"):
        read_image(tmp_path / "broken.tif")


def test_missing_and_unsupported_images(tmp_path):
    with pytest.raises(PointcellInputError, match="not found"):
        read_image(tmp_path / "none.png")
    (tmp_path / "a.bmp").write_bytes(b"BM")
    with pytest.raises(PointcellInputError, match="unsupported image type"):
        read_image(tmp_path / "a.bmp")


def test_label_writers_are_lossless(tmp_path):
    labels = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    write_label_png(tmp_path / "l.png", labels)
    np.testing.assert_array_equal(read_label_image(tmp_path / "l.png"), labels)
    values = np.array([[0.125, 1e-7]], dtype=np.float32)
    write_float_tiff(tmp_path / "f.tif", values)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f.tif"), values)


def test_label_image_must_be_integer(tmp_path):
    tifffile.imwrite(tmp_path / "f.tif", np.zeros((3, 3), np.float32))
    with pytest.raises(PointcellInputError, match="2-D integers"):
        read_label_image(tmp_path / "f.tif")
