"""The HPC step's outputs beside label.h5: the OME-Zarr pyramid (tasks) and the tables.

The OME-Zarr store is written by tasks on the cluster, level by level, into
``label.ome.zarr.tmp``: level 0 from the rendered chunks' own bytes (by the labeling tasks as
they render, or copied from the chunk checkpoints of an earlier run), every coarser level from
the finer one, block by block. :func:`publish_outputs` renames it after label.h5 and the
tables are written. The driver holds only the coordinates of the chunks written.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ..geometry.tiling import Grid
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
from .params import MIN_TASKS, SegmentParams
from .render import MIN_TASK_VOXELS

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


class OmeZarrTarget(NamedTuple):
    """The temporary store being written, its markers in work_dir and its levels (the first
    arguments of the OME-Zarr tasks)."""
    store: Path
    marker_dir: Path
    levels: list


def prepare_ome_zarr(params: SegmentParams):
    """The OME-Zarr target of ``params``, its store created (before the labeling stage, whose
    tasks write level 0); None without ``ome_zarr_path``."""
    if params.ome_zarr_path is None:
        return None
    levels = plan_levels(params.image_shape, params.storage_chunks, voxel_size_of(params))
    log.info("OME-Zarr: %d level(s), shapes %s", len(levels),
             ", ".join("x".join(map(str, level.shape)) for level in levels))
    return OmeZarrTarget(_prepare_store(params, levels), params.ome_zarr_marker_dir, levels)


def ome_zarr_stage(params: SegmentParams, target: OmeZarrTarget, chunk_batches, base_written,
                   execute):
    """Write the levels of the OME-Zarr label image that the labeling tasks did not (by tasks).

    Parameters
    ----------
    params : SegmentParams
    target : OmeZarrTarget
        From :func:`prepare_ome_zarr`.
    chunk_batches : sequence of sequence of (int, StoredChunks)
        The rendered task chunks and the storage chunks in their labels files
        (``ChunkSummary.stored``), by labeling batch.
    base_written : dict
        First chunk index of a batch -> first voxels of the level-0 chunk files its labeling
        task wrote; the other batches' level 0 is copied from their chunk checkpoints.
    execute : callable
        As for :func:`stardist_hpc.segment.step.segment`.
    """
    arguments = [(*target, params.chunk_dir, [(int(i), stored) for i, stored in batch])
                 for batch in chunk_batches if batch[0][0] not in base_written]
    written = [*base_written.values(),
               *execute(copy_base_chunks, arguments, "OME-Zarr level 0")]
    levels = target.levels
    for level in range(1, len(levels)):
        finer = np.concatenate([np.zeros((0, 3), np.int64), *written])
        block_shape = _block_shape(levels[level], params.chunk_shape)
        arguments = [(*target, level, block_shape, block)
                     for block in blocks_to_downsample(levels, level, block_shape, finer)]
        written = list(execute(downsample_block, arguments, f"OME-Zarr level {level}"))


def _block_shape(level, task_shape):
    """Blocks of whole chunks of ``level`` per downsampling task: each reads at least one task
    chunk of the finer level, and neighbouring blocks go together, like the labeling batches,
    until a task reads about :data:`~.render.MIN_TASK_VOXELS` while the level keeps at least
    :data:`~.params.MIN_TASKS` tasks (tiny tasks pay a fixed cost, ~10 ms of driver and worker
    time each, over and over)."""
    block = np.asarray(block_shape_of(level, task_shape))
    read_voxels = float(np.prod(block * np.asarray(level.step)))
    factor = Grid(level.shape, tuple(block)).batch_factor(read_voxels, MIN_TASK_VOXELS,
                                                          MIN_TASKS)
    return tuple(int(v) for v in block * factor)


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
