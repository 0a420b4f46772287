"""The HPC step's outputs beside label.h5: the OME-Zarr pyramid (tasks), the tables and the
QC report (a process of its own that writes it while the pyramid is written).

The OME-Zarr store is written by tasks on the cluster, level by level (level 0 from the
rendered chunks' own bytes, every coarser level from the finer one, block by block), into
``label.ome.zarr.tmp``; :func:`publish_outputs` renames it after label.h5 and the tables are
written. The driver holds only the coordinates of the chunks written.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import traceback

import numpy as np

from ..errors import UserError
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
    chunk_batches : sequence of sequence of int
        The rendered task chunks, in batches (one task each) for level 0.
    execute : callable
        As for :func:`stardist_hpc.segment.step.segment`.
    """
    levels = plan_levels(params.image_shape, params.storage_chunks, voxel_size_of(params))
    tmp_store = _prepare_store(params, levels)
    markers = params.ome_zarr_marker_dir
    log.info("OME-Zarr: %d level(s), shapes %s", len(levels),
             ", ".join("x".join(map(str, level.shape)) for level in levels))
    arguments = [(tmp_store, markers, levels, params.chunk_dir, [int(i) for i in batch])
                 for batch in chunk_batches]
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


class ReportProcess:
    """The QC report (:func:`.report.write_report`), written by a process of its own.

    Not a task: matplotlib holds the GIL for seconds, which would stall the other tasks of a
    worker that runs threads. Not a thread of the driver: its import would stay in the
    driver's memory. The process starts (and imports matplotlib) when the run starts, and
    writes the report when :meth:`write` hands it the run's results, while the other outputs
    are written. It runs at the lowest CPU priority (:data:`REPORT_NICENESS`), and it ignores
    Ctrl-C; the driver stops it (:meth:`stop`).
    """

    def __init__(self):
        # spawned, not forked: the driver runs a Dask client's threads
        context = multiprocessing.get_context("spawn")
        self._outcome, sending = context.Pipe(duplex=False)
        receiving, self._arguments = context.Pipe(duplex=False)
        self._process = context.Process(target=_write_report, args=(receiving, sending),
                                        name="QC report", daemon=True)
        self._process.start()
        sending.close()
        receiving.close()

    def write(self, arguments):
        """Start writing the report of ``arguments`` (those of :func:`.report.write_report`)."""
        self._arguments.send(arguments)

    def result(self):
        """Wait for the report; raise what stopped it."""
        try:
            failure = self._outcome.recv()
        except EOFError:   # the process ended without a word: killed, or out of memory
            self._process.join()
            failure = UserError(f"the QC report's process ended with exit code "
                                f"{self._process.exitcode} before writing the report")
        self._process.join()
        if failure is not None:
            raise failure

    def stop(self):
        """End the process, whether or not it is done (after Ctrl-C or another stage's error)."""
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
        self._outcome.close()
        self._arguments.close()


#: niceness of the report process. Its imports (matplotlib: about 1.5 CPU-seconds) overlap the
#: NMS tasks; with local workers on every core they took that time from the workers (2 workers
#: on 2 cores: the report process used 1.5 of the 5.1 CPU-seconds of a 2.7 s NMS stage). At the
#: lowest priority it runs on what the workers leave idle, and the driver waits for it only
#: at the end.
REPORT_NICENESS = 19


class _ReportFailed(RuntimeError):
    """A report process's unexpected error, with the traceback it had there."""


def _write_report(receiving, sending):
    """The report process: import, wait for the arguments, write the report, send back None
    or what stopped it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is the driver's to handle
    os.nice(REPORT_NICENESS)
    from .report import write_report
    try:
        arguments = receiving.recv()
    except EOFError:   # the run ended before its report
        return
    try:
        write_report(*arguments)
    except UserError as error:
        sending.send(error)
    except Exception:   # a bug: the driver shows its traceback
        sending.send(_ReportFailed(f"the QC report failed:\n{traceback.format_exc()}"))
    else:
        sending.send(None)
    finally:
        sending.close()


def publish_outputs(params: SegmentParams):
    """Rename the complete OME-Zarr store into place: the run's last step."""
    if params.ome_zarr_path is not None:
        publish_store(temporary_store(params.ome_zarr_path), params.ome_zarr_path)
