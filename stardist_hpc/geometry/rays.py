"""Rays and the star-convex polyhedra they span, as StarDist describes and renders them.

The one parser of StarDist's ``rays_json``: every module reads rays through
:func:`stardist_rays` (cached, so tasks parse each description once).
"""
from __future__ import annotations

import functools
import json
from typing import NamedTuple

import numpy as np


class RayGeometry(NamedTuple):
    """Unit ray vectors and the triangle faces that connect their tips, as StarDist uses them."""
    vertices: np.ndarray     # float32 (n_rays, 3)
    faces: np.ndarray        # int32 (n_faces, 3)


@functools.lru_cache(maxsize=4)
def stardist_rays(rays_json):
    """StarDist's rays object described by ``rays_json`` (cached: tasks reuse it)."""
    from stardist.rays3d import rays_from_json
    return rays_from_json(json.loads(rays_json))


def ray_vectors(rays_json):
    """Ray vectors (n_rays, 3) in z, y, x voxel units (float64), from StarDist's rays JSON."""
    return np.asarray(stardist_rays(rays_json).vertices, np.float64)


def ray_geometry(rays_json):
    """Ray vectors and faces of StarDist's rays description ``rays_json``."""
    rays = stardist_rays(rays_json)
    return RayGeometry(np.asarray(rays.vertices, np.float32), np.asarray(rays.faces, np.int32))


def polyhedron_vertices(dist, points, geometry):
    """Vertices (N, n_rays, 3) of polyhedra in absolute float32 coordinates, as StarDist's."""
    centres = np.asarray(points, np.float32)
    return centres[:, None, :] + np.asarray(dist, np.float32)[:, :, None] * geometry.vertices


def bbox_of_vertices(vertices, image_shape):
    """Half-open voxel box StarDist renders each polyhedron in, clipped to the image."""
    lo = np.rint(vertices.min(axis=1)).astype(np.int64)
    hi = np.rint(vertices.max(axis=1)).astype(np.int64) + 1
    shape = np.asarray(image_shape)
    return np.clip(lo, 0, shape), np.clip(hi, 0, shape)


def polyhedron_bboxes(dist, points, geometry, image_shape):
    """Voxel boxes ``(lo, hi)`` (N, 3) that StarDist renders the polyhedra in, clipped."""
    return bbox_of_vertices(polyhedron_vertices(dist, points, geometry), image_shape)


def candidate_extent(dist, rays):
    """Largest extent of each candidate along z, y, x: max over rays of dist * |ray component|.

    Parameters
    ----------
    dist : ndarray (N, n_rays)
    rays : ndarray (n_rays, 3)

    Returns
    -------
    extent : ndarray of float32, shape (N, 3)
    """
    dist = np.asarray(dist, np.float32)
    # one axis at a time: an (N, n_rays, 3) temporary would triple the memory of ``dist``
    return np.stack([np.max(dist * np.abs(rays[:, axis]).astype(np.float32), axis=1)
                     for axis in range(3)], axis=1) if len(dist) else np.zeros((0, 3), np.float32)


def largest_extent(dist, rays):
    """``candidate_extent(dist, rays).max(axis=0)`` in one pass over ``dist``.

    Multiplying by ``|ray component| >= 0`` preserves order, also after float32 rounding, so
    the largest product is the product of the largest ray length: the same value, bit for bit,
    without three (N, n_rays) temporaries (this runs in the GPU step's writer lane).

    Parameters
    ----------
    dist : ndarray (N, n_rays), N >= 1
    rays : ndarray (n_rays, 3)

    Returns
    -------
    extent : ndarray of float32, shape (3,)
    """
    longest = np.max(np.asarray(dist, np.float32), axis=0)
    return np.max(longest[:, np.newaxis] * np.abs(rays).astype(np.float32), axis=0)
