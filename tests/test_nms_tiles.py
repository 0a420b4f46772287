"""Tile-wise NMS with fixed-fate reruns equals StarDist's NMS over the whole volume."""
import h5py
import numpy as np
import pytest
from conftest import SingleProcessResult

from stardist_hpc.io.candidates import CandidateFile
from stardist_hpc.io.input_pin import pin
from stardist_hpc.segment.cluster import run_in_process
from stardist_hpc.segment.nms import (
    ResultAt,
    TileResults,
    batch_path,
    final_results,
    gather_tile,
    plan_tiles,
    resolve_halo,
    run_rounds,
)
from stardist_hpc.segment.params import SegmentParams

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

THRESH = 0.3


def _nms_job(candidate_path, work_dir, tile_shape, backend="stardist"):
    """Parameters and tiles of an NMS run on ``candidate_path`` (the settings NMS does not
    read are placeholders)."""
    candidates = CandidateFile(candidate_path)
    meta = candidates.meta
    halo = resolve_halo("auto", candidates.max_extent)
    job = SegmentParams(candidate_pin=pin(candidates), input_path=str(candidate_path),
                        input_size=0, input_mtime_ns=0, model_dir="",
                        image_shape=meta.image_shape,
                        rays_json=meta.rays_json, prob_thresh=meta.prob_thresh,
                        nms_thresh=THRESH, nms_backend=backend, tile_shape=tile_shape,
                        halo=halo, chunk_shape=meta.image_shape,
                        labeling_backend="stardist", work_dir=work_dir,
                        label_path=work_dir / "label.h5")
    return job, plan_tiles(meta.image_shape, tile_shape, halo)


def _survivor_rows(job, plans, summary, versions=None):
    """The survivors of every tile's final result (or of its result in round ``versions``)."""
    located = final_results(summary, range(len(plans)))
    if versions is not None:
        located = {t: ResultAt(v, at.batch) for (t, at), v in zip(located.items(), versions)}
    results = TileResults(job, located)
    return np.sort(np.concatenate([gather_tile(job, plan, results).rows
                                   for plan in plans]))


def test_auto_halo_covers_two_extents():
    assert resolve_halo("auto", [2.0, 4.2, 0.1]) == (5, 10, 2)
    assert resolve_halo((1, 2, 3), [9, 9, 9]) == (1, 2, 3)


def test_neighbours_are_the_tiles_whose_core_meets_the_context():
    plans = plan_tiles((10, 30, 40), (4, 7, None), (2, 3, 0))
    for plan in plans:
        expected = {p.index for p in plans if p.index != plan.index and all(
            max(a, b) < min(c, d) for a, c, b, d in
            zip(plan.context.lo, plan.context.hi, p.core.lo, p.core.hi))}
        assert set(plan.neighbours) == expected
        assert all(plan.index in plans[n].neighbours for n in plan.neighbours)


@pytest.mark.parametrize("backend", ["stardist", "fast"])
@pytest.mark.parametrize("tile_shape", [(None, 24, 24), (7, 13, 19), (5, 10, 12),
                                        (None, None, None)])
def test_tiled_nms_equals_single_process(tmp_path, nuclei_candidates, nuclei_references,
                                         tile_shape, backend):
    job, plans = _nms_job(nuclei_candidates, tmp_path, tile_shape, backend)
    summary = run_rounds(job, plans, run_in_process)
    survivors = _survivor_rows(job, plans, summary)
    expected = np.sort(nuclei_references[backend].rows)
    assert np.array_equal(survivors, expected), (
        f"missing rows {np.setdiff1d(expected, survivors)}, "
        f"extra rows {np.setdiff1d(survivors, expected)}")
    assert sum(summary.n_owned_kept) == len(expected)


# cores of 9 and 7 put a truly suppressed candidate first in every context: its halo alone
# decides the chain wrongly
@pytest.mark.parametrize("tile_shape", [(None, None, 9), (None, None, 7)])
def test_rounds_follow_a_suppression_chain_across_tiles(tmp_path, chain_candidates,
                                                        tile_shape):
    job, plans = _nms_job(chain_candidates, tmp_path, tile_shape)
    summary = run_rounds(job, plans, run_in_process)
    expected = np.sort(SingleProcessResult(chain_candidates).rows)
    # the greedy fates alternate along the chain
    with h5py.File(chain_candidates, "r") as f:
        kept_x = f["points"][expected][:, 2]
    np.testing.assert_array_equal(np.sort(kept_x), np.arange(0, 60, 6))
    round_zero = _survivor_rows(job, plans, summary, [0] * len(plans))
    assert not np.array_equal(round_zero, expected), "a fixed halo alone would have sufficed"
    np.testing.assert_array_equal(_survivor_rows(job, plans, summary), expected)
    assert summary.n_rounds > 2


def test_resume_redoes_only_missing_batches(tmp_path, nuclei_candidates):
    job, plans = _nms_job(nuclei_candidates, tmp_path, (None, 24, 24))
    first = run_rounds(job, plans, run_in_process)
    deleted = [(0, 1), (0, 4), (1, 2)]   # (round, batch)
    for round_, batch in deleted:
        batch_path(job.nms_dir, round_, batch).unlink(missing_ok=False)
    executed = []

    def recording_executor(function, argument_tuples, description):
        executed.extend((args[3], args[1]) for args in argument_tuples)
        return run_in_process(function, argument_tuples, description)

    second = run_rounds(job, plans, recording_executor)
    assert sorted(executed) == deleted
    # the same results and work, apart from the seconds the redone tiles took
    timeless = dict(first_pass=None, reruns=None, tile_seconds=None)
    assert second._replace(**timeless) == first._replace(**timeless)
    assert [w[:2] for w in second[4:6]] == [w[:2] for w in first[4:6]]


@pytest.mark.parametrize("backend", ["stardist", "fast"])
def test_reruns_decide_again_only_what_can_change(tmp_path, nuclei_candidates,
                                                  nuclei_references, backend):
    job, plans = _nms_job(nuclei_candidates, tmp_path, (5, 10, 12), backend)
    outcomes = []

    def recording_executor(function, argument_tuples, description):
        batches = run_in_process(function, argument_tuples, description)
        outcomes.extend(outcome for batch in batches for outcome in batch)
        return batches

    summary = run_rounds(job, plans, recording_executor)
    reruns = [o for o in outcomes if o.round > 0 and o.rerun]
    assert reruns, "expected tiles whose halo assumptions were wrong"
    for outcome in reruns:
        located = {outcome.index: ResultAt(outcome.round, summary.batches[outcome.index])}
        context = TileResults(job, located)[outcome.index]
        assert outcome.decided < len(context.rows)
    assert summary.reruns.decided == sum(o.decided for o in reruns)
    assert summary.reruns.decided < summary.first_pass.decided
    survivors = _survivor_rows(job, plans, summary)
    np.testing.assert_array_equal(survivors, np.sort(nuclei_references[backend].rows))
