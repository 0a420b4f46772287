"""The HPC step's outputs beside label.h5: the OME-Zarr pyramid (tasks) and the tables.

The OME-Zarr store is written by tasks on the cluster, level by level (level 0 from the
rendered chunks' own bytes, every coarser level from the finer one, block by block), into
``label.ome.zarr.tmp``; :func:`publish_outputs` renames it after label.h5 and the tables are
written. The driver holds only the coordinates of the chunks written.
"""
from __future__ import annotations

import logging
import shutil

import numpy as np

from ..io.atomic import remove_stale_temporaries, remove_temporaries_below
from ..io.ome_zarr import (
    OLD_SUFFIX,
    block_shape_of,
    blocks_to_downsample,
    copy_base_chunks,
    create_store,
    downsample_block,
    plan_levels,
    publish_store,
    temporary_store,
)
from ..io.tables import table_columns, write_parquet, write_tsv
from ..io.voxel_size import VoxelSize
from .params import SegmentParams

log = logging.getLogger(__name__)


def voxel_size_of(params: SegmentParams) -> VoxelSize:
    return VoxelSize(tuple(params.voxel_size), params.voxel_unit)


def _prepare_store(params, levels):
    """The temporary store, emptied first unless this run's markers say it is resumable
    (then cleared of the temporaries of killed writers); an older store that a killed run
    was replacing is removed."""
    remove_stale_temporaries(params.ome_zarr_path, OLD_SUFFIX)
    tmp_store = temporary_store(params.ome_zarr_path)
    markers = params.ome_zarr_marker_dir
    if not markers.exists() and tmp_store.exists():
        # markers are removed whenever the run's settings change: the store is another run's
        log.info("removing %s, left by another run", tmp_store)
        shutil.rmtree(tmp_store)
    elif tmp_store.exists():
        # the markers are in work_dir, whose run lock this run holds: no other run writes
        # this store, and each chunk's temporary there is a killed worker's
        remove_temporaries_below(tmp_store)
    create_store(tmp_store, levels, voxel_size_of(params))
    markers.mkdir(parents=True, exist_ok=True)
    return tmp_store


def ome_zarr_stage(params: SegmentParams, chunk_batches, execute):
    """Write every level of the OME-Zarr label image into its temporary store (by tasks).

    Parameters
    ----------
    params : SegmentParams
        ``ome_zarr_path`` must be set.
    chunk_batches : sequence of sequence of (int, StoredChunks)
        The rendered task chunks and the storage chunks in their labels files
        (``ChunkSummary.stored``), in batches (one task each) for level 0.
    execute : callable
        As for :func:`stardist_hpc.segment.step.segment`.
    """
    levels = plan_levels(params.image_shape, params.storage_chunks, voxel_size_of(params))
    tmp_store = _prepare_store(params, levels)
    markers = params.ome_zarr_marker_dir
    log.info("OME-Zarr: %d level(s), shapes %s", len(levels),
             ", ".join("x".join(map(str, level.shape)) for level in levels))
    arguments = [(tmp_store, markers, levels, params.chunk_dir,
                  [(int(i), stored) for i, stored in batch]) for batch in chunk_batches]
    written = list(execute(copy_base_chunks, arguments, "OME-Zarr level 0"))
    for level in range(1, len(levels)):
        finer = np.concatenate([np.zeros((0, 3), np.int64), *written])
        block_shape = block_shape_of(levels[level], params.chunk_shape)
        arguments = [(tmp_store, markers, levels, level, block_shape, block)
                     for block in blocks_to_downsample(levels, level, block_shape, finer)]
        written = list(execute(downsample_block, arguments, f"OME-Zarr level {level}"))


def write_tables(params: SegmentParams, objects):
    """Write the configured TSV and Parquet tables of the ``objects`` table."""
    if params.objects_tsv is None and params.objects_parquet is None:
        return
    columns = table_columns(objects, voxel_size_of(params))
    if params.objects_tsv is not None:
        write_tsv(params.objects_tsv, columns)
    if params.objects_parquet is not None:
        write_parquet(params.objects_parquet, columns)


def publish_outputs(params: SegmentParams):
    """Rename the complete OME-Zarr store into place, after label.h5 and the tables (only the
    QC report follows)."""
    if params.ome_zarr_path is not None:
        publish_store(temporary_store(params.ome_zarr_path), params.ome_zarr_path)
