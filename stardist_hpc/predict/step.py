"""The GPU step: stream a large image block by block through StarDist3D into a candidate file.

Each block's core is predicted with enough context around it for the network's receptive
field; only candidates whose point lies in the core are kept, so every voxel is predicted once.
Blocks at the far end of an axis are read from the image reflect-padded to a multiple of the
network's divisor, exactly as StarDist pads a whole image, so a block-wise run gives the
candidates of one whole-image ``predict_sparse`` call.

The main thread only calls the network: the next block is read and normalised, the previous
tile's outputs post-processed (threshold first, then gather and clamp only the kept cells) and
the previous block written in threads, while the network runs.
"""
from __future__ import annotations

import dataclasses
import io
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
from numpy.typing import ArrayLike

from .. import __version__
from ..config import (
    ImageSection,
    LocalOutputSection,
    PredictionSection,
    arguments_config,
    channels,
    voxel_size_triple,
)
from ..errors import UserError
from ..geometry.tiling import grid_boxes
from ..io.candidates import CandidateMeta, CandidateWriter, temporary_path
from ..io.image import array_volume, open_volume
from ..io.model_files import ModelInfo, model_weights, read_model_info
from ..io.path_guard import check_outputs_apart
from ..io.run_lock import lock_path_of, run_lock
from ..io.voxel_size import resolve_voxel_size
from ..progress import progress
from .normalization import configured_normalization

log = logging.getLogger(__name__)

#: (z, y, x) sizes of the public API.
Shape = tuple[int, int, int]

#: grid cells at the image border where StarDist's predict_sparse ignores candidates (its ``b``).
BORDER_CELLS = 2
#: StarDist's lower bound on predicted ray lengths (``np.maximum(1e-3, dist)``).
DIST_MIN = 1e-3
#: file descriptor of the process's standard error, where TensorFlow's C++ code logs.
STDERR_FD = 2
#: the prefix absl puts before a C++ log line, e.g. "I0000 00:00:1796.9 19433 port.cc:153] ".
ABSL_LOG_PREFIX = re.compile(r"^[IWEF]\d{4} [\d:.]+\s+\d+ \S+:\d+\] ")
#: guards divisions by a duration against zero.
EPSILON_SECONDS = 1e-9
#: spatial dimensions of the models this step runs (StarDist3D).
N_DIM = 3


@dataclass(frozen=True)
class BlockPlan:
    """One model call: the core it owns and the (context-enlarged, aligned) region it reads."""
    core_lo: tuple
    core_hi: tuple
    read_lo: tuple
    read_hi: tuple     # may pass the image end: the excess is reflect-padded


@dataclass(frozen=True)
class Geometry:
    """Alignment of blocks to the network: divisor, grid, context and StarDist's padded shape."""
    shape: tuple
    div_by: tuple
    grid: tuple
    context: tuple
    padded_shape: tuple


def _round_up(value, multiple):
    return int(math.ceil(value / multiple) * multiple)


def network_geometry(model, shape):
    """Block alignment for ``model`` on an image of ``shape`` (z, y, x)."""
    div_by = tuple(model._axes_div_by("ZYX"))
    context = tuple(_round_up(c, d) for c, d in zip(model._axes_tile_overlap("ZYX"), div_by))
    padded = tuple(_round_up(s, d) for s, d in zip(shape, div_by))
    return Geometry(shape=tuple(shape), div_by=div_by, grid=tuple(model.config.grid),
                    context=context, padded_shape=padded)


def aligned_block_shape(geometry, block_shape):
    """``block_shape`` rounded up to a multiple of the network divisor, so cores stay aligned."""
    return tuple(_round_up(b, d) for b, d in zip(block_shape, geometry.div_by))


def plan_blocks(geometry, block_shape):
    """Blocks whose cores partition the image, each with its aligned read region.

    Parameters
    ----------
    geometry : Geometry
    block_shape : tuple of 3 int
        Core shape (see :func:`aligned_block_shape`).

    Returns
    -------
    list of BlockPlan
    """
    core_shape = aligned_block_shape(geometry, block_shape)
    plans = []
    for core_lo, core_hi in grid_boxes(geometry.shape, core_shape):
        read_lo = tuple(max(0, lo - c) for lo, c in zip(core_lo, geometry.context))
        read_hi = tuple(min(p, _round_up(hi, d) + c) for hi, d, c, p in
                        zip(core_hi, geometry.div_by, geometry.context, geometry.padded_shape))
        plans.append(BlockPlan(tuple(core_lo), tuple(core_hi), read_lo, read_hi))
    return plans


def read_block(volume, plan, normalization, clock):
    """Read a block's region, reflect-padding past the image end as StarDist pads the image.

    The time spent reading and normalising is added to ``clock`` (a :class:`LaneClock`).
    """
    shape = volume.shape
    real_hi = tuple(min(h, s) for h, s in zip(plan.read_hi, shape))
    with clock.timing("read"):
        raw = volume.read(plan.read_lo, real_hi)
    with clock.timing("normalise"):
        block = normalization.apply(raw)
        pad = [(0, h - r) for h, r in zip(plan.read_hi, real_hi)]
        if any(p for _, p in pad):   # a trailing channel axis is not padded
            block = np.pad(block, pad + [(0, 0)] * (block.ndim - len(pad)), mode="reflect")
    return block


def owned_cells(plan, geometry):
    """Box ``[lo, hi)`` of the block's grid cells whose candidates the block owns.

    A cell's candidate lies at ``cell * grid + read_lo``. It is owned when that point is in the
    block's core and in the image, and outside the first and last ``BORDER_CELLS`` grid cells
    of the padded image, where StarDist's ``predict_sparse`` ignores candidates; the same rule
    applied to every block keeps block-wise and whole-image candidates identical.
    """
    lo, hi = [], []
    for axis, g in enumerate(geometry.grid):
        read_lo = plan.read_lo[axis]
        first = max(plan.core_lo[axis], BORDER_CELLS * g)
        stop = min(plan.core_hi[axis], geometry.shape[axis],
                   (geometry.padded_shape[axis] // g - BORDER_CELLS) * g)
        lo.append(max(0, -(-(first - read_lo) // g)))
        hi.append(max(lo[-1], -(-(stop - read_lo) // g)))
    return tuple(lo), tuple(hi)


def _tile_voxels(region_shape, context, n_tiles):
    """Voxels of one StarDist tile: its share of the region plus context on both sides."""
    return math.prod(min(r, math.ceil(r / n) + 2 * c)
                     for r, c, n in zip(region_shape, context, n_tiles))


def auto_n_tiles(region_shape, context, max_tile_voxels):
    """Fewest StarDist tiles per axis that keep one network call under ``max_tile_voxels``.

    StarDist adds the receptive field (``context``) around every tile, so the longest tile side
    is split first. Network memory grows with the voxels of one call; if even the thinnest
    tiles stay above the budget, the tiling that comes closest is returned.
    """
    n_tiles = [1, 1, 1]
    while _tile_voxels(region_shape, context, n_tiles) > max_tile_voxels:
        splittable = [i for i in range(3) if math.ceil(region_shape[i] / n_tiles[i]) > 1]
        if not splittable:
            break
        longest = max(splittable, key=lambda i: region_shape[i] / n_tiles[i])
        n_tiles[longest] += 1
    return tuple(n_tiles)


class Network:
    """A StarDist3D model as the block loop calls it: one Keras call per tile.

    Calls ``keras_model.predict`` exactly as StarDist's ``predict_sparse`` does, and tiles a
    block with csbdeep's ``tile_iterator`` and the same arguments, so that the network outputs
    are StarDist's bit for bit. Subclasses (the benchmark's stand-in) replace :meth:`__call__`.
    """

    def __init__(self, model):
        self.model = model
        self.grid = tuple(model.config.grid)

    def geometry(self, shape):
        """Block alignment on an image of ``shape`` (see :func:`network_geometry`)."""
        return network_geometry(self.model, shape)

    def tiles(self, block, n_tiles):
        """Yield ``(tile, s_src, s_dst)`` as StarDist's ``tiling_setup`` does, in grid cells.

        ``tile`` has a trailing channel axis (added to a single-channel block); ``s_src``
        selects the tile's own cells in its network output, ``s_dst`` where they lie in the
        block's cells.
        """
        from csbdeep.internals.predict import tile_iterator

        x = block[..., np.newaxis] if block.ndim == len(self.grid) else block
        if math.prod(n_tiles) == 1:
            yield x, (slice(None),) * 3, tuple(slice(0, s // g) for s, g in
                                                zip(block.shape, self.grid))
            return
        div_by = tuple(self.model._axes_div_by("ZYXC"))
        overlaps = self.model._axes_tile_overlap("ZYXC")
        n_block_overlaps = [int(np.ceil(o / d)) for o, d in zip(overlaps, div_by)]
        for tile, s_src, s_dst in tile_iterator(x, (*n_tiles, 1), block_sizes=div_by,
                                                n_block_overlaps=n_block_overlaps):
            yield tile, *(tuple(slice(s.start // g, s.stop // g) for s, g in
                                zip(sl[:3], self.grid)) for sl in (s_src, s_dst))

    def __call__(self, tile):
        """Raw network outputs of one tile: prob (z, y, x, 1), dist (z, y, x, n_rays) and,
        for a multi-class model, prob_class (z, y, x, n_classes + 1)."""
        outputs = self.model.keras_model.predict(tile[np.newaxis], verbose=0)
        return tuple(output[0] for output in outputs)


class Candidates(NamedTuple):
    """Candidates of a tile, ``cells`` being their block-local grid cells, or of a block
    (:func:`block_candidates`), ``cells`` being their points in global voxels;
    ``prob_class`` (N, n_classes + 1) only for a multi-class model."""
    prob: np.ndarray
    dist: np.ndarray
    cells: np.ndarray
    prob_class: np.ndarray | None = None


def tile_candidates(outputs, s_src, s_dst, owned, prob_thresh):
    """Owned candidates of one tile's network output, as block-local grid cells.

    Thresholds ``prob`` first and reads and clamps ``dist`` only at the kept cells, where
    StarDist's ``predict_sparse`` clamps the whole dense map: the same values, bit for bit,
    in the same (C) order; class probabilities are read at the same cells, as StarDist reads
    them.

    Parameters
    ----------
    outputs : tuple of ndarray
        Network outputs of the tile (see :meth:`Network.__call__`): prob, dist and, for a
        multi-class model, prob_class.
    s_src, s_dst : tuple of slice
        The tile's own cells in its output and in the block (see :meth:`Network.tiles`).
    owned : (lo, hi)
        Box of block cells the block owns (see :func:`owned_cells`).
    prob_thresh : float

    Returns
    -------
    Candidates
        float32 prob (N,), dist (N, n_rays) and prob_class, int64 cells (N, 3).
    """
    prob, dist, *prob_class = outputs
    lo = [max(d.start, o) for d, o in zip(s_dst, owned[0])]
    hi = [min(d.stop, o) for d, o in zip(s_dst, owned[1])]
    if any(h <= l for l, h in zip(lo, hi)):   # nothing owned: an empty box selects nothing
        lo = hi = [d.start for d in s_dst]
    box = tuple(slice(s.start + l - d.start, s.start + h - d.start)
                for s, d, l, h in zip(_resolved(s_src, prob.shape), s_dst, lo, hi))
    prob_box = prob[box + (0,)]
    cells = np.nonzero(prob_box > prob_thresh)
    kept_prob = prob_box[cells]
    kept_dist = np.maximum(DIST_MIN, dist[box][cells])
    kept_class = prob_class[0][box][cells] if prob_class else None
    return Candidates(kept_prob, kept_dist, np.stack(cells, axis=1) + np.asarray(lo), kept_class)


def _resolved(slices, shape):
    """``slices`` with explicit start and stop (``slice(None)`` becomes ``0:n``)."""
    return tuple(slice(*s.indices(n)[:2]) for s, n in zip(slices, shape))


def block_candidates(parts, plan, grid):
    """Concatenate a block's tile :class:`Candidates` into one whose ``cells`` are the
    candidates' points in global voxels (int32)."""
    prob, dist, cells = (np.concatenate(p) for p in zip(*(part[:3] for part in parts)))
    points = cells * np.asarray(grid) + np.asarray(plan.read_lo)
    prob_class = (None if parts[0].prob_class is None else
                  np.concatenate([part.prob_class for part in parts]).astype(np.float32))
    return Candidates(prob.astype(np.float32), dist.astype(np.float32),
                      points.astype(np.int32), prob_class)


@contextmanager
def _stderr_lines_once(prefix):
    """Capture what C code writes to file descriptor 2 in the body; log each distinct line
    once, with ``prefix`` (TensorFlow's libraries each print the same banner at import).

    On an exception the captured text goes back to stderr unchanged, so a crash stays
    explained.
    """
    sys.stderr.flush()
    saved = os.dup(STDERR_FD)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), STDERR_FD)
        try:
            yield
        except BaseException:
            os.dup2(saved, STDERR_FD)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, STDERR_FD)
            os.close(saved)
        captured.seek(0)
        lines = captured.read().decode(errors="replace").splitlines()
    # without absl's prefix (severity, time, thread, source line) repeats are equal
    messages = (ABSL_LOG_PREFIX.sub("", line).strip() for line in lines)
    for message in dict.fromkeys(m for m in messages if m):
        log.info("%s%s", prefix, message)


def load_model(model_dir):
    """Load the StarDist3D model in folder ``model_dir`` (imports TensorFlow).

    TensorFlow's import banner is logged once (see :func:`_stderr_lines_once`), and StarDist's
    prints go to the debug log: its "Using default values" line after loading thresholds.json
    reads as if the file had been ignored. One INFO line says what was loaded instead.
    """
    with _stderr_lines_once("TensorFlow: "):
        import tensorflow as tf
        from stardist.models import StarDist3D

    model_dir = Path(model_dir)
    printed = io.StringIO()
    with redirect_stdout(printed):
        model = StarDist3D(None, name=model_dir.name, basedir=str(model_dir.parent))
    for line in printed.getvalue().splitlines():
        log.debug("StarDist: %s", line)
    devices = ", ".join(d.name for d in tf.config.list_logical_devices()) or "none"
    log.info("model %s loaded with TensorFlow %s (devices: %s)", model_dir, tf.__version__,
             devices)
    return model


def _loaded_model_info(model):
    """Rays, grid, thresholds, classes and channels of a StarDist3D model loaded in Python."""
    config = model.config
    if config.n_dim != N_DIM:
        raise UserError(f"model: expected a StarDist3D model, got n_dim {config.n_dim}")
    return ModelInfo(name=str(model.name), rays_json=json.dumps(config.rays_json),
                     n_rays=int(config.n_rays), grid=tuple(config.grid),
                     prob_thresh=float(model.thresholds.prob),
                     nms_thresh=float(model.thresholds.nms),
                     thresholds_source="the thresholds of the loaded model",
                     n_classes=int(config.n_classes or 0),
                     n_channel_in=int(config.n_channel_in))


def check_channels(info, channel):
    """Refuse an ``image.channel`` whose count is not the model's ``n_channel_in``."""
    count = len(channel) if isinstance(channel, tuple) else 1
    if count != info.n_channel_in:
        example = list(range(info.n_channel_in)) if info.n_channel_in > 1 else 0
        raise UserError(f"image.channel: model {info.name} takes {info.n_channel_in} "
                        f"channel(s) (n_channel_in in config.json), got {count} "
                        f"({list(channel) if count > 1 else channel}); expected e.g. "
                        f"{example}, one entry per model input channel, in the model's order")


def _prefetch(plans, load):
    """Yield ``(plan, load(plan))``, loading the next block in a thread while the caller works."""
    if not plans:   # an interrupted run that had appended every block before its rename
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read") as pool:
        pending = pool.submit(load, plans[0])
        for i, plan in enumerate(plans):
            block = pending.result()
            if i + 1 < len(plans):
                pending = pool.submit(load, plans[i + 1])
            yield plan, block


#: lanes of the block loop, in the order a block passes them.
LANES = ("read", "normalise", "network", "post", "write")


class LaneClock:
    """Seconds spent in each lane of the block loop; each lane is timed by one thread."""

    def __init__(self):
        self.seconds = dict.fromkeys(LANES, 0.0)

    @contextmanager
    def timing(self, lane):
        """Add the time spent in the ``with`` body to ``lane``."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[lane] += time.perf_counter() - start


@dataclass(frozen=True)
class PredictionSummary:
    """What a GPU-step run did; ``seconds`` covers the block loop, ``lane_seconds`` the time
    each lane (see ``LANES``) was busy, lanes running in parallel threads."""
    blocks: int
    candidates: int
    voxels: int
    seconds: float
    lane_seconds: dict

    @property
    def network_seconds(self):
        return self.lane_seconds["network"]


def _blocks_to_predict(plans, writer):
    """The plans after the blocks ``writer`` already holds (from an interrupted run)."""
    done = writer.completed_cores
    if [(p.core_lo, p.core_hi) for p in plans[:len(done)]] != done:
        raise RuntimeError(f"{writer.tmp_path}: its blocks are not the planned ones; delete it")
    if done:
        log.info("continuing %s after %d of %d blocks", writer.tmp_path, len(done), len(plans))
    return plans[len(done):]


def _volume_of(plan):
    """Voxels of a block's core."""
    return math.prod(h - l for l, h in zip(plan.core_lo, plan.core_hi))


class _Lanes:
    """The post-processing and writer threads behind the network, one job in flight each.

    Waiting for a lane's previous job before giving it the next bounds the network outputs
    held in memory to two tiles, and surfaces a lane's errors in the main thread.
    """

    def __init__(self, writer, clock, prob_thresh, grid):
        self.writer, self.clock, self.prob_thresh, self.grid = writer, clock, prob_thresh, grid
        self._post = ThreadPoolExecutor(max_workers=1, thread_name_prefix="post")
        self._write = ThreadPoolExecutor(max_workers=1, thread_name_prefix="write")
        self._last_post = self._last_write = None

    def post(self, outputs, s_src, s_dst, owned):
        """Queue the post-processing of one tile's outputs; return its future."""
        if self._last_post is not None:
            self._last_post.result()
        self._last_post = self._post.submit(self._timed, "post", tile_candidates, outputs,
                                            s_src, s_dst, owned, self.prob_thresh)
        return self._last_post

    def write(self, plan, parts):
        """Queue the append of a block whose tiles' post-processing futures are ``parts``."""
        if self._last_write is not None:
            self._last_write.result()
        self._last_write = self._write.submit(self._append, plan, parts)

    def _append(self, plan, parts):
        found = block_candidates([f.result() for f in parts], plan, self.grid)
        self._timed("write", self.writer.append, plan.core_lo, plan.core_hi, found.prob,
                    found.dist, found.cells, found.prob_class)

    def _timed(self, lane, function, *args):
        with self.clock.timing(lane):
            return function(*args)

    def close(self):
        """Wait for the queued jobs (raising their errors) and stop both threads."""
        try:
            for job in (self._last_post, self._last_write):
                if job is not None:
                    job.result()
        finally:
            self._post.shutdown()
            self._write.shutdown()


def predict_volume(network, volume, normalization, writer, *, block_shape, prob_thresh, n_tiles,
                   max_tile_voxels, show_progress=True):
    """Predict the blocks of ``volume`` that ``writer`` lacks and append their candidates.

    The main thread only calls the network (a :class:`Network`): reading and normalising run
    one block ahead in a thread, post-processing one tile behind and writing one block behind
    in two more. With ``n_tiles`` None, each block is split into tiles of at most
    ``max_tile_voxels``.
    """
    geometry = network.geometry(volume.shape)
    all_plans = plan_blocks(geometry, block_shape)
    _log_plan(all_plans, geometry)
    plans, clock = _blocks_to_predict(all_plans, writer), LaneClock()
    lanes = _Lanes(writer, clock, prob_thresh, geometry.grid)
    start = time.perf_counter()
    try:
        blocks = _prefetch(plans, lambda p: read_block(volume, p, normalization, clock))
        for plan, block in progress(blocks, len(all_plans), "blocks", "block",
                                    done=len(all_plans) - len(plans),
                                    show_progress=show_progress):
            tiles = n_tiles or auto_n_tiles(block.shape, geometry.context, max_tile_voxels)
            owned, parts = owned_cells(plan, geometry), []
            for tile, s_src, s_dst in network.tiles(block, tiles):
                with clock.timing("network"):
                    outputs = network(tile)
                parts.append(lanes.post(outputs, s_src, s_dst, owned))
            lanes.write(plan, parts)
    finally:
        lanes.close()
    return PredictionSummary(len(all_plans), writer.n_rows, sum(map(_volume_of, plans)),
                             time.perf_counter() - start, dict(clock.seconds))


def _log_plan(plans, geometry):
    """Log the block count with the distinct (clipped) core shapes, largest first."""
    shapes = sorted({tuple(h - l for l, h in zip(p.core_lo, p.core_hi)) for p in plans},
                    key=math.prod, reverse=True)
    log.info("%d blocks, cores %s, context %s (network divisor %s)", len(plans),
             ", ".join("x".join(map(str, s)) for s in shapes), geometry.context, geometry.div_by)


def _file_state(path):
    """Size and modification time of a file (or directory, e.g. a .zarr store)."""
    stat = Path(path).stat()
    return [stat.st_size, stat.st_mtime_ns]


def resume_key(meta, model_dir, prediction):
    """What a run's blocks are predicted from: the file's attributes, the image and weights
    files as they are now, and the block settings. An interrupted run's temporary file is
    continued only by a run with the same key; the empty key of an image or model held in
    memory (whose state no file records) never continues one."""
    if model_dir is None or not Path(meta.image_path).exists():
        return ""
    weights = model_weights(model_dir)
    return json.dumps({"meta": dataclasses.asdict(meta),
                       "image": _file_state(meta.image_path),
                       "weights": [weights.name, *_file_state(weights)],
                       "block_shape": prediction.block_shape,
                       "n_tiles": prediction.n_tiles,
                       "max_tile_voxels": prediction.max_tile_voxels},
                      sort_keys=True, default=str)


def _thresholds_in_effect(info, configured_prob_thresh):
    """The candidate threshold to apply; logs both thresholds and where they come from."""
    if configured_prob_thresh is None:
        log.info("thresholds: prob %g, nms %g from %s", info.prob_thresh, info.nms_thresh,
                 info.thresholds_source)
        return info.prob_thresh
    log.info("thresholds: prob %g from prediction.prob_thresh, nms %g from %s",
             configured_prob_thresh, info.nms_thresh, info.thresholds_source)
    return configured_prob_thresh


def _open_image(image, *, channel, axes, dataset, missing_chunks):
    """The Volume of an image path (validated as the ``image`` keys) or of an array-like."""
    if isinstance(image, (str, os.PathLike)):
        section = arguments_config(ImageSection, path=image, channel=channel, axes=axes,
                                   dataset=dataset, missing_chunks=missing_chunks)
        return open_volume(section)
    return array_volume(image, channel=channel, axes=axes)


def _model_and_info(model):
    """``(model_dir or None, ModelInfo, loader)`` of a model folder path or a loaded model."""
    if isinstance(model, (str, os.PathLike)):
        model_dir = Path(model)
        info = read_model_info(model_dir.parent, model_dir.name)   # cheap checks first
        model_weights(model_dir)
        return model_dir, info, lambda: load_model(model_dir)
    if hasattr(model, "predict_sparse") and hasattr(model, "config"):
        return None, _loaded_model_info(model), lambda: model
    raise UserError(f"model: expected a model folder path or a StarDist3D model, got {model!r}")


def predict_candidates(image: str | os.PathLike | ArrayLike, model: str | os.PathLike | Any,
                       output: str | os.PathLike, *, channel: int | Sequence[int] = 0,
                       axes: str | None = None,
                       dataset: str | None = None, missing_chunks: str = "error",
                       block_shape: Shape = (64, 256, 256),
                       n_tiles: Shape | None = None, max_tile_voxels: int = 8_388_608,
                       normalize: Mapping[str, float] | None = None,
                       prob_thresh: float | None = None,
                       voxel_size: tuple[float, float, float] | None = None,
                       show_progress: bool = True) -> PredictionSummary:
    """Predict the StarDist3D candidates of a 3D image block by block into a candidate file.

    Memory stays bounded by ``block_shape``; the candidates equal those of one whole-image
    ``StarDist3D.predict_sparse`` call. Each argument but ``show_progress`` is the config key
    of ``local_prediction.py`` named in brackets, validated the same way.

    Parameters
    ----------
    image : str, Path or array-like
        An image file (.tif/.tiff, .h5/.hdf5, .ims, .zarr) [image.path], or an array with
        numpy slicing (numpy, zarr, dask, h5py dataset), z, y, x (with ``axes`` for more).
    model : str, Path or StarDist3D
        A model folder [model.basedir / model.name], or a model loaded in Python.
    output : str or Path
        The candidate file to write (``prediction.h5``) [output.path].
    channel : int or sequence of int
        Channel of an image with a C axis; one per model input channel, in the model's
        order, for a multi-channel model [image.channel].
    axes : str, optional
        Stored axes, e.g. ``"CZYX"`` (None: a 3D image is ZYX) [image.axes].
    dataset : str, optional
        Dataset inside an .h5/.zarr file [image.dataset].
    missing_chunks : {'error', 'fill'}
        A zarr array with chunks missing from its store [image.missing_chunks].
    block_shape : tuple of 3 int
        Image region per network call, before context [prediction.block_shape].
    n_tiles : tuple of 3 int, optional
        StarDist tiles inside a block [prediction.n_tiles].
    max_tile_voxels : int
        Voxels per network call when ``n_tiles`` is None [prediction.max_tile_voxels].
    normalize : mapping, optional
        ``method``, ``pmin``, ``pmax``, ``sample_size``, ``lo``, ``hi``
        [prediction.normalize].
    prob_thresh : float, optional
        Candidate threshold (None: the model's) [prediction.prob_thresh].
    voxel_size : tuple of 3 float, optional
        Voxel size z, y, x in micrometers, recorded in the candidate file (None: from the
        image file's metadata, else unknown) [image.voxel_size].
    show_progress : bool
        Draw a progress bar on stderr.

    Returns
    -------
    PredictionSummary
        ``blocks``, ``candidates``, ``voxels``, ``seconds`` and the busy seconds of each lane.

    Raises
    ------
    UserError
        For an argument of the wrong form or an unusable image or model, before TensorFlow is
        imported where possible.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> from stardist_hpc import predict_candidates, open_candidates
    >>> from stardist_hpc.synthetic import nuclei_volume
    >>> image, _ = nuclei_volume((32, 64, 64), 6, seed=1)
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "prediction.h5"
    >>> summary = predict_candidates(image, "models/demo", out, show_progress=False)
    >>> summary.blocks, open_candidates(out).n_candidates == summary.candidates
    (1, True)
    """
    settings = arguments_config(PredictionSection, block_shape=block_shape, n_tiles=n_tiles,
                                max_tile_voxels=max_tile_voxels, prob_thresh=prob_thresh,
                                normalize=normalize)
    output = arguments_config(LocalOutputSection, path=output).path
    configured_voxel_size = voxel_size_triple(voxel_size, "image.voxel_size", None)
    model_dir, info, load = _model_and_info(model)
    channel = channels(channel, "image.channel", Path.cwd())
    check_channels(info, channel)
    with _open_image(image, channel=channel, axes=axes, dataset=dataset,
                     missing_chunks=missing_chunks) as volume:
        # named by their config keys, which the docstring maps onto the arguments
        inputs = {"image.path": volume.path} if volume.path.exists() else {}
        if model_dir is not None:
            inputs["model.name"] = model_dir
        check_outputs_apart(inputs, outputs={"output.path": (output, temporary_path(output))})
        voxel = resolve_voxel_size(configured_voxel_size, volume.path if isinstance(
            image, (str, os.PathLike)) else None, dataset)
        with run_lock((lock_path_of(output), output)):
            return _predict(volume, load, info, output, settings, channel, model_dir, voxel,
                            show_progress)


def _predict(volume, load, info, output, settings, channel, model_dir, voxel_size,
             show_progress):
    # the normalisation reads the image (and finds unreadable or non-finite pixels) before
    # TensorFlow takes its time
    normalization = configured_normalization(volume, settings.normalize)
    model = load()
    prob_thresh = _thresholds_in_effect(info, settings.prob_thresh)
    meta = CandidateMeta(
        image_shape=tuple(volume.shape), rays_json=info.rays_json, grid=info.grid,
        prob_thresh=prob_thresh, nms_thresh=info.nms_thresh, model_name=info.name,
        image_path=str(volume.path), channel=channel, n_classes=info.n_classes,
        norm_lo=normalization.lo, norm_hi=normalization.hi,
        norm_pmin=normalization.pmin, norm_pmax=normalization.pmax,
        norm_method=normalization.method, software_version=__version__,
        voxel_size=voxel_size.size, voxel_unit=voxel_size.unit,
        parameters=json.dumps({"model": str(model_dir or info.name), "prediction":
                               dataclasses.asdict(settings)}, default=str, sort_keys=True))
    with CandidateWriter(output, meta, resume_key(meta, model_dir, settings)) as writer:
        summary = predict_volume(Network(model), volume, normalization, writer,
                                 block_shape=settings.block_shape, prob_thresh=prob_thresh,
                                 n_tiles=settings.n_tiles,
                                 max_tile_voxels=settings.max_tile_voxels,
                                 show_progress=show_progress)
    log_summary(summary, output)
    return summary


def run(config):
    """``local_prediction.py``: the GPU step for a validated :class:`LocalConfig`."""
    image = config.image
    return predict_candidates(
        image.path, config.model.basedir / config.model.name, config.output.path,
        channel=image.channel, axes=image.axes, dataset=image.dataset,
        missing_chunks=image.missing_chunks,
        block_shape=config.prediction.block_shape, n_tiles=config.prediction.n_tiles,
        max_tile_voxels=config.prediction.max_tile_voxels,
        normalize=dataclasses.asdict(config.prediction.normalize),
        prob_thresh=config.prediction.prob_thresh, voxel_size=image.voxel_size)


def log_summary(summary, output):
    """Log the run's rate and how busy each lane was (lanes overlap: their sum may exceed
    the loop's wall time)."""
    wall = max(summary.seconds, EPSILON_SECONDS)
    lanes = ", ".join(f"{lane} {seconds:.1f} s" for lane, seconds in summary.lane_seconds.items())
    log.info("done: %d blocks, %d candidates, %.3g voxels/s (%.1f s; busy: %s) -> %s",
             summary.blocks, summary.candidates, summary.voxels / wall, summary.seconds, lanes,
             output)
