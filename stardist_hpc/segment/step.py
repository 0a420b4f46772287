"""The HPC step: candidates -> tile-wise exact NMS -> survivors -> label chunks -> label.h5.

:func:`segment_candidates` is the step's public entry point (``hpc_prediction.py`` maps its YAML
onto the same arguments). It resolves one :class:`~stardist_hpc.segment.params.SegmentParams`,
then every stage is a short function over task functions that run on the Dask cluster (see
:mod:`stardist_hpc.segment.nms` and :mod:`stardist_hpc.segment.render`). Checkpoints live in
``work_dir``::

    run.json                 what the checkpoints belong to (a changed run starts afresh)
    prediction_indexed.h5    the original-format input, converted (if the input was one)
    nms/round{r}/batch{b}.npz the outcomes and results of a batch of tiles in an NMS round
    survivors.h5             every kept candidate with its id (1 = most probable)
    chunks/{i}.bin, {i}.npz  rendered label chunks (deflate) and their object statistics,
                             previews and intensities (see :mod:`.chunk_extras`)
    ome_zarr/{level}/{i}.npz markers of the OME-Zarr chunk files each task wrote

Beside ``label.h5``: ``intensities.tsv`` (with ``measure.image``) and the QC report
(:mod:`.report`).

The result equals StarDist's single-process ``non_maximum_suppression_3d_inds`` followed by
``polyhedron_to_label`` on all candidates ranked in the total order of
:mod:`stardist_hpc.geometry.order`, while the driver holds only per-tile and per-object arrays.
"""
from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from .. import __version__
from ..config import HpcConfig, arguments_config
from ..errors import UserError
from ..geometry.rays import ray_vectors
from ..geometry.tiling import Grid
from ..io.atomic import remove_stale_temporaries, remove_temporaries_below
from ..io.candidates import CandidateFile
from ..io.checkpoint import resume_or_start_afresh
from ..io.chunks import chunk_done
from ..io.disk_space import METADATA_BYTES, check_free_space
from ..io.input_pin import check_unchanged, pin, verify_pinned
from ..io.intensities import INTENSITIES, write_tsv
from ..io.label_file import object_dtype, write_label_file
from ..io.model_files import read_model_info
from ..io.ome_zarr import temporary_store
from ..io.path_guard import check_outputs_apart
from ..io.run_lock import WORK_DIR_LOCK, lock_path_of, run_lock
from ..io.survivors import SurvivorFile, intact_survivor_file, write_survivor_table
from ..io.tables import check_parquet
from .chunk_extras import ExtrasCollector, extras_done, intensity_tables
from .cluster import check_cluster, run_tasks, start_cluster
from .measure import resolve_measure
from .nms import final_results, gather_tiles, plan_tiles, resolve_halo, run_rounds
from .outputs import ome_zarr_stage, prepare_ome_zarr, publish_outputs, write_tables
from .params import CHECKPOINTS, INDEXED_INPUT, SETTING_CHECKPOINTS, SegmentParams
from .render import batch_chunks, chunk_tasks, render_chunks
from .report import write_report
from .summary import RunSummary, StageSeconds

log = logging.getLogger(__name__)

#: HDF5's limit on one chunk, and the bytes of one uint32 label.
MAX_HDF5_CHUNK_BYTES = 2 ** 32
LABEL_BYTES = 4
#: sub-directory of the label file's directory that holds checkpoints when work_dir is None.
DEFAULT_WORK_DIR = "work"
#: an output argument of segment_candidates that means "the default name beside labels".
BESIDE_LABELS = "beside"
OME_ZARR_SUFFIX = ".ome.zarr"
DEFAULT_OBJECTS_TSV = "objects.tsv"
DEFAULT_REPORT = "report.html"


@contextlib.contextmanager
def _timed(seconds, stage):
    started = time.perf_counter()
    yield
    setattr(seconds, stage, getattr(seconds, stage) + time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------
# resolving the parameters


def _model_folder(config: HpcConfig):
    """The configured model folder, or None when ``model.basedir`` or ``model.name`` is null."""
    model = config.model
    return None if model.basedir is None or model.name is None else model.basedir / model.name


def configured_model(config: HpcConfig):
    """The configured model's info, or None when ``model.basedir`` or ``model.name`` is null.

    A configured folder that does not exist is an error (read_model_info says so): a typo
    must not silently fall back to the file's own rays and thresholds.
    """
    folder = _model_folder(config)
    return None if folder is None else read_model_info(folder.parent, folder.name)


def _check_outputs_apart(config: HpcConfig):
    """Refuse outputs or a work_dir that would write over the candidates or the model."""
    inputs = {"input.prediction": config.input.prediction}
    if _model_folder(config) is not None:
        inputs["model.name"] = _model_folder(config)
    output = config.output
    tables = ()
    if config.measure.image is not None:
        inputs["measure.image"], tables = config.measure.image, (INTENSITIES,)
    files = {"output.labels": (output.labels, *_beside_labels(output.labels, tables)),
             "output.objects_tsv": (output.objects_tsv,),
             "output.objects_parquet": (output.objects_parquet,),
             "output.report": (output.report,)}
    if output.report is not None:   # nor over the label file, which is written first
        check_outputs_apart({"output.labels": output.labels},
                            {"output.report": files["output.report"]})
    directories = {"output.work_dir": output.work_dir, "output.ome_zarr": output.ome_zarr}
    if output.ome_zarr is not None:
        directories["output.ome_zarr (temporary)"] = temporary_store(output.ome_zarr)
    check_outputs_apart(inputs, outputs={k: v for k, v in files.items() if v[0] is not None},
                        directories={k: v for k, v in directories.items() if v is not None})


def _open_candidates(config: HpcConfig, model):
    """The candidate file, converting the original pipeline's format into work_dir first."""
    from ..io.original_format import index_original_file, is_original_format
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


def source_identity(config: HpcConfig) -> dict:
    """The input file's path, size and modification time, and the model folder: what the
    indexed copy of an original-format input depends on (fields of SegmentParams)."""
    stat = Path(config.input.prediction).stat()
    return {"input_path": str(config.input.prediction), "input_size": stat.st_size,
            "input_mtime_ns": stat.st_mtime_ns,
            "model_dir": str(_model_folder(config) or "")}


def _check_source_unchanged(params):
    """Refuse an original-format input changed since start-up (its indexed copy is pinned)."""
    if params.input_path != str(params.candidate_path):
        check_unchanged(params.input_path, params.input_size, params.input_mtime_ns)


def _storage_axis(storage, chunk):
    """The largest divisor of the task chunk ``chunk`` up to ``storage``; the task chunk itself
    if that divisor is under half of ``storage`` (so that no storage chunk straddles tasks)."""
    divisor = next(d for d in range(min(storage, chunk), 0, -1) if chunk % d == 0)
    return divisor if 2 * divisor >= min(storage, chunk) else chunk


def _storage_shape(config: HpcConfig, chunk_shape):
    """``output.chunk_shape`` fitted to the task chunk (logged if it had to change)."""
    storage = tuple(_storage_axis(s, c) for s, c in zip(config.output.chunk_shape, chunk_shape))
    if storage != tuple(config.output.chunk_shape):
        log.info("storage chunks %s (output.chunk_shape %s fitted to the task chunk %s)",
                 storage, list(config.output.chunk_shape), chunk_shape)
    return storage


def resolve_params(config: HpcConfig, candidates: CandidateFile, model=None) -> SegmentParams:
    """The parameters of ``config`` on ``candidates`` (rays checked against ``model`` if given)."""
    if model is not None:
        _check_rays(model, candidates)
    meta = candidates.meta
    chunk_shape = tuple(min(c, s) for c, s in zip(config.labeling.chunk_shape, meta.image_shape))
    if math.prod(chunk_shape) * LABEL_BYTES >= MAX_HDF5_CHUNK_BYTES:
        raise UserError(f"config key 'labeling.chunk_shape': expected an HDF5 chunk under 4 GiB "
                        f"({MAX_HDF5_CHUNK_BYTES // LABEL_BYTES} voxels), got "
                        f"{list(config.labeling.chunk_shape)} ({math.prod(chunk_shape)} voxels "
                        "inside the image); use e.g. [64, 256, 256]")
    return SegmentParams(
        candidate_pin=pin(candidates), **source_identity(config),
        image_shape=meta.image_shape, rays_json=meta.rays_json,
        prob_thresh=float(meta.prob_thresh),
        nms_thresh=float(_nms_thresh(config, model, candidates)),
        nms_backend=config.nms.backend, tile_shape=config.nms.tile_shape,
        halo=resolve_halo(config.nms.halo, candidates.max_extent),
        chunk_shape=chunk_shape, labeling_backend=config.labeling.backend,
        work_dir=config.output.work_dir, label_path=config.output.labels,
        n_classes=meta.n_classes,
        measure=resolve_measure(config.measure, meta.image_shape),
        storage_shape=_storage_shape(config, chunk_shape),
        voxel_size=tuple(meta.voxel_size), voxel_unit=meta.voxel_unit,
        ome_zarr_path=config.output.ome_zarr, objects_tsv=config.output.objects_tsv,
        objects_parquet=config.output.objects_parquet)


# ---------------------------------------------------------------------------------------------
# the stages


def _nms_stage(params, plans, execute):
    log.info("NMS (%s): %d tile(s) of %s with halo %s, thresh %g", params.nms_backend,
             len(plans), params.tile_shape, params.halo, params.nms_thresh)
    return run_rounds(params, plans, execute)


def _gather_stage(params, plans, nms_summary, execute):
    """Write the survivor table (skipped if it is already checkpointed)."""
    path = params.survivor_path
    counts = np.asarray(nms_summary.n_owned_kept, np.int64)
    checkpointed = intact_survivor_file(path, int(counts.sum())) if path.exists() else None
    if checkpointed is not None:
        return checkpointed
    remove_stale_temporaries(path)
    batches = {}   # the tiles with survivors of each batch
    for plan in plans:
        if counts[plan.index]:
            batches.setdefault(nms_summary.batches[plan.index], []).append(plan)
    sizes = np.array([counts[[plan.index for plan in batch]].sum() for batch in batches.values()],
                     np.int64)
    # the table holds the batches one after the other (each task's part is written at once)
    start_of = dict(zip((batch[0].index for batch in batches.values()), np.cumsum(sizes) - sizes))
    arguments = [(params, batch, final_results(nms_summary, [plan.index for plan in batch]))
                 for batch in batches.values()]
    parts = ((start_of[part.first_tile], part.survivors)
             for part in execute(gather_tiles, arguments, "gather survivors"))
    n_rays = len(ray_vectors(params.rays_json))
    write_survivor_table(path, int(counts.sum()), n_rays, parts, params.n_classes)
    return SurvivorFile(path)


def _chunk_grid(params):
    return Grid(params.image_shape, params.chunk_shape)


def _by_batch(params, items, index):
    """``items`` grouped by the labeling batch of their chunk (``index(item)``)."""
    batches = batch_chunks(_chunk_grid(params))
    grouped = {}
    for item in items:
        grouped.setdefault(int(batches[index(item)]), []).append(item)
    return list(grouped.values())


def _labeling_stage(params, survivors, ome_zarr, execute):
    """Render every chunk that some survivor meets; returns their ChunkSummary (merged as the
    tasks finish) and the OME-Zarr level-0 chunks the tasks wrote (see ``ome_zarr_stage``)."""
    bbox_lo, bbox_hi = survivors.read_columns("bbox_lo", "bbox_hi")
    tasks = chunk_tasks(bbox_lo, bbox_hi, _chunk_grid(params))
    missing = [task for task in tasks if not (
        chunk_done(params.chunk_dir, task.index) and extras_done(params, task.index))]
    log.info("labeling (%s): %d chunk(s) of %s hold objects, %d to render",
             params.labeling_backend, len(tasks), params.chunk_shape, len(missing))
    # a task renders the missing chunks of a batch, and the batch's OME-Zarr level 0 too if
    # they are all of it; the most survivors first: the small tasks fill the stage's end
    to_render = {task.index for task in missing}
    batches = [([task for task in batch if task.index in to_render], batch)
               for batch in _by_batch(params, tasks, lambda t: t.index)]
    batches.sort(key=lambda todo_of: -sum(len(task.positions) for task in todo_of[0]))
    arguments = [(params, todo, ome_zarr if len(todo) == len(batch) else None)
                 for todo, batch in batches if todo]
    chunk_indices = [task.index for task in tasks]
    extras = ExtrasCollector(params, chunk_indices, len(survivors))
    extras.rendered_before(set(chunk_indices) - to_render)
    base_written = {}
    for rendered in execute(render_chunks, arguments, "labeling"):
        extras.rendered(rendered.chunks)
        if rendered.base_chunk_lo is not None:
            base_written[rendered.chunks[0].index] = rendered.base_chunk_lo
    return extras.summary(), base_written


def _provenance(params):
    """Attributes of label.h5 that say how it was made."""
    return dict(image_shape=params.image_shape, rays_json=params.rays_json,
                prob_thresh=params.prob_thresh, nms_thresh=params.nms_thresh,
                source=params.input_path, software_version=__version__,
                nms_backend=params.nms_backend, labeling_backend=params.labeling_backend,
                voxel_size=params.voxel_size, voxel_unit=params.voxel_unit,
                parameters=json.dumps({**params.signature(),
                                       "work_dir": str(params.work_dir)}, sort_keys=True))


def _beside_labels(label_path, names):
    """The TSV files of the tables ``names`` beside the label file."""
    return [Path(label_path).with_name(f"{name}.tsv") for name in names]


def _label_file_bytes(params, extras, n_objects, tables):
    """What label.h5 takes: the compressed chunks as they are, the object tables, metadata."""
    chunk_bytes = sum(int(stored.storage_size.sum()) for stored in extras.stored.values())
    table_bytes = (n_objects * object_dtype(params.n_classes).itemsize
                   + sum(table.nbytes for table in tables.values()))
    return chunk_bytes + table_bytes + METADATA_BYTES


def _write_stage(params, survivors, extras, show_progress):
    """Write label.h5 and the intensity table beside it (``extras``: the chunks'
    ChunkSummary); returns the objects table."""
    ids, prob = survivors.read_columns("ids", "prob")
    prob_by_id = np.empty(len(ids), np.float32)
    prob_by_id[ids.astype(np.int64) - 1] = prob
    objects = extras.objects.table(prob_by_id,
                                   _class_probabilities_by_id(params, survivors, ids))
    tables = intensity_tables(extras)
    remove_stale_temporaries(params.label_path)
    check_free_space(params.label_path, _label_file_bytes(params, extras, len(ids), tables))
    write_label_file(params.label_path, params.image_shape, params.storage_chunks,
                     params.chunk_dir, extras.stored, objects, _provenance(params),
                     show_progress=show_progress, tables=tables)
    for path, table in zip(_beside_labels(params.label_path, tables), tables.values()):
        write_tsv(path, table)
    return objects


def _outputs_stage(params, extras, objects, ome_zarr, base_written, execute):
    """The OME-Zarr levels (tasks) and the tables; the OME-Zarr is published last."""
    if ome_zarr is not None:
        ome_zarr_stage(params, ome_zarr,
                       _by_batch(params, extras.stored.items(), lambda item: item[0]),
                       base_written, execute)
    write_tables(params, objects)
    publish_outputs(params)


def _report_stage(report_path, params, summary, extras, nms_summary):
    """Write the QC report (its charts take the driver milliseconds: :mod:`.charts`)."""
    write_report(report_path, params, summary, extras, nms_summary)
    log.info("wrote the QC report %s", report_path)


def _class_probabilities_by_id(params, survivors, ids):
    """The survivors' class probabilities by id - 1 (None for a single-class model's)."""
    if not params.n_classes:
        return None
    prob_class = survivors.read_columns("prob_class")[0]
    by_id = np.empty_like(prob_class)
    by_id[ids.astype(np.int64) - 1] = prob_class
    return by_id


def segment(params: SegmentParams, execute, seconds=None, show_progress=True,
            report_path=None):
    """Run NMS, gathering, labeling and writing of ``params`` with the executor ``execute``.

    Parameters
    ----------
    params : SegmentParams
    execute : callable
        ``execute(function, argument_tuples, description)`` yielding task results, e.g.
        ``functools.partial(cluster.run_tasks, client)`` or ``cluster.run_in_process``.
    seconds : StageSeconds, optional
        Accumulates the time of each stage.
    show_progress : bool
        Draw a progress bar while label.h5 is written.
    report_path : Path, optional
        Write the QC report there (:mod:`.report`).

    Returns
    -------
    RunSummary
    """
    seconds = StageSeconds() if seconds is None else seconds
    plans = plan_tiles(params.image_shape, params.tile_shape, params.halo)
    with _timed(seconds, "nms"):
        nms_summary = _nms_stage(params, plans, execute)
    with _timed(seconds, "gather"):
        survivors = _gather_stage(params, plans, nms_summary, execute)
    with _timed(seconds, "labeling"):
        ome_zarr = prepare_ome_zarr(params)
        extras, base_written = _labeling_stage(params, survivors, ome_zarr, execute)
    # the last look at the inputs before a file appears at the final path
    n_candidates = verify_pinned(params.candidate_pin).n_candidates
    _check_source_unchanged(params)
    with _timed(seconds, "write"):
        objects = _write_stage(params, survivors, extras, show_progress)
    summary = RunSummary(n_candidates, len(survivors), nms_summary.n_rounds,
                         nms_summary.n_reruns, seconds, params.label_path,
                         (nms_summary.first_pass, nms_summary.reruns))
    # the report shows the seconds up to label.h5 (a copy: the outputs' are added below)
    reported = summary._replace(seconds=replace(seconds))
    with _timed(seconds, "outputs"):
        _outputs_stage(params, extras, objects, ome_zarr, base_written, execute)
    if report_path is not None:
        with _timed(seconds, "report"):
            _report_stage(report_path, params, reported, extras, nms_summary)
    return summary


def _log_summary(summary):
    s = summary.seconds
    log.info("wrote %s: %d candidates -> %d objects (NMS: %d round(s), %d tile rerun(s))",
             summary.labels, summary.n_candidates, summary.n_objects, summary.n_rounds,
             summary.n_reruns)
    log.info("seconds: index %.1f, NMS %.1f, gather %.1f, labeling %.1f, write %.1f, "
             "OME-Zarr and tables %.1f, report %.1f", s.index, s.nms, s.gather, s.labeling,
             s.write, s.outputs, s.report)


@contextlib.contextmanager
def _client(client, config):
    """The given Dask client, or one of a cluster started from ``config.cluster``."""
    if client is not None:
        yield client
        return
    with start_cluster(config.cluster) as started:
        yield started


def segment_config(config: HpcConfig, *, client=None, show_progress=True) -> RunSummary:
    """Run the HPC step for a validated :class:`~stardist_hpc.config.HpcConfig`."""
    seconds = StageSeconds()
    model = configured_model(config)
    _check_outputs_apart(config)
    check_parquet(config.output.objects_parquet)
    if client is None:
        check_cluster(config.cluster)
    work_dir = config.output.work_dir
    with run_lock((work_dir / WORK_DIR_LOCK, work_dir),
                  (lock_path_of(config.output.labels), config.output.labels)):
        # this run owns work_dir now: any temporary there is a killed writer's
        remove_temporaries_below(work_dir)
        return _segment_locked(config, model, client, seconds, show_progress)


def _segment_locked(config, model, client, seconds, show_progress):
    """:func:`segment_config` once the run holds the locks of its outputs."""
    work_dir = config.output.work_dir
    if config.input.prediction.exists():   # a missing one is reported by _open_candidates
        # before indexing: an indexed copy of a changed input must not be reused
        resume_or_start_afresh(work_dir, source_identity(config), CHECKPOINTS, complete=False)
    with _timed(seconds, "index"):
        candidates = _open_candidates(config, model)
    params = resolve_params(config, candidates, model)
    # the source was checked above: only the checkpoints that depend on settings remain
    resume_or_start_afresh(work_dir, params.signature(), SETTING_CHECKPOINTS)
    with _client(client, config) as dask_client:
        execute = functools.partial(run_tasks, dask_client, show_progress=show_progress,
                                    no_worker_timeout=config.cluster.no_worker_timeout)
        summary = segment(params, execute, seconds, show_progress, config.output.report)
    _log_summary(summary)
    return summary


def segment_candidates(candidates: str | os.PathLike, labels: str | os.PathLike, *,
                       model: str | os.PathLike | None = None, nms_thresh: float | None = None,
                       tile_shape: tuple[int | None, int | None, int | None] = (None, 512, 512),
                       halo: str | tuple[int, int, int] = "auto",
                       chunk_shape: tuple[int, int, int] = (64, 256, 256),
                       backend: str = "fast", labeling_backend: str = "stardist",
                       work_dir: str | os.PathLike | None = None,
                       storage_shape: tuple[int, int, int] = (16, 128, 128),
                       ome_zarr: str | os.PathLike | None = BESIDE_LABELS,
                       objects_tsv: str | os.PathLike | None = BESIDE_LABELS,
                       objects_parquet: str | os.PathLike | None = None,
                       client: Any = None, cluster: Mapping[str, Any] | None = None,
                       measure: Mapping[str, Any] | None = None,
                       report: str | os.PathLike | None = BESIDE_LABELS,
                       show_progress: bool = True) -> RunSummary:
    """Segment a candidate file into one uint32 label volume, tile by tile on Dask.

    Every argument but ``client`` and ``show_progress`` is the config key of
    ``hpc_prediction.py`` named in brackets, validated the same way.

    Parameters
    ----------
    candidates : str or Path
        A ``prediction.h5`` of :func:`~stardist_hpc.predict_candidates`, or the original
        pipeline's ``probabilities.h5`` (then ``model`` is required) [input.prediction].
    labels : str or Path
        The label file to write (``label.h5``) [output.labels].
    model : str or Path, optional
        A StarDist3D model folder whose rays must match the file's; its ``nms`` threshold
        is used unless ``nms_thresh`` is given. None: the file's own rays and thresholds
        [model.basedir / model.name].
    nms_thresh : float, optional
        Overlap threshold in [0, 1] [nms.thresh].
    tile_shape : tuple of 3 (int or None)
        NMS tile core; None spans the whole axis [nms.tile_shape].
    halo : 'auto' or tuple of 3 int
        Context around each tile [nms.halo].
    chunk_shape : tuple of 3 int
        Rendering task and HDF5 chunk shape [labeling.chunk_shape].
    backend : {'fast', 'stardist'}
        NMS implementation [nms.backend].
    labeling_backend : {'stardist', 'fast'}
        Voxel inside test of the renderer [labeling.backend].
    work_dir : str or Path, optional
        Checkpoints for resuming; None: ``work`` beside ``labels`` [output.work_dir].
    storage_shape : tuple of 3 int
        Storage chunk of label.h5 and the OME-Zarr (fitted to divide ``chunk_shape``)
        [output.chunk_shape].
    ome_zarr : str or Path, optional
        Multiscale OME-Zarr label image to write; 'beside': ``label.ome.zarr`` beside
        ``labels``; None: none [output.ome_zarr].
    objects_tsv : str or Path, optional
        Objects table as TSV (MoBIE's columns); 'beside': ``objects.tsv`` beside ``labels``;
        None: none [output.objects_tsv].
    objects_parquet : str or Path, optional
        Objects table as Parquet (needs pyarrow); None: none [output.objects_parquet].
    client : distributed.Client, optional
        Run the tasks on this client's cluster instead of starting one.
    cluster : mapping, optional
        The ``cluster`` section of the YAML config, e.g. ``{"mode": "local", "local":
        {"n_workers": 2}}``; None: a local cluster on the available cores [cluster].
    measure : mapping, optional
        The ``measure`` section, e.g. ``{"image": "nuclei.tif", "channels": "all"}``: per-object
        intensities into label.h5 and ``intensities.tsv`` beside it; None: none [measure].
    report : str or Path or None
        The QC report to write; ``'beside'``: ``report.html`` beside ``labels``; None: no
        report [output.report].
    show_progress : bool
        Draw progress bars on stderr.

    Returns
    -------
    RunSummary
        ``n_candidates``, ``n_objects``, NMS rounds and reruns, seconds per stage, ``labels``.

    Raises
    ------
    UserError
        For an argument of the wrong form (before any work), an unusable input file, or
        rays that disagree with ``model``.

    Examples
    --------
    >>> import tempfile, pathlib, distributed
    >>> from stardist_hpc import segment_candidates, read_objects
    >>> from stardist_hpc.synthetic import demo_candidate_file
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> path = demo_candidate_file(folder / "prediction.h5", n_nuclei=3)
    >>> with distributed.Client(processes=False, n_workers=1,
    ...                         dashboard_address="127.0.0.1:0") as client:
    ...     summary = segment_candidates(path, folder / "label.h5", tile_shape=(None, 16, 16),
    ...                                  client=client, show_progress=False)
    >>> summary.n_objects
    3
    >>> len(read_objects(folder / "label.h5"))
    3
    """
    config = arguments_config(
        HpcConfig,
        input={"prediction": candidates},
        model=_model_keys(model),
        output={"labels": labels,
                "work_dir": Path(labels).parent / DEFAULT_WORK_DIR if work_dir is None
                else work_dir, "chunk_shape": storage_shape,
                "ome_zarr": _beside(labels, ome_zarr, Path(labels).stem + OME_ZARR_SUFFIX),
                "objects_tsv": _beside(labels, objects_tsv, DEFAULT_OBJECTS_TSV),
                "objects_parquet": objects_parquet,
                "report": _beside(labels, report, DEFAULT_REPORT)},
        nms={"thresh": nms_thresh, "tile_shape": tile_shape, "halo": halo, "backend": backend},
        labeling={"chunk_shape": chunk_shape, "backend": labeling_backend},
        measure=measure, cluster=cluster)
    return segment_config(config, client=client, show_progress=show_progress)


def _beside(labels, value, name):
    """An output path argument: ``name`` beside the label file for :data:`BESIDE_LABELS`."""
    return Path(labels).parent / name if isinstance(value, str) and value == BESIDE_LABELS \
        else value


def _model_keys(model):
    """``model.basedir`` and ``model.name`` of a model folder path (both None for None)."""
    if model is None:
        return {"basedir": None, "name": None}
    if not isinstance(model, (str, Path)):
        raise UserError(f"model: expected the path of a model folder or None, got {model!r}")
    return {"basedir": Path(model).parent, "name": Path(model).name}


def run(config: HpcConfig):
    """``hpc_prediction.py``: the HPC step for a validated config."""
    return segment_config(config)
