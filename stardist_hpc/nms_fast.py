"""A fast NMS with StarDist's suppression rule, decided by counting voxels.

StarDist suppresses candidate ``j`` in favour of a kept, higher ranked ``i`` when their overlap
exceeds ``thresh * min(volume_i, volume_j)`` (volumes of the continuous polyhedra). It bounds
the overlap with spheres and Qhull intersections of kernels (a lower bound) and convex hulls (an
upper bound) and, when those do not decide, counts the voxels both polyhedra render; a Qhull
intersection costs milliseconds. This backend counts voxels first, with the O(1) inside test of
:mod:`.star_geometry`:

* each kept polyhedron is rasterised once (lazily, when a neighbour first needs it) together
  with a summed-volume table, which bounds its voxels in any box in O(1);
* a pair is decided by cheap bounds first (box volumes, the kept polyhedron's voxels in the
  shared box), then by counting, stopping as soon as the count decides either way;
* only a count within ``BORDERLINE`` of the limit, where the count's discretisation error could
  make StarDist's continuous bounds decide otherwise, is handed to StarDist's own Qhull check
  (one per pair: the kernels for a count at or below the limit, the hulls above it).

Every decision depends on the pair alone, so tiles see the same decisions as the whole volume.
Candidate centres must be integer voxel coordinates (as in the candidate file).
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numba
import numpy as np
from scipy.spatial import ConvexHull, HalfspaceIntersection, QhullError

from .render import kernel_halfspaces
from .star_geometry import cone_table, inside, prepare_polyhedra, reach

#: StarDist's guard against dividing by a zero volume (``A_min + 1e-10``).
VOLUME_EPS = 1e-10
#: voxel counts within this fraction of the limit are borderline: the count's discretisation
#: error could flip the decision, so StarDist's own Qhull checks decide them first.
BORDERLINE = 0.05
#: StarDist's value for a convex-hull intersection that Qhull fails on (never keeps).
HULL_ERROR = 1e10


class NeighbourGrid(NamedTuple):
    """Candidates bucketed by centre in cells of ``cell`` voxels (CSR layout)."""
    origin: np.ndarray     # int64 (3,): the smallest centre coordinates, a corner of cell 0
    cell: np.ndarray       # int64 (3,)
    shape: np.ndarray      # int64 (3,): cells per axis
    starts: np.ndarray     # int64 (n_cells + 1,)
    members: np.ndarray    # int64 (N,): candidate indices, increasing within a cell
    reach: np.ndarray      # int64 (3,): largest distance from a centre to its bbox faces


def neighbour_grid(polyhedra):
    """Bucket the candidates so that those whose boxes may meet a box are found quickly."""
    centres, largest_reach = polyhedra.centres, reach(polyhedra)
    cell = 2 * np.maximum(largest_reach, 0) + 1
    origin = centres.min(axis=0)
    index = (centres - origin) // cell
    shape = index.max(axis=0) + 1
    flat = np.ravel_multi_index(tuple(index.T), tuple(shape))
    members = np.argsort(flat, kind="stable")
    starts = np.searchsorted(flat[members], np.arange(int(np.prod(shape)) + 1))
    return NeighbourGrid(origin, cell, shape.astype(np.int64), starts.astype(np.int64),
                         members.astype(np.int64), largest_reach.astype(np.int64))


# ---------------------------------------------------------------------------------------------
# the suppression loop


@numba.njit(cache=True)
def _rasterise(i, centres, inv_dist, lo, hi, table, scratch):
    """Voxels of polyhedron ``i`` in its box, and their summed-volume table."""
    nz, ny, nx = hi[i, 0] - lo[i, 0] + 1, hi[i, 1] - lo[i, 1] + 1, hi[i, 2] - lo[i, 2] + 1
    mask = np.zeros((nz, ny, nx), np.bool_)
    summed = np.zeros((nz + 1, ny + 1, nx + 1), np.int32)
    for z in range(nz):
        oz = lo[i, 0] + z - centres[i, 0]
        for y in range(ny):
            oy = lo[i, 1] + y - centres[i, 1]
            for x in range(nx):
                ox = lo[i, 2] + x - centres[i, 2]
                mask[z, y, x] = inside(table, inv_dist[i], oz, oy, ox, scratch)
                summed[z + 1, y + 1, x + 1] = (
                    mask[z, y, x] + summed[z, y + 1, x + 1] + summed[z + 1, y, x + 1]
                    + summed[z + 1, y + 1, x] - summed[z, y, x + 1] - summed[z, y + 1, x]
                    - summed[z + 1, y, x] + summed[z, y, x])
    return mask, summed


@numba.njit(cache=True)
def _voxels_in_box(summed, z0, y0, x0, z1, y1, x1):
    """Rasterised voxels in the half-open box [z0, z1) x [y0, y1) x [x0, x1) of the mask."""
    return (summed[z1, y1, x1] - summed[z0, y1, x1] - summed[z1, y0, x1] - summed[z1, y1, x0]
            + summed[z0, y0, x1] + summed[z0, y1, x0] + summed[z1, y0, x0] - summed[z0, y0, x0])


@numba.njit(cache=True)
def _count_overlap(mask, origin, box_lo, box_hi, upper, low, high, centre, inv_dist, table,
                   scratch):
    """Voxels of ``mask`` in the box that lie inside the polyhedron, counted until it decides.

    ``upper`` is the number of mask voxels in the box. Counting stops once the count exceeds
    ``high`` (returning it) or can no longer exceed ``low`` (returning that bound); a result
    in ``(low, high]`` is the exact count.
    """
    count, remaining = 0, upper
    for z in range(box_lo[0], box_hi[0] + 1):
        for y in range(box_lo[1], box_hi[1] + 1):
            for x in range(box_lo[2], box_hi[2] + 1):
                if not mask[z - origin[0], y - origin[1], x - origin[2]]:
                    continue
                remaining -= 1
                if inside(table, inv_dist, z - centre[0], y - centre[1], x - centre[2],
                          scratch):
                    count += 1
                    if count > high:
                        return count
                elif count + remaining <= low:
                    return count + remaining
    return count


def _intersection_volume(halfspaces, interior, on_error):
    """Volume of the intersection of half-spaces ``a.x + b <= 0`` (Qhull), as StarDist computes
    it, or ``on_error`` where Qhull fails (as StarDist's)."""
    try:
        polytope = HalfspaceIntersection(halfspaces, interior)
    except (QhullError, ValueError):
        return on_error
    return _polytope_volume(polytope.intersections, polytope.dual_facets, halfspaces, interior)


def _polytope_volume(corners, corner_planes, halfspaces, interior):
    """Volume of a convex polytope from its corners and the planes through each corner.

    Faster than a convex hull of the corners, which Qhull slows down on the many corners where
    more than three planes meet.
    """
    counts = np.fromiter(map(len, corner_planes), np.int64, len(corner_planes))
    planes = np.fromiter(itertools.chain.from_iterable(corner_planes), np.int64, counts.sum())
    return _fan_volume(corners, np.repeat(np.arange(len(corners)), counts), planes,
                       halfspaces[:, :3], interior)


@numba.njit(cache=True)
def _fan_volume(corners, corner_of, plane_of, normals, interior):
    """Sum of the pyramids from ``interior`` over the faces, each fanned from its centre with
    its corners sorted by angle (``corner_of[k]`` lies on plane ``plane_of[k]``)."""
    by_plane = np.argsort(plane_of, kind="mergesort")
    volume, start = 0.0, 0
    while start < len(by_plane):
        plane = plane_of[by_plane[start]]
        stop = start
        while stop < len(by_plane) and plane_of[by_plane[stop]] == plane:
            stop += 1
        points = corners[corner_of[by_plane[start:stop]]]
        centre = np.zeros(3)
        for p in points:
            centre += p
        centre /= len(points)
        # in-plane axes u, w of the face, to order its corners by angle around its centre
        n = normals[plane]
        helper = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(n, helper)
        w = np.cross(n, u)
        angle = np.empty(len(points))
        for k in range(len(points)):
            angle[k] = np.arctan2(np.dot(points[k] - centre, w), np.dot(points[k] - centre, u))
        ring = points[np.argsort(angle)]
        a = centre - interior
        for k in range(len(ring)):
            b, c = ring[k] - interior, ring[(k + 1) % len(ring)] - interior
            volume += abs(a[0] * (b[1] * c[2] - b[2] * c[1]) - a[1] * (b[0] * c[2] - b[2] * c[0])
                          + a[2] * (b[0] * c[1] - b[1] * c[0]))
        start = stop
    return volume / 6


def _qhull_suppresses(dist, centres, vertices, faces, a_min, thresh, counted_above):
    """StarDist's decision on a pair whose voxel count is borderline, from its Qhull checks.

    StarDist suppresses when the kernels' intersection (a lower bound of the overlap) exceeds
    the threshold, keeps when the convex hulls' intersection (an upper bound) does not, and
    counts voxels otherwise. So a count at or below the limit stands unless the kernels
    suppress, and a count above it stands unless the hulls keep: one check decides.
    """
    tips = np.asarray(centres, np.float32)[:, None, :] + dist[:, :, None] * vertices
    interior = np.mean(np.asarray(centres, np.float64), axis=0)
    limit = np.float32(a_min + VOLUME_EPS)
    if not counted_above:
        kernels = kernel_halfspaces(tips, faces).reshape(-1, 4)
        return bool(np.float32(_intersection_volume(kernels, interior, 0.0)) / limit > thresh)
    try:
        hulls = np.concatenate([ConvexHull(t.astype(np.float64)).equations for t in tips])
    except QhullError:
        return True   # StarDist's error value: an overlap too large to keep on
    return bool(np.float32(_intersection_volume(hulls, interior, HULL_ERROR)) / limit > thresh)


@numba.njit(cache=True)
def _borderline_suppresses(i, j, dist, centres, vertices, faces, a_min, thresh, counted_above):
    pair_dist, pair_centres = dist[np.array([i, j])], centres[np.array([i, j])]
    with numba.objmode(suppresses="boolean"):
        suppresses = _qhull_suppresses(pair_dist, pair_centres, vertices, faces, a_min, thresh,
                                       counted_above)
    return suppresses


@numba.njit(cache=True)
def _boxes_keep(i, j, lo, hi, limit, box_lo, box_hi):
    """Whether the boxes alone keep ``j``; fills the shared voxel box [box_lo, box_hi]."""
    stardist_box, voxel_box = 1, 1
    for k in range(3):
        box_lo[k], box_hi[k] = max(lo[i, k], lo[j, k]), min(hi[i, k], hi[j, k])
        # StarDist's pretest measures box overlap without the +1 of inclusive voxel bounds
        stardist_box *= max(box_hi[k] - box_lo[k], 0)
        voxel_box *= max(box_hi[k] - box_lo[k] + 1, 0)
    return stardist_box <= limit or voxel_box <= (1 - BORDERLINE) * limit


@numba.njit(cache=True)
def _suppresses(i, j, mask, summed, polyhedra, dist, vertices, table, thresh, a_min, limit,
                box_lo, box_hi, scratch):
    """Whether kept ``i`` suppresses ``j``, whose boxes meet (``mask``: i's voxels), with
    ``limit`` the overlap allowed by ``thresh`` and the smaller volume ``a_min``."""
    centres, inv_dist, volumes, lo, hi = polyhedra
    low, high = (1 - BORDERLINE) * limit, (1 + BORDERLINE) * limit
    upper = _voxels_in_box(summed, box_lo[0] - lo[i, 0], box_lo[1] - lo[i, 1],
                           box_lo[2] - lo[i, 2], box_hi[0] - lo[i, 0] + 1,
                           box_hi[1] - lo[i, 1] + 1, box_hi[2] - lo[i, 2] + 1)
    if upper <= low:
        return False
    count = _count_overlap(mask, lo[i], box_lo, box_hi, upper, low, high, centres[j],
                           inv_dist[j], table, scratch)
    if count <= low or count > high:
        return count > high
    return _borderline_suppresses(i, j, dist, centres, vertices, table.faces, a_min, thresh,
                                  count > limit)


@numba.njit(cache=True)
def _suppress_loop(polyhedra, dist, vertices, grid, table, thresh):
    centres, inv_dist, volumes, lo, hi = polyhedra
    origin, cell, shape, starts, members, largest_reach = grid
    suppressed = np.zeros(centres.shape[0], np.bool_)
    scratch, box_lo, box_hi = np.empty(3), np.empty(3, np.int64), np.empty(3, np.int64)
    cell_lo, cell_hi = np.empty(3, np.int64), np.empty(3, np.int64)
    for i in range(centres.shape[0]):
        if suppressed[i]:
            continue
        mask, summed = np.zeros((0, 0, 0), np.bool_), np.zeros((1, 1, 1), np.int32)
        for k in range(3):
            # a neighbour's centre lies within ``largest_reach`` of its box, which must meet i's
            cell_lo[k] = max((lo[i, k] - largest_reach[k] - origin[k]) // cell[k], 0)
            cell_hi[k] = min((hi[i, k] + largest_reach[k] - origin[k]) // cell[k], shape[k] - 1)
        for cz in range(cell_lo[0], cell_hi[0] + 1):
            for cy in range(cell_lo[1], cell_hi[1] + 1):
                for cx in range(cell_lo[2], cell_hi[2] + 1):
                    c = (cz * shape[1] + cy) * shape[2] + cx
                    for m in range(starts[c], starts[c + 1]):
                        j = members[m]
                        if j <= i or suppressed[j]:
                            continue
                        a_min = min(volumes[i], volumes[j])
                        limit = thresh * (a_min + VOLUME_EPS)
                        if _boxes_keep(i, j, lo, hi, limit, box_lo, box_hi):
                            continue
                        if mask.size == 0:
                            mask, summed = _rasterise(i, centres, inv_dist, lo, hi, table,
                                                      scratch)
                        suppressed[j] = _suppresses(i, j, mask, summed, polyhedra, dist,
                                                    vertices, table, thresh, a_min, limit,
                                                    box_lo, box_hi, scratch)
    return ~suppressed


def non_maximum_suppression(dist, points, geometry, thresh):
    """Kept candidates of StarDist's NMS rule, for candidates in decreasing rank order.

    Parameters
    ----------
    dist : ndarray (N, n_rays)
    points : ndarray of int (N, 3)
        Integer centres (z, y, x).
    geometry : render.RayGeometry
    thresh : float
        Suppress ``j`` when more than ``thresh * min(volume_i, volume_j)`` of its voxels are
        also voxels of a kept, higher ranked ``i``.

    Returns
    -------
    kept : ndarray of bool (N,)
    """
    if len(dist) == 0:
        return np.zeros(0, bool)
    dist = np.ascontiguousarray(dist, np.float32)
    polyhedra = prepare_polyhedra(dist, points, geometry)
    grid = neighbour_grid(polyhedra)
    return _suppress_loop(polyhedra, dist, np.ascontiguousarray(geometry.vertices, np.float32),
                          grid, cone_table(geometry, grid.reach), np.float32(thresh))
