"""Chunk rendering equals StarDist's whole-volume polyhedron_to_label, voxel for voxel."""
import json

import h5py
import numpy as np
import pytest
from conftest import ellipsoid_dist, random_centres
from stardist import Rays_GoldenSpiral
from stardist.geometry import polyhedron_to_label

from stardist_hpc.geometry.rays import polyhedron_bboxes, ray_geometry
from stardist_hpc.geometry.tiling import Box, Grid
from stardist_hpc.io.chunks import chunk_stats, compress_chunk
from stardist_hpc.segment.render import chunk_tasks, render_labels

#: far from the origin, where float32 rounding makes shifted rendering differ.
FAR = np.array([3, 1500, 2500])
LOCAL_SHAPE = (24, 64, 72)


def _polyhedra(n_rays, n, seed):
    rays = Rays_GoldenSpiral(n_rays, anisotropy=(2, 1, 1))
    rng = np.random.default_rng(seed)
    radius = rng.uniform(3, 9, (n, 1))
    dist = (ellipsoid_dist(rays, (0.5, 1, 1)) * radius
            * rng.uniform(0.8, 1.2, (n, n_rays))).astype(np.float32)
    points = random_centres(LOCAL_SHAPE, n, seed) + FAR
    return rays, dist, points


def _first_difference(actual, expected):
    where = np.argwhere(actual != expected)
    if len(where) == 0:
        return "none"
    return (f"{len(where)} voxel(s), first at {tuple(where[0])}: "
            f"{actual[tuple(where[0])]} instead of {expected[tuple(where[0])]}")


class _Scene:
    """Polyhedra far from the origin and StarDist's whole-volume rendering of them."""

    def __init__(self, n_rays):
        self.rays, self.dist, self.points = _polyhedra(n_rays, 120, seed=n_rays)
        self.image_shape = tuple(FAR + LOCAL_SHAPE)
        self.ids = np.arange(1, len(self.points) + 1)
        self.geometry = ray_geometry(json.dumps(self.rays.to_json()))
        self.lo, self.hi = polyhedron_bboxes(self.dist, self.points, self.geometry,
                                             self.image_shape)
        # cropped to the region the polyhedra occupy
        self.expected = polyhedron_to_label(
            self.dist, self.points, self.rays, self.image_shape,
            prob=-self.ids.astype(np.float32), labels=self.ids,
            verbose=False)[Box(tuple(FAR), self.image_shape).slices()]

    def render(self, chunk_shape, render_box):
        """Assemble the region from chunks; ``render_box(meets, box)`` renders one chunk."""
        labels = np.zeros(LOCAL_SHAPE, np.uint32)
        for chunk in Grid(LOCAL_SHAPE, chunk_shape):
            box = Box(tuple(FAR + chunk.lo), tuple(FAR + chunk.hi))
            meets = np.all((self.lo < box.hi) & (self.hi > box.lo), axis=1)
            labels[chunk.slices()] = render_box(meets, box)
        return labels


def _render_chunks(scene, chunk_shape, backend):
    return scene.render(chunk_shape, lambda meets, box: render_labels(
        scene.dist[meets], scene.points[meets], scene.ids[meets], scene.geometry, box,
        scene.image_shape, backend))


@pytest.mark.parametrize("n_rays, chunk_shape", [(96, (8, 32, 32)), (32, (5, 17, 23))])
def test_chunks_equal_whole_volume_rendering(n_rays, chunk_shape):
    scene = _Scene(n_rays)
    actual = _render_chunks(scene, chunk_shape, "stardist")
    assert actual.dtype == np.uint32
    assert np.array_equal(actual, scene.expected), _first_difference(actual, scene.expected)


@pytest.mark.parametrize("n_rays, chunk_shape", [(96, (8, 32, 32)), (32, (5, 17, 23)),
                                                 (128, (24, 9, 64))])
def test_fast_rendering_differs_from_stardist_only_by_rounding(n_rays, chunk_shape):
    """The cone-table test decides in float64 on integer offsets; StarDist in float32 on
    absolute coordinates, which rounds differently on about one voxel in 10^5 this far out."""
    scene = _Scene(n_rays)
    actual = _render_chunks(scene, chunk_shape, "fast")
    assert actual.dtype == np.uint32
    assert np.sum(actual != scene.expected) <= 1e-4 * np.sum(scene.expected > 0), \
        _first_difference(actual, scene.expected)


def test_shifting_points_into_stardist_chunks_is_not_exact():
    """Why render.py ports StarDist: shifted float32 coordinates round differently."""
    scene = _Scene(96)
    shifted = scene.render((8, 32, 32), lambda meets, box: polyhedron_to_label(
        scene.dist[meets], scene.points[meets] - np.asarray(box.lo), scene.rays, box.shape,
        prob=-scene.ids[meets].astype(np.float32), labels=scene.ids[meets], verbose=False))
    assert not np.array_equal(shifted, scene.expected)


def test_chunk_stats_match_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.choice([0, 0, 3, 7, 70000], size=(4, 5, 6)).astype(np.uint32)
    origin = (10, 20, 30)
    stats = chunk_stats(labels, origin)
    np.testing.assert_array_equal(stats.ids, [3, 7, 70000])
    for i, label in enumerate(stats.ids):
        coords = np.argwhere(labels == label) + origin
        assert stats.voxel_count[i] == len(coords)
        np.testing.assert_array_equal(stats.coord_sum[i], coords.sum(axis=0))
        np.testing.assert_array_equal(stats.bbox_lo[i], coords.min(axis=0))
        np.testing.assert_array_equal(stats.bbox_hi[i], coords.max(axis=0) + 1)
    assert len(chunk_stats(np.zeros((2, 2, 2), np.uint32), origin).ids) == 0


def test_compressed_edge_chunk_reads_back_through_hdf5(tmp_path):
    labels = np.arange(3 * 4 * 5, dtype=np.uint32).reshape(3, 4, 5) + 65530
    with h5py.File(tmp_path / "l.h5", "w") as f:
        dset = f.create_dataset("labels", (7, 4, 5), np.uint32, chunks=(4, 4, 5),
                                compression="gzip")
        dset.id.write_direct_chunk((4, 0, 0), compress_chunk(labels, (4, 4, 5)))
    with h5py.File(tmp_path / "l.h5", "r") as f:
        np.testing.assert_array_equal(f["labels"][4:], labels)
        assert not f["labels"][:4].any()


def test_chunk_tasks_list_the_survivors_meeting_each_chunk():
    grid = Grid((10, 20, 30), (4, 8, 16))
    rng = np.random.default_rng(2)
    lo = rng.integers(0, 25, (50, 3)) % np.array([10, 20, 30])
    hi = np.minimum(lo + rng.integers(1, 9, (50, 3)), (10, 20, 30))
    tasks = chunk_tasks(lo, hi, grid)
    for task in tasks:
        meets = np.all((lo < task.box.hi) & (hi > task.box.lo), axis=1)
        np.testing.assert_array_equal(task.positions, np.flatnonzero(meets))
    assert {t.index for t in tasks} == {i for i, box in enumerate(grid)
                                        if np.any(np.all((lo < box.hi) & (hi > box.lo), axis=1))}
