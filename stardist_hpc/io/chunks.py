"""Label chunk checkpoints: the compressed labels of one chunk and its object statistics.

A rendering task's chunk (``labeling.chunk_shape``) holds several storage chunks
(``output.chunk_shape``, what a viewer reads at once). Its labels file is the concatenation of
the deflate streams of its storage chunks that hold objects (each zero-padded to the full
storage shape, as HDF5 and Zarr v2 store edge chunks); :class:`StoredChunks` says where each
begins. The same bytes are an HDF5 gzip chunk and a Zarr v2 ``zlib`` chunk.
:func:`stardist_hpc.segment.render.render_chunk` writes them; :mod:`stardist_hpc.io.label_file`
and :mod:`stardist_hpc.io.ome_zarr` copy them into ``label.h5`` and the OME-Zarr.
"""
from __future__ import annotations

import logging
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..geometry.tiling import Grid
from .checkpoint import load_checkpoint

log = logging.getLogger(__name__)

#: the labels_crc32 of a chunk without objects (no labels file is written).
NO_LABELS = -1
#: zlib level of the chunks; h5py's default gzip level.
DEFLATE_LEVEL = 4


class ChunkStats(NamedTuple):
    """Per object present in a chunk: voxel count, coordinate sums and voxel bbox [lo, hi)."""
    ids: np.ndarray          # uint32 (m,)
    voxel_count: np.ndarray  # int64 (m,)
    coord_sum: np.ndarray    # int64 (m, 3), absolute z, y, x
    bbox_lo: np.ndarray      # int64 (m, 3)
    bbox_hi: np.ndarray      # int64 (m, 3)


def chunk_stats(labels, origin):
    """Statistics of the objects in a label chunk whose first voxel is at ``origin``."""
    flat = np.flatnonzero(labels)
    ids, inverse, counts = np.unique(labels.ravel()[flat], return_inverse=True,
                                     return_counts=True)
    if len(ids) == 0:
        no_coords = np.zeros((0, 3), np.int64)
        return ChunkStats(np.zeros(0, np.uint32), np.zeros(0, np.int64), no_coords, no_coords,
                          no_coords)
    coords = np.stack(np.unravel_index(flat, labels.shape), axis=1) + np.asarray(origin)
    coords = coords[np.argsort(inverse, kind="stable")]
    starts = np.cumsum(counts) - counts
    return ChunkStats(ids=ids.astype(np.uint32), voxel_count=counts.astype(np.int64),
                      coord_sum=np.add.reduceat(coords, starts).astype(np.int64),
                      bbox_lo=np.minimum.reduceat(coords, starts),
                      bbox_hi=np.maximum.reduceat(coords, starts) + 1)


class ChunkIdentity(NamedTuple):
    """Saved with a chunk's statistics: which chunk it is, and the CRC-32 of its labels file."""
    index: int
    labels_crc32: int


class ChunkFiles(NamedTuple):
    """Checkpoint files of a chunk: compressed labels (absent if all zero) and statistics."""
    labels: Path
    stats: Path


def chunk_files(chunk_dir, index):
    """Where the checkpoints of chunk ``index`` live."""
    return ChunkFiles(Path(chunk_dir) / f"{index}.bin", Path(chunk_dir) / f"{index}.npz")


class StoredChunks(NamedTuple):
    """The storage chunks in a labels file: first voxel (absolute) and byte size of each."""
    storage_lo: np.ndarray    # int64 (n, 3)
    storage_size: np.ndarray  # int64 (n,)


def compress_chunk(labels, chunk_shape):
    """HDF5 deflate-filter (= Zarr v2 zlib) bytes of a chunk, zero-padded to ``chunk_shape``."""
    padded = np.zeros(chunk_shape, np.uint32)
    padded[tuple(slice(0, s) for s in labels.shape)] = labels
    return zlib.compress(padded.tobytes(), DEFLATE_LEVEL)


def compress_storage_chunks(labels, origin, storage_shape):
    """The compressed storage chunks of ``labels`` (first voxel at ``origin``, a multiple of
    ``storage_shape``) that hold an object, in C order.

    Returns
    -------
    data : bytes
        The concatenated deflate streams.
    stored : StoredChunks
    """
    pieces, los = [], []
    for box in Grid(labels.shape, storage_shape):
        part = labels[box.slices()]
        if part.any():
            pieces.append(compress_chunk(part, storage_shape))
            los.append(np.add(box.lo, origin))
    stored = StoredChunks(np.asarray(los, np.int64).reshape(-1, 3),
                          np.asarray([len(p) for p in pieces], np.int64))
    return b"".join(pieces), stored


def split_stored(data, stored):
    """Yield ``(lo, bytes)`` of each storage chunk in a labels file's ``data``."""
    ends = np.cumsum(stored.storage_size)
    for lo, start, end in zip(stored.storage_lo, ends - stored.storage_size, ends):
        yield tuple(int(v) for v in lo), data[start:end]


def chunk_done(chunk_dir, index):
    """Whether chunk ``index`` is checkpointed intact: its statistics load and name it, and
    its labels file (if it has objects) has the recorded CRC-32. A damaged or foreign chunk
    is removed, so that it is rendered again."""
    files = chunk_files(chunk_dir, index)
    if not files.stats.exists():
        return False
    identity = load_checkpoint(files.stats, ChunkIdentity, {"index": index})
    if identity is None:
        files.labels.unlink(missing_ok=True)
        return False
    if identity.labels_crc32 == NO_LABELS or (files.labels.exists() and zlib.crc32(
            files.labels.read_bytes()) == identity.labels_crc32):
        return True
    log.warning("chunk checkpoint %s does not match its statistics: rendering it again",
                files.labels)
    files.labels.unlink(missing_ok=True)
    files.stats.unlink()
    return False
