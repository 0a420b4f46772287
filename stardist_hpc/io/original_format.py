"""Convert the original pipeline's ``probabilities.h5`` into an indexed candidate file.

The original (older) prediction step wrote all candidates of an image into one HDF5 file::

    prob        float32 (N,)          object probability of each candidate
    dist        float32 (N, n_rays)   ray lengths
    points      int     (N, 3)        candidate centre, z, y, x voxel coordinates
    shape_inst  int     (3,)          image shape

in arbitrary row order, without a spatial index, rays or thresholds (those come from the
model's JSON files). :func:`index_original_file` rewrites it in this project's format (see
:mod:`stardist_hpc.io.candidates`): the "blocks" of the index are the non-empty cells of a regular
grid of ``bucket_shape`` over the image. Empty cells get no block, so the index of a sparse
volume stays small; every candidate still lies in the core of exactly one block.

N may be ~10^8, so the conversion streams over the file in two passes of ``rows_per_read``
rows (a counting sort): pass 1 counts the candidates of each cell, pass 2 writes each slice's
rows, grouped by cell, to the next free rows of their cell. Peak memory is about two slices of
rows plus a few numbers per grid cell.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import h5py
import numpy as np

from ..errors import UserError
from ..geometry.rays import candidate_extent, ray_vectors
from ..geometry.tiling import Grid
from .atomic import atomic_path, remove_stale_temporaries
from .candidate_checks import first_invalid_value
from .candidates import (
    BLOCK_DTYPE,
    ROWS_PER_CHUNK,
    CandidateFile,
    CandidateMeta,
    create_block_table,
    create_candidate_datasets,
)
from .hdf5 import open_hdf5, writing_hdf5
from .model_files import ModelInfo

log = logging.getLogger(__name__)

#: datasets every original candidate file holds.
ORIGINAL_DATASETS = ("prob", "dist", "points", "shape_inst")
#: default grid cell (z, y, x) of the index: a few million voxels, so a spatial query reads
#: few rows beyond its box, while a large image still has only ~10^5 cells.
DEFAULT_BUCKET_SHAPE = (64, 256, 256)
#: default rows per read: ~400 MB of float32 ray lengths with 96 rays.
DEFAULT_ROWS_PER_READ = 1_000_000
#: number of spatial dimensions (z, y, x).
N_DIMS = 3


def is_original_format(path):
    """Whether ``path`` is an original-pipeline candidate file (``probabilities.h5``).

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    bool
        True for a readable HDF5 file holding ``shape_inst`` and no ``blocks`` dataset.
    """
    try:
        with h5py.File(path, "r") as f:
            return "shape_inst" in f and "blocks" not in f
    except OSError:
        return False


def _error(src, dataset, message):
    """The one-line UserError about ``dataset`` of the original file ``src``."""
    return UserError(f"original candidate file {src}: dataset '{dataset}': {message}")


def _read_image_shape(f, src):
    """``shape_inst`` as a tuple of 3 positive ints."""
    value = np.asarray(f["shape_inst"][()])
    valid = (value.shape == (N_DIMS,) and np.issubdtype(value.dtype, np.number)
             and np.all(value == np.round(value)) and np.all(value > 0))
    if not valid:
        raise _error(src, "shape_inst", f"expected {N_DIMS} positive integers (the image "
                                        f"shape z, y, x), got {value.tolist()!r}")
    return tuple(int(s) for s in value)


def _check_columns(f, src, model):
    """Check dataset shapes and dtypes against each other and against ``model``."""
    prob, dist, points = f["prob"], f["dist"], f["points"]
    if prob.ndim != 1:
        raise _error(src, "prob", f"expected shape (N,), got {prob.shape}")
    if dist.ndim != 2 or dist.shape[1] != model.n_rays:
        raise _error(src, "dist", f"rays mismatch: model {model.name} has {model.n_rays} rays, "
                                  f"file has {dist.shape[1] if dist.ndim == 2 else dist.shape}")
    if points.ndim != 2 or points.shape[1] != N_DIMS:
        raise _error(src, "points", f"expected shape (N, {N_DIMS}), got {points.shape}")
    if not np.issubdtype(points.dtype, np.integer):
        raise _error(src, "points", f"expected integer voxel coordinates, got {points.dtype}")
    for name, dset in (("dist", dist), ("points", points)):
        if dset.shape[0] != prob.shape[0]:
            raise _error(src, name, f"expected {prob.shape[0]} rows (as in 'prob'), "
                                    f"got {dset.shape[0]}")


def _validate_source(f, src, model):
    """Check the original file's structure; return its image shape."""
    missing = [d for d in ORIGINAL_DATASETS if d not in f]
    if missing:
        raise _error(src, missing[0], f"expected datasets {', '.join(ORIGINAL_DATASETS)}, "
                                      f"got no {', '.join(missing)}")
    _check_columns(f, src, model)
    return _read_image_shape(f, src)


def _row_slices(n_rows, rows_per_read):
    """Consecutive slices of at most ``rows_per_read`` rows covering ``range(n_rows)``."""
    for start in range(0, n_rows, rows_per_read):
        yield slice(start, min(start + rows_per_read, n_rows))


def _check_inside(points, rows, image_shape, src):
    """Raise if a point of the slice ``rows`` lies outside the image."""
    outside = np.any((points < 0) | (points >= np.asarray(image_shape)), axis=1)
    if outside.any():
        first = int(np.argmax(outside))
        raise _error(src, "points", f"expected z, y, x inside shape_inst {image_shape}, got "
                                    f"{tuple(points[first].tolist())} at row {rows.start + first}")


def _check_values(prob, dist, rows, src):
    """Raise if a probability or ray length of the slice ``rows`` is not a valid one."""
    invalid = first_invalid_value(prob, dist)
    if invalid is not None:
        name, index, expected, value = invalid
        raise _error(src, name, f"{expected}, got {value} at row {rows.start + index}")


def _log_pass(name, n_rows, started):
    """Log the throughput of a pass over ``n_rows`` rows that began at ``started``."""
    seconds = max(time.perf_counter() - started, np.finfo(float).eps)
    log.info("%s: %d rows in %.1f s (%.0f rows/s)", name, n_rows, seconds, n_rows / seconds)


def _count_buckets(f, src, grid, rows_per_read):
    """Pass 1: number of candidates in each grid cell, checking that points lie in the image."""
    started = time.perf_counter()
    counts = np.zeros(len(grid), np.int64)
    n_rows = f["points"].shape[0]
    for rows in _row_slices(n_rows, rows_per_read):
        points = f["points"][rows]
        _check_inside(points, rows, grid.image_shape, src)
        counts += np.bincount(grid.index_of(points), minlength=len(grid))
    _log_pass("pass 1 (count candidates per bucket)", n_rows, started)
    return counts


def _slice_extent(dist, rays):
    """:func:`candidate_extent` of a slice, computed ``ROWS_PER_CHUNK`` rows at a time.

    Its float64 temporary holds rows * n_rays * 3 values: gigabytes for a whole slice.
    """
    return np.concatenate([candidate_extent(dist[rows], rays)
                           for rows in _row_slices(len(dist), ROWS_PER_CHUNK)])


def _group_by_bucket(ids):
    """Stable order sorting a slice's rows by cell, with the cell and first sorted row of each run.

    Stable, so the rows of a cell keep their file order.
    """
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    run_starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return order, sorted_ids[run_starts], run_starts


def _write_runs(dsets, columns, targets, run_starts):
    """Write each run of sorted rows ``[run_starts[i], run_starts[i+1])`` at row ``targets[i]``."""
    run_stops = np.r_[run_starts[1:], len(columns["prob"])]
    for target, start, stop in zip(targets.tolist(), run_starts.tolist(), run_stops.tolist()):
        for name, values in columns.items():
            dsets[name][target:target + stop - start] = values[start:stop]


def _update_extents(extents, run_buckets, run_starts, dist, rays):
    """Raise the extents of the slice's cells to the largest extent of their rows."""
    run_max = np.maximum.reduceat(_slice_extent(dist, rays), run_starts, axis=0)
    extents[run_buckets] = np.maximum(extents[run_buckets], run_max)


def _scatter_rows(f, dsets, grid, starts, rays, rows_per_read):
    """Pass 2: copy each row to the next free row of its cell; return the cells' extents.

    Returns
    -------
    extents : ndarray of float32, shape (n_buckets, 3)
        Largest candidate extent along z, y, x of each cell (0 for empty cells).
    """
    started = time.perf_counter()
    next_free = starts.copy()
    extents = np.zeros((len(grid), N_DIMS), np.float32)
    n_rows = f["points"].shape[0]
    for rows in _row_slices(n_rows, rows_per_read):
        points = f["points"][rows]
        order, run_buckets, run_starts = _group_by_bucket(grid.index_of(points))
        prob = np.asarray(f["prob"][rows], np.float32)
        dist = np.asarray(f["dist"][rows], np.float32)
        _check_values(prob, dist, rows, f.filename)
        columns = {"prob": prob[order], "dist": dist[order],
                   "points": points.astype(np.int32)[order]}
        _write_runs(dsets, columns, next_free[run_buckets], run_starts)
        next_free[run_buckets] += np.diff(np.r_[run_starts, len(order)])
        _update_extents(extents, run_buckets, run_starts, columns["dist"], rays)
    _log_pass("pass 2 (write candidates grouped by bucket)", n_rows, started)
    return extents


def _block_table(grid, counts, starts, extents):
    """The ``blocks`` index (BLOCK_DTYPE): one row per non-empty cell, in cell order."""
    ids = np.flatnonzero(counts)
    lo, hi = grid.bounds(ids)
    blocks = np.zeros(len(ids), BLOCK_DTYPE)
    for axis, name in enumerate("zyx"):
        blocks[f"{name}0"], blocks[f"{name}1"] = lo[:, axis], hi[:, axis]
        blocks[f"extent_{name}"] = extents[ids, axis]
    blocks["row_start"], blocks["row_stop"] = starts[ids], starts[ids] + counts[ids]
    return blocks


def _meta_for(model, image_shape):
    """Attributes of the converted file: geometry and thresholds come from the model."""
    return CandidateMeta(image_shape=image_shape, rays_json=model.rays_json,
                         grid=tuple(model.grid), prob_thresh=model.prob_thresh,
                         nms_thresh=model.nms_thresh, model_name=model.name, image_path="")


def _write_destination(f, tmp_path, grid, counts, model, rows_per_read):
    """Write the whole indexed candidate file at ``tmp_path`` (pass 2 and the index)."""
    starts = np.cumsum(counts) - counts
    with writing_hdf5(tmp_path) as h5:
        dsets = create_candidate_datasets(h5, _meta_for(model, grid.image_shape),
                                          int(counts.sum()))
        extents = _scatter_rows(f, dsets, grid, starts, ray_vectors(model.rays_json),
                                rows_per_read)
        create_block_table(h5, _block_table(grid, counts, starts, extents))


def _open_source(src):
    """Open the original file for reading, turning I/O failures into a UserError."""
    return open_hdf5(src, "original candidate file")


def _check_arguments(bucket_shape, rows_per_read):
    """Reject programming errors in the tuning arguments (config validation reports user ones)."""
    if len(bucket_shape) != N_DIMS or min(bucket_shape) <= 0:
        raise ValueError(f"expected bucket_shape of {N_DIMS} positive ints, got {bucket_shape}")
    if rows_per_read <= 0:
        raise ValueError(f"expected a positive rows_per_read, got {rows_per_read}")


def index_original_file(src, dst, model: ModelInfo, *, bucket_shape=DEFAULT_BUCKET_SHAPE,
                        rows_per_read=DEFAULT_ROWS_PER_READ):
    """Convert an original ``probabilities.h5`` into an indexed candidate file, streaming.

    Parameters
    ----------
    src : str or Path
        Original candidate file (see the module docstring).
    dst : str or Path
        Candidate file to write. It is written under a temporary name and renamed when
        complete, so an existing ``dst`` is complete and is returned as is (resume after an
        interruption).
    model : ModelInfo
        Model that predicted ``src``: rays, grid and thresholds of the new file.
    bucket_shape : tuple of 3 int, optional
        Grid cell (z, y, x) of the spatial index; one block per non-empty cell.
    rows_per_read : int, optional
        Rows read from ``src`` at a time; bounds memory use.

    Returns
    -------
    CandidateFile

    Raises
    ------
    UserError
        If ``src`` is missing, malformed, disagrees with ``model`` on the number of rays, or
        holds points outside ``shape_inst``.
    """
    dst = Path(dst)
    if dst.exists():
        try:
            indexed = CandidateFile(dst)
            log.info("%s exists, not indexing %s again", dst, src)
            return indexed
        except UserError as e:   # a damaged checkpoint: index again
            log.warning("%s; indexing %s again", e, src)
            dst.unlink()
    _check_arguments(bucket_shape, rows_per_read)
    remove_stale_temporaries(dst)
    with _open_source(src) as f, atomic_path(dst) as tmp_path:
        grid = Grid(_validate_source(f, src, model), tuple(int(b) for b in bucket_shape))
        counts = _count_buckets(f, src, grid, rows_per_read)
        _write_destination(f, tmp_path, grid, counts, model, rows_per_read)
    log.info("indexed %s into %s (%d buckets of %s)", src, dst, len(grid), bucket_shape)
    return CandidateFile(dst)
