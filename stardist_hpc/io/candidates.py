"""The candidate file (``prediction.h5``): sparse StarDist candidates with a spatial block index.

Layout (format version 1)::

    prob    float32 (N,)          object probability of each candidate
    dist    float32 (N, n_rays)   ray lengths
    points  int32   (N, 3)        candidate centre, full-resolution z, y, x voxel coordinates
    prob_class float32 (N, C + 1) class probabilities (background first) of a multi-class
                                  model's candidates, as StarDist returns them; only when the
                                  attribute n_classes = C > 0
    blocks  compound (B,)         per prediction block: core region [lo, hi), row range
                                  [row_start, row_stop) and the largest candidate extent
                                  (max over rays of dist * |ray component|) along z, y, x
    cell_rows int64 (K,)          where the rows of each index cell end (files with the
                                  attribute index_cell_shape): a block's rows are sorted by
                                  the cells of that shape of its core, in C order
    attrs   format_version, image_shape, rays_json, grid, prob_thresh, nms_thresh, model_name,
            image_path, channel, norm_lo, norm_hi, norm_pmin, norm_pmax, norm_method,
            n_classes (0 or absent: a single-class model)
            voxel_size (z, y, x), voxel_unit (files without them: 1, 'pixel')

Candidates of one block are stored contiguously, and every candidate lies in the core of
exactly one block, so a spatial query reads only the rows of the blocks it meets; of a block it
meets in part (a tile's halo), only the rows of the index cells it meets.
The file is written under a temporary name and renamed when complete; a temporary file that an
interrupted run left behind is continued after its last complete block when the new run's
``resume_key`` (what the blocks were predicted from) is the same.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..errors import UserError
from ..geometry.rays import largest_extent, ray_vectors
from ..geometry.tiling import Grid
from .atomic import publish
from .candidate_checks import (
    FORMAT_VERSION,
    HEADER_CHECKSUM,
    PROB_CLASS,
    RESUME_KEY,
    check_attributes,
    check_block_rows,
    check_blocks,
    check_class_rows,
    check_datasets,
    check_header_checksum,
    header_checksum,
)
from .checkpoint import changed_keys
from .disk_space import METADATA_BYTES, DiskFullError, check_free_space, reporting_disk_full
from .hdf5 import open_hdf5, writing_hdf5
from .voxel_size import UNKNOWN, voxel_size_attributes

log = logging.getLogger(__name__)

#: rows per HDF5 chunk of the candidate datasets. HDF5 reads and checks (Fletcher-32) a chunk
#: whole, so a chunk should not hold many more rows than an index cell (~1,000 at the density
#: of a trained network's candidates).
ROWS_PER_CHUNK = 1024
#: the attribute holding the index cell shape, and the dataset of the cells' row ends.
INDEX_CELL_SHAPE_ATTR = "index_cell_shape"
CELL_ROWS = "cell_rows"
#: shape (z, y, x) of the index cells the writer sorts each block's rows by: a tile's context
#: meets its neighbour blocks in strips as wide as its halo (about two nucleus diameters,
#: ~30 voxels in y and x), so a query reads about the strip rather than the block.
INDEX_CELL_SHAPE = (64, 32, 32)

BLOCK_DTYPE = np.dtype([
    ("z0", "i8"), ("y0", "i8"), ("x0", "i8"), ("z1", "i8"), ("y1", "i8"), ("x1", "i8"),
    ("row_start", "i8"), ("row_stop", "i8"),
    ("extent_z", "f4"), ("extent_y", "f4"), ("extent_x", "f4"),
])


@dataclass(frozen=True)
class CandidateMeta:
    """Attributes of a candidate file."""
    image_shape: tuple
    rays_json: str
    grid: tuple
    prob_thresh: float
    nms_thresh: float
    model_name: str = ""
    image_path: str = ""
    channel: int = 0
    norm_lo: float = float("nan")
    norm_hi: float = float("nan")
    norm_pmin: float = float("nan")
    norm_pmax: float = float("nan")
    software_version: str = ""
    #: JSON of the resolved settings of the run that wrote the file (provenance)
    parameters: str = "{}"
    norm_method: str = ""
    #: object classes of a multi-class model (0: single class, no prob_class dataset)
    n_classes: int = 0
    voxel_size: tuple = UNKNOWN.size
    voxel_unit: str = UNKNOWN.unit

    @property
    def n_rays(self):
        return len(ray_vectors(self.rays_json))


def candidate_columns(meta):
    """``(name, dtype, row shape)`` of the per-candidate datasets of a file with ``meta``."""
    columns = [("prob", "f4", ()), ("dist", "f4", (meta.n_rays,)), ("points", "i4", (3,))]
    if meta.n_classes:
        columns.append((PROB_CLASS, "f4", (meta.n_classes + 1,)))
    return columns


def create_candidate_datasets(h5file, meta, n_rows):
    """Create the resizable ``prob``, ``dist``, ``points`` datasets and write ``meta``.

    Returns
    -------
    dict of name -> h5py.Dataset
    """
    layout = candidate_columns(meta)
    # fletcher32: HDF5 checks every chunk it reads, so a damaged byte is an error, not a value
    dsets = {name: h5file.create_dataset(name, (n_rows, *tail), dtype, maxshape=(None, *tail),
                                         chunks=(ROWS_PER_CHUNK, *tail), fletcher32=True)
             for name, dtype, tail in layout}
    for f in fields(meta):
        h5file.attrs[f.name] = getattr(meta, f.name)
    h5file.attrs["format_version"] = FORMAT_VERSION
    h5file.attrs[HEADER_CHECKSUM] = header_checksum(h5file.attrs)
    return dsets


def create_block_table(h5file, blocks=None):
    """Create the resizable, checksummed ``blocks`` table (empty, or holding ``blocks``)."""
    shape = {"shape": (0,), "dtype": BLOCK_DTYPE} if blocks is None else {"data": blocks}
    return h5file.create_dataset("blocks", **shape, maxshape=(None,), chunks=(ROWS_PER_CHUNK,),
                                 fletcher32=True)


def block_cells(core_lo, core_hi, cell_shape):
    """The index cells of a block's core, a Grid over the core (add ``core_lo`` to its boxes)."""
    return Grid(tuple(int(h) - int(l) for l, h in zip(core_lo, core_hi)), cell_shape)


def _cells_per_block(blocks, cell_shape):
    """Number of index cells of each block (int64 (B,))."""
    return np.array([len(block_cells([b[f"{a}0"] for a in "zyx"], [b[f"{a}1"] for a in "zyx"],
                                      cell_shape)) for b in blocks], np.int64)


def temporary_path(path):
    """Where :class:`CandidateWriter` writes ``path`` until it is complete."""
    path = Path(path)
    return path.with_name(path.name + ".tmp")


class CandidateWriter:
    """Append candidates block by block to a new candidate file.

    Use as a context manager; the file appears at ``path`` only when the ``with`` block ends
    without an exception (it is written as ``path.tmp`` and renamed). The temporary file is
    flushed after every block; it is kept when the run is interrupted (KeyboardInterrupt, a
    kill, or the free-space check refusing a block) and continued by the next writer with the
    same ``resume_key``, deleted on any other error (a write that failed, too).

    Attributes
    ----------
    completed_cores : list of (lo, hi)
        Cores of the blocks already in the file, in the order they were appended.
    """

    def __init__(self, path, meta: CandidateMeta, resume_key=""):
        self.path = Path(path)
        self.tmp_path = temporary_path(self.path)
        self.meta = meta
        self.resume_key = resume_key
        self._rays = ray_vectors(meta.rays_json)
        self.n_rows = 0
        self.completed_cores = []

    @property
    def n_blocks(self):
        return len(self.completed_cores)

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_free_space(self.path, METADATA_BYTES)
        if not self._continue_interrupted():
            # never "w" over an existing file: another process may have it open
            self.tmp_path.unlink(missing_ok=True)
            self._file = self._open("x")
            self._dsets = create_candidate_datasets(self._file, self.meta, 0)
            self._blocks = create_block_table(self._file)
            self._cells = self._file.create_dataset(CELL_ROWS, (0,), np.int64, maxshape=(None,),
                                                    chunks=(ROWS_PER_CHUNK,), fletcher32=True)
            self._file.attrs[INDEX_CELL_SHAPE_ATTR] = INDEX_CELL_SHAPE
            self._file.attrs[RESUME_KEY] = self.resume_key
        return self

    def _open(self, mode):
        """The temporary file opened by :func:`~.hdf5.writing_hdf5`, closed by `_close`."""
        self._closing = contextlib.ExitStack()
        return self._closing.enter_context(writing_hdf5(self.tmp_path, mode))

    def _close(self):
        """Close the temporary file (raising the error of a write that failed)."""
        self._closing.close()

    def _same_run(self, stored_key):
        """Whether the interrupted run's key is this run's; if not, log what changed."""
        if stored_key == self.resume_key:
            return True
        try:
            changed = ", ".join(changed_keys(json.loads(stored_key), json.loads(self.resume_key)))
        except (TypeError, ValueError):
            changed = "its resume key"
        log.warning("%s was written from other inputs or settings (%s changed): starting "
                    "afresh", self.tmp_path, changed)
        return False

    def _continue_interrupted(self):
        """Reopen the temporary file of an interrupted run made from the same resume key."""
        if not (self.resume_key and self.tmp_path.exists()):
            return False
        try:
            f = self._open("r+")
        except BlockingIOError:   # HDF5's file lock: another process is writing it
            raise UserError(f"{self.tmp_path} is open in another process (HDF5 could not lock "
                            "it): wait for that run to finish, then rerun") from None
        except OSError as error:   # killed while HDF5 was writing its metadata
            log.warning("cannot continue %s (%s); starting again", self.tmp_path, error)
            return False
        try:
            blocks = f["blocks"][()] if self._same_run(f.attrs.get(RESUME_KEY)) else None
            dsets = {name: f[name] for name, _, _ in candidate_columns(self.meta)}
            cells = f[CELL_ROWS]
        except (KeyError, OSError):
            blocks = None
        n_rows = int(blocks["row_stop"][-1]) if blocks is not None and len(blocks) else 0
        n_cells = (int(_cells_per_block(blocks, INDEX_CELL_SHAPE).sum())
                   if blocks is not None else 0)
        if (blocks is None or any(len(d) < n_rows for d in dsets.values())
                or len(cells) < n_cells):
            self._close()
            return False
        # rows and cells of a block whose index entry never came
        for dset in dsets.values():
            dset.resize(n_rows, axis=0)
        cells.resize(n_cells, axis=0)
        self._file, self._dsets, self._blocks, self._cells = f, dsets, f["blocks"], cells
        self.n_rows = n_rows
        self.completed_cores = [(tuple(int(b[a]) for a in ("z0", "y0", "x0")),
                                 tuple(int(b[a]) for a in ("z1", "y1", "x1"))) for b in blocks]
        return True

    def append(self, core_lo, core_hi, prob, dist, points, prob_class=None):
        """Append the candidates of one block whose core is ``[core_lo, core_hi)``
        (``prob_class`` for a multi-class model's file)."""
        with reporting_disk_full(self.path):
            self._append(core_lo, core_hi, prob, dist, points, prob_class)
    def _bytes_to_append(self, n_rows, n_new_cells):
        """Bytes the file grows by when ``n_rows`` rows, one block entry and its
        ``n_new_cells`` cells are appended:
        HDF5 writes a chunk whole the first time it is flushed, so each chunk begun counts."""
        def chunks_begun(before, after):
            return -(-after // ROWS_PER_CHUNK) - -(-before // ROWS_PER_CHUNK)
        row_bytes = sum(d.dtype.itemsize * math.prod(d.shape[1:]) for d in self._dsets.values())
        n_cells = len(self._cells)
        return (chunks_begun(self.n_rows, self.n_rows + n_rows) * ROWS_PER_CHUNK * row_bytes
                + chunks_begun(self.n_blocks, self.n_blocks + 1) * ROWS_PER_CHUNK
                * BLOCK_DTYPE.itemsize
                + chunks_begun(n_cells, n_cells + n_new_cells) * ROWS_PER_CHUNK
                * self._cells.dtype.itemsize + METADATA_BYTES)

    def _append(self, core_lo, core_hi, prob, dist, points, prob_class):
        n = len(prob)
        cells = block_cells(core_lo, core_hi, INDEX_CELL_SHAPE)
        # before writing: a block refused here leaves the file to be continued, one whose
        # write failed is discarded (its HDF5 metadata may be half-written)
        check_free_space(self.path, self._bytes_to_append(n, len(cells)))
        start, stop = self.n_rows, self.n_rows + n
        cell_of = cells.index_of(np.asarray(points).reshape(-1, 3) - np.asarray(core_lo))
        by_cell = np.argsort(cell_of, kind="stable")
        columns = {"prob": prob, "dist": dist, "points": points, PROB_CLASS: prob_class}
        for name, values in ((name, columns[name]) for name in self._dsets):
            self._dsets[name].resize(stop, axis=0)
            self._dsets[name][start:stop] = np.asarray(values)[by_cell]
        n_cells = len(self._cells)
        self._cells.resize(n_cells + len(cells), axis=0)
        self._cells[n_cells:] = start + np.cumsum(np.bincount(cell_of, minlength=len(cells)))
        extent = (largest_extent(dist, self._rays) if n
                  else np.zeros(3, np.float32))
        row = np.array([(*core_lo, *core_hi, start, stop, *extent)], BLOCK_DTYPE)
        # the block's index entry comes last: a block without one is not in the file
        self._blocks.resize(self.n_blocks + 1, axis=0)
        self._blocks[self.n_blocks] = row[0]
        self._file.flush()
        self._file.raise_failed_write()
        self.n_rows = stop
        self.completed_cores.append((tuple(int(v) for v in core_lo),
                                     tuple(int(v) for v in core_hi)))

    def __exit__(self, exc_type, exc, tb):
        # kept for the next run to continue: after Ctrl-C, or once the disk has space again
        # (refused by the free-space check; a write that failed left a file to discard)
        keep = (exc_type is not None and issubclass(exc_type, (KeyboardInterrupt, DiskFullError))
                and not self._file.write_failed)
        try:
            with reporting_disk_full(self.path):
                if exc_type is None:
                    del self._file.attrs[RESUME_KEY]
                    # sealed again: whatever attribute was added since the datasets were created
                    self._file.attrs[HEADER_CHECKSUM] = header_checksum(self._file.attrs)
                self._close()
                if exc_type is None:
                    publish(self.tmp_path, self.path)
        except DiskFullError:
            keep = False   # the write that failed was the last one
            raise
        finally:
            if exc_type is not None and not keep:
                self.tmp_path.unlink(missing_ok=True)
        return False


def _attr(attrs, name, path):
    if name not in attrs:
        raise UserError(f"candidate file {path}: attribute '{name}' is missing")
    value = attrs[name]
    return value.decode() if isinstance(value, bytes) else value


class BlockCells(NamedTuple):
    """The index cells of one prediction block: their grid (relative to the block's core),
    the core's first voxel and each cell's first and end row."""
    grid: Grid
    core_lo: np.ndarray
    starts: np.ndarray
    stops: np.ndarray


class _OpenedOnce:
    """The datasets of an open HDF5 file by name, each opened at its first use only.

    h5py opens a dataset anew on every ``f[name]`` (its header and filter pipeline: ~0.2 ms,
    with the GIL held, and an empty chunk cache); a box query reads three datasets for each
    run of index cells, ~60 runs per NMS batch.
    """

    def __init__(self, f):
        self._file, self._datasets = f, {}

    def __getitem__(self, name):
        if name not in self._datasets:
            self._datasets[name] = self._file[name]
        return self._datasets[name]


class CandidateFile:
    """Read access to a candidate file: attributes, block index and spatial queries.

    Opens the HDF5 file lazily in each process that uses it, so instances can be shipped to
    Dask workers.
    """

    DATASETS = ("prob", "dist", "points", "blocks")

    def __init__(self, path):
        self.path = Path(path)
        with self._open() as f:
            missing = [d for d in self.DATASETS if d not in f]
            if missing:
                raise UserError(f"candidate file {self.path}: dataset(s) {', '.join(missing)} "
                                "missing (expected a prediction.h5 written by "
                                "local_prediction.py)")
            kw = {fl.name: _attr(f.attrs, fl.name, self.path) for fl in fields(CandidateMeta)
                  if fl.name in f.attrs}
            for required in ("image_shape", "rays_json", "grid", "prob_thresh", "nms_thresh"):
                _attr(f.attrs, required, self.path)
            checked = check_attributes(f.attrs, self.path)
            self.n_candidates = check_datasets(f, self.path, checked.pop("n_rays"),
                                               checked["n_classes"])
            voxel = voxel_size_attributes(f.attrs, self.path)
            self.meta = CandidateMeta(**{**kw, **checked, **voxel})
            self.blocks = self._read(f, "blocks", slice(None))
            check_blocks(self.blocks, self.path, self.n_candidates, self.meta.image_shape)
            self.cell_shape, self.cell_starts = self._cell_index(f)
            # last: a value wrong in form is named above; one merely changed is caught here
            check_header_checksum(f.attrs, self.path)

    def _cell_index(self, f):
        """The index cell shape and the first cell of each block in ``cell_rows`` (int64
        (B + 1,)); (None, None) for a file without index cells."""
        if INDEX_CELL_SHAPE_ATTR not in f.attrs:
            return None, None
        shape = tuple(int(v) for v in f.attrs[INDEX_CELL_SHAPE_ATTR])
        counts = _cells_per_block(self.blocks, shape)
        n_cells = len(f[CELL_ROWS]) if CELL_ROWS in f else None
        if len(shape) != 3 or min(shape) < 1 or n_cells != counts.sum():
            raise UserError(f"candidate file {self.path}: dataset '{CELL_ROWS}': expected "
                            f"{counts.sum()} index cells of shape {shape}, got {n_cells}; "
                            "rerun the GPU step")
        return shape, np.concatenate([[0], np.cumsum(counts)])

    def _cell_ranges(self, f, index, lo, hi):
        """The index cells of block ``index`` (:class:`BlockCells`) and the row ranges
        ``[(start, stop), ...]`` of those that meet ``[lo, hi)``, adjacent cells merged,
        checked against the block's rows."""
        b = self.blocks[index]
        core_lo = np.array([b[f"{a}0"] for a in "zyx"])
        cells = block_cells(core_lo, [b[f"{a}1"] for a in "zyx"], self.cell_shape)
        first, last = self.cell_starts[index], self.cell_starts[index + 1]
        stops = self._read(f, CELL_ROWS, slice(int(first), int(last)))
        starts = np.concatenate([[b["row_start"]], stops[:-1]])
        if not (np.all(np.diff(stops) >= 0) and starts[0] <= stops[0]
                and stops[-1] == b["row_stop"]):
            raise UserError(f"candidate file {self.path}: dataset '{CELL_ROWS}': expected the "
                            f"cells of block {index} to partition its rows {b['row_start']}:"
                            f"{b['row_stop']}, got ends {stops.tolist()[:8]}...; rerun the "
                            "GPU step")
        cell_lo, cell_hi = cells.bounds(np.arange(len(cells)))
        meets = (np.all(cell_lo + core_lo < np.asarray(hi), axis=1)
                 & np.all(cell_hi + core_lo > np.asarray(lo), axis=1) & (stops > starts))
        ranges = []
        for c in np.flatnonzero(meets):
            if ranges and ranges[-1][1] == starts[c]:
                ranges[-1] = (ranges[-1][0], int(stops[c]))
            else:
                ranges.append((int(starts[c]), int(stops[c])))
        return ranges, BlockCells(cells, core_lo, starts, stops)

    def _read_block(self, f, index, lo, hi):
        """Rows, prob, dist and points of block ``index`` that may lie in ``[lo, hi)``: the
        whole block, or the cells of it that meet the box."""
        b = self.blocks[index]
        inside = all(b[f"{a}0"] >= lo[i] and b[f"{a}1"] <= hi[i] for i, a in enumerate("zyx"))
        if self.cell_shape is None or inside:
            ranges, cells = [(int(b["row_start"]), int(b["row_stop"]))], None
        else:
            ranges, cells = self._cell_ranges(f, index, lo, hi)
        parts = []
        for start, stop in ranges:
            if stop > start:
                part = tuple(self._read(f, name, slice(start, stop))
                             for name in ("prob", "dist", "points"))
                check_block_rows(self.path, b, *part, start=start)
                if cells is not None:
                    self._check_cells(index, part[-1], cells, start)
                parts.append((np.arange(start, stop), *part))
        return parts

    def _check_cells(self, index, points, cells: BlockCells, start):
        """Points read from row ``start`` on lie in the index cells their rows belong to."""
        rows = start + np.arange(len(points))
        expected = np.searchsorted(cells.stops, rows, side="right")
        found = cells.grid.index_of(points - cells.core_lo)
        wrong = np.flatnonzero(found != expected)
        if len(wrong):
            raise UserError(f"candidate file {self.path}: dataset 'points': expected the point "
                            f"at row {rows[wrong[0]]} inside index cell {expected[wrong[0]]} "
                            f"of block {index}, got {points[wrong[0]].tolist()}; rerun the "
                            "GPU step")

    def _open(self):
        return open_hdf5(self.path, "candidate file",
                         "check input.prediction: expected the prediction.h5 of "
                         "local_prediction.py")

    def _read(self, f, name, rows):
        """Rows of a dataset of ``f`` (an open file, or its :class:`_OpenedOnce`); a chunk whose
        checksum fails is a UserError naming the rows."""
        try:
            return f[name][rows]
        except OSError as e:
            raise UserError(f"candidate file {self.path}: dataset '{name}': expected readable "
                            f"rows, got a damaged chunk in rows {rows.start or 0}:"
                            f"{'' if rows.stop is None else rows.stop} ("
                            + " ".join(str(e).split())[:120] + "); rerun the GPU step") from None

    @property
    def max_extent(self):
        """Largest candidate extent along z, y, x over the whole file (float32 (3,))."""
        if len(self.blocks) == 0:
            return np.zeros(3, np.float32)
        return np.array([self.blocks[f"extent_{a}"].max() for a in "zyx"], np.float32)

    def blocks_meeting(self, lo, hi):
        """Indices of blocks whose core meets the box ``[lo, hi)``."""
        b = self.blocks
        meets = np.ones(len(b), bool)
        for i, a in enumerate("zyx"):
            meets &= (b[f"{a}0"] < hi[i]) & (b[f"{a}1"] > lo[i])
        return np.flatnonzero(meets)

    def read_box(self, lo, hi):
        """Candidates whose point lies in ``[lo, hi)``.

        Returns
        -------
        rows : ndarray of int64
            Row numbers in the file (a stable global identity of each candidate).
        prob, dist, points : ndarray
        """
        with self._open() as f:
            datasets = _OpenedOnce(f)
            parts = [part for index in self.blocks_meeting(lo, hi)
                     for part in self._read_block(datasets, index, lo, hi)]
        if not parts:
            return (np.zeros(0, np.int64), np.zeros(0, np.float32),
                    np.zeros((0, self.meta.n_rays), np.float32), np.zeros((0, 3), np.int32))
        rows, prob, dist, points = (np.concatenate(p) for p in zip(*parts))
        inside = np.all((points >= np.asarray(lo)) & (points < np.asarray(hi)), axis=1)
        return rows[inside], prob[inside], dist[inside], points[inside]


    def read_class_probabilities(self, rows):
        """``prob_class`` at the increasing file ``rows`` ((len(rows), n_classes + 1) float32;
        no columns for a single-class file), read block by block and checked."""
        n_columns = self.meta.n_classes + 1 if self.meta.n_classes else 0
        rows = np.asarray(rows, np.int64)
        if not n_columns or not len(rows):
            return np.zeros((len(rows), n_columns), np.float32)
        in_block = np.searchsorted(self.blocks["row_stop"], rows, side="right")
        parts = []
        with self._open() as f:
            for b in np.unique(in_block):
                start, stop = int(self.blocks[b]["row_start"]), int(self.blocks[b]["row_stop"])
                values = self._read(f, PROB_CLASS, slice(start, stop))
                check_class_rows(self.path, start, values)
                parts.append(values[rows[in_block == b] - start])
        return np.concatenate(parts).astype(np.float32)


def open_candidates(path) -> CandidateFile:
    """Open a candidate file (``prediction.h5``) for reading.

    Parameters
    ----------
    path : str or Path
        A file written by :func:`~stardist_hpc.predict_candidates` or ``local_prediction.py``.

    Returns
    -------
    CandidateFile
        ``meta`` (image shape, rays, thresholds, ...), ``n_candidates``, the ``blocks`` index,
        and ``read_box(lo, hi)`` for the candidates of a region.

    Raises
    ------
    UserError
        If the file is missing, unreadable or not a candidate file.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from stardist_hpc import open_candidates
    >>> from stardist_hpc.synthetic import demo_candidate_file
    >>> path = demo_candidate_file(pathlib.Path(tempfile.mkdtemp()) / "prediction.h5")
    >>> candidates = open_candidates(path)
    >>> candidates.meta.image_shape, candidates.meta.n_rays
    ((16, 48, 48), 32)
    >>> rows, prob, dist, points = candidates.read_box((0, 0, 0), (16, 48, 48))
    >>> len(rows) == candidates.n_candidates
    True
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"open_candidates: expected the path of a candidate file, got {path!r}")
    return CandidateFile(path)
