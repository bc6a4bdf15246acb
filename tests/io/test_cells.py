import numpy as np

from pointcell.io.cells import instance_outlines, polygon_pixels


def test_polygon_pixels_takes_x_y_vertices_and_returns_rows_cols():
    # a rectangle 3 px wide (x 0.5-3.5) and 2 px tall (y -0.5-1.5): pixel centres x 1..3, y 0..1
    rectangle = np.array([[0.5, -0.5], [3.5, -0.5], [3.5, 1.5], [0.5, 1.5]])
    mask = np.zeros((4, 5), bool)
    mask[polygon_pixels(rectangle, mask.shape)] = True
    expected = np.zeros((4, 5), bool)
    expected[0:2, 1:4] = True
    np.testing.assert_array_equal(mask, expected)


def test_polygon_pixels_inverts_instance_outlines():
    labels = np.zeros((12, 14), np.int32)
    labels[2:6, 3:9] = 1
    labels[7:11, 1:4] = 2
    redrawn = np.zeros_like(labels)
    for label, outline in instance_outlines(labels).items():
        redrawn[polygon_pixels(outline, labels.shape)] = label
    np.testing.assert_array_equal(redrawn, labels)
