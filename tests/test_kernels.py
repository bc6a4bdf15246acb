import numpy as np
import pytest

from pointcell.kernels import compiled, near_bisector, repel, scatter_two_nearest


def test_compiled_falls_back_when_numba_has_nowhere_to_cache():
    # a function without a source file gives numba no cache location: it must still compile
    namespace: dict = {}
    exec("def twice(x):\n    return 2 * x\n", namespace)
    twice = compiled()(namespace["twice"])
    assert twice(21) == 42


def test_scatter_keeps_the_two_nearest_within_its_radius_only():
    shape = (1, 12)
    d1, d2 = np.full(shape, np.inf), np.full(shape, np.inf)
    i1, i2 = np.full(shape, -1, np.int32), np.full(shape, -1, np.int32)
    scatter_two_nearest(np.array([[2.0, 0.0], [5.0, 0.0]]), 4.0, d1, d2, i1, i2)
    np.testing.assert_array_equal(i1[0, :4], [0, 0, 0, 0])  # pixel 3: 1 from a, 2 from b
    assert d1[0, 3] == 1 and d2[0, 3] == 4 and i2[0, 3] == 1
    assert i1[0, 4] == 1 and i2[0, 4] == 0  # pixel 4: 1 from b, 2 from a
    assert np.isinf(d1[0, 10]) and i1[0, 10] == -1  # beyond both disks: left to the caller
    assert i1[0, 9] == 1 and i2[0, 9] == -1  # 4 from b, 7 from a: only one disk reaches


def test_near_bisector_marks_pixels_within_half_a_pixel_of_the_bisector():
    points = np.array([[0.0, 0.0], [5.0, 0.0]])  # bisector at x = 2.5
    cols = np.arange(6, dtype=float)[None, :]
    d_a, d_b = np.abs(cols - 0.0), np.abs(cols - 5.0)
    d1, d2 = np.minimum(d_a, d_b), np.maximum(d_a, d_b)
    i1 = np.where(d_a <= d_b, 0, 1).astype(np.int32)
    on = near_bisector(points, d1, d2, i1, 1 - i1, 0.5)
    assert on[0].tolist() == [False, False, True, True, False, False]
    assert not near_bisector(points, d1, d2, i1, np.full_like(i1, -1), 0.5).any()


def test_repel_kernel_matches_the_formula_and_its_cut_off():
    d1 = np.array([[0.0, 2.0, 2.0, 50.0]])
    d2 = np.array([[4.0, 6.0, np.inf, 60.0]])
    code = repel(d1, d2, 0.5, 0.1, 10.0)
    assert code[0, 0] == pytest.approx(1.0)
    assert code[0, 1] == pytest.approx(1 / (1 + 0.1 * 2 * (1 + 2 / 6) * 0.5))
    assert code[0, 2] == pytest.approx(1 / (1 + 0.1 * 2 * 0.5))  # no second point
    assert code[0, 3] == 0  # D = 50 (1 + 5/6) * 0.5 µm > 10 µm
