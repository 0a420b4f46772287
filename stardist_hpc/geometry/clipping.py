"""Volume of an intersection of half-spaces, by clipping a box: the fast NMS's borderline
checks without Qhull (a SciPy Qhull call holds the GIL; this runs in nogil numba code, 2-3x
faster on the kernels and hulls of 32- to 96-ray pairs).

A convex polytope is held as its faces, each a polygon with its corners in order; a half-space
``a.x + b <= 0`` cuts every face (Sutherland-Hodgman) and closes the cut with a new face. The
result is trusted only when it is well conditioned, as Qhull's then is: the interior point lies
clearly inside every half-space and no corner is left on the starting box (which the
half-spaces must bound); otherwise :func:`clipped_volume` answers :data:`UNSURE` and the caller
asks Qhull. On 5,197 borderline pairs of noisy 32- and 96-ray sets it agreed with Qhull's
volume within 3e-11 (relative) and on every pair Qhull fails on, and changed no decision.
"""
from __future__ import annotations

import numba
import numpy as np

#: returned when the clipped volume is not to be trusted (the caller falls back to Qhull).
UNSURE = -1.0
#: returned when the interior point lies clearly outside a half-space (Qhull fails there).
OUTSIDE = -2.0
#: corners within this distance (relative to the polytope's extent) of a plane lie on it.
ON_PLANE = 1e-12
#: the interior point must lie this far (relative to the extent) inside every half-space for
#: the result to be trusted; Qhull's own feasibility test has no margin at all.
INTERIOR_MARGIN = 1e-6
#: the starting box is the given box grown by this much (in units of its extent), so that no
#: corner of a bounded intersection lies on it.
BOX_MARGIN = 0.25
#: room for faces and corners per half-space (a cut adds one face and at most one corner per
#: face); beyond it the result is UNSURE.
FACE_ROOM, CORNER_ROOM = 8, 64


@numba.njit(cache=True, nogil=True)
def clipped_volume(planes, interior, lo, hi):
    """Volume of ``{x in box: planes[:, :3] . x + planes[:, 3] <= 0}``.

    Parameters
    ----------
    planes : ndarray of float64 (n, 4)
    interior : ndarray of float64 (3,)
        A point inside the intersection.
    lo, hi : ndarray of float64 (3,)
        A box holding the intersection.

    Returns
    -------
    float
        The volume, :data:`OUTSIDE` when ``interior`` lies clearly outside a half-space, or
        :data:`UNSURE`.
    """
    extent = 0.0
    for k in range(3):
        extent = max(extent, hi[k] - lo[k], abs(lo[k]), abs(hi[k]))
    extent = max(extent, 1.0)
    for p in range(planes.shape[0]):
        norm = np.sqrt(planes[p, 0] ** 2 + planes[p, 1] ** 2 + planes[p, 2] ** 2)
        d = (planes[p, 0] * interior[0] + planes[p, 1] * interior[1]
             + planes[p, 2] * interior[2] + planes[p, 3])
        if d > INTERIOR_MARGIN * extent * norm:
            return OUTSIDE
        if d > -INTERIOR_MARGIN * extent * norm:
            return UNSURE
    max_faces = 6 + FACE_ROOM * planes.shape[0]
    max_corners = 24 + CORNER_ROOM * planes.shape[0]
    corners, starts = np.empty((max_corners, 3)), np.empty(max_faces + 1, np.int64)
    spare, spare_starts = np.empty((max_corners, 3)), np.empty(max_faces + 1, np.int64)
    box_lo, box_hi = np.empty(3), np.empty(3)
    for k in range(3):
        grow = BOX_MARGIN * (hi[k] - lo[k]) + BOX_MARGIN
        box_lo[k], box_hi[k] = lo[k] - grow, hi[k] + grow
    n_faces = _box_faces(box_lo, box_hi, corners, starts)
    cut = np.empty((max_faces, 3))
    # the tightest half-spaces first: most of the others then cut nothing
    closeness = np.empty(planes.shape[0])
    for p in range(planes.shape[0]):
        closeness[p] = -(planes[p, 0] * interior[0] + planes[p, 1] * interior[1]
                         + planes[p, 2] * interior[2] + planes[p, 3]) / np.sqrt(
            planes[p, 0] ** 2 + planes[p, 1] ** 2 + planes[p, 2] ** 2)
    for p in np.argsort(closeness):
        if not _cuts(planes[p], corners, starts[n_faces], ON_PLANE * extent):
            continue
        n_faces = _cut(planes[p], corners, starts, n_faces, spare, spare_starts, cut,
                       ON_PLANE * extent)
        if n_faces < 0:
            return UNSURE
        corners, spare = spare, corners
        starts, spare_starts = spare_starts, starts
        if n_faces == 0:
            return 0.0
    for c in range(starts[n_faces]):
        for k in range(3):
            if (corners[c, k] <= box_lo[k] + ON_PLANE * extent
                    or corners[c, k] >= box_hi[k] - ON_PLANE * extent):
                return UNSURE   # the half-spaces do not bound the intersection inside the box
    return _volume(corners, starts, n_faces, interior)


@numba.njit(cache=True, nogil=True)
def _box_faces(lo, hi, corners, starts):
    """The six faces of the box [lo, hi]; returns 6."""
    n = 0
    for axis in range(3):
        u, w = (axis + 1) % 3, (axis + 2) % 3
        for side in range(2):
            value = lo[axis] if side == 0 else hi[axis]
            starts[2 * axis + side] = n
            for (a, b) in ((0, 0), (1, 0), (1, 1), (0, 1)):
                corners[n, axis] = value
                corners[n, u] = lo[u] if a == 0 else hi[u]
                corners[n, w] = lo[w] if b == 0 else hi[w]
                n += 1
    starts[6] = n
    return 6


@numba.njit(cache=True, nogil=True)
def _cut(plane, corners, starts, n_faces, out, out_starts, cut, tolerance):
    """Clip the faces by ``plane`` into ``out``/``out_starts`` and close them with the cut's
    face; returns the number of faces (-1 when out of room)."""
    tol = tolerance * np.sqrt(plane[0] ** 2 + plane[1] ** 2 + plane[2] ** 2)
    n_out, n_cut, faces_out = 0, 0, 0
    for f in range(n_faces):
        first, last = starts[f], starts[f + 1]
        begin = n_out
        for c in range(first, last):
            d = _side(plane, corners, c, tol)
            nxt = c + 1 if c + 1 < last else first
            dn = _side(plane, corners, nxt, tol)
            if n_out + 2 > out.shape[0] or n_cut + 2 > cut.shape[0]:
                return -1
            if d <= 0:
                _copy(corners, c, out, n_out)
                n_out += 1
                if d == 0:
                    _copy(corners, c, cut, n_cut)
                    n_cut += 1
            if (d < 0 and dn > 0) or (d > 0 and dn < 0):
                inner, outer = (c, nxt) if d < 0 else (nxt, c)
                di = _distance(plane, corners, inner)
                do = _distance(plane, corners, outer)
                t = di / (di - do)
                for k in range(3):
                    out[n_out, k] = corners[inner, k] + (corners[outer, k] - corners[inner, k]) * t
                _copy(out, n_out, cut, n_cut)
                n_out += 1
                n_cut += 1
        if n_out - begin >= 3:
            out_starts[faces_out] = begin
            faces_out += 1
        else:
            n_out = begin
        if faces_out + 2 > out_starts.shape[0]:
            return -1
    n_ring = _ring(cut, n_cut, plane, tolerance)
    if n_ring >= 3:
        if n_out + n_ring > out.shape[0]:
            return -1
        out_starts[faces_out] = n_out
        for r in range(n_ring):
            _copy(cut, r, out, n_out)
            n_out += 1
        faces_out += 1
    out_starts[faces_out] = n_out
    return faces_out


@numba.njit(cache=True, nogil=True)
def _copy(source, s, target, t):
    """``target[t] = source[s]`` for rows of 3 (without the cost of array views)."""
    target[t, 0], target[t, 1], target[t, 2] = source[s, 0], source[s, 1], source[s, 2]


@numba.njit(cache=True, nogil=True)
def _cuts(plane, corners, n_corners, tolerance):
    """Whether a corner lies outside ``plane`` (beyond ``tolerance``)."""
    tol = tolerance * np.sqrt(plane[0] ** 2 + plane[1] ** 2 + plane[2] ** 2)
    for c in range(n_corners):
        if _distance(plane, corners, c) > tol:
            return True
    return False


@numba.njit(cache=True, nogil=True)
def _distance(plane, corners, c):
    return (plane[0] * corners[c, 0] + plane[1] * corners[c, 1] + plane[2] * corners[c, 2]
            + plane[3])


@numba.njit(cache=True, nogil=True)
def _side(plane, corners, c, tol):
    """-1 inside, 0 on the plane (within ``tol``), 1 outside."""
    d = _distance(plane, corners, c)
    return 1 if d > tol else (-1 if d < -tol else 0)


@numba.njit(cache=True, nogil=True)
def _ring(points, n, plane, tolerance):
    """Sort the first ``n`` points (on ``plane``) by angle around their centre and drop
    repeats, in place; returns how many remain."""
    if n < 3:
        return 0
    cz, cy, cx = 0.0, 0.0, 0.0
    for p in range(n):
        cz += points[p, 0]
        cy += points[p, 1]
        cx += points[p, 2]
    cz, cy, cx = cz / n, cy / n, cx / n
    norm = np.sqrt(plane[0] ** 2 + plane[1] ** 2 + plane[2] ** 2)
    nz, ny, nx = plane[0] / norm, plane[1] / norm, plane[2] / norm
    # in-plane axes u = n x h (h: a coordinate axis far from n), w = n x u
    if abs(nz) < 0.9:
        uz, uy, ux = 0.0, nx, -ny
    else:
        uz, uy, ux = -nx, 0.0, nz
    length = np.sqrt(uz * uz + uy * uy + ux * ux)
    uz, uy, ux = uz / length, uy / length, ux / length
    wz, wy, wx = ny * ux - nx * uy, nx * uz - nz * ux, nz * uy - ny * uz
    angle = np.empty(n)
    for p in range(n):
        dz, dy, dx = points[p, 0] - cz, points[p, 1] - cy, points[p, 2] - cx
        angle[p] = np.arctan2(dz * wz + dy * wy + dx * wx, dz * uz + dy * uy + dx * ux)
    # insertion sort: rings are short
    for p in range(1, n):
        a, z, y, x = angle[p], points[p, 0], points[p, 1], points[p, 2]
        q = p - 1
        while q >= 0 and angle[q] > a:
            angle[q + 1] = angle[q]
            _copy(points, q, points, q + 1)
            q -= 1
        angle[q + 1] = a
        points[q + 1, 0], points[q + 1, 1], points[q + 1, 2] = z, y, x
    kept = 0
    for p in range(n):
        if kept > 0 and _close(points, p, kept - 1, tolerance):
            continue
        _copy(points, p, points, kept)
        kept += 1
    if kept > 1 and _close(points, kept - 1, 0, tolerance):
        kept -= 1
    return kept


@numba.njit(cache=True, nogil=True)
def _close(points, a, b, tolerance):
    """Whether rows ``a`` and ``b`` of ``points`` coincide within ``tolerance``."""
    return abs(points[a, 0] - points[b, 0]) <= tolerance \
        and abs(points[a, 1] - points[b, 1]) <= tolerance \
        and abs(points[a, 2] - points[b, 2]) <= tolerance


@numba.njit(cache=True, nogil=True)
def _volume(corners, starts, n_faces, apex):
    """Sum of the pyramids from ``apex`` (inside) over the faces, each fanned from a corner."""
    volume = 0.0
    for f in range(n_faces):
        first = starts[f]
        az, ay, ax = (corners[first, 0] - apex[0], corners[first, 1] - apex[1],
                      corners[first, 2] - apex[2])
        for c in range(first + 1, starts[f + 1] - 1):
            bz, by, bx = corners[c, 0] - apex[0], corners[c, 1] - apex[1], corners[c, 2] - apex[2]
            dz, dy, dx = (corners[c + 1, 0] - apex[0], corners[c + 1, 1] - apex[1],
                          corners[c + 1, 2] - apex[2])
            volume += abs(az * (by * dx - bx * dy) - ay * (bz * dx - bx * dz)
                          + ax * (bz * dy - by * dz))
    return volume / 6
