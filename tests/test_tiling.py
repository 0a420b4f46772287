"""Boxes and grids shared by prediction blocks, NMS tiles and label chunks."""
import itertools

import numpy as np
import pytest

from stardist_hpc.geometry.tiling import Box, Grid, grid_boxes

SHAPE = (7, 20, 33)


@pytest.mark.parametrize("box_shape", [(3, 8, 10), (None, 20, 5), (None, None, None), (7, 1, 40)])
def test_grid_boxes_partition_the_volume(box_shape):
    cover = np.zeros(SHAPE, int)
    for lo, hi in grid_boxes(SHAPE, box_shape):   # boxes unpack as (lo, hi)
        cover[Box(lo, hi).slices()] += 1
        assert all(0 <= l < h <= s for l, h, s in zip(lo, hi, SHAPE))
    assert np.all(cover == 1)


def test_grid_numbers_boxes_in_c_order_and_locates_points():
    grid = Grid(SHAPE, (3, None, 10))
    assert grid.counts == (3, 1, 4) and len(grid) == 12
    assert list(grid) == [grid.box(i) for i in range(len(grid))]
    points = np.stack(np.meshgrid(*map(np.arange, SHAPE), indexing="ij"), -1).reshape(-1, 3)
    index = grid.index_of(points)
    for i, box in enumerate(grid):
        np.testing.assert_array_equal(box.contains(points), index == i)


def test_boxes_meeting_matches_brute_force():
    grid = Grid(SHAPE, (2, 7, 9))
    rng = np.random.default_rng(0)
    lo = rng.integers(-5, 35, (300, 3))
    hi = lo + rng.integers(0, 12, (300, 3))
    items, boxes = grid.boxes_meeting(lo, hi)
    expected = [(i, b) for i, b in itertools.product(range(300), range(len(grid)))
                if all(max(l, bl) < min(h, bh) for l, h, bl, bh in
                       zip(lo[i], hi[i], grid.box(b).lo, grid.box(b).hi))]
    assert list(zip(items.tolist(), boxes.tolist())) == expected


def test_box_grow_clips_to_the_image():
    box = Box((0, 5, 30), (2, 10, 33))
    assert box.grow((3, 2, 1), SHAPE) == Box((0, 3, 29), (5, 12, 33))
    assert box.shape == (2, 5, 3)
    assert box.slices((0, 5, 30)) == (slice(0, 2), slice(0, 5), slice(0, 3))


def test_batches_are_blocks_of_neighbours_up_to_the_load_or_the_minimum_count():
    grid = Grid((64, 512, 500), (16, 64, 64))   # 4 x 8 x 8 boxes, the last x ones clipped
    batches = grid.batches(100, 1600, 16)
    assert len(np.unique(batches)) == 16 and np.all(np.bincount(batches) == 16)
    lo, hi = grid.bounds(np.arange(len(grid)))
    for b in np.unique(batches):
        members = batches == b
        block = np.prod(hi[members].max(axis=0) - lo[members].min(axis=0))
        assert block == np.prod(hi[members] - lo[members], axis=1).sum(), "not one block"
    np.testing.assert_array_equal(grid.batches(100, 50, 16), np.arange(len(grid)))
    assert len(np.unique(grid.batches(100, 10 ** 9, 4))) == 4   # the minimum count wins
