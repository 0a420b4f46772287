"""Faults an operator on a shared cluster meets: two runs on one output, an input replaced under
a running HPC step, a full filesystem. Each ends with exit code 2 and one line, leaves nothing
at the final path and the inputs byte-identical, and the run after it (the fault removed)
gives the labels of an undisturbed run.

The HPC step runs in this process with its tasks in process (the cluster is patched out), so a
fault can be placed exactly between two tasks; the running first run of the concurrency tests
is a real process of each script.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import NUCLEI_SHAPE
from test_interruptions import (
    Reference,
    _assert_same_hdf5,
    _assert_same_result,
    _blocks_predicted,
    _command,
    _read_hdf5,
    _read_label_file,
    _round0_checkpoints,
    _started,
    _write_hpc_config,
    _write_local_config,
)

from stardist_hpc.cli import EXIT_INTERRUPTED, predict_main, segment_main
from stardist_hpc.config import HpcConfig, load
from stardist_hpc.io.candidates import CandidateFile
from stardist_hpc.io.checkpoint import resume_or_start_afresh
from stardist_hpc.io.ome_zarr import temporary_store
from stardist_hpc.io.run_lock import WORK_DIR_LOCK, lock_path_of, run_lock
from stardist_hpc.segment import step as hpc
from stardist_hpc.segment.cluster import run_in_process
from stardist_hpc.segment.params import (
    CHUNK_DIR,
    NMS_DIR,
    OME_ZARR_DIR,
    SETTING_CHECKPOINTS,
    SURVIVORS,
)
from stardist_hpc.synthetic import random_centres, synthetic_candidates, write_candidate_file

pytestmark = pytest.mark.usefixtures("single_openmp_thread")

#: seconds to wait for a state of a running first run.
WAIT_SECONDS = 300
#: size of the small filesystem the disk-full tests write to.
SMALL_FS = "4m"
#: a PID above any pid_max: of no process (a killed writer's).
DEAD_PID = 999999999


#: tiles and chunks of the in-process runs: few tasks (the labels do not depend on them).
TILE_SHAPE, CHUNK_SHAPE = (None, 24, 24), (8, 32, 32)


def _write_config(directory, candidate_path, **output):
    """test_interruptions' HPC config with fewer, larger tasks (and other outputs if given,
    None: not written)."""
    path = _write_hpc_config(directory, candidate_path)
    raw = yaml.safe_load(path.read_text())
    raw["nms"]["tile_shape"], raw["labeling"]["chunk_shape"] = TILE_SHAPE, CHUNK_SHAPE
    raw["output"].update({key: None if value is None else str(value)
                          for key, value in output.items()})
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="module")
def undisturbed(tmp_path_factory, nuclei_candidates):
    """An undisturbed in-process run on ``nuclei_candidates``: its result and its work_dir."""
    directory = tmp_path_factory.mktemp("undisturbed")
    config = load(HpcConfig, _write_config(directory, nuclei_candidates))
    params = hpc.resolve_params(config, CandidateFile(nuclei_candidates))
    resume_or_start_afresh(params.work_dir, params.signature(), SETTING_CHECKPOINTS)  # run.json
    hpc.segment(params, run_in_process)
    return Reference(*_read_label_file(config.output.labels), 0, set(), 0, ()), directory / "work"


def _sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _nuclei_file(path):
    """A candidate file with the candidates of conftest's ``nuclei_candidates``."""
    corners = np.array([[8, 24, 24], [8, 16, 32], [5, 24, 40], [10, 32, 16], [3, 8, 9]])
    centres = np.concatenate([corners, random_centres(NUCLEI_SHAPE, 12, seed=3)])
    rays, prob, dist, points = synthetic_candidates(NUCLEI_SHAPE, centres, seed=4)
    return write_candidate_file(path, NUCLEI_SHAPE, rays, prob, dist, points)


def _replace_with_rewritten(path):
    """Replace ``path`` as a rerun of the GPU step does: the same candidates, written anew
    under a temporary name and renamed over it (a new file: new mtime)."""
    time.sleep(0.01)   # a modification time that differs at any timestamp resolution
    tmp = path.with_name("replacement.h5")
    _nuclei_file(tmp)
    os.replace(tmp, path)


def _error_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


def _assert_one_line_exit_2(code, caplog, *expected):
    errors = _error_lines(caplog)
    assert code == 2, errors
    assert len(errors) == 1 and "\n" not in errors[0], errors
    missing = [text for text in expected if text not in errors[0]]
    assert not missing, f"{missing} not in: {errors[0]}"
    return errors[0]


@pytest.fixture
def tasks_in_process(monkeypatch):
    """Run the HPC step's tasks in this process; ``hooks[(description, i)]()`` runs before
    task ``i`` of the stage ``description``."""
    hooks = {}

    def run_tasks(client, function, argument_tuples, description, **settings):
        for i, arguments in enumerate(argument_tuples):
            hooks.pop((description, i), lambda: None)()
            yield function(*arguments)
    monkeypatch.setattr(hpc, "run_tasks", run_tasks)
    monkeypatch.setattr(hpc, "_client", lambda client, config: contextlib.nullcontext())
    return hooks


# ---------------------------------------------------------------------------------------------
# one writer per output


def _lock_of(owner_host, pid, started=0.0):
    return (f'{{"host": "{owner_host}", "pid": {pid}, "started": {started}, '
            f'"started_utc": "then"}}')


def test_a_lock_of_a_dead_process_of_this_host_is_taken_over(tmp_path, caplog):
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    lock = tmp_path / "label.h5.lock"
    lock.write_text(_lock_of(socket.gethostname(), finished.pid))
    with run_lock((lock, tmp_path / "label.h5")):
        assert str(os.getpid()) in lock.read_text()
    assert not lock.exists()
    assert any("taking over the lock" in r.getMessage() for r in caplog.records)


def test_a_lock_of_another_host_is_respected_and_says_how_to_remove_it(tmp_path):
    from stardist_hpc.errors import UserError
    lock = tmp_path / "label.h5.lock"
    lock.write_text(_lock_of("node042", 1))
    with pytest.raises(UserError, match=r"being written by the run of PID 1 on host node042.*"
                                        r"if that run is dead.*delete .*label.h5.lock"):
        with run_lock((lock, tmp_path / "label.h5")):
            pass
    assert lock.read_text() == _lock_of("node042", 1)


def _wait_for(condition, process, what):
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition():
        assert process.poll() is None, f"the first run ended before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT_SECONDS} s"
        time.sleep(0.01)


def _second_runs_refused(main, config_path, first, caplog, monkeypatch, overrides=()):
    """Run ``main`` on ``config_path`` with HDF5 file locking on and off while ``first`` runs."""
    for locking in ("TRUE", "FALSE"):
        monkeypatch.setenv("HDF5_USE_FILE_LOCKING", locking)
        for override in (None, *overrides):
            caplog.clear()
            code = main([str(config_path)] + ([] if override is None else ["--set", override]))
            _assert_one_line_exit_2(code, caplog, "is being written by the run of PID "
                                    f"{first.pid} on host {socket.gethostname()}",
                                    "wait for it to finish")
    assert first.poll() is None, "the first run ended before the second ones were refused"


def test_a_second_hpc_run_on_the_same_outputs_stops_at_once(
        tmp_path, nuclei_candidates, undisturbed, caplog, monkeypatch, tasks_in_process):
    """The first run, left alone, then finishes with the undisturbed labels (Ctrl-C of a
    running one: test_workers_killed_until_the_retries_are_spent_then_all_gone_...)."""
    config_path = _write_hpc_config(tmp_path, nuclei_candidates)
    work_dir, label_path = tmp_path / "work", tmp_path / "label.h5"
    log_path = tmp_path / "first.log"
    before = _sha256(nuclei_candidates)
    with _started(_command("hpc_prediction.py", config_path), log_path) as first:
        _wait_for(lambda: _round0_checkpoints(work_dir), first, "NMS checkpoint")
        started = time.monotonic()
        # the same outputs; the same work_dir only; the same label file only
        _second_runs_refused(segment_main, config_path, first, caplog, monkeypatch,
                             (f"output.labels={tmp_path / 'other.h5'}",
                              f"output.work_dir={tmp_path / 'other_work'}"))
        assert time.monotonic() - started < WAIT_SECONDS / 10
        assert (work_dir / WORK_DIR_LOCK).exists() and lock_path_of(label_path).exists()
        assert first.wait(WAIT_SECONDS) == 0, log_path.read_text()[-3000:]
    # the refused runs left nothing: no label file, no lock, no checkpoint
    assert not (tmp_path / "other.h5").exists()
    assert not any(p.is_file() for p in (tmp_path / "other_work").rglob("*"))
    assert not (work_dir / WORK_DIR_LOCK).exists() and not lock_path_of(label_path).exists()
    _assert_same_result(label_path, undisturbed[0])
    assert _sha256(nuclei_candidates) == before


@pytest.fixture(scope="module")
def gpu_uninterrupted(tmp_path_factory):
    """Datasets of an undisturbed GPU-step run of ``_write_local_config`` (its attributes
    name its own paths)."""
    from local_prediction import main
    directory = tmp_path_factory.mktemp("gpu_undisturbed")
    assert main([str(_write_local_config(directory))]) == 0
    return _read_hdf5(directory / "out" / "prediction.h5")[0], {}


def _datasets(path):
    return _read_hdf5(path)[0], {}


def test_a_second_gpu_run_on_the_same_output_stops_at_once(tmp_path, gpu_uninterrupted, caplog,
                                                           monkeypatch):
    config_path = _write_local_config(tmp_path)
    output = tmp_path / "out" / "prediction.h5"
    log_path = tmp_path / "first.log"
    with _started(_command("local_prediction.py", config_path) + ["--verbose"],
                  log_path) as first:
        _wait_for(lambda: _blocks_predicted(log_path)[0] >= 1, first, "predicted block")
        _second_runs_refused(predict_main, config_path, first, caplog, monkeypatch)
        assert first.wait(WAIT_SECONDS) == 0, log_path.read_text()[-3000:]
    _assert_same_hdf5(_datasets(output), gpu_uninterrupted)


# ---------------------------------------------------------------------------------------------
# inputs pinned for the whole run

#: (stage, task before which the candidate file is replaced).
REPLACED = {"before NMS": ("NMS round 0", 0), "during NMS": ("NMS round 0", 5),
            "after NMS converged": ("gather survivors", 0)}


@pytest.mark.parametrize("stage", REPLACED)
def test_an_input_replaced_under_the_hpc_step_stops_it(tmp_path, stage, undisturbed,
                                                       tasks_in_process, caplog):
    reference = undisturbed[0]
    candidates = _nuclei_file(tmp_path / "prediction.h5")
    config_path = _write_config(tmp_path, candidates)
    tasks_in_process[REPLACED[stage]] = lambda: _replace_with_rewritten(candidates)

    code = segment_main([str(config_path)])

    _assert_one_line_exit_2(code, caplog, f"input {candidates} changed while this run was "
                            "using it", "nothing was written")
    assert not (tmp_path / "label.h5").exists()
    replaced = _sha256(candidates)
    assert segment_main([str(config_path)]) == 0
    _assert_same_result(tmp_path / "label.h5", reference)
    assert _sha256(candidates) == replaced


# ---------------------------------------------------------------------------------------------
# a full filesystem


@pytest.fixture
def small_filesystem(tmp_path):
    """A tmpfs of :data:`SMALL_FS` mounted for one test (root only)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_FS}", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def _fill(mount, free_kib):
    """Fill ``mount`` up to ``free_kib`` KiB of free space (a file ``filler``)."""
    filler = mount / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(mount).free
    with open(filler, "wb") as f:
        f.truncate(0)
        f.write(b"\0" * max(0, free - free_kib * 1024))
    return filler


#: (what the work_dir already holds, KiB left free, the files the message may name: a
#: labeling task writes its chunks, then their OME-Zarr level 0 and its marker).
FULL_AT = {"NMS checkpoint": ((), 40, (f"{NMS_DIR}/round0/batch",)),
           "survivors.h5": ((NMS_DIR, "run.json"), 30, (SURVIVORS,)),
           "label chunk": ((NMS_DIR, "run.json", SURVIVORS), 30,
                           (f"{CHUNK_DIR}/", f"{OME_ZARR_DIR}/0/", "label.ome.zarr.tmp/")),
           "label.h5": ((NMS_DIR, "run.json", SURVIVORS, CHUNK_DIR), 300, ("label.h5",))}


@pytest.mark.parametrize("stage", FULL_AT)
def test_a_full_filesystem_is_one_line_and_a_rerun_with_space_resumes(
        tmp_path, stage, small_filesystem, undisturbed, nuclei_candidates, tasks_in_process,
        caplog):
    reference, complete_work_dir = undisturbed
    done_before, free_kib, named = FULL_AT[stage]
    work_dir = small_filesystem / "work"
    work_dir.mkdir()
    for entry in done_before:
        source = complete_work_dir / entry
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, work_dir / entry)
    config_path = _write_config(tmp_path, nuclei_candidates, work_dir=work_dir,
                                labels=small_filesystem / "label.h5")
    before = _sha256(nuclei_candidates)
    filler = _fill(small_filesystem, free_kib)

    code = segment_main([str(config_path)])

    message = _assert_one_line_exit_2(code, caplog,
                                      f"no space left on {small_filesystem} while writing",
                                      "free space and rerun to resume")
    assert any(name in message for name in named), message
    assert not (small_filesystem / "label.h5").exists()
    filler.unlink()
    # a killed worker's temporary, cleaned up by the next run
    stale = work_dir / CHUNK_DIR / f"0.npz.{DEAD_PID}.tmp"
    stale.parent.mkdir(exist_ok=True)
    stale.write_bytes(b"partial")
    assert segment_main([str(config_path)]) == 0
    assert not stale.exists()
    _assert_same_result(small_filesystem / "label.h5", reference)
    assert _sha256(nuclei_candidates) == before


def test_a_full_filesystem_under_the_gpu_step_is_one_line_and_a_rerun_continues(
        tmp_path, small_filesystem, gpu_uninterrupted, caplog):
    from local_prediction import main
    config_path = _write_local_config(tmp_path)
    image = tmp_path / "nuclei.tif"
    before = _sha256(image)
    output = small_filesystem / "prediction.h5"
    filler = _fill(small_filesystem, 600)
    caplog.clear()

    code = main([str(config_path), "--set", f"output.path={output}"])

    _assert_one_line_exit_2(code, caplog, f"no space left on {small_filesystem} while writing "
                            f"{output}; free space and rerun to resume")
    assert not output.exists()
    filler.unlink()
    assert main([str(config_path), "--set", f"output.path={output}"]) == 0
    _assert_same_hdf5(_datasets(output), gpu_uninterrupted)
    assert _sha256(image) == before


# ---------------------------------------------------------------------------------------------
# workers that keep dying, in real runs of hpc_prediction.py on a local cluster

#: the rendering task that the faults of ``worker_faults`` hit (a chunk with objects).
FAULT_CHUNK = 1
#: the no-worker watchdog's wait in the run whose workers all leave.
NO_WORKER_SECONDS = 1


def _run_with_fault(config_path, log_path, fault, mark, *overrides):
    """Run hpc_prediction.py with the worker fault ``fault`` of ``worker_faults``; returns
    its exit code and its last stderr line."""
    env = {**os.environ, "FAULT": fault, "FAULT_CHUNK": str(FAULT_CHUNK),
           "FAULT_MARK": str(mark),
           "DASK_DISTRIBUTED__WORKER__PRELOAD": str([str(Path(__file__).parent
                                                         / "worker_faults.py")]),
           # each death fails the task at once: only the client's retries are spent; and
           # a worker holds only the task it runs, which alone fails when it dies
           "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES": "0",
           "DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION": "1.0"}
    command = _command("hpc_prediction.py", config_path)
    for override in overrides:
        command += ["--set", override]
    with open(log_path, "w") as log:
        done = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=log, env=env,
                              timeout=WAIT_SECONDS, start_new_session=True)
    stderr = log_path.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    return done.returncode, stderr.strip().splitlines()[-1]


def test_workers_killed_until_the_retries_are_spent_then_all_gone_are_one_line_each(
        tmp_path, nuclei_candidates, undisturbed, caplog, tasks_in_process):
    """Three runs of one config: stopped by Ctrl-C during NMS (exit 130, #13), its task
    rendering chunk 1 then kills every worker that runs it, then every worker leaves
    (the watchdog); each leaves no label file, and the run after them (in process) gives
    the undisturbed labels from the inputs, which no run changed."""
    # no report: not needed here, and a few seconds less per run
    config_path = _write_config(tmp_path, nuclei_candidates, report=None)
    label_path, mark = tmp_path / "label.h5", tmp_path / "left"
    before = _sha256(nuclei_candidates)

    log_path = tmp_path / "interrupted.log"
    with _started(_command("hpc_prediction.py", config_path), log_path) as first:
        # as soon as the tasks are submitted (not at the first checkpoint: a worker's first
        # task compiles the NMS kernels, seconds on a busy machine)
        _wait_for(lambda: "INFO NMS round 0: 0 of" in log_path.read_text(), first,
                  "NMS tasks")
        os.killpg(first.pid, signal.SIGINT)   # the terminal's Ctrl-C: the whole group
        assert first.wait(WAIT_SECONDS) == EXIT_INTERRUPTED, log_path.read_text()[-3000:]
    stderr = log_path.read_text()
    assert "Traceback" not in stderr, stderr[-3000:]
    assert stderr.strip().splitlines()[-1].endswith(
        "ERROR interrupted; rerun the same command to resume")

    code, last = _run_with_fault(config_path, tmp_path / "killed.log", "kill", mark)
    assert code == 2, last
    # the task renders a batch of chunks, chunk FAULT_CHUNK among them
    assert re.search(rf"ERROR task render_chunks (\d+, )*{FAULT_CHUNK}(, \d+)*( and \d+ more)? "
                     r"\(labeling\) killed its worker every time it ran", last), last
    for text in ("memory limit of ", "cluster.slurm.memory", "rerun to resume"):
        assert text in last, last
    assert not label_path.exists()

    code, last = _run_with_fault(config_path, tmp_path / "left.log", "leave", mark,
                                 f"cluster.no_worker_timeout={NO_WORKER_SECONDS}")
    assert code == 2, last
    assert mark.exists()
    for text in (f"ERROR no Dask worker left for {NO_WORKER_SECONDS} s during labeling",
                 "rerun to resume", "cluster.no_worker_timeout"):
        assert text in last, last
    assert not label_path.exists()

    assert segment_main([str(config_path)]) == 0
    _assert_same_result(label_path, undisturbed[0])
    assert _sha256(nuclei_candidates) == before


# ---------------------------------------------------------------------------------------------
# a disk that fills up during a write (a quota the free-space check cannot see)

#: the work_dir of an undisturbed run up to its label chunks.
UP_TO_LABELS = (NMS_DIR, "run.json", SURVIVORS, CHUNK_DIR)
#: stage -> (the write before which the disk fills, see full_disk_child; what the work_dir
#: already holds; the file written there, named by the message, relative to the stage's
#: directory on the small filesystem; the config key of that output, if it has one).
FULL_DURING = {
    "survivors.h5": ("dataset:dist", (NMS_DIR, "run.json"), f"work/{SURVIVORS}", None),
    "label.h5 chunks": ("dataset:labels", UP_TO_LABELS, "label.h5", None),
    "label.h5 objects": ("dataset:objects", UP_TO_LABELS, "label.h5", None),
    # measured: the chunks are rendered again with their intensities
    "label.h5 intensities": ("dataset:intensities", (NMS_DIR, "run.json", SURVIVORS),
                             "label.h5", None),
    "label.ome.zarr": ("call:stardist_hpc.io.ome_zarr:_write_chunks", UP_TO_LABELS,
                       "label.ome.zarr", "ome_zarr"),
    "objects.tsv": ("call:stardist_hpc.segment.outputs:write_tsv", UP_TO_LABELS, "objects.tsv",
                    "objects_tsv"),
    "objects.parquet": ("call:stardist_hpc.segment.outputs:write_parquet", UP_TO_LABELS,
                        "objects.parquet", "objects_parquet"),
}


def _stage_config(tmp_path, mount, stage, candidates, complete_work_dir):
    """The config of one stage of FULL_DURING (its work_dir and outputs on ``mount``), the
    file the stage writes and the label file."""
    _, done_before, named, key = FULL_DURING[stage]
    directory = tmp_path / stage.replace(" ", "_")
    on_small = mount / stage.replace(" ", "_")
    (on_small / "work").mkdir(parents=True)
    for entry in done_before:
        source = complete_work_dir / entry
        (shutil.copytree if source.is_dir() else shutil.copy2)(source, on_small / "work" / entry)
    directory.mkdir()
    outputs = {"work_dir": on_small / "work", "labels": on_small / "label.h5", "report": None}
    if key is not None:
        outputs[key] = on_small / named
    path = _write_config(directory, candidates, **outputs)
    if stage == "label.h5 intensities":
        import tifffile
        image = directory / "image.tif"
        tifffile.imwrite(image, np.random.default_rng(5).random(NUCLEI_SHAPE, np.float32))
        raw = yaml.safe_load(path.read_text())
        raw["measure"] = {"image": str(image)}
        path.write_text(yaml.safe_dump(raw))
    return path, on_small / named, outputs["labels"]


def test_a_disk_that_fills_during_a_write_is_one_line_at_every_stage(
        tmp_path, small_filesystem, undisturbed, nuclei_candidates, tasks_in_process, caplog):
    """The writes fail in a child process (a native crash would be its return code); each
    run is one line, exit 2, and the run after it, with space, gives the undisturbed
    results."""
    reference, complete_work_dir = undisturbed
    before = _sha256(nuclei_candidates)
    configs = {stage: _stage_config(tmp_path, small_filesystem, stage, nuclei_candidates,
                                    complete_work_dir) for stage in FULL_DURING}
    arguments = [str(small_filesystem)]
    for stage, (config_path, _, _) in configs.items():
        arguments += ["hpc", FULL_DURING[stage][0], str(config_path)]
    candidates = small_filesystem / "prediction.h5"
    arguments += ["candidates", "call:stardist_hpc.io.candidates:CandidateWriter.append",
                  str(candidates)]
    child = subprocess.run([sys.executable, str(Path(__file__).parent / "full_disk_child.py"),
                            *arguments], capture_output=True, text=True, timeout=WAIT_SECONDS,
                           env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert child.returncode == 0, f"exit code {child.returncode}: {child.stderr[-3000:]}"
    runs = [json.loads(line) for line in child.stdout.splitlines()]
    assert len(runs) == len(FULL_DURING) + 1, child.stderr[-3000:]
    *runs, candidates_run = runs

    for (stage, (config_path, output, labels)), run in zip(configs.items(), runs):
        errors = run["errors"]
        assert run["code"] == 2 and len(errors) == 1, (stage, run)
        for text in (f"no space left on {small_filesystem} while writing", str(output),
                     "; free space and rerun to resume"):
            assert text in errors[0], (stage, errors[0])
        assert not output.exists(), stage
        stale = _leave_killed_writers_files(output)
        assert segment_main([str(config_path)]) == 0, stage
        assert not any(path.exists() for path in stale), stage
        _assert_same_result(labels, reference)
        _assert_complete_output(output, complete_work_dir.parent, reference)
        shutil.rmtree(labels.parent)   # space for the next
    assert _sha256(nuclei_candidates) == before

    # prediction.h5 (the GPU step's writer): its first block's write fails; the file, not
    # to be continued, is removed
    assert candidates_run["code"] == 2 and candidates_run["errors"] == [
        f"no space left on {small_filesystem} while writing {candidates}; free space and "
        "rerun to resume"], candidates_run
    assert not list(small_filesystem.glob("prediction.h5*"))
    _nuclei_file(candidates)
    _assert_same_hdf5(_datasets(candidates), _datasets(nuclei_candidates))


def _leave_killed_writers_files(output):
    """What killed processes (of a PID no process has) leave beside and in the OME-Zarr
    store ``output``: a chunk's temporary in the temporary store and an older store that
    a rename was replacing. Returns them (nothing for other outputs)."""
    if output.name != "label.ome.zarr":
        return []
    level0 = temporary_store(output) / "labels" / "nuclei" / "0"
    assert level0.is_dir()   # kept for the rerun, which continues it
    chunk_temporary = level0 / "0" / "0" / f"0.{DEAD_PID}.tmp"
    chunk_temporary.parent.mkdir(parents=True, exist_ok=True)
    chunk_temporary.write_bytes(b"partial")
    old_store = output.with_name(f"{output.name}.{DEAD_PID}.old")
    (old_store / "labels").mkdir(parents=True)
    return [chunk_temporary, old_store]


def _assert_complete_output(output, undisturbed_dir, reference):
    """The OME-Zarr or table ``output`` of a rerun is the undisturbed run's (label.h5 and
    survivors.h5: checked by the labels)."""
    if output.name == "label.ome.zarr":
        import zarr
        level0 = zarr.open_group(str(output), mode="r")["labels/nuclei/0"][()]
        assert np.array_equal(level0, reference.labels)
        assert not list(output.parent.glob("label.ome.zarr.*"))
        assert not list(output.rglob("*.tmp"))
    elif output.suffix == ".tsv":
        assert output.read_bytes() == (undisturbed_dir / "output" / "objects.tsv").read_bytes()
    elif output.suffix == ".parquet":
        import pyarrow.parquet
        rows = (undisturbed_dir / "output" / "objects.tsv").read_text().count("\n") - 1
        assert pyarrow.parquet.read_table(output).num_rows == rows


def test_a_write_that_makes_no_progress_is_an_error_not_a_loop(tmp_path):
    """A write that returns 0 without an error (no regular file does; a pipe, a FUSE or a
    network filesystem might) is kept as the failed write, like ENOSPC."""
    import errno
    import io

    from stardist_hpc.io.hdf5 import _WriteGuard

    class _WritesNothing(io.FileIO):
        def write(self, data):
            return 0

    class _Stuck(_WriteGuard, _WritesNothing):
        pass

    with _Stuck(tmp_path / "f", "w") as guard:
        assert guard.write(b"abc") == 3
        assert guard.write(b"def") == 3   # dropped, as every write after a failed one
    assert guard.error.errno == errno.EIO
