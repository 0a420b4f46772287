"""A plan of the HPC step before it is queued: sizes, memory and time, from the file's index.

``hpc_prediction.py CONFIG --plan`` reads only the candidate file's attributes and block index
(no candidate row), resolves the run's tiles, halo and chunks as the run would, and estimates
memory and time from per-core rates that ``benchmarks/scale.py`` measured. Nothing is run or
written.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np

from ..config import HpcConfig
from ..errors import UserError
from ..geometry.tiling import Box, Grid
from ..io.candidates import CandidateFile
from ..io.original_format import is_original_format
from .cluster import check_cluster, processes_per_job, site_setting
from .nms import batch_tiles, plan_tiles
from .render import batch_chunks
from .step import configured_model, resolve_params

log = logging.getLogger(__name__)

MIB = 2 ** 20
SECONDS_PER_HOUR = 3600.0
# Rates measured by benchmarks/scale.py (session 6, 2026-12-02, commit f32b78e plus the report
# process: one run of 1x/4x/16x, 180,224 / 720,896 / 2,883,584 candidates, 96 rays, defaults,
# 2 local workers of 1 thread, numba cache warm, idle machine: 1-min load 1-2.4 from the run
# itself); worker CPU seconds from getrusage inside the workers, per task function. The first
# run of a fresh installation also compiles the kernels (~40 CPU-s per worker).
#: candidates per core-second of one NMS pass (fast backend, after the borderline-band fix that
#: made it equal StarDist's on small polyhedra): 4,903 on the 1x set (one tile); 6,352 and
#: 6,345 on the 4x and 16x sets counting both passes (1.001 and 1.026 decisions per candidate).
NMS_CANDIDATES_PER_CORE_SECOND = 5_000.0
#: NMS work over each candidate when there are several tiles, relative to one untiled run:
#: candidates decided (first pass + reruns) per candidate: 1.026 on the 16x set with the
#: default tiles, 1.10 with 8 tiles of 128x128 on the 1x set: reruns re-decide only what can
#: change and the halo holds only candidates that meet the core.
NMS_PASSES_WITH_TILES = 1.1
#: StarDist's own NMS is about this many times slower than the fast one: 433-696x on smooth
#: sets, 49.5-458x on noisy ones and 16.8x for the whole step on a noisy file (nms_speed.py,
#: session 7); a round figure below most of them, so StarDist runs are not underestimated.
STARDIST_NMS_SLOWDOWN = 30.0
#: candidates per core-second of gathering the survivors: 404,000-418,000 on the 4x and 16x
#: sets (288,000 at 1x, where one task's fixed cost dominates).
GATHER_CANDIDATES_PER_CORE_SECOND = 400_000.0
#: candidates per core-second of rendering the label chunks, stardist renderer (56,419-57,496
#: on the 4x and 16x sets; 44,120 at 1x).
RENDER_CANDIDATES_PER_CORE_SECOND = 55_000.0
#: RSS of a worker process after its imports (measured: 224 MiB).
WORKER_BASE_MIB = 224.0
#: NMS task memory per candidate of its context and per ray, (worker peak - 224 MiB) /
#: candidates of the largest context / 96 rays: 26 bytes at 1x (648 MiB, 180,224), 24 at 4x
#: (1,062 MiB, ~381,000), 28 at 16x (1,330 MiB, ~430,000): the largest.
NMS_BYTES_PER_CANDIDATE_RAY = 28.0
#: labeling task memory per chunk voxel: the uint32 chunk, its mask and the compressed copy
#: (an estimate, not measured: the 1x set's labeling never set a worker's peak).
RENDER_BYTES_PER_VOXEL = 12.0
#: driver peak RSS (imports, scheduler, per-tile and per-object arrays; VmHWM): 197, 212 and
#: 238 MiB on the 1x, 4x and 16x sets (session 7, after objects.tsv stopped formatting 100,000
#: rows at once with numpy's string functions, which had raised session 6's 16x peak to 479
#: MiB); the largest, rounded up.
DRIVER_BASE_MIB = 240.0


@dataclass(frozen=True)
class Plan:
    """What a run of a config would do, estimated from the candidate file's index."""
    n_candidates: int
    n_blocks: int
    image_shape: tuple
    n_rays: int
    tile_shape: tuple
    halo: tuple
    n_tiles: int
    n_nms_tasks: int
    max_tile_candidates: int
    chunk_shape: tuple
    n_chunks: int
    n_label_tasks: int   # batches of neighbouring chunks
    task_mib: float
    nms_task_mib: float
    render_task_mib: float
    driver_mib: float
    core_hours: dict
    busy_cores: int
    task_share_mib: float | None   # of a SLURM job's memory, per task running at once
    cluster: str


def _candidate_file(config: HpcConfig):
    path = config.input.prediction
    if is_original_format(path):
        raise UserError(f"--plan reads the block index of this project's candidate file; {path} "
                        "is an original-pipeline probabilities.h5, which has none: plan on a "
                        "prediction.h5 written by local_prediction.py")
    return CandidateFile(path)


def context_candidates(blocks, contexts):
    """Candidates expected in each context box, assuming a uniform density inside each block.

    Parameters
    ----------
    blocks : structured ndarray
        The candidate file's block index (core lo/hi and row range of each block).
    contexts : list of Box

    Returns
    -------
    ndarray of int64, one per context
    """
    lo = np.stack([blocks[f"{a}0"] for a in "zyx"], axis=1)[None]
    hi = np.stack([blocks[f"{a}1"] for a in "zyx"], axis=1)[None]
    c_lo = np.array([c.lo for c in contexts])[:, None]
    c_hi = np.array([c.hi for c in contexts])[:, None]
    overlap = np.clip(np.minimum(hi, c_hi) - np.maximum(lo, c_lo), 0, None).prod(axis=2)
    fraction = overlap / np.maximum((hi - lo).prod(axis=2), 1)
    counts = blocks["row_stop"] - blocks["row_start"]
    return np.ceil(fraction @ counts).astype(np.int64)


def _core_hours(n_candidates, backend, n_tiles):
    passes = NMS_PASSES_WITH_TILES if n_tiles > 1 else 1.0
    nms_rate = NMS_CANDIDATES_PER_CORE_SECOND / passes / (
        STARDIST_NMS_SLOWDOWN if backend == "stardist" else 1.0)
    rates = {"NMS": nms_rate, "gather": GATHER_CANDIDATES_PER_CORE_SECOND,
             "labeling": RENDER_CANDIDATES_PER_CORE_SECOND}
    return {stage: n_candidates / rate / SECONDS_PER_HOUR for stage, rate in rates.items()}


def _slurm_cores(slurm):
    """Cores of all jobs, the job memory's share per task running at once (MiB), and the
    description, site settings included.

    Each thread of a worker runs its task in a task process of its own
    (:mod:`.task_processes`), so every core of a job runs a task, whatever ``processes`` is.
    """
    from dask.utils import parse_bytes
    cores = slurm.cores or site_setting("cores")
    memory = slurm.memory or site_setting("memory")
    processes = processes_per_job(slurm)
    tasks_per_job = processes * max(1, cores // processes)
    return (slurm.jobs * tasks_per_job, parse_bytes(memory) / tasks_per_job / MIB,
            f"slurm: {slurm.jobs} jobs x {cores} cores, {processes} process(es) per job, "
            f"{memory} per job")


def _cluster_cores(cluster):
    """(cores that run tasks, memory share per task in MiB or None, description)."""
    if cluster.mode == "slurm":
        return _slurm_cores(cluster.slurm)
    local = cluster.local
    n = local.n_workers or os.cpu_count()
    return (n * local.threads_per_worker, None,
            f"local: {n} worker process(es) x {local.threads_per_worker} thread(s)")


def _batch_contexts(params, tiles, candidates):
    """The box around the contexts of each batch of tiles that one NMS task runs."""
    batches = batch_tiles(params.image_shape, params.tile_shape, candidates.n_candidates)
    return [Box(tuple(np.min([tiles[i].context.lo for i in members], axis=0)),
                tuple(np.max([tiles[i].context.hi for i in members], axis=0)))
            for members in (np.flatnonzero(batches == b) for b in np.unique(batches))]


def make_plan(config: HpcConfig) -> Plan:
    """The plan of ``config``'s run, reading only the candidate file's index.

    Raises
    ------
    UserError
        As a run would for its input and model; also for an original-format input.
    """
    check_cluster(config.cluster)
    candidates = _candidate_file(config)
    params = resolve_params(config, candidates, configured_model(config))
    tiles = plan_tiles(params.image_shape, params.tile_shape, params.halo)
    per_tile = context_candidates(candidates.blocks, [t.context for t in tiles])
    # a task reads the contexts of its batch of tiles at once
    per_task = context_candidates(candidates.blocks, _batch_contexts(params, tiles, candidates))
    n_rays = candidates.meta.n_rays
    nms_mib = WORKER_BASE_MIB + per_task.max(initial=0) * n_rays * NMS_BYTES_PER_CANDIDATE_RAY / MIB
    render_mib = WORKER_BASE_MIB + math.prod(params.chunk_shape) * RENDER_BYTES_PER_VOXEL / MIB
    busy_cores, task_share_mib, cluster = _cluster_cores(config.cluster)
    chunks = Grid(params.image_shape, params.chunk_shape)
    return Plan(candidates.n_candidates, len(candidates.blocks), params.image_shape, n_rays,
                params.tile_shape, params.halo, len(tiles), len(per_task),
                int(per_tile.max(initial=0)),
                params.chunk_shape, len(chunks), len(np.unique(batch_chunks(chunks))),
                max(nms_mib, render_mib), nms_mib, render_mib, DRIVER_BASE_MIB,
                _core_hours(candidates.n_candidates, params.nms_backend, len(tiles)), busy_cores,
                task_share_mib, cluster)


def wall_hours(plan: Plan) -> float:
    """Hours of the stages on the cluster: each stage's core-hours over the cores it can use."""
    cores = plan.busy_cores
    parallel = {"NMS": min(cores, plan.n_nms_tasks), "gather": min(cores, plan.n_nms_tasks),
                "labeling": min(cores, plan.n_label_tasks)}
    return sum(hours / max(parallel[stage], 1) for stage, hours in plan.core_hours.items())


def _warn_about_memory(plan: Plan):
    if plan.task_share_mib is not None and plan.task_mib > plan.task_share_mib:
        log.warning("a task needs an estimated %.0f MiB, more than its share of the job memory "
                    "(%.0f MiB, memory / cores): raise cluster.slurm.memory or use a smaller "
                    "nms.tile_shape", plan.task_mib, plan.task_share_mib)


def _shape(shape):
    return "x".join("full" if s is None else str(s) for s in shape)


def format_plan(plan: Plan) -> str:
    """The plan as lines of text."""
    hours = plan.core_hours
    return "\n".join([
        "plan of the HPC step (nothing was run; from the candidate file's index)",
        f"candidates        {plan.n_candidates:,} in {plan.n_blocks} prediction block(s), "
        f"image {_shape(plan.image_shape)}, {plan.n_rays} rays",
        f"NMS tiles         {plan.n_tiles} of {_shape(plan.tile_shape)} + halo "
        f"{_shape(plan.halo)}; the largest holds ~{plan.max_tile_candidates:,} candidates "
        f"with its halo",
        f"label chunks      at most {plan.n_chunks} of {_shape(plan.chunk_shape)} (only the "
        f"chunks that hold objects are rendered)",
        f"Dask tasks        {plan.n_nms_tasks} NMS + at most {plan.n_nms_tasks} gather + at most "
        f"{plan.n_label_tasks} labeling (+ reruns of tiles whose halo assumptions were wrong)",
        f"peak memory       ~{plan.nms_task_mib:,.0f} MiB per NMS task, "
        f"~{plan.render_task_mib:,.0f} MiB per labeling task, driver ~{plan.driver_mib:,.0f} MiB"
        + ("" if plan.task_share_mib is None else
           f"; a task's share of the job memory: {plan.task_share_mib:,.0f} MiB"),
        f"CPU time          ~{sum(hours.values()):.2f} CPU-hours (NMS {hours['NMS']:.2f}, "
        f"gather {hours['gather']:.2f}, labeling {hours['labeling']:.2f}; rates of "
        f"benchmarks/scale.py)",
        f"cluster           {plan.cluster}: {plan.busy_cores} core(s) busy "
        f"(one task on each)",
        f"wall time         ~{wall_hours(plan) * 60:.1f} min of tasks, plus queue waits, "
        f"start-up and writing label.h5",
    ])


def plan_report(config: HpcConfig) -> str:
    """``hpc_prediction.py CONFIG --plan``: the plan's text (warning about memory if needed)."""
    plan = make_plan(config)
    _warn_about_memory(plan)
    return format_plan(plan)
