"""Tile-wise non-maximum suppression that equals StarDist's NMS over the whole volume.

Tiles partition the volume into cores; a tile's NMS sees the candidates of its core plus a halo
(its *context*) and owns the decisions about the candidates whose point lies in its core.
A fixed halo alone is not exact, because chains of suppression can cross it. Greedy NMS in one
total order has a unique fixed point, though: a candidate is kept iff no kept, higher ranked
candidate overlaps it. So after a first round of independent tiles, every tile compares the
fates it assumed for its halo candidates with their owners' decisions; a tile whose
assumptions were wrong is rerun with the halo fates fixed to the owners' decisions, and rounds
repeat until no assumption changes. With a halo at least as wide as two candidates can reach,
this converges to the single-process result (by induction on rank).

A rerun of the fast backend decides again only the candidates whose fate can change: the halo
candidates whose fixed fate differs from the one the previous run assumed, and, transitively,
the candidates ranked below a candidate whose fate changed that it could suppress
(:func:`~.nms_fast.resuppress_counting_pairs`). StarDist's own NMS exposes no pair decisions, so
``nms.backend: stardist`` reruns the whole context.

A task processes a batch of neighbouring tiles and checkpoints their outcomes and results of one
round in one file (``nms_dir/round{r}/batch{b}.npz``), so a run killed at any point redoes only
the missing batches; a task loads each file it needs once (:class:`TileResults`).
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, NamedTuple

import numpy as np

from ..config import HALO_AUTO, NMS_BACKEND_FAST
from ..errors import UserError
from ..geometry.order import MAX_RANKED, rank_scores, total_order
from ..geometry.rays import polyhedron_bboxes, ray_geometry, stardist_rays
from ..geometry.tiling import Box, Grid
from ..io.candidates import CandidateFile
from ..io.checkpoint import load_checkpoint, load_record, save_record
from ..io.input_pin import check_pinned, open_pinned, read_pinned_box
from ..io.survivors import Survivors, join_survivors
from .nms_fast import (
    fates_that_can_change,
    meets_core,
    resuppress_counting_pairs,
    suppress_counting_pairs,
)
from .params import MIN_TASKS
from .summary import NmsSummary, NmsWork

log = logging.getLogger(__name__)

#: a task runs neighbouring tiles together until they hold about this many candidates: each
#: task has a fixed cost (scheduling, opening the candidate file, reading the whole prediction
#: blocks around its tiles; ~0.1-0.5 s) that tiny tiles would pay over and over, while the fast
#: backend decides ~10,000 candidates per core-second.
MIN_TASK_CANDIDATES = 20_000


def resolve_halo(halo, max_extent):
    """Halo (z, y, x) in voxels: as configured, or wide enough for any two candidates to meet.

    Parameters
    ----------
    halo : 'auto' or tuple of 3 int
    max_extent : array_like (3,)
        Largest candidate extent along z, y, x (see ``CandidateFile.max_extent``).

    Returns
    -------
    tuple of 3 int
        For 'auto', ``ceil(2 * max_extent) + 1``: two candidates can only overlap if their
        points are closer than the sum of their extents.
    """
    if halo == HALO_AUTO:
        return tuple(math.ceil(2 * float(e)) + 1 for e in max_extent)
    return tuple(int(h) for h in halo)


@dataclass(frozen=True)
class TilePlan:
    """One NMS tile: the core it owns, the context it reads and the tiles that share it."""
    index: int
    core: Box
    context: Box
    neighbours: tuple


def plan_tiles(image_shape, tile_shape, halo):
    """Tiles of ``tile_shape`` (None = full axis) with contexts grown by ``halo``.

    Neighbours are the other tiles whose core meets a tile's context (a symmetric relation).
    """
    grid = Grid(image_shape, tile_shape)
    contexts = [core.grow(halo, grid.image_shape) for core in grid]
    tiles, met = grid.boxes_meeting([c.lo for c in contexts], [c.hi for c in contexts])
    # pairs come sorted by tile, and every context meets its own core
    met_by_tile = np.split(met, np.searchsorted(tiles, np.arange(1, len(grid))))
    return [TilePlan(index, core, context, tuple(int(t) for t in met if t != index))
            for index, (core, context, met) in enumerate(zip(grid, contexts, met_by_tile))]


class TileOutcome(NamedTuple):
    """What one task reports about a tile in one round."""
    index: int
    round: int
    rerun: bool          # False: the tile's previous result still holds
    core_changed: bool   # whether the decisions about its own candidates changed
    n_owned_kept: int
    decided: int         # this task's NMS work (see NmsWork)
    pairs: int
    nms_seconds: float


class TileResult(NamedTuple):
    """Fates of all candidates in a tile's context, by increasing file row."""
    rows: np.ndarray     # int64
    owned: np.ndarray    # point in the tile's core
    kept: np.ndarray     # survived this tile's NMS run
    assumed: np.ndarray  # halo fates the run was given (free runs: their own outcome)


class ResultAt(NamedTuple):
    """Where a tile's latest result is: the round it was computed in and the tile's batch."""
    round: int
    batch: int


class BatchCheckpoint(NamedTuple):
    """The outcomes and results of the tiles of one batch that one task processed in one round.

    One row per tile in the outcome columns; the tiles' results are concatenated, tile ``k``'s
    at ``starts[k]:starts[k + 1]`` (empty for a tile whose previous result still holds).
    """
    batch: int
    round: int
    index: np.ndarray          # the TileOutcome fields but round, one row per tile
    rerun: np.ndarray
    core_changed: np.ndarray
    n_owned_kept: np.ndarray
    decided: np.ndarray
    pairs: np.ndarray
    nms_seconds: np.ndarray
    starts: np.ndarray         # int64 (n_tiles + 1,)
    rows: np.ndarray           # the TileResult fields, concatenated
    owned: np.ndarray
    kept: np.ndarray
    assumed: np.ndarray


#: the columns of a BatchCheckpoint that hold TileOutcome fields.
_OUTCOME_COLUMNS = tuple(f for f in TileOutcome._fields if f != "round")


def batch_path(nms_dir, round_, batch):
    """Checkpoint file of the tiles of ``batch`` in round ``round_``."""
    return Path(nms_dir) / f"round{round_}" / f"batch{batch}.npz"


def save_batch(params, batch, round_, outcomes, results):
    """Checkpoint one task's ``outcomes`` and ``results`` (lists in the same tile order)."""
    lengths = [len(result.rows) for result in results]
    columns = {name: np.array([getattr(o, name) for o in outcomes]) for name in _OUTCOME_COLUMNS}
    arrays = {name: np.concatenate([np.zeros(0, dtype), *(getattr(r, name) for r in results)])
              for name, dtype in zip(TileResult._fields, (np.int64, bool, bool, bool))}
    starts = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    save_record(batch_path(params.nms_dir, round_, batch),
                BatchCheckpoint(batch, round_, **columns, starts=starts, **arrays))


def batch_outcomes(checkpoint: BatchCheckpoint):
    """The TileOutcome of every tile in a checkpoint."""
    columns = [getattr(checkpoint, name) for name in _OUTCOME_COLUMNS]
    return [TileOutcome(**{name: value.item() for name, value in zip(_OUTCOME_COLUMNS, row)},
                        round=checkpoint.round) for row in zip(*columns)]


def load_batch(params, round_, batch, tiles):
    """The checkpoint of ``batch`` in round ``round_`` if it is intact and holds ``tiles``,
    else None (a damaged or foreign one is logged and removed: the caller recomputes it)."""
    path = batch_path(params.nms_dir, round_, batch)
    if not path.exists():
        return None
    checkpoint = load_checkpoint(path, BatchCheckpoint, {"batch": batch, "round": round_})
    if checkpoint is not None and not np.array_equal(checkpoint.index, tiles):
        log.warning("checkpoint %s holds tiles %s, expected %s: recomputing it", path,
                    checkpoint.index.tolist(), list(tiles))
        path.unlink(missing_ok=True)
        return None
    return checkpoint


class TileResults:
    """The tile results a task reads, each checkpoint file loaded once per task."""

    def __init__(self, params, located):
        self.params = params
        self.located = located     # mapping tile -> ResultAt
        self._loaded = {}

    def __getitem__(self, index):
        at = self.located[index]
        if at not in self._loaded:
            self._loaded[at] = load_record(batch_path(self.params.nms_dir, *at),
                                           BatchCheckpoint)
        checkpoint = self._loaded[at]
        k = int(np.searchsorted(checkpoint.index, index))
        if checkpoint.index[k] != index or not checkpoint.rerun[k]:
            raise RuntimeError(f"{batch_path(self.params.nms_dir, *at)} holds no result of "
                               f"tile {index}")
        part = slice(checkpoint.starts[k], checkpoint.starts[k + 1])
        return TileResult(*(getattr(checkpoint, name)[part] for name in TileResult._fields))


def _no_result():
    """Result arrays of a tile whose previous result still holds."""
    return TileResult(np.zeros(0, np.int64), *(np.zeros(0, bool) for _ in range(3)))


# ---------------------------------------------------------------------------------------------
# one tile


def suppress(prob, dist, points, rows, rays_json, thresh, backend, allowed=None,
             previous=None):
    """Greedy NMS over the given candidates, ranked in the total order.

    Parameters
    ----------
    prob, dist, points, rows : ndarray
        Candidates (any order); ``rows`` break ties in the total order.
    rays_json : str
    thresh : float
    backend : {'stardist', 'fast'}
        StarDist's own NMS, or :mod:`.nms_fast` (same rule, overlap always counted in voxels).
    allowed : ndarray of bool (N,), optional
        The candidates taking part (the others count as suppressed); None: all.
    previous : tuple of 2 ndarray of bool (N,), optional
        ``(kept, allowed_before)``, the result over the candidates ``allowed_before``: only
        what can change is decided again (the fast backend updates the result; StarDist's
        runs its NMS over the candidates whose fate can change and the kept ones that stay).

    Returns
    -------
    kept : ndarray of bool (N,)
    work : NmsWork
    """
    started = time.perf_counter()
    allowed = np.ones(len(prob), bool) if allowed is None else allowed
    kept = np.zeros(len(prob), bool)
    if backend == NMS_BACKEND_FAST and previous is not None:
        order = total_order(prob, points, rows)
        kept[order], counts = resuppress_counting_pairs(
            dist[order], points[order], ray_geometry(rays_json), thresh,
            *(a[order] for a in (*previous, allowed)))
        decided, pairs = counts.decided, counts.tested
    elif backend == NMS_BACKEND_FAST:
        order = total_order(prob[allowed], points[allowed], rows[allowed])
        kept_in_order, counts = suppress_counting_pairs(
            dist[allowed][order], points[allowed][order], ray_geometry(rays_json), thresh)
        kept[np.flatnonzero(allowed)[order]] = kept_in_order
        decided, pairs = counts.decided, counts.tested
    elif previous is not None:
        kept, decided = _stardist_resuppress(prob, dist, points, rows, rays_json, thresh,
                                             allowed, *previous)
        pairs = 0   # StarDist's NMS does not tell
    else:
        kept[allowed] = _stardist_suppress(prob[allowed], dist[allowed], points[allowed],
                                           rows[allowed], rays_json, thresh)
        decided, pairs = allowed.sum(), 0
    return kept, NmsWork(int(decided), int(pairs), time.perf_counter() - started)


def _stardist_resuppress(prob, dist, points, rows, rays_json, thresh, allowed, kept_before,
                         allowed_before):
    """StarDist's NMS updating ``kept_before`` (over ``allowed_before``) to ``allowed``.

    Candidates whose fate cannot change keep it. The others are decided by StarDist's NMS over
    them and the candidates kept before that stay kept: the suppressed ones suppress nothing,
    so the greedy order decides them as a full run would.

    Returns
    -------
    kept : ndarray of bool (N,)
    decided : int
    """
    order = total_order(prob, points, rows)
    redo = np.zeros(len(prob), bool)
    redo[order] = fates_that_can_change(dist[order], points[order], ray_geometry(rays_json),
                                        thresh, (allowed != allowed_before)[order])
    kept = kept_before & ~redo
    taking_part = (redo & allowed) | kept
    kept[taking_part] = _stardist_suppress(prob[taking_part], dist[taking_part],
                                           points[taking_part], rows[taking_part], rays_json,
                                           thresh)
    return kept, int(np.sum(redo & allowed))


def _stardist_suppress(prob, dist, points, rows, rays_json, thresh):
    """StarDist's own ``non_maximum_suppression_3d_inds`` in the total order."""
    if len(prob) == 0:
        return np.zeros(0, bool)
    from stardist.nms import non_maximum_suppression_3d_inds
    return non_maximum_suppression_3d_inds(dist, points, stardist_rays(rays_json),
                                           rank_scores(total_order(prob, points, rows)), thresh,
                                           verbose=False)


class BatchReader:
    """The candidates of a batch of neighbouring tiles, read once for all of them (when a tile
    first needs them): of their contexts, or of their ``cores`` only."""

    def __init__(self, params, plans, cores=False):
        self.params = params
        boxes = [plan.core if cores else plan.context for plan in plans]
        self.lo = np.min([box.lo for box in boxes], axis=0)
        self.hi = np.max([box.hi for box in boxes], axis=0)
        self._candidates = None

    def read_box(self, box):
        """Candidates whose point lies in ``box`` (inside the batch's contexts)."""
        if self._candidates is None:
            self._candidates = read_pinned_box(self.params.candidate_pin, self.lo, self.hi)
        inside = box.contains(self._candidates[-1])
        return tuple(a[inside] for a in self._candidates)


def _read_context(params, plan, reader, taking_part=None):
    """Candidates of a tile's context that take part in its NMS, by increasing row.

    Halo candidates that no core candidate could suppress or be suppressed by are left out:
    they change core decisions only through other halo candidates, whose fates the rounds fix
    to their owners' decisions. So the halo costs what the core's neighbours cost. A rerun
    passes the rows its tile's previous run took (``taking_part``) instead of finding them.
    """
    rows, prob, dist, points = reader.read_box(plan.context)
    if len(rows) > MAX_RANKED:
        raise UserError(f"NMS tile {plan.core} holds {len(rows)} candidates with its halo, "
                        f"more than {MAX_RANKED}; use a smaller nms.tile_shape")
    if taking_part is not None:
        by_row = np.argsort(rows)
        by_row = by_row[np.isin(rows[by_row], taking_part, assume_unique=True)]
        return rows[by_row], prob[by_row], dist[by_row], points[by_row]
    owned = plan.core.contains(points)
    # only candidates within the halo's width of a face of the core can meet across it
    core_lo, core_hi = np.asarray(plan.core.lo), np.asarray(plan.core.hi)
    deep = Box(tuple(2 * core_lo - plan.context.lo),
               tuple(2 * core_hi - plan.context.hi)).contains(points)
    needed = owned.copy()
    needed[~deep] = meets_core(dist[~deep], points[~deep], ray_geometry(params.rays_json),
                               params.nms_thresh, owned[~deep])
    by_row = np.flatnonzero(needed)[np.argsort(rows[needed])]
    return rows[by_row], prob[by_row], dist[by_row], points[by_row]


def _run_tile_nms(params, plan, reader, halo_fates=None, previous=None):
    """NMS over a tile's context; halo candidates take ``halo_fates`` if given.

    Halo candidates fixed as suppressed are left out of the run; those fixed as kept take
    part (and may still be suppressed here by a kept core candidate that outranks them).
    Given the tile's ``previous`` result, only what can change is decided again.

    Returns
    -------
    TileResult
    NmsWork
    """
    rows, prob, dist, points = _read_context(params, plan, reader,
                                             None if previous is None else previous.rows)
    owned = plan.core.contains(points)
    assumed = np.ones(len(rows), bool)
    if halo_fates is not None:
        assumed[~owned] = halo_fates
    update = None
    if previous is not None and np.array_equal(previous.rows, rows):
        # the previous run's candidates took part, core and assumed halo; a free run's result
        # is also the result over those it kept (suppressed candidates suppress nothing)
        update = (previous.kept, previous.assumed | previous.owned)
    kept, work = suppress(prob, dist, points, rows, params.rays_json, params.nms_thresh,
                          params.nms_backend, assumed, update)
    if halo_fates is None:
        assumed = kept.copy()
    return TileResult(rows, owned, kept, assumed), work


def _outcome(plan, round_, result, work=NmsWork(), *, rerun, core_changed):
    """A tile's outcome, and the result to checkpoint with it (empty if it was not rerun)."""
    outcome = TileOutcome(plan.index, round_, rerun, core_changed,
                          int(np.sum(result.kept & result.owned)), *work)
    return outcome, result if rerun else _no_result()


def _owner_fates(plan, results, halo_rows):
    """The decisions of the owners (neighbour tiles) about ``halo_rows``."""
    owned_rows, owned_kept = [np.zeros(0, np.int64)], [np.zeros(0, bool)]
    for neighbour in plan.neighbours:
        result = results[neighbour]
        owned_rows.append(result.rows[result.owned])
        owned_kept.append(result.kept[result.owned])
    rows, kept = np.concatenate(owned_rows), np.concatenate(owned_kept)
    by_row = np.argsort(rows)
    at = np.minimum(np.searchsorted(rows[by_row], halo_rows), max(len(rows) - 1, 0))
    if len(halo_rows) and not np.array_equal(rows[by_row][at], halo_rows):
        raise RuntimeError(f"tile {plan.index}: halo candidates without an owner tile")
    return kept[by_row][at]


def nms_tiles(params, batch, plans, round_, located):
    """Process a batch of neighbouring tiles in one round and checkpoint their outcomes (the
    task of the NMS stage).

    Parameters
    ----------
    params : SegmentParams
    batch : int
        The batch's index (names its checkpoint).
    plans : list of TilePlan
        The batch's tiles to process in this round, by increasing index.
    round_ : int
    located : mapping of int to ResultAt
        Where the latest result of each of these tiles and of their neighbours is (unused in
        round 0).

    Returns
    -------
    list of TileOutcome
    """
    reader, results = BatchReader(params, plans), TileResults(params, located)
    processed = [nms_tile(params, plan, round_, reader, results) for plan in plans]
    save_batch(params, batch, round_, *zip(*processed))
    return [outcome for outcome, _ in processed]


def nms_tile(params, plan, round_, reader, results):
    """Process one tile in one round.

    Round 0 runs the tile's NMS freely. Later rounds rerun it only if the fates it assumed for
    its halo candidates disagree with their owners' decisions, fixing them to those decisions.

    Parameters
    ----------
    params : SegmentParams
    plan : TilePlan
    round_ : int
    reader : BatchReader
        Reads the candidates of the tile's batch.
    results : TileResults
        The latest results of the tile and its neighbours (unused in round 0).

    Returns
    -------
    TileOutcome
    TileResult
        What to checkpoint (empty if the previous result still holds).
    """
    if round_ == 0:
        return _outcome(plan, 0, *_run_tile_nms(params, plan, reader), rerun=True,
                        core_changed=True)
    return _settle_tile(params, plan, round_, reader, results)


def _settle_tile(params, plan, round_, reader, results):
    """Rerun a tile if its halo assumptions disagree with the owners' decisions."""
    previous = results[plan.index]
    halo = ~previous.owned
    fates = _owner_fates(plan, results, previous.rows[halo])
    # A rerun would repeat the previous result if the owners' fates equal the ones it was
    # given, or the ones it arrived at (halo candidates it suppressed itself suppress nothing).
    if np.array_equal(fates, previous.assumed[halo]) or np.array_equal(fates, previous.kept[halo]):
        return _outcome(plan, round_, previous, rerun=False, core_changed=False)
    result, work = _run_tile_nms(params, plan, reader, fates, previous)
    core_changed = not np.array_equal(result.kept[result.owned], previous.kept[previous.owned])
    return _outcome(plan, round_, result, work, rerun=True, core_changed=core_changed)


# ---------------------------------------------------------------------------------------------
# the rounds

#: ``execute(function, argument_tuples, description)`` runs ``function(*arguments)`` for each
#: tuple (anywhere, in any order) and returns or yields the results as they complete; see
#: ``cluster.run_tasks`` and ``cluster.run_in_process``.
Executor = Callable[[Callable, list, str], Iterable]


def batch_tiles(image_shape, tile_shape, n_candidates):
    """The batch (one task per round) of each tile: blocks of neighbouring tiles that hold
    about :data:`MIN_TASK_CANDIDATES` (estimated from the mean density), at least
    :data:`~.params.MIN_TASKS` of them.

    Returns
    -------
    ndarray of int (number of tiles,)
    """
    grid = Grid(image_shape, tile_shape)
    return grid.batches(n_candidates / len(grid), MIN_TASK_CANDIDATES, MIN_TASKS)


def _execute_round(params, round_, plans, versions, batches, execute, tile_seconds):
    """Outcomes of one round over ``plans``, loading the batches already checkpointed; the
    others run in one task per batch (``batches``: the batch of each tile), the batches whose
    tiles took longest so far (``tile_seconds``) first: the short ones fill the round's end,
    when workers would otherwise wait for the last long one."""
    by_batch = {}
    for plan in plans:
        by_batch.setdefault(int(batches[plan.index]), []).append(plan)
    outcomes, arguments = [], []
    longest_first = sorted(by_batch.items(), key=lambda batch_members: -sum(
        tile_seconds[plan.index] for plan in batch_members[1]))
    for batch, members in longest_first:
        checkpoint = load_batch(params, round_, batch, [plan.index for plan in members])
        if checkpoint is not None:
            outcomes.extend(batch_outcomes(checkpoint))
            continue
        located = {t: ResultAt(versions[t], int(batches[t]))
                   for plan in members for t in (plan.index, *plan.neighbours)}
        arguments.append((params, batch, members, round_, located))
    for outcomes_of_batch in execute(nms_tiles, arguments, f"NMS round {round_}"):
        outcomes.extend(outcomes_of_batch)
    return outcomes


def tiles_to_check(plans, changed):
    """Tiles whose halo holds candidates of a tile in ``changed`` (sorted)."""
    return sorted({n for index in changed for n in plans[index].neighbours})


def run_rounds(params, plans, execute):
    """Run NMS rounds until no tile's halo assumptions change.

    Parameters
    ----------
    params : SegmentParams
    plans : list of TilePlan
    execute : Executor

    Returns
    -------
    NmsSummary
    """
    versions, n_owned_kept = [0] * len(plans), [0] * len(plans)
    tile_reruns, tile_seconds = [0] * len(plans), [0.0] * len(plans)
    batches = batch_tiles(params.image_shape, params.tile_shape,
                          CandidateFile(params.candidate_path).n_candidates)
    round_, to_process = 0, plans
    work = [NmsWork(), NmsWork()]   # round 0, later rounds
    while to_process:
        outcomes = _execute_round(params, round_, to_process, versions, batches, execute,
                                  tile_seconds)
        for outcome in outcomes:
            n_owned_kept[outcome.index] = outcome.n_owned_kept
            work[round_ > 0] += NmsWork(outcome.decided, outcome.pairs, outcome.nms_seconds)
            tile_seconds[outcome.index] += outcome.nms_seconds
            if outcome.rerun:
                versions[outcome.index] = outcome.round
                tile_reruns[outcome.index] += int(outcome.round > 0)
        changed = [outcome.index for outcome in outcomes if outcome.core_changed]
        to_process = [plans[t] for t in tiles_to_check(plans, changed)]
        round_ += 1
    n_reruns = sum(tile_reruns)
    log.info("NMS converged after %d round(s) with %d tile rerun(s); candidates decided: "
             "%d, again in reruns: %d", round_, n_reruns, work[0].decided, work[1].decided)
    return NmsSummary(tuple(versions), tuple(n_owned_kept), round_, n_reruns, *work,
                      tuple(int(b) for b in batches), tuple(tile_reruns), tuple(tile_seconds))


# ---------------------------------------------------------------------------------------------
# gathering the survivors


class BatchSurvivors(NamedTuple):
    """The survivors owned by the tiles of a batch, tile after tile."""
    first_tile: int      # the index of the batch's first tile: names the batch
    survivors: Survivors


def final_results(summary: NmsSummary, tiles):
    """Where the final result of each of ``tiles`` is (mapping tile -> ResultAt)."""
    return {t: ResultAt(summary.versions[t], summary.batches[t]) for t in tiles}


def gather_tiles(params, plans, located):
    """The survivors of a batch of neighbouring tiles (a task of the gather stage), their
    candidates and results read once.

    Parameters
    ----------
    params : SegmentParams
    plans : list of TilePlan
    located : mapping of int to ResultAt
        Where each tile's final result is (see :func:`final_results`).

    Returns
    -------
    BatchSurvivors
        One part, so that the driver writes it into the survivor table at once.
    """
    reader, results = BatchReader(params, plans, cores=True), TileResults(params, located)
    return BatchSurvivors(plans[0].index, join_survivors(
        [gather_tile(params, plan, results, reader) for plan in plans]))


def gather_tile(params, plan, results, reader=None):
    """The kept candidates owned by one tile, with their render boxes (no ids yet).

    Parameters
    ----------
    params : SegmentParams
    plan : TilePlan
    results : TileResults
        Holds the tile's final result.
    reader : BatchReader, optional
        Reads the candidates of the tile's batch (None: the tile's own).

    Returns
    -------
    Survivors
    """
    result = results[plan.index]
    kept_rows = result.rows[result.owned & result.kept]
    reader = BatchReader(params, [plan], cores=True) if reader is None else reader
    rows, prob, dist, points = reader.read_box(plan.core)
    pick = np.isin(rows, kept_rows)
    by_row = np.argsort(rows[pick])
    rows, prob, dist, points = (a[pick][by_row] for a in (rows, prob, dist, points))
    prob_class = (open_pinned(params.candidate_pin).read_class_probabilities(rows)
                  if params.n_classes else np.zeros((len(rows), 0), np.float32))
    check_pinned(params.candidate_pin)   # not replaced while its rows were read
    lo, hi = polyhedron_bboxes(dist, points, ray_geometry(params.rays_json), params.image_shape)
    return Survivors(rows, prob, points, dist, lo.astype(np.int32), hi.astype(np.int32),
                     prob_class=prob_class)
