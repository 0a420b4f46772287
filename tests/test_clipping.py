"""The half-space clipper of the fast NMS's borderline checks against Qhull's volumes."""
import numpy as np
import pytest
from scipy.spatial import ConvexHull

from stardist_hpc.geometry.clipping import OUTSIDE, UNSURE, clipped_volume
from stardist_hpc.segment.nms_fast import _intersection_volume

BOX_LO, BOX_HI = np.full(3, -10.0), np.full(3, 10.0)


def _cube(half):
    """Half-spaces ``a.x + b <= 0`` of the cube [-half, half]^3."""
    normals = np.concatenate([np.eye(3), -np.eye(3)])
    return np.concatenate([normals, np.full((6, 1), -half)], axis=1)


def test_a_cube_has_its_volume():
    assert clipped_volume(_cube(1.5), np.zeros(3), BOX_LO, BOX_HI) == pytest.approx(27.0)


@pytest.mark.parametrize("seed", range(5))
def test_two_random_hulls_intersect_as_qhull_says(seed):
    """The intersection of two random convex hulls (Qhull's equations) has Qhull's volume."""
    rng = np.random.default_rng(seed)
    hulls = [ConvexHull(rng.normal(size=(40, 3)) + shift).equations
             for shift in (np.zeros(3), rng.uniform(-0.5, 0.5, 3))]
    planes = np.concatenate(hulls)
    interior = np.zeros(3)
    expected = _intersection_volume(planes, interior, on_error=-1.0)
    assert expected > 0
    assert clipped_volume(planes, interior, BOX_LO, BOX_HI) == pytest.approx(expected, rel=1e-9)


def test_an_interior_point_outside_a_half_space_is_reported():
    """Qhull fails there; StarDist then uses its error value."""
    assert clipped_volume(_cube(1.0), np.array([3.0, 0.0, 0.0]), BOX_LO, BOX_HI) == OUTSIDE


def test_half_spaces_that_do_not_bound_the_box_are_unsure():
    """Corners left on the starting box: the caller asks Qhull."""
    open_side = _cube(1.0)[1:]   # no face at +1 along the first axis
    assert clipped_volume(open_side, np.zeros(3), np.full(3, -1.0), np.full(3, 1.0)) == UNSURE
