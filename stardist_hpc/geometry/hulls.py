"""Convex hulls of star-convex polyhedra (SciPy's Qhull), each computed once per process.

Both the fast NMS's borderline checks and StarDist's way of rendering need the half-spaces of a
polyhedron's convex hull. Qhull holds the GIL (~0.1 ms per 96-ray hull), and the same
polyhedron comes back often: a kept candidate heads many borderline pairs in a row, and an
object is rendered once in every chunk its box meets, mostly by the same task. So hulls are
remembered by their ray tips' bytes (equal tips, equal hull: the result does not change).
"""
from __future__ import annotations

import functools

import numpy as np
from scipy.spatial import ConvexHull, QhullError

#: hulls a process remembers (~7 KB each at 96 rays).
HULL_CACHE_SIZE = 1024


def hull_equations(tips):
    """Qhull's half-spaces ``a.x + b <= 0`` (n_facets, 4) of the convex hull of one
    polyhedron's float32 ray tips (n_rays, 3), or None where Qhull fails (a flat polyhedron).

    The array is shared by every caller that asks for the same tips: it is read-only.
    """
    tips = np.ascontiguousarray(tips)
    if tips.dtype != np.float32:   # a cast would round: another polyhedron than the caller's
        raise TypeError(f"expected float32 ray tips, got {tips.dtype}")
    return _hull_of_tips(tips.tobytes())


@functools.lru_cache(maxsize=HULL_CACHE_SIZE)
def _hull_of_tips(tip_bytes):
    tips = np.frombuffer(tip_bytes, np.float32).reshape(-1, 3).astype(np.float64)
    try:
        equations = ConvexHull(tips).equations
    except QhullError:
        return None
    equations.flags.writeable = False
    return equations
