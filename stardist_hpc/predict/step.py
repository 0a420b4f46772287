"""The GPU step: stream a large image block by block through StarDist3D into a candidate file.

Each block's core is predicted with enough context around it for the network's receptive
field; only candidates whose point lies in the core are kept, so every voxel is predicted once.
Blocks at the far end of an axis are read from the image reflect-padded to a multiple of the
network's divisor, exactly as StarDist pads a whole image, so a block-wise run gives the
candidates of one whole-image ``predict_sparse`` call. The next block is read and normalised,
and the previous one written, while the network runs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from numpy.typing import ArrayLike
from tqdm import tqdm

from .. import __version__
from ..config import ImageSection, LocalOutputSection, PredictionSection, arguments_config
from ..errors import UserError
from ..geometry.tiling import grid_boxes
from ..io.candidates import CandidateMeta, CandidateWriter, temporary_path
from ..io.image import array_volume, open_volume
from ..io.model_files import ModelInfo, model_weights, read_model_info
from ..io.path_guard import check_outputs_apart
from .normalization import percentile_normalization

log = logging.getLogger(__name__)

#: (z, y, x) sizes of the public API.
Shape = tuple[int, int, int]

#: grid cells at the image border where StarDist's predict_sparse ignores candidates (its ``b``).
BORDER_CELLS = 2


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


def read_block(volume, plan, normalization):
    """Read a block's region, reflect-padding past the image end as StarDist pads the image."""
    shape = volume.shape
    real_hi = tuple(min(h, s) for h, s in zip(plan.read_hi, shape))
    block = normalization.apply(volume.read(plan.read_lo, real_hi))
    pad = [(0, h - r) for h, r in zip(plan.read_hi, real_hi)]
    if any(p for _, p in pad):
        block = np.pad(block, pad, mode="reflect")
    return block


def keep_owned(points, plan, geometry):
    """Mask of candidates (global points) in the block's core and outside StarDist's border.

    StarDist drops candidates in the first and last ``BORDER_CELLS`` grid cells of the padded
    image and those in the padding itself; the same rule applied globally keeps block-wise and
    whole-image candidates identical.
    """
    grid = np.asarray(geometry.grid)
    cells = points // grid
    last_cell = np.asarray(geometry.padded_shape) // grid - BORDER_CELLS
    owned = np.all((points >= plan.core_lo) & (points < plan.core_hi), axis=1)
    owned &= np.all((cells >= BORDER_CELLS) & (cells < last_cell), axis=1)
    return owned & np.all(points < np.asarray(geometry.shape), axis=1)


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


def predict_block(model, block, plan, geometry, prob_thresh, n_tiles):
    """Candidates (prob, dist, points in global voxel coordinates) owned by one block."""
    prob, dist, points = model.predict_sparse(block, prob_thresh=prob_thresh, axes="ZYX",
                                              n_tiles=n_tiles, show_tile_progress=False, b=0)
    points = points.astype(np.int64) + np.asarray(plan.read_lo)
    owned = keep_owned(points, plan, geometry)
    return (prob[owned].astype(np.float32), dist[owned].astype(np.float32),
            points[owned].astype(np.int32))


def load_model(model_dir):
    """Load the StarDist3D model in folder ``model_dir`` (imports TensorFlow)."""
    from stardist.models import StarDist3D

    model_dir = Path(model_dir)
    # StarDist prints what it loads on stdout, which a library must leave to its caller
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        model = StarDist3D(None, name=model_dir.name, basedir=str(model_dir.parent))
    for line in printed.getvalue().splitlines():
        log.debug("StarDist: %s", line)
    return _single_channel(model)


def _single_channel(model):
    if model.config.n_channel_in != 1:
        raise UserError(f"model {model.name}: expected a single-channel model, got "
                        f"n_channel_in {model.config.n_channel_in}")
    return model


def _loaded_model_info(model):
    """Rays, grid and thresholds of a StarDist3D model already loaded in Python."""
    return ModelInfo(name=str(model.name), rays_json=json.dumps(model.config.rays_json),
                     n_rays=int(model.config.n_rays), grid=tuple(model.config.grid),
                     prob_thresh=float(model.thresholds.prob),
                     nms_thresh=float(model.thresholds.nms))


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


@dataclass(frozen=True)
class PredictionSummary:
    """What a GPU-step run did; ``seconds`` and ``network_seconds`` cover the block loop."""
    blocks: int
    candidates: int
    seconds: float
    network_seconds: float


def _blocks_to_predict(plans, writer):
    """The plans after the blocks ``writer`` already holds (from an interrupted run)."""
    done = writer.completed_cores
    if [(p.core_lo, p.core_hi) for p in plans[:len(done)]] != done:
        raise RuntimeError(f"{writer.tmp_path}: its blocks are not the planned ones; delete it")
    if done:
        log.info("continuing %s after %d of %d blocks", writer.tmp_path, len(done), len(plans))
    return plans[len(done):]


def predict_volume(model, volume, normalization, writer, *, block_shape, prob_thresh, n_tiles,
                   max_tile_voxels, show_progress=True):
    """Predict the blocks of ``volume`` that ``writer`` lacks and append their candidates.

    Reading runs one block ahead and writing one block behind the network call. With
    ``n_tiles`` None, each block is split into tiles of at most ``max_tile_voxels``.
    """
    geometry = network_geometry(model, volume.shape)
    all_plans = plan_blocks(geometry, block_shape)
    log.info("%d blocks of core %s with context %s (network divisor %s)", len(all_plans),
             aligned_block_shape(geometry, block_shape), geometry.context, geometry.div_by)
    plans = _blocks_to_predict(all_plans, writer)
    start, network_seconds, pending_write = time.perf_counter(), 0.0, None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="write") as writer_pool:
        blocks = _prefetch(plans, lambda p: read_block(volume, p, normalization))
        for plan, block in tqdm(blocks, total=len(all_plans), initial=len(all_plans) - len(plans),
                                desc="blocks", unit="block", disable=not show_progress):
            t0 = time.perf_counter()
            tiles = n_tiles or auto_n_tiles(block.shape, geometry.context, max_tile_voxels)
            prob, dist, points = predict_block(model, block, plan, geometry, prob_thresh, tiles)
            network_seconds += time.perf_counter() - t0
            if pending_write is not None:
                pending_write.result()   # surfaces write errors; at most one block in flight
            pending_write = writer_pool.submit(writer.append, plan.core_lo, plan.core_hi,
                                               prob, dist, points)
        if pending_write is not None:
            pending_write.result()
    return PredictionSummary(len(all_plans), writer.n_rows, time.perf_counter() - start,
                             network_seconds)


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
        return None, _loaded_model_info(model), lambda: _single_channel(model)
    raise UserError(f"model: expected a model folder path or a StarDist3D model, got {model!r}")


def predict_candidates(image: str | os.PathLike | ArrayLike, model: str | os.PathLike | Any,
                       output: str | os.PathLike, *, channel: int = 0, axes: str | None = None,
                       dataset: str | None = None, missing_chunks: str = "error",
                       block_shape: Shape = (64, 256, 256),
                       n_tiles: Shape | None = None, max_tile_voxels: int = 8_388_608,
                       normalize: Mapping[str, float] | None = None,
                       prob_thresh: float | None = None,
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
    channel : int
        Channel of an image with a C axis [image.channel].
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
        ``pmin``, ``pmax``, ``sample_size`` [prediction.normalize].
    prob_thresh : float, optional
        Candidate threshold (None: the model's) [prediction.prob_thresh].
    show_progress : bool
        Draw a progress bar on stderr.

    Returns
    -------
    PredictionSummary
        ``blocks``, ``candidates``, ``seconds``, ``network_seconds``.

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
    model_dir, info, load = _model_and_info(model)
    with _open_image(image, channel=channel, axes=axes, dataset=dataset,
                     missing_chunks=missing_chunks) as volume:
        # named by their config keys, which the docstring maps onto the arguments
        inputs = {"image.path": volume.path} if volume.path.exists() else {}
        if model_dir is not None:
            inputs["model.name"] = model_dir
        check_outputs_apart(inputs, outputs={"output.path": (output, temporary_path(output))})
        return _predict(volume, load, info, output, settings, channel, model_dir,
                        show_progress)


def _predict(volume, load, info, output, settings, channel, model_dir, show_progress):
    norm = settings.normalize
    # the sample finds unreadable or non-finite pixels before TensorFlow takes its time
    normalization = percentile_normalization(volume, norm.pmin, norm.pmax, norm.sample_size)
    model = load()
    prob_thresh = info.prob_thresh if settings.prob_thresh is None else settings.prob_thresh
    meta = CandidateMeta(
        image_shape=tuple(volume.shape), rays_json=info.rays_json, grid=info.grid,
        prob_thresh=prob_thresh, nms_thresh=info.nms_thresh, model_name=info.name,
        image_path=str(volume.path), channel=channel,
        norm_lo=normalization.lo, norm_hi=normalization.hi,
        norm_pmin=normalization.pmin, norm_pmax=normalization.pmax,
        software_version=__version__,
        parameters=json.dumps({"model": str(model_dir or info.name), "prediction":
                               dataclasses.asdict(settings)}, default=str, sort_keys=True))
    with CandidateWriter(output, meta, resume_key(meta, model_dir, settings)) as writer:
        summary = predict_volume(model, volume, normalization, writer,
                                 block_shape=settings.block_shape, prob_thresh=prob_thresh,
                                 n_tiles=settings.n_tiles,
                                 max_tile_voxels=settings.max_tile_voxels,
                                 show_progress=show_progress)
    log.info("done: %d blocks, %d candidates in %.1f s (%.0f candidates/s; %.0f%% in the "
             "network) -> %s", summary.blocks, summary.candidates, summary.seconds,
             summary.candidates / max(summary.seconds, 1e-9),
             100 * summary.network_seconds / max(summary.seconds, 1e-9), output)
    return summary


def run(config):
    """``local_prediction.py``: the GPU step for a validated :class:`LocalConfig`."""
    image, norm = config.image, config.prediction.normalize
    return predict_candidates(
        image.path, config.model.basedir / config.model.name, config.output.path,
        channel=image.channel, axes=image.axes, dataset=image.dataset,
        missing_chunks=image.missing_chunks,
        block_shape=config.prediction.block_shape, n_tiles=config.prediction.n_tiles,
        max_tile_voxels=config.prediction.max_tile_voxels,
        normalize={"pmin": norm.pmin, "pmax": norm.pmax, "sample_size": norm.sample_size},
        prob_thresh=config.prediction.prob_thresh)
