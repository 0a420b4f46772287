"""Interruptions: a SIGKILLed HPC driver, GPU step or Dask worker; reruns give the same result.

Every kill is ``kill -9`` of a whole process group (driver, Dask scheduler and workers), so no
cleanup code runs. Stages are hit by polling the checkpoints in ``work_dir``, not by sleeping:
the group is killed as soon as the wanted state appears, and the state is checked again once
no process of the group is left. That a rerun redoes no completed work is shown twice: the
checkpoint files from before the kill keep their inode and mtime (a rewritten checkpoint is
renamed into place and gets a new inode), and the rerun's progress bars count only the tasks
that were missing.
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple

import h5py
import numpy as np
import psutil
import pytest
import tifffile
import yaml

from stardist_hpc.config import HpcConfig, load
from stardist_hpc.io.candidates import CandidateFile
from stardist_hpc.io.run_lock import WORK_DIR_LOCK
from stardist_hpc.segment import step as hpc
from stardist_hpc.segment.cluster import run_in_process, run_tasks, start_cluster
from stardist_hpc.segment.nms import batch_tiles
from stardist_hpc.segment.params import CHUNK_DIR, NMS_DIR, SURVIVORS
from stardist_hpc.synthetic import nuclei_volume

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
#: seconds after which a run counts as hung.
RUN_TIMEOUT = 300
#: seconds between two looks at the checkpoints: far below the length of any stage.
POLL_SECONDS = 0.001
#: small NMS tiles and label chunks: every stage has dozens of tasks, so it lasts long enough
#: to be caught in the middle.
TILE_SHAPE = (None, 8, 8)
CHUNK_SHAPE = (4, 8, 8)
N_WORKERS = 2


# ---------------------------------------------------------------------------------------------
# processes


def _command(script, config_path):
    return [sys.executable, str(REPO / script), str(config_path)]


def _run(command):
    """Run ``command`` to completion; returns its stderr (logs and progress bars)."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


def _group_alive(pgid):
    """Processes of group ``pgid`` that still run (zombies have stopped)."""
    alive = []
    for process in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            if (os.getpgid(process.pid) == pgid
                    and process.info["status"] != psutil.STATUS_ZOMBIE):
                alive.append(process)
    return alive


def _kill_group(process):
    """SIGKILL the process group led by ``process``; return once none of it runs any more.

    Dask's workers are children of the driver in its group: they must be gone before the
    checkpoints are looked at, or they could still complete a task.
    """
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(RUN_TIMEOUT)
    deadline = time.monotonic() + 30
    while alive := _group_alive(process.pid):
        assert time.monotonic() < deadline, f"still running after SIGKILL: {alive}"
        time.sleep(0.01)


@contextlib.contextmanager
def _started(command, log_path):
    """``command`` running in a new process group with stderr to ``log_path``; killed at exit."""
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log,
                                   start_new_session=True)
    try:
        yield process
    finally:
        _kill_group(process)


def _kill_when(process, reached, what):
    """Poll ``reached()`` and SIGKILL the group of ``process`` as soon as it is true."""
    deadline = time.monotonic() + RUN_TIMEOUT
    while not reached():
        assert process.poll() is None, \
            f"the run ended (exit code {process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {RUN_TIMEOUT} s"
        time.sleep(POLL_SECONDS)
    _kill_group(process)


# ---------------------------------------------------------------------------------------------
# progress as the scripts report it


def _progress(log_text):
    """Last ``(done, total)`` of each progress report in ``log_text``, by description (a log
    file gets lines "<description>: <done> of <total> <unit>s done", not tqdm bars)."""
    lines = re.findall(r"INFO ([A-Za-z][\w .]*): (\d+) of (\d+) \w+ done", log_text)
    return {description: (int(done), int(total)) for description, done, total in lines}


def _chunks_to_render(log_text):
    """How many label chunks a run of the HPC step set out to render (None: none logged)."""
    found = re.search(r"labeling\b.*: \d+ chunk\(s\) .*, (\d+) to render", log_text)
    return None if found is None else int(found[1])


# ---------------------------------------------------------------------------------------------
# the HPC step: checkpoints and results


def _write_hpc_config(directory, candidate_path):
    """``hpc.yaml`` of a local-cluster run of ``candidate_path`` into ``directory``."""
    raw = {"input": {"prediction": str(candidate_path)},
           "model": {"basedir": None, "name": None},
           "output": {"labels": str(directory / "label.h5"), "work_dir": str(directory / "work")},
           "nms": {"tile_shape": list(TILE_SHAPE)},
           "labeling": {"chunk_shape": list(CHUNK_SHAPE)},
           "cluster": {"mode": "local",
                       "local": {"n_workers": N_WORKERS, "threads_per_worker": 1}}}
    path = directory / "hpc.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _round0_checkpoints(work_dir):
    """The checkpoints of NMS round 0 (one per batch of tiles)."""
    return list((work_dir / NMS_DIR / "round0").glob("batch*.npz"))


def _nms_checkpoints(work_dir):
    return {p.relative_to(work_dir) for p in (work_dir / NMS_DIR).glob("round*/batch*.npz")}


def _rendered_chunks(work_dir):
    """Chunks whose statistics file, written last, marks them as rendered."""
    return list((work_dir / CHUNK_DIR).glob("*.npz"))


def _completed_checkpoints(work_dir):
    """Every completed checkpoint file, with the (inode, mtime) of its current version.

    Temporaries of killed writers and the run lock (taken over by the next run) are left out,
    and so is a chunk's label file without its statistics file: that chunk was not completed
    and may be rendered again.
    """
    versions = {}
    for path in work_dir.rglob("*"):
        if not path.is_file() or path.name.endswith(".tmp") or path.name == WORK_DIR_LOCK:
            continue
        if path.suffix == ".bin" and not path.with_suffix(".npz").exists():
            continue
        stat = path.stat()
        versions[path.relative_to(work_dir)] = (stat.st_ino, stat.st_mtime_ns)
    return versions


def _read_label_file(path):
    with h5py.File(path, "r") as f:
        return f["labels"][()], f["objects"][()]


class Reference(NamedTuple):
    """An uninterrupted run: its result and how many tasks each stage has."""
    labels: np.ndarray
    objects: np.ndarray
    n_batches: int   # NMS tasks of round 0
    nms_checkpoints: set
    n_chunks: int
    batches: tuple   # the batch (one NMS task) of each tile


def _assert_same_result(label_path, reference):
    labels, objects = _read_label_file(label_path)
    assert labels.dtype == np.uint32 and np.array_equal(labels, reference.labels), \
        f"{np.count_nonzero(labels != reference.labels)} voxel(s) differ"
    # byte-wise: objects that rendered no voxel have NaN centroids
    assert objects.dtype == reference.objects.dtype
    assert objects.tobytes() == reference.objects.tobytes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, nuclei_candidates, single_openmp_thread):
    """The stages of the same config run uninterrupted, here in this process."""
    directory = tmp_path_factory.mktemp("uninterrupted")
    config = load(HpcConfig, _write_hpc_config(directory, nuclei_candidates))
    params = hpc.resolve_params(config, CandidateFile(nuclei_candidates))
    hpc.segment(params, run_in_process)
    work_dir = config.output.work_dir
    batches = batch_tiles(params.image_shape, params.tile_shape,
                          CandidateFile(nuclei_candidates).n_candidates)
    return Reference(*_read_label_file(config.output.labels), len(_round0_checkpoints(work_dir)),
                     _nms_checkpoints(work_dir), len(_rendered_chunks(work_dir)),
                     tuple(batches))


# ---------------------------------------------------------------------------------------------
# the stages at which the driver is killed


class Stage(NamedTuple):
    """When to kill the driver, and what must then hold in its work_dir."""
    name: str
    reached: Callable
    check: Callable


def _during_nms(work_dir, reference):
    return bool(_round0_checkpoints(work_dir))


def _during_nms_check(work_dir, reference):
    assert 0 < len(_round0_checkpoints(work_dir)) < reference.n_batches
    assert not (work_dir / SURVIVORS).exists()


def _nms_done(work_dir, reference):
    # Not "once survivors.h5 exists": the first chunk follows it within 40 ms, too soon to be
    # sure of a kill in between; gathering the survivors takes ten times as long.
    return _nms_checkpoints(work_dir) == reference.nms_checkpoints


def _nms_done_check(work_dir, reference):
    assert _nms_checkpoints(work_dir) == reference.nms_checkpoints
    assert not _rendered_chunks(work_dir)


def _during_labeling(work_dir, reference):
    return bool(_rendered_chunks(work_dir))


def _during_labeling_check(work_dir, reference):
    assert 0 < len(_rendered_chunks(work_dir)) < reference.n_chunks


#: the stages at which successive runs are killed, in the order a run passes them.
KILLS = (Stage("during NMS", _during_nms, _during_nms_check),
         Stage("between NMS and labeling", _nms_done, _nms_done_check),
         Stage("during labeling", _during_labeling, _during_labeling_check))


def _assert_did_only_missing_work(log_text, before, reference):
    """A run's progress counts only tasks whose checkpoints ``before`` (at its start) lacks."""
    round0_done = {int(p.stem.removeprefix("batch")) for p in before
                   if p.parts[:2] == (NMS_DIR, "round0")}
    n_chunks_done = sum(p.parts[0] == CHUNK_DIR and p.suffix == ".npz" for p in before)
    progress = _progress(log_text)
    # one task per batch of tiles not yet checkpointed
    to_run = set(reference.batches) - round0_done
    assert progress.get("NMS round 0", (0, 0))[1] == len(to_run)
    if Path(SURVIVORS) in before:
        assert "gather survivors" not in progress
    if (to_render := _chunks_to_render(log_text)) is not None:
        assert to_render == reference.n_chunks - n_chunks_done


def _assert_unchanged(checkpoints, work_dir):
    """Every checkpoint in ``checkpoints`` is still the version it was; returns all now."""
    now = _completed_checkpoints(work_dir)
    rewritten = sorted(str(p) for p, version in checkpoints.items() if now.get(p) != version)
    assert not rewritten, f"checkpoints rewritten: {rewritten}"
    return now


def test_driver_killed_at_each_stage_resumes_to_the_uninterrupted_result(
        tmp_path, nuclei_candidates, reference):
    """Each run is killed at the next stage; the fourth completes. One chain of kills costs
    half the runs of one kill per stage, and shows that a resumed run resumes again."""
    command = _command("hpc_prediction.py", _write_hpc_config(tmp_path, nuclei_candidates))
    work_dir, label_path = tmp_path / "work", tmp_path / "label.h5"
    checkpoints = {}
    for stage in KILLS:
        log_path = tmp_path / f"killed {stage.name}.log"
        with _started(command, log_path) as process:
            _kill_when(process, functools.partial(stage.reached, work_dir, reference), stage.name)
        stage.check(work_dir, reference)
        assert not label_path.exists()
        _assert_did_only_missing_work(log_path.read_text(), checkpoints, reference)
        checkpoints = _assert_unchanged(checkpoints, work_dir)

    log_text = _run(command)

    _assert_unchanged(checkpoints, work_dir)
    _assert_did_only_missing_work(log_text, checkpoints, reference)
    _assert_same_result(label_path, reference)


# ---------------------------------------------------------------------------------------------
# a worker killed under a running driver


class WorkerKiller:
    """Executor of :func:`hpc.segment` that SIGKILLs a busy worker once ``description`` runs."""

    def __init__(self, client, description):
        self.client = client
        self.description = description
        self.victim = None

    def execute(self, function, argument_tuples, description):
        results = run_tasks(self.client, function, argument_tuples, description)
        if description == self.description and self.victim is None:
            first = next(results)   # the tasks are on the workers now
            self.victim = self._kill_busy_worker()
            yield first
        yield from results

    def _kill_busy_worker(self):
        pids = self.client.run(os.getpid)
        busy = [address for address, keys in self.client.processing().items() if keys]
        assert busy, "no worker has a task to lose"
        os.kill(pids[busy[0]], signal.SIGKILL)
        return pids[busy[0]]


def test_worker_killed_during_nms_changes_nothing(tmp_path, nuclei_candidates, reference):
    config = load(HpcConfig, _write_hpc_config(tmp_path, nuclei_candidates))
    job = hpc.resolve_params(config, CandidateFile(nuclei_candidates))
    with start_cluster(config.cluster) as client:
        killer = WorkerKiller(client, "NMS round 0")
        hpc.segment(job, killer.execute)
        pids = set(client.run(os.getpid).values())
    assert killer.victim is not None and killer.victim not in pids
    _assert_same_result(config.output.labels, reference)


# ---------------------------------------------------------------------------------------------
# the GPU step

#: a tiny volume cut into many blocks (the network divisor of the demo model is 4 x 8 x 8).
GPU_SHAPE, GPU_BLOCK_SHAPE = (16, 64, 64), (8, 32, 32)


def _write_local_config(directory):
    """``local.yaml`` predicting a tiny synthetic volume with the demo model into ``out/``."""
    image_path = directory / "nuclei.tif"
    tifffile.imwrite(image_path, nuclei_volume(GPU_SHAPE, 10, seed=11)[0])
    raw = {"image": {"path": str(image_path)},
           "model": {"basedir": str(REPO / "models"), "name": "demo"},
           "prediction": {"block_shape": list(GPU_BLOCK_SHAPE)},
           "output": {"path": str(directory / "out" / "prediction.h5")}}
    path = directory / "local.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _read_hdf5(path):
    """Every dataset and attribute of a flat HDF5 file."""
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}, dict(f.attrs)


def _assert_same_hdf5(actual, expected):
    """Same datasets and attributes, value for value, as read by :func:`_read_hdf5`."""
    for got, wanted in zip(actual, expected):
        assert got.keys() == wanted.keys()
        for name in wanted:
            assert np.array_equal(got[name], wanted[name]), name


def _blocks_predicted(log_path):
    """Blocks the GPU step has predicted so far, and the total, from its progress lines
    (one per block at debug level; its stderr is no terminal, so it draws no bar)."""
    lines = re.findall(r"blocks: (\d+) of (\d+) blocks done",
                       log_path.read_text(errors="replace"))
    return tuple(map(int, lines[-1])) if lines else (0, 0)


def test_killed_gpu_step_leaves_no_output_and_continues_after_its_last_block(tmp_path):
    from local_prediction import main
    config_path = _write_local_config(tmp_path)
    output = tmp_path / "out" / "prediction.h5"
    temporary = output.with_name(output.name + ".tmp")
    # uninterrupted, in this process (which other GPU-step tests load TensorFlow into anyway)
    assert main([str(config_path)]) == 0
    uninterrupted = _read_hdf5(output)
    output.unlink()
    command = _command("local_prediction.py", config_path) + ["--verbose"]
    log_path = tmp_path / "killed.log"
    with _started(command, log_path) as process:
        # a block counts once the next one is predicted, and its write has been waited for
        _kill_when(process, lambda: _blocks_predicted(log_path)[0] >= 2, "two predicted blocks")
    done, total = _blocks_predicted(log_path)
    assert 2 <= done < total
    assert temporary.exists() and not output.exists()

    rerun_log = _run(command)

    continued = re.search(r"continuing \S+ after (\d+) of (\d+) blocks", rerun_log)
    assert continued, rerun_log[-2000:]
    assert 1 <= int(continued[1]) <= done and int(continued[2]) == total
    assert not temporary.exists()
    _assert_same_hdf5(_read_hdf5(output), uninterrupted)


def test_temporaries_left_by_killed_writers_are_removed(tmp_path):
    from stardist_hpc.io.atomic import remove_stale_temporaries
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    label_path = tmp_path / "label.h5"
    stale = tmp_path / f"label.h5.{finished.pid}.tmp"
    being_written = tmp_path / f"label.h5.{os.getpid()}.tmp"
    for path in (stale, being_written):
        path.write_bytes(b"partial")
    remove_stale_temporaries(label_path)
    assert not stale.exists()
    assert being_written.exists()
