"""Checkpoints in the work directory: atomic files, small records and the survivor table.

Every checkpoint is written under a temporary name and renamed when complete, so a file that
exists is complete: a run killed at any moment resumes by redoing only the missing files.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np

from .errors import UserError
from .order import total_order

log = logging.getLogger(__name__)

#: file in the work directory recording which run its checkpoints belong to.
SIGNATURE_FILE = "run.json"
#: survivors per HDF5 chunk of the survivor table: a label chunk reads few of them.
SURVIVOR_ROWS_PER_CHUNK = 1024


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # a process of another user
    return True


def remove_stale_temporaries(path):
    """Delete the temporaries of ``path`` that killed processes of this host left behind.

    :func:`atomic_path` names a temporary after the writing process, which removes it unless it
    is killed. Only for files that processes of this host write (the driver's outputs): a
    worker on another node may be writing a temporary whose PID means nothing here.
    """
    path = Path(path)
    for temporary in path.parent.glob(f"{path.name}.*.tmp"):
        pid = temporary.name[len(path.name) + 1:-len(".tmp")]
        if pid.isdigit() and not _process_alive(int(pid)):
            log.info("removing %s, left by an interrupted run", temporary)
            temporary.unlink(missing_ok=True)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(data)


def save_record(path, *records):
    """Save NamedTuples of arrays and scalars (distinct field names) to one ``.npz`` atomically."""
    fields = {name: value for record in records for name, value in record._asdict().items()}
    with atomic_path(path) as tmp_path, open(tmp_path, "wb") as f:
        np.savez(f, **fields)


def load_record(path, record_type):
    """Load the fields of ``record_type`` from a file written by :func:`save_record`.

    Zero-dimensional arrays are returned as Python scalars.
    """
    with np.load(path, allow_pickle=False) as npz:
        values = (npz[name] for name in record_type._fields)
        return record_type(*(v.item() if v.ndim == 0 else v for v in values))


def check_signature(work_dir, signature):
    """Refuse to resume from checkpoints that a different run wrote.

    Parameters
    ----------
    work_dir : Path
    signature : dataclass instance
        What the checkpoints depend on (input file, thresholds, tiling, ...), JSON-able.

    Raises
    ------
    UserError
        If ``work_dir`` holds a signature that differs from ``signature``.
    """
    path = Path(work_dir) / SIGNATURE_FILE
    current = json.loads(json.dumps(dataclasses.asdict(signature)))
    if path.exists():
        previous = json.loads(path.read_text())
        changed = sorted(k for k in current.keys() | previous.keys()
                         if current.get(k) != previous.get(k))
        if changed:
            raise UserError(f"work_dir {work_dir} holds checkpoints of a different run "
                            f"({', '.join(changed)} changed); delete it or set "
                            "output.work_dir to a new directory")
        return
    write_bytes(path, json.dumps(current, indent=1).encode())


# ---------------------------------------------------------------------------------------------
# the survivor table: every candidate kept by NMS, in tile order (spatially coherent)


class Survivors(NamedTuple):
    """Kept candidates: their file rows, probabilities, centres, ray lengths and bboxes.

    ``bbox_lo``/``bbox_hi`` are the half-open voxel box StarDist renders each polyhedron in,
    clipped to the image. ``ids`` is None until the total order is known.
    """
    rows: np.ndarray
    prob: np.ndarray
    points: np.ndarray
    dist: np.ndarray
    bbox_lo: np.ndarray
    bbox_hi: np.ndarray
    ids: np.ndarray = None


#: columns written as the parts of the table arrive (ids are assigned at the end).
_WRITTEN_PER_PART = ("rows", "prob", "points", "dist", "bbox_lo", "bbox_hi")
_SURVIVOR_COLUMNS = (("rows", "i8", ()), ("prob", "f4", ()), ("points", "i4", (3,)),
                     ("bbox_lo", "i4", (3,)), ("bbox_hi", "i4", (3,)), ("ids", "u4", ()))


def write_survivor_table(path, n_survivors, n_rays, parts):
    """Write the survivor table to ``path`` atomically and number the survivors.

    Parameters
    ----------
    path : Path
    n_survivors, n_rays : int
    parts : iterable of (int, Survivors)
        Table row where each part starts, and the part (without ids), in any order.
    """
    with atomic_path(path) as tmp_path, h5py.File(tmp_path, "w") as f:
        rows_per_chunk = min(SURVIVOR_ROWS_PER_CHUNK, max(1, n_survivors))
        for name, dtype, tail in _SURVIVOR_COLUMNS + (("dist", "f4", (n_rays,)),):
            # resizable, so that an empty table may still have its chunk shape
            f.create_dataset(name, (n_survivors, *tail), dtype, chunks=(rows_per_chunk, *tail),
                             maxshape=(None, *tail))
        for start, survivors in parts:
            for name in _WRITTEN_PER_PART:
                f[name][start:start + len(survivors.rows)] = getattr(survivors, name)
        f["ids"][()] = _ids_in_total_order(f["prob"][()], f["points"][()], f["rows"][()])


def _ids_in_total_order(prob, points, rows):
    """Ids 1..K of survivors numbered in the total order (1 = most probable)."""
    ids = np.empty(len(prob), np.uint32)
    ids[total_order(prob, points, rows)] = np.arange(1, len(prob) + 1, dtype=np.uint32)
    return ids


class SurvivorFile:
    """Read access to the survivor table written by :class:`SurvivorWriter`."""

    def __init__(self, path):
        self.path = Path(path)

    def __len__(self):
        with h5py.File(self.path, "r") as f:
            return f["ids"].shape[0]

    def read_columns(self, *names):
        """Whole columns (per-object arrays of size K), in table order."""
        with h5py.File(self.path, "r") as f:
            return tuple(f[name][()] for name in names)

    def read_positions(self, positions):
        """dist, points and ids of the survivors at increasing table ``positions``."""
        with h5py.File(self.path, "r") as f:
            return tuple(f[name][np.asarray(positions)] for name in ("dist", "points", "ids"))
