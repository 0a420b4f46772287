"""The multiscale OME-Zarr label image (NGFF 0.4, Zarr v2), written chunk by chunk by tasks.

Layout (what ``ome_zarr.reader`` and napari-ome-zarr, MoBIE and neuroglancer read)::

    label.ome.zarr/                 .zgroup
      labels/                       .zgroup, .zattrs {"labels": ["nuclei"]}
        nuclei/                     .zgroup, .zattrs {"multiscales": [...], "image-label": {...}}
          0/ 1/ 2/ ...              uint32 arrays, chunks = output.chunk_shape, zlib, "/" keys

Level 0 equals ``label.h5`` voxel for voxel: its chunk files are the rendered storage chunks'
own deflate streams (a Zarr v2 ``zlib`` chunk and an HDF5 gzip chunk are the same bytes),
written by each labeling task as it renders them (:func:`write_base_chunks`), or copied from
the chunk checkpoints of a batch an earlier run rendered (:func:`copy_base_chunks`).
Level ``l + 1`` takes every second voxel of level ``l`` (nearest) along each axis that is halved;
an axis whose voxels are already :data:`ANISOTROPY_LIMIT` times coarser than the finest is not
halved (as bioformats2raw keeps z). Levels are added until one fits a single chunk. Chunks
without objects are not written (Zarr reads them as the fill value 0).

Every task writes whole chunks of one level and then a marker in ``work_dir/ome_zarr`` naming
the chunk files and their CRC-32, so that a resumed run redoes only the tasks whose files are
not intact. The store is written at ``label.ome.zarr.tmp`` and renamed when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..geometry.tiling import Box, Grid
from .atomic import sync_directory, synced_at_end, write_bytes
from .checkpoint import load_checkpoint, save_record
from .chunks import DEFLATE_LEVEL, chunk_files, compress_chunk, split_stored
from .voxel_size import VoxelSize

NGFF_VERSION = "0.4"
#: name of the label image inside the ``labels`` group.
LABEL_NAME = "nuclei"
LABELS_GROUP = "labels"
#: each level halves the axes it reduces (the NGFF/bioformats2raw convention).
HALVING = 2
#: an axis whose voxels are this many times the finest axis' is not halved further.
ANISOTROPY_LIMIT = 2.0
#: suffix of the store while it is written.
TEMPORARY_SUFFIX = ".tmp"
#: suffix (after the PID of the run) of an older store while a new one replaces it.
OLD_SUFFIX = ".old"
#: the zarr v2 array metadata of every level (shape and chunks are filled in).
_ZARRAY = {"zarr_format": 2, "dtype": "<u4", "compressor": {"id": "zlib",
                                                            "level": DEFLATE_LEVEL},
           "fill_value": 0, "order": "C", "filters": None, "dimension_separator": "/"}
_ZGROUP = {"zarr_format": 2}
LABEL_DTYPE = np.dtype("<u4")


class Level(NamedTuple):
    """One resolution level: its shape, storage chunks, step from the finer level, and
    cumulative factor from level 0 (per axis z, y, x)."""
    shape: tuple
    chunks: tuple
    step: tuple
    factor: tuple


def plan_levels(image_shape, chunk_shape, voxel_size: VoxelSize):
    """The resolution levels of an image: level 0, then halvings until one chunk holds a level.

    Parameters
    ----------
    image_shape, chunk_shape : tuple of 3 int
    voxel_size : VoxelSize
        Decides which axes are halved (an unknown size counts as isotropic).

    Returns
    -------
    list of Level
    """
    def level(shape, step, factor):
        return Level(tuple(shape), tuple(min(c, s) for c, s in zip(chunk_shape, shape)),
                     tuple(step), tuple(factor))

    levels = [level(image_shape, (1, 1, 1), (1, 1, 1))]
    while any(s > c for s, c in zip(levels[-1].shape, chunk_shape)):
        shape, factor = levels[-1].shape, levels[-1].factor
        physical = [v * f for v, f in zip(voxel_size.size, factor)]
        finest = min(p for p, s in zip(physical, shape) if s > 1)
        step = [HALVING if s > 1 and p < ANISOTROPY_LIMIT * finest else 1
                for p, s in zip(physical, shape)]
        levels.append(level([-(-s // t) for s, t in zip(shape, step)], step,
                            [f * t for f, t in zip(factor, step)]))
    return levels


# ---------------------------------------------------------------------------------------------
# the store's metadata


def temporary_store(path):
    """Where the store at ``path`` is written until it is complete."""
    path = Path(path)
    return path.with_name(path.name + TEMPORARY_SUFFIX)


def level_dir(store, level):
    return Path(store) / LABELS_GROUP / LABEL_NAME / str(level)


def _axes(voxel_size):
    unit = {"unit": voxel_size.unit} if voxel_size.known else {}
    return [{"name": name, "type": "space", **unit} for name in "zyx"]


def multiscales_attributes(levels, voxel_size: VoxelSize, name=LABEL_NAME):
    """The ``multiscales`` and ``image-label`` attributes of the label image (NGFF 0.4).

    Level ``l`` voxel ``i`` is level-0 voxel ``i * factor`` (nearest sampling from voxel 0),
    so a level's transform is a scale only: voxel size times its factor.
    """
    datasets = [{"path": str(i), "coordinateTransformations": [
        {"type": "scale", "scale": [float(v * f) for v, f in zip(voxel_size.size, lv.factor)]}]}
        for i, lv in enumerate(levels)]
    return {"multiscales": [{"version": NGFF_VERSION, "name": name, "axes": _axes(voxel_size),
                             "datasets": datasets,
                             "type": "nearest", "metadata": {"method": "numpy stride slicing",
                                                             "description": "every second "
                                                             "voxel of the finer level"}}],
            "image-label": {"version": NGFF_VERSION}}


def _write_json(path, content):
    write_bytes(path, json.dumps(content, indent=1).encode())


def create_store(store, levels, voxel_size: VoxelSize):
    """Write the groups and array metadata of an (empty) label store; chunks come later."""
    store = Path(store)
    image = store / LABELS_GROUP / LABEL_NAME
    for group in (store, store / LABELS_GROUP, image):
        group.mkdir(parents=True, exist_ok=True)
        _write_json(group / ".zgroup", _ZGROUP)
    _write_json(store / LABELS_GROUP / ".zattrs", {LABELS_GROUP: [LABEL_NAME]})
    _write_json(image / ".zattrs", multiscales_attributes(levels, voxel_size))
    for i, level in enumerate(levels):
        level_dir(store, i).mkdir(exist_ok=True)
        _write_json(level_dir(store, i) / ".zarray", {**_ZARRAY, "shape": list(level.shape),
                                                      "chunks": list(level.chunks)})


def publish_store(tmp_store, store):
    """Rename the complete ``tmp_store`` to ``store``, replacing an older one."""
    store = Path(store)
    old = store.with_name(f"{store.name}.{os.getpid()}{OLD_SUFFIX}")
    if store.exists():
        os.replace(store, old)
    os.replace(tmp_store, store)
    sync_directory(store.parent)
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# chunk files and their markers


def _chunk_path(directory, lo, chunks):
    return Path(directory).joinpath(*(str(v // c) for v, c in zip(lo, chunks)))


class WrittenChunks(NamedTuple):
    """A task's marker: its level and number, what it covers, and the chunk files it wrote
    (first voxel of each and the CRC-32 of its bytes)."""
    level: int
    task: int
    covers: int             # see _covering
    chunk_lo: np.ndarray    # int64 (n, 3)
    chunk_crc: np.ndarray   # int64 (n,)


def _covering(values):
    """CRC-32 of what a task covers (its task chunks at level 0, its block shape above): the
    marker of a task that covered something else (another version's batching) is not taken."""
    return zlib.crc32(np.asarray(values, np.int64).tobytes())


def _marker(marker_dir, level, task):
    return Path(marker_dir) / str(level) / f"{task}.npz"


def _intact(store, marker_dir, levels, level, task, covers):
    """The chunks of a task whose marker and files are intact, else None."""
    path = _marker(marker_dir, level, task)
    if not path.exists():
        return None
    record = load_checkpoint(path, WrittenChunks,
                             {"level": level, "task": task, "covers": covers})
    if record is None:
        return None
    directory, chunks = level_dir(store, level), levels[level].chunks
    for lo, crc in zip(record.chunk_lo, record.chunk_crc):
        chunk = _chunk_path(directory, lo, chunks)
        if not chunk.exists() or zlib.crc32(chunk.read_bytes()) != crc:
            path.unlink()
            return None
    return record.chunk_lo


def _write_chunks(store, marker_dir, levels, level, task, covers, pieces):
    """Write ``(lo, bytes)`` chunk files of ``level``, then the task's marker."""
    directory, chunks = level_dir(store, level), levels[level].chunks
    los, crcs = [], []
    # the files and the marker are synced at once: a marker that a crash left without intact
    # files is found out by _intact, and the task redone
    with synced_at_end():
        for lo, data in pieces:
            chunk = _chunk_path(directory, lo, chunks)
            chunk.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(chunk, data)
            los.append(lo)
            crcs.append(zlib.crc32(data))
        written = WrittenChunks(level, task, covers, np.asarray(los, np.int64).reshape(-1, 3),
                                np.asarray(crcs, np.int64))
        marker = _marker(marker_dir, level, task)
        marker.parent.mkdir(parents=True, exist_ok=True)
        save_record(marker, written)
    return written.chunk_lo


def write_base_chunks(store, marker_dir, levels, task_chunks, pieces):
    """Write level-0 chunk files, then their marker (a labeling task, for its batch).

    Parameters
    ----------
    store, marker_dir, levels
        The temporary store, its markers and its levels.
    task_chunks : sequence of int
        The task chunks of the labeling batch (the first names the marker).
    pieces : iterable of (tuple, bytes)
        First voxel and deflate bytes of each storage chunk: the rendered chunks' own bytes,
        as in their labels files.

    Returns
    -------
    ndarray (n, 3)
        First voxel of every chunk file written.
    """
    return _write_chunks(store, marker_dir, levels, 0, task_chunks[0], _covering(task_chunks),
                         pieces)


def copy_base_chunks(store, marker_dir, levels, chunk_dir, stored_chunks):
    """Task: write the level-0 chunks of a labeling batch from its chunk checkpoints (for a
    batch that an earlier run rendered; a labeling task writes those of its own batch).

    Parameters
    ----------
    store, marker_dir, levels
        The temporary store, its markers and its levels.
    chunk_dir : Path
        The labeling stage's chunk checkpoints.
    stored_chunks : sequence of (int, StoredChunks)
        Each task chunk's index and the storage chunks in its labels file. One marker covers
        them all, named after the first index: a marker per task chunk cost ~4 ms of syncs
        each, most of the level's time.

    Returns
    -------
    ndarray (n, 3)
        First voxel of every chunk file written (chunks with objects only).
    """
    task_chunks = [index for index, _ in stored_chunks]
    done = _intact(store, marker_dir, levels, 0, task_chunks[0], _covering(task_chunks))
    if done is not None:
        return done
    pieces = (piece for index, stored in stored_chunks if len(stored.storage_size)
              for piece in split_stored(chunk_files(chunk_dir, index).labels.read_bytes(),
                                        stored))
    return write_base_chunks(store, marker_dir, levels, task_chunks, pieces)


def read_region(store, levels, level, box: Box):
    """The labels of ``box`` in ``level``, read from its chunk files (missing ones are 0)."""
    current = levels[level]
    out = np.zeros(box.shape, LABEL_DTYPE)
    grid = Grid(current.shape, current.chunks)
    _, indices = grid.boxes_meeting(np.asarray([box.lo]), np.asarray([box.hi]))
    for index in indices:
        chunk = grid.box(int(index))
        path = _chunk_path(level_dir(store, level), chunk.lo, current.chunks)
        if not path.exists():
            continue
        data = np.frombuffer(zlib.decompress(path.read_bytes()), LABEL_DTYPE)
        data = data.reshape(current.chunks)[tuple(slice(0, s) for s in chunk.shape)]
        inner = Box(tuple(max(a, b) for a, b in zip(chunk.lo, box.lo)),
                    tuple(min(a, b) for a, b in zip(chunk.hi, box.hi)))
        out[inner.slices(box.lo)] = data[inner.slices(chunk.lo)]
    return out


def downsample_block(store, marker_dir, levels, level, block_shape, index):
    """Task: write block ``index`` (of ``block_shape``) of ``level`` from ``level - 1``.

    Returns
    -------
    ndarray (n, 3)
        First voxel of every chunk file written.
    """
    covers = _covering(block_shape)
    done = _intact(store, marker_dir, levels, level, index, covers)
    if done is not None:
        return done
    current, finer = levels[level], levels[level - 1]
    box = Grid(current.shape, block_shape).box(index)
    source = Box(tuple(lo * s for lo, s in zip(box.lo, current.step)),
                 tuple(min(hi * s, n) for hi, s, n in zip(box.hi, current.step, finer.shape)))
    labels = read_region(store, levels, level - 1, source)[
        tuple(slice(None, None, s) for s in current.step)]
    pieces = ((tuple(np.add(part.lo, box.lo)), compress_chunk(labels[part.slices()],
                                                               current.chunks))
              for part in Grid(labels.shape, current.chunks) if labels[part.slices()].any())
    return _write_chunks(store, marker_dir, levels, level, index, covers, pieces)


def block_shape_of(level: Level, task_shape):
    """Blocks of whole chunks per downsampling task, reading about one ``task_shape`` each."""
    return tuple(c * max(1, t // (c * s)) for c, t, s in zip(level.chunks, task_shape, level.step))


def blocks_to_downsample(levels, level, block_shape, finer_chunk_lo):
    """The blocks of ``level`` whose source region holds a written chunk of ``level - 1``."""
    current, finer = levels[level], levels[level - 1]
    if len(finer_chunk_lo) == 0:
        return []
    lo = np.asarray(finer_chunk_lo, np.int64)
    hi = np.minimum(lo + np.asarray(finer.chunks), np.asarray(finer.shape))
    step = np.asarray(current.step)
    _, indices = Grid(current.shape, block_shape).boxes_meeting(lo // step, -(-hi // step))
    return [int(i) for i in np.unique(indices)]
