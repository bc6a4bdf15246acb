import numpy as np
import pytest
from skimage.draw import disk

from pointcell.overlay import POINT_COLOUR, draw_points, heat_colours


def drawn_one_by_one(shape, points_xy, radius):
    """The reference: skimage's disks, point by point, each rim then its dot."""
    canvas = np.zeros((*shape, 3), np.uint8)
    for x, y in points_xy:
        canvas[disk((y, x), radius + 1, shape=shape)] = 255
        canvas[disk((y, x), radius, shape=shape)] = POINT_COLOUR
    return canvas


@pytest.mark.parametrize("seed", range(20))
def test_dots_are_the_pixels_skimage_draws_in_the_same_order(seed):
    rng = np.random.default_rng(seed)
    shape = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
    points = rng.uniform(-4, max(shape) + 4, size=(int(rng.integers(1, 40)), 2))
    radius = float(rng.choice([2.0, 2.5, 3.0, 4.0]))
    canvas = np.zeros((*shape, 3), np.uint8)
    draw_points(canvas, points, radius=radius)
    np.testing.assert_array_equal(canvas, drawn_one_by_one(shape, points, radius))


def test_a_later_dot_covers_an_earlier_rim_and_no_points_draw_nothing():
    canvas = np.zeros((12, 12, 3), np.uint8)
    draw_points(canvas, np.empty((0, 2)), radius=2)
    assert not canvas.any()
    draw_points(canvas, [(5.0, 5.0), (7.0, 5.0)], radius=2)
    assert tuple(canvas[5, 6]) == POINT_COLOUR  # inside dot 2, on the rim of dot 1
    assert tuple(canvas[5, 3]) == (255, 255, 255)  # rim of dot 1 only


def test_heat_ramp_runs_black_red_yellow_white():
    ramp = heat_colours(np.array([0.0, 1 / 3, 2 / 3, 1.0]))
    np.testing.assert_allclose(ramp, [[0, 0, 0], [1, 0, 0], [1, 1, 0], [1, 1, 1]], atol=1e-6)
