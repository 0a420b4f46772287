"""The remembered convex hulls equal Qhull's, and a flat polyhedron has none."""
import numpy as np
import pytest
from scipy.spatial import ConvexHull

from stardist_hpc.geometry.hulls import _hull_of_tips, hull_equations


def test_remembered_hull_equals_qhull_and_is_computed_once():
    tips = np.random.default_rng(0).normal(size=(32, 3)).astype(np.float32)
    _hull_of_tips.cache_clear()
    first, again = hull_equations(tips), hull_equations(tips.copy())
    np.testing.assert_array_equal(first, ConvexHull(tips.astype(np.float64)).equations)
    assert again is first and _hull_of_tips.cache_info().hits == 1
    assert not first.flags.writeable


def test_flat_polyhedron_has_no_hull():
    tips = np.zeros((8, 3), np.float32)
    tips[:, 1:] = np.random.default_rng(1).normal(size=(8, 2))
    assert hull_equations(tips) is None


def test_other_dtypes_are_refused():
    with pytest.raises(TypeError, match="expected float32 ray tips, got float64"):
        hull_equations(np.ones((8, 3)))
