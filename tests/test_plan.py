"""``hpc_prediction.py CONFIG --plan``: sizes, memory and time from the candidate file's index."""
import logging

import numpy as np
import pytest
import yaml

from stardist_hpc.cli import segment_main
from stardist_hpc.geometry.tiling import Box
from stardist_hpc.io.candidates import CandidateFile
from stardist_hpc.segment.plan import context_candidates
from stardist_hpc.synthetic import write_dense_candidate_file

SHAPE = (16, 64, 96)


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "prediction.h5"
    write_dense_candidate_file(path, SHAPE, 30, n_rays=32, candidates_per_nucleus=12,
                               block_shape=(None, 32, 32), seed=1)
    return CandidateFile(path)


def _config(tmp_path, candidates, cluster):
    config = tmp_path / "hpc.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"prediction": str(candidates.path)},
        "output": {"labels": str(tmp_path / "out" / "label.h5"),
                   "work_dir": str(tmp_path / "out" / "work")},
        "nms": {"tile_shape": [None, 32, 32]}, "labeling": {"chunk_shape": [16, 32, 32]},
        "cluster": cluster}))
    return config


def test_plan_prints_the_run_without_running_it(tmp_path, candidates, capsys):
    config = _config(tmp_path, candidates, {"mode": "local", "local": {"n_workers": 2}})
    assert segment_main([str(config), "--plan"]) == 0
    out = capsys.readouterr().out
    assert f"candidates        {candidates.n_candidates:,} in 6 prediction block(s)" in out
    assert "NMS tiles         6 of fullx32x32 + halo" in out
    assert "label chunks      at most 6 of 16x32x32" in out
    assert "Dask tasks        6 NMS + at most 6 gather + at most 6 labeling" in out
    for line in ("peak memory", "MiB per NMS task", "driver ~", "CPU-hours",
                 "local: 2 worker process(es) x 1 thread(s): 2 core(s) busy", "wall time"):
        assert line in out
    assert not (tmp_path / "out").exists()   # nothing written, not even the work_dir


def test_plan_warns_when_a_task_exceeds_its_share_of_the_job_memory(tmp_path, candidates,
                                                                    capsys, caplog):
    cluster = {"mode": "slurm", "slurm": {"jobs": 2, "cores": 4, "processes": 2,
                                          "memory": "200MB", "scheduler_host": "127.0.0.1"}}
    with caplog.at_level(logging.WARNING):
        assert segment_main([str(_config(tmp_path, candidates, cluster)), "--plan"]) == 0
    # 2 processes of 2 threads: each of the 4 cores runs a task in a process of its own
    assert "more than its share of the job memory (48 MiB, memory / cores)" in caplog.text
    assert "slurm: 2 jobs x 4 cores, 2 process(es) per job, 200MB per job: 8 core(s) busy" in (
        capsys.readouterr().out)


def test_context_estimates_add_up_to_the_file(candidates):
    whole = [Box((0, 0, 0), SHAPE)]
    assert context_candidates(candidates.blocks, whole)[0] == candidates.n_candidates
    # the blocks' own cores: exactly their row counts
    cores = [Box((int(b["z0"]), int(b["y0"]), int(b["x0"])),
                 (int(b["z1"]), int(b["y1"]), int(b["x1"]))) for b in candidates.blocks]
    np.testing.assert_array_equal(context_candidates(candidates.blocks, cores),
                                  candidates.blocks["row_stop"] - candidates.blocks["row_start"])
