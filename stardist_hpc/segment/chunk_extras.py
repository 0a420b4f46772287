"""What a labeling task keeps besides the labels: previews, intensities and its own seconds.

:func:`chunk_extras` runs in the labeling task on the chunk it rendered; its record is saved in
the chunk's statistics checkpoint (and checked with it, :func:`extras_done`). The driver reads
them back chunk by chunk (:func:`collect_extras`) into per-object intensities and small
previews, never the labels.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from ..geometry.tiling import Grid
from ..io.checkpoint import load_checkpoint, load_record
from ..io.chunks import ChunkStats, chunk_files
from ..io.intensities import INTENSITIES, intensity_table
from .measure import ChunkIntensities, IntensityMerge, measure_chunk, no_intensities
from .preview import ChunkPreview, PreviewMerge, preview_chunk


class ChunkTimes(NamedTuple):
    """Seconds the task spent rendering the chunk, and measuring its intensities."""
    render_seconds: float
    measure_seconds: float


#: one record with the fields of all three (save_record stores it beside the ChunkStats).
ChunkExtras = NamedTuple("ChunkExtras", [(name, object) for name in (
    ChunkPreview._fields + ChunkIntensities._fields + ChunkTimes._fields)])
_N_PREVIEW, _N_INTENSITY = len(ChunkPreview._fields), len(ChunkIntensities._fields)


def _parts(extras):
    """The ChunkPreview, ChunkIntensities and ChunkTimes of a ChunkExtras."""
    return (ChunkPreview(*extras[:_N_PREVIEW]),
            ChunkIntensities(*extras[_N_PREVIEW:_N_PREVIEW + _N_INTENSITY]),
            ChunkTimes(*extras[_N_PREVIEW + _N_INTENSITY:]))


def _n_channels(params):
    return 0 if params.measure is None else len(params.measure.channels)


def chunk_extras(params, box, labels, ids, render_seconds):
    """The ChunkExtras of one rendered chunk (in the labeling task).

    Parameters
    ----------
    params : SegmentParams
    box : Box
    labels : ndarray of uint32, shape ``box.shape``
    ids : ndarray of uint32
        The ids present in ``labels``, increasing.
    render_seconds : float
        What rendering the chunk took.
    """
    started = time.perf_counter()
    intensities = (no_intensities(0) if params.measure is None
                   else measure_chunk(params.measure, box, labels, ids))
    times = ChunkTimes(render_seconds, time.perf_counter() - started)
    return ChunkExtras(*preview_chunk(params.image_shape, box, labels), *intensities, *times)


def extras_done(params, index):
    """Whether chunk ``index``'s checkpoint holds intact extras for ``params`` (measured with
    its channels); a damaged one is removed (the chunk is rendered again)."""
    files = chunk_files(params.chunk_dir, index)
    extras = load_checkpoint(files.stats, ChunkExtras, {})
    if extras is not None and extras.intensity_mean.shape[1] == _n_channels(params):
        return True
    files.stats.unlink(missing_ok=True)
    files.labels.unlink(missing_ok=True)
    return False


class ChunkSummary(NamedTuple):
    """The extras of all chunks: previews, intensities (None without ``measure``), seconds."""
    previews: PreviewMerge
    intensities: IntensityMerge | None
    render_seconds: dict     # chunk index -> seconds
    measure_seconds: dict


def collect_extras(params, chunk_indices, n_objects):
    """Merge the extras of the rendered chunks ``chunk_indices`` (in the driver).

    Memory: the previews and per-object arrays; one chunk's record at a time.
    """
    grid = Grid(params.image_shape, params.chunk_shape)
    previews = PreviewMerge(params.image_shape)
    intensities = (None if params.measure is None
                   else IntensityMerge(n_objects, params.measure.channels))
    render_seconds, measure_seconds = {}, {}
    for index in chunk_indices:
        path = chunk_files(params.chunk_dir, index).stats
        preview, chunk_intensities, times = _parts(load_record(path, ChunkExtras))
        previews.add(grid.box(index), preview)
        if intensities is not None:
            stats = load_record(path, ChunkStats)
            intensities.add(stats.ids, stats.voxel_count, chunk_intensities)
        render_seconds[index], measure_seconds[index] = times
    return ChunkSummary(previews, intensities, render_seconds, measure_seconds)



def intensity_tables(extras: ChunkSummary):
    """``{"intensities": table}`` of the merged intensities, or ``{}`` without ``measure``."""
    merged = extras.intensities
    if merged is None:
        return {}
    return {INTENSITIES: intensity_table(merged.count, merged.columns())}
