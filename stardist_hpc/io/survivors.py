"""The survivor table: every candidate kept by NMS, with its id (1 = most probable).

Written once by the driver as the gather tasks' parts arrive, one part per batch of
neighbouring tiles (so spatially coherent, and one write per column and task: HDF5 writes
through a Python file object cost ~0.2 ms each); read by every labeling task.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from ..geometry.order import total_order
from .atomic import atomic_path
from .disk_space import METADATA_BYTES, check_free_space
from .hdf5 import writing_hdf5

log = logging.getLogger(__name__)

#: survivors per HDF5 chunk of the survivor table: a label chunk reads few of them.
SURVIVOR_ROWS_PER_CHUNK = 1024
#: rows read at a time when a checkpointed table is verified.
VERIFY_ROWS = 65536


class Survivors(NamedTuple):
    """Kept candidates: their file rows, probabilities, centres, ray lengths and bboxes.

    ``bbox_lo``/``bbox_hi`` are the half-open voxel box StarDist renders each polyhedron in,
    clipped to the image. ``ids`` is None until the total order is known. ``prob_class``
    (K, n_classes + 1) holds a multi-class model's class probabilities (no columns
    otherwise).
    """
    rows: np.ndarray
    prob: np.ndarray
    points: np.ndarray
    dist: np.ndarray
    bbox_lo: np.ndarray
    bbox_hi: np.ndarray
    ids: np.ndarray = None
    prob_class: np.ndarray = None


def join_survivors(parts):
    """One Survivors of ``parts`` (a non-empty list of Survivors without ids), part after part."""
    return Survivors(**{name: np.concatenate([getattr(part, name) for part in parts])
                        for name in Survivors._fields if name != "ids"})


#: columns written as the parts of the table arrive (ids are assigned at the end).
_WRITTEN_PER_PART = ("rows", "prob", "points", "dist", "bbox_lo", "bbox_hi")
#: the class probabilities column, in tables of a multi-class model's candidates only.
PROB_CLASS = "prob_class"
_SURVIVOR_COLUMNS = (("rows", "i8", ()), ("prob", "f4", ()), ("points", "i4", (3,)),
                     ("bbox_lo", "i4", (3,)), ("bbox_hi", "i4", (3,)), ("ids", "u4", ()))


def write_survivor_table(path, n_survivors, n_rays, parts, n_classes=0):
    """Write the survivor table to ``path`` atomically and number the survivors.

    Parameters
    ----------
    path : Path
    n_survivors, n_rays : int
    parts : iterable of (int, Survivors)
        Table row where each part starts, and the part (without ids), in any order.
    n_classes : int
        Classes of a multi-class model, whose parts carry ``prob_class`` (0: none).
    """
    rows_per_chunk = min(SURVIVOR_ROWS_PER_CHUNK, max(1, n_survivors))
    columns = _SURVIVOR_COLUMNS + (("dist", "f4", (n_rays,)),)
    if n_classes:
        columns += ((PROB_CLASS, "f4", (n_classes + 1,)),)
    written = _WRITTEN_PER_PART + ((PROB_CLASS,) if n_classes else ())
    row_bytes = sum(np.dtype(dtype).itemsize * math.prod(tail) for _, dtype, tail in columns)
    check_free_space(path, -(-n_survivors // rows_per_chunk) * rows_per_chunk * row_bytes
                     + METADATA_BYTES)
    with atomic_path(path) as tmp_path, writing_hdf5(tmp_path) as f:
        for name, dtype, tail in columns:
            # resizable, so that an empty table may still have its chunk shape
            f.create_dataset(name, (n_survivors, *tail), dtype, chunks=(rows_per_chunk, *tail),
                             maxshape=(None, *tail), fletcher32=True)
        for start, survivors in parts:
            for name in written:
                f[name][start:start + len(survivors.rows)] = getattr(survivors, name)
            f.raise_failed_write()
        f.flush()   # before the columns are read back
        f.raise_failed_write()
        f["ids"][()] = _ids_in_total_order(f["prob"][()], f["points"][()], f["rows"][()])


def _ids_in_total_order(prob, points, rows):
    """Ids 1..K of survivors numbered in the total order (1 = most probable)."""
    ids = np.empty(len(prob), np.uint32)
    ids[total_order(prob, points, rows)] = np.arange(1, len(prob) + 1, dtype=np.uint32)
    return ids


class SurvivorFile:
    """Read access to the survivor table written by :func:`write_survivor_table`."""

    def __init__(self, path):
        self.path = Path(path)

    def __len__(self):
        with h5py.File(self.path, "r") as f:
            return f["ids"].shape[0]

    def read_columns(self, *names):
        """Whole columns (per-object arrays of size K), in table order."""
        with h5py.File(self.path, "r") as f:
            return tuple(f[name][()] for name in names)

    @contextlib.contextmanager
    def positions_reader(self):
        """Yield ``read(positions)``: dist, points and ids of the survivors at increasing table
        ``positions``, with the file open for the whole block (a labeling task reads the
        survivors of each of its chunks: opening the file took ~1.2 ms of the ~1.4 of a read).
        """
        with h5py.File(self.path, "r") as f:
            columns = [f[name] for name in ("dist", "points", "ids")]
            yield lambda positions: tuple(column[np.asarray(positions)] for column in columns)


def intact_survivor_file(path, n_survivors):
    """The survivor table at ``path`` if every column reads back (HDF5 checks each chunk's
    checksum) with ``n_survivors`` rows and complete ids; else None, the file removed."""
    try:
        with h5py.File(path, "r") as f:
            names = [name for name, _, _ in _SURVIVOR_COLUMNS] + ["dist"]
            names += [PROB_CLASS] if PROB_CLASS in f else []
            lengths = {f[name].shape[0] for name in names}
            for name in names:   # read slice by slice: every chunk checked, little memory
                for start in range(0, n_survivors, VERIFY_ROWS):
                    f[name][start:start + VERIFY_ROWS]
            ids = f["ids"][()]
        if lengths == {n_survivors} and np.array_equal(np.sort(ids),
                                                       np.arange(1, n_survivors + 1)):
            return SurvivorFile(path)
        reason = f"expected {n_survivors} survivors numbered 1..{n_survivors}"
    except (OSError, KeyError, ValueError) as e:
        reason = " ".join(str(e).split())[:80]
    log.warning("survivor table %s is damaged (%s): gathering it again", path, reason)
    Path(path).unlink(missing_ok=True)
    return None
