"""The HPC step: candidates -> tile-wise exact NMS -> survivors -> label chunks -> label.h5.

``run(config)`` only orchestrates; every stage is a short function over task functions that run
on the Dask cluster (see :mod:`stardist_hpc.nms` and :mod:`stardist_hpc.render`). Checkpoints
live in ``output.work_dir``::

    run.json                 what the checkpoints belong to (a changed run refuses to resume)
    prediction_indexed.h5    the original-format input, converted (if the input was one)
    nms/round{r}/tile{i}.npz tile results of every NMS round
    survivors.h5             every kept candidate with its id (1 = most probable)
    chunks/{i}.bin, {i}.npz  rendered label chunks (deflate) and their object statistics

The result equals StarDist's single-process ``non_maximum_suppression_3d_inds`` followed by
``polyhedron_to_label`` on all candidates ranked in the total order of
:mod:`stardist_hpc.order`, while the driver holds only per-tile and per-object arrays.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .candidates import CandidateFile, ray_vectors
from .checkpoint import (
    SurvivorFile,
    check_signature,
    remove_stale_temporaries,
    write_survivor_table,
)
from .cluster import run_tasks, start_cluster
from .config import HpcConfig
from .errors import UserError
from .label_file import LabelAttributes, write_label_file
from .model_files import read_model_info
from .nms import NmsJob, gather_tile, plan_tiles, resolve_halo, run_rounds
from .render import RenderJob, chunk_files, chunk_tasks, render_chunk
from .tiling import Grid

log = logging.getLogger(__name__)

#: the original-format input converted into this project's format, inside work_dir.
INDEXED_INPUT = "prediction_indexed.h5"
SURVIVORS = "survivors.h5"
NMS_DIR = "nms"
CHUNK_DIR = "chunks"


@dataclass(frozen=True)
class HpcJob:
    """Everything the stages need, resolved from the config and the candidate file."""
    candidate_path: Path
    image_shape: tuple
    rays_json: str
    prob_thresh: float
    nms_thresh: float
    nms_backend: str
    tile_shape: tuple
    halo: tuple
    chunk_shape: tuple
    labeling_backend: str
    work_dir: Path
    label_path: Path


@dataclass(frozen=True)
class RunSignature:
    """What the checkpoints in work_dir depend on."""
    input_path: str
    input_size: int
    input_mtime_ns: int
    nms_thresh: float
    nms_backend: str
    tile_shape: tuple
    halo: tuple
    chunk_shape: tuple
    labeling_backend: str


@dataclass
class StageSeconds:
    """Wall-clock seconds spent in each stage."""
    index: float = 0.0
    nms: float = 0.0
    gather: float = 0.0
    labeling: float = 0.0
    write: float = 0.0


class RunSummary(NamedTuple):
    """What a run did."""
    n_candidates: int
    n_objects: int
    n_rounds: int
    n_reruns: int
    seconds: StageSeconds


@contextlib.contextmanager
def _timed(seconds, stage):
    started = time.perf_counter()
    yield
    setattr(seconds, stage, getattr(seconds, stage) + time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# resolving the job


def _model_info(config: HpcConfig):
    """The configured model's info, or None when ``model.basedir`` or ``model.name`` is null.

    A configured folder that does not exist is an error (read_model_info says so): a typo
    must not silently fall back to the file's own rays and thresholds.
    """
    model = config.model
    if model.basedir is None or model.name is None:
        return None
    return read_model_info(model.basedir, model.name)


def _open_candidates(config: HpcConfig, model):
    """The candidate file, converting the original pipeline's format into work_dir first."""
    from .original_format import index_original_file, is_original_format
    path = config.input.prediction
    if not is_original_format(path):
        return CandidateFile(path)
    if model is None:
        raise UserError(f"{path} is an original-pipeline probabilities.h5, which has no rays: "
                        "set model.basedir and model.name to the model that predicted it")
    return index_original_file(path, config.output.work_dir / INDEXED_INPUT, model)


def _check_rays(model, candidates):
    """Refuse a model whose rays differ from the ones the candidates were predicted with."""
    model_rays, file_rays = ray_vectors(model.rays_json), ray_vectors(candidates.meta.rays_json)
    fix = ("expected the model that predicted the file: check model.name, or set model.basedir "
           "and model.name to null to use the file's rays")
    if len(model_rays) != len(file_rays):
        raise UserError(f"rays mismatch: model {model.name} has {len(model_rays)} rays, "
                        f"prediction file has {len(file_rays)} ({candidates.path}); {fix}")
    if not np.allclose(model_rays, file_rays):
        raise UserError(f"rays mismatch: model {model.name} and prediction file "
                        f"{candidates.path} have different ray directions "
                        f"({len(file_rays)} rays each); {fix}")


def _nms_thresh(config, model, candidates):
    """The NMS threshold: configured, else the model's (if present), else the file's."""
    if config.nms.thresh is not None:
        return config.nms.thresh
    return model.nms_thresh if model is not None else candidates.meta.nms_thresh


def resolve_job(config: HpcConfig, candidates: CandidateFile, model):
    """The job of ``config`` on ``candidates`` (rays checked against ``model`` if given)."""
    if model is not None:
        _check_rays(model, candidates)
    meta = candidates.meta
    chunk_shape = tuple(min(c, s) for c, s in zip(config.labeling.chunk_shape, meta.image_shape))
    return HpcJob(candidate_path=candidates.path, image_shape=meta.image_shape,
                  rays_json=meta.rays_json, prob_thresh=float(meta.prob_thresh),
                  nms_thresh=float(_nms_thresh(config, model, candidates)),
                  nms_backend=config.nms.backend,
                  tile_shape=config.nms.tile_shape,
                  halo=resolve_halo(config.nms.halo, candidates.max_extent),
                  chunk_shape=chunk_shape, labeling_backend=config.labeling.backend,
                  work_dir=config.output.work_dir,
                  label_path=config.output.labels)


def _signature(config, job):
    stat = Path(config.input.prediction).stat()
    return RunSignature(str(config.input.prediction), stat.st_size, stat.st_mtime_ns,
                        job.nms_thresh, job.nms_backend, job.tile_shape, job.halo, job.chunk_shape,
                        job.labeling_backend)


# ---------------------------------------------------------------------------------------------
# the stages


def _nms_job(job):
    return NmsJob(job.candidate_path, job.rays_json, job.nms_thresh, job.image_shape,
                  job.work_dir / NMS_DIR, job.nms_backend)


def _nms_stage(job, plans, execute):
    log.info("NMS (%s): %d tile(s) of %s with halo %s, thresh %g", job.nms_backend, len(plans),
             job.tile_shape, job.halo, job.nms_thresh)
    return run_rounds(_nms_job(job), plans, execute)


def _gather_stage(job, plans, nms_summary, execute):
    """Write the survivor table (skipped if it is already checkpointed)."""
    path = job.work_dir / SURVIVORS
    if path.exists():
        return SurvivorFile(path)
    remove_stale_temporaries(path)
    counts = np.asarray(nms_summary.n_owned_kept, np.int64)
    starts = np.cumsum(counts) - counts
    arguments = [(_nms_job(job), plan, nms_summary.versions[plan.index]) for plan in plans
                 if counts[plan.index]]
    parts = ((starts[tile.index], tile.survivors)
             for tile in execute(gather_tile, arguments, "gather survivors"))
    n_rays = len(ray_vectors(job.rays_json))
    write_survivor_table(path, int(counts.sum()), n_rays, parts)
    return SurvivorFile(path)


def _chunk_grid(job):
    return Grid(job.image_shape, job.chunk_shape)


def _labeling_stage(job, survivors, execute):
    """Render every chunk that some survivor meets; returns the rendered chunk indices."""
    bbox_lo, bbox_hi = survivors.read_columns("bbox_lo", "bbox_hi")
    tasks = chunk_tasks(bbox_lo, bbox_hi, _chunk_grid(job))
    render_job = RenderJob(survivors.path, job.rays_json, job.image_shape, job.chunk_shape,
                           job.work_dir / CHUNK_DIR, job.labeling_backend)
    missing = [(render_job, task) for task in tasks
               if not chunk_files(render_job.chunk_dir, task.index).stats.exists()]
    log.info("labeling (%s): %d chunk(s) of %s hold objects, %d to render",
             job.labeling_backend, len(tasks), job.chunk_shape, len(missing))
    for _ in execute(render_chunk, missing, "labeling"):
        pass
    return [task.index for task in tasks]


def _write_stage(job, survivors, chunk_indices):
    ids, prob = survivors.read_columns("ids", "prob")
    prob_by_id = np.empty(len(ids), np.float32)
    prob_by_id[ids.astype(np.int64) - 1] = prob
    attributes = LabelAttributes(job.image_shape, job.rays_json, job.prob_thresh,
                                 job.nms_thresh, str(job.candidate_path))
    remove_stale_temporaries(job.label_path)
    write_label_file(job.label_path, _chunk_grid(job), job.work_dir / CHUNK_DIR, chunk_indices,
                     prob_by_id, attributes)


def segment(job: HpcJob, execute, seconds=None):
    """Run NMS, gathering, labeling and writing of ``job`` with the executor ``execute``.

    Parameters
    ----------
    job : HpcJob
    execute : callable
        ``execute(function, argument_tuples, description)`` yielding task results, e.g.
        ``functools.partial(cluster.run_tasks, client)`` or ``cluster.run_in_process``.
    seconds : StageSeconds, optional
        Accumulates the time of each stage.

    Returns
    -------
    RunSummary
    """
    seconds = StageSeconds() if seconds is None else seconds
    plans = plan_tiles(job.image_shape, job.tile_shape, job.halo)
    with _timed(seconds, "nms"):
        nms_summary = _nms_stage(job, plans, execute)
    with _timed(seconds, "gather"):
        survivors = _gather_stage(job, plans, nms_summary, execute)
    with _timed(seconds, "labeling"):
        chunk_indices = _labeling_stage(job, survivors, execute)
    with _timed(seconds, "write"):
        _write_stage(job, survivors, chunk_indices)
    n_candidates = CandidateFile(job.candidate_path).n_candidates
    return RunSummary(n_candidates, len(survivors), nms_summary.n_rounds, nms_summary.n_reruns,
                      seconds)


def _log_summary(job, summary):
    s = summary.seconds
    log.info("wrote %s: %d candidates -> %d objects (NMS: %d round(s), %d tile rerun(s))",
             job.label_path, summary.n_candidates, summary.n_objects, summary.n_rounds,
             summary.n_reruns)
    log.info("seconds: index %.1f, NMS %.1f, gather %.1f, labeling %.1f, write %.1f",
             s.index, s.nms, s.gather, s.labeling, s.write)


def run(config: HpcConfig):
    """Segment the candidates of ``config.input.prediction`` into ``config.output.labels``.

    Parameters
    ----------
    config : HpcConfig

    Returns
    -------
    RunSummary

    Raises
    ------
    UserError
        For unusable input: missing or malformed files, rays that disagree with the model,
        checkpoints of a different run in work_dir, SLURM workers that never start.
    """
    seconds = StageSeconds()
    model = _model_info(config)
    with _timed(seconds, "index"):
        candidates = _open_candidates(config, model)
    job = resolve_job(config, candidates, model)
    check_signature(job.work_dir, _signature(config, job))
    with start_cluster(config.cluster) as client:
        summary = segment(job, functools.partial(run_tasks, client), seconds)
    _log_summary(job, summary)
    return summary
