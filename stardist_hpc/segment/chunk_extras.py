"""What a labeling task keeps besides the labels: previews, intensities and its own seconds.

:func:`chunk_extras` runs in the labeling task on the chunk it rendered; its record is saved in
the chunk's statistics checkpoint (and checked with it, :func:`extras_done`). The driver reads
them, the chunk's object statistics and where its storage chunks lie in its labels file from
the tasks' results as the tasks finish (or, for chunks an earlier run rendered, from the
checkpoints) into per-object statistics and intensities and small previews
(:class:`ExtrasCollector`), never the labels.
"""
from __future__ import annotations

import time
from typing import NamedTuple

from ..geometry.tiling import Grid
from ..io.checkpoint import load_checkpoint, load_records
from ..io.chunks import ChunkStats, StoredChunks, chunk_files
from ..io.intensities import INTENSITIES, intensity_table
from ..io.label_file import ObjectStatistics
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
    """What the labeling stage collected of all chunks: object statistics, the storage
    chunks in each labels file (none for a chunk without objects; in chunk order), previews,
    intensities (None without ``measure``), seconds."""
    objects: ObjectStatistics
    stored: dict             # chunk index -> StoredChunks
    previews: PreviewMerge
    intensities: IntensityMerge | None
    render_seconds: dict     # chunk index -> seconds
    measure_seconds: dict


class RenderedChunk(NamedTuple):
    """What a labeling task returns of each chunk it rendered: its extras, its objects'
    statistics and the storage chunks in its labels file (what label.h5 is written from)."""
    index: int
    extras: ChunkExtras
    stats: ChunkStats
    stored: StoredChunks


def checkpointed_chunk(chunk_dir, index):
    """The RenderedChunk of chunk ``index`` from its checkpoint in ``chunk_dir`` (a chunk an
    earlier run rendered)."""
    return RenderedChunk(index, *load_records(chunk_files(chunk_dir, index).stats,
                                              ChunkExtras, ChunkStats, StoredChunks))


class ExtrasCollector:
    """Merges the extras of the rendered chunks ``chunk_indices`` in the driver, while the
    labeling tasks still run: from the tasks' results (:meth:`rendered`), and from the
    checkpoints of the chunks an earlier run rendered (:meth:`rendered_before`).

    In the order of ``chunk_indices``, whatever order the tasks finish in: the intensity sums
    are floats, and the tables must not change from run to run. Reading every chunk's
    checkpoint after the stage cost the driver ~1.5 ms per chunk while the workers waited
    (and writing label.h5 read each again); merging a result costs a few numpy operations.
    Memory: the previews, the per-object arrays, a few numbers per chunk and the results that
    arrived before their turn.
    """

    def __init__(self, params, chunk_indices, n_objects):
        self._params, self._order = params, list(chunk_indices)
        self._merged, self._waiting = 0, {}   # chunk index -> RenderedChunk, or None: on disk
        self._grid = Grid(params.image_shape, params.chunk_shape)
        self._objects, self._stored = ObjectStatistics(n_objects), {}
        self._previews = PreviewMerge(params.image_shape)
        self._intensities = (None if params.measure is None
                             else IntensityMerge(n_objects, params.measure.channels))
        self._render_seconds, self._measure_seconds = {}, {}

    def rendered_before(self, indices):
        """Chunks ``indices`` were rendered by an earlier run: their extras are read from
        their checkpoints when their turn comes."""
        self._arrived(dict.fromkeys(indices))

    def rendered(self, chunks):
        """A labeling task's result: the RenderedChunk of each chunk it rendered."""
        self._arrived({chunk.index: chunk for chunk in chunks})

    def _arrived(self, chunks):
        self._waiting.update(chunks)
        while self._merged < len(self._order) and self._order[self._merged] in self._waiting:
            index = self._order[self._merged]
            self._merge(self._waiting.pop(index)
                        or checkpointed_chunk(self._params.chunk_dir, index))
            self._merged += 1

    def _merge(self, chunk: RenderedChunk):
        preview, chunk_intensities, times = _parts(chunk.extras)
        self._objects.add(chunk.stats)
        self._stored[chunk.index] = chunk.stored
        self._previews.add(self._grid.box(chunk.index), preview)
        if self._intensities is not None:
            self._intensities.add(chunk.stats.ids, chunk.stats.voxel_count, chunk_intensities)
        self._render_seconds[chunk.index], self._measure_seconds[chunk.index] = times

    def summary(self) -> ChunkSummary:
        """The merged extras of all the chunks (each must have been reported rendered)."""
        if self._merged < len(self._order):
            raise RuntimeError(f"chunk {self._order[self._merged]}'s extras were not merged: "
                               "it was not reported rendered")
        return ChunkSummary(self._objects, self._stored, self._previews, self._intensities,
                            self._render_seconds, self._measure_seconds)


def intensity_tables(extras: ChunkSummary):
    """``{"intensities": table}`` of the merged intensities, or ``{}`` without ``measure``."""
    merged = extras.intensities
    if merged is None:
        return {}
    return {INTENSITIES: intensity_table(merged.count, merged.columns())}
