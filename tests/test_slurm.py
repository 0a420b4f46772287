"""The HPC step through a real single-node SLURM cluster: sbatch driver + dask-worker jobs.

The cluster comes from tests/slurm/start_cluster.sh (see tests/slurm/README.md). The driver job
is jobscript_template.sh as users submit it; it runs hpc_prediction.py with cluster.mode slurm,
which submits the worker jobs itself. Its label.h5 must equal an in-process local-cluster run.
Skipped only when this machine cannot run the daemons, and never when CI=true.
"""
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml
from conftest import random_centres, synthetic_candidates, write_candidate_file

import hpc_prediction
from stardist_hpc.segment.cluster import WORKER_SETUP

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SLURM_DIR = REPO / "tests" / "slurm"
DRIVER_NAME = "stardist-hpc"      # #SBATCH --job-name of jobscript_template.sh
WORKER_NAME = "dask-worker"       # dask-jobqueue's default job name
JOB_TIMEOUT = 300                 # seconds a driver job may take
COMMAND_TIMEOUT = 60              # seconds a SLURM command may take
# seconds start_cluster.sh (which may install the packages first) or stop_cluster.sh may take;
# the stop script's own waits add up to ~7 min (lock 300 s, jobs 30 s, 3 daemons x 35 s)
CLUSTER_SCRIPT_TIMEOUT = 600
ACTIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED"}
SUMMARY = re.compile(r"wrote \S+label\.h5: \d+ candidates -> \d+ objects")


def _cannot_run(reason):
    """Skip, except on CI, where a missing SLURM cluster is a failure."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true and the SLURM tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def slurm_env():
    """Start the test cluster (stopped after the module); yields the env for SLURM commands."""
    if os.geteuid() != 0:
        _cannot_run("the SLURM test cluster needs root (it starts slurmctld/slurmd/munged)")
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    if not shutil.which("slurmctld", path=path) and not shutil.which("apt-get"):
        _cannot_run("neither slurmctld nor apt-get (to install it) is available")
    started = subprocess.run([str(SLURM_DIR / "start_cluster.sh")], capture_output=True,
                             text=True, timeout=CLUSTER_SCRIPT_TIMEOUT)
    if started.returncode != 0 and "apt-get install failed" in started.stderr:
        subprocess.run([str(SLURM_DIR / "stop_cluster.sh")], capture_output=True,
                       timeout=CLUSTER_SCRIPT_TIMEOUT)
        _cannot_run("the SLURM packages cannot be installed: " + started.stderr[-1500:])
    try:
        assert started.returncode == 0, f"start_cluster.sh failed:\n{started.stderr[-3000:]}"
        last = started.stdout.strip().splitlines()[-1]
        assert last.startswith("export SLURM_CONF="), started.stdout
        env = dict(os.environ, SLURM_CONF=last.partition("=")[2], PATH=path,
                   STARDIST_HPC_DIR=str(REPO))
        yield env
    finally:
        stopped = subprocess.run([str(SLURM_DIR / "stop_cluster.sh")], capture_output=True,
                                 text=True, timeout=CLUSTER_SCRIPT_TIMEOUT)
        assert stopped.returncode == 0, stopped.stderr


def _slurm(env, *args):
    result = subprocess.run(list(args), env=env, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT)
    assert result.returncode == 0, f"{' '.join(args)}: {result.stderr}"
    return result.stdout


# ---------------------------------------------------------------------------------------------
# candidates and the local reference


def _candidates(directory, shape, n_nuclei, n_rays, seed):
    rays, prob, dist, points = synthetic_candidates(
        shape, random_centres(shape, n_nuclei, seed=seed), n_rays=n_rays, seed=seed + 1)
    return write_candidate_file(directory / "prediction.h5", shape, rays, prob, dist, points)


def _write_config(path, candidates, out_dir, *, tile_shape, chunk_shape, cluster):
    raw = {"input": {"prediction": str(candidates)},
           "model": {"basedir": None, "name": None},
           "output": {"labels": str(out_dir / "label.h5"), "work_dir": str(out_dir / "work")},
           "nms": {"tile_shape": list(tile_shape)},
           "labeling": {"chunk_shape": list(chunk_shape)},
           "cluster": cluster}
    path.write_text(yaml.safe_dump(raw))
    return path


def _read(path):
    with h5py.File(path, "r") as f:
        return f["labels"][()], f["objects"][()]


def _local_reference(directory, candidates, tile_shape=(None, 48, 48)):
    """label.h5 of an in-process run of hpc_prediction.main on a local Dask cluster."""
    config = _write_config(directory / "local.yaml", candidates, directory / "local",
                           tile_shape=tile_shape, chunk_shape=(24, 64, 64),
                           cluster={"mode": "slurm"})   # overridden below, as users would
    assert hpc_prediction.main([str(config), "--set", "cluster.mode=local",
                                "--set", "cluster.local.n_workers=2",
                                "--set", "cluster.local.threads_per_worker=1"]) == 0
    labels, objects = _read(directory / "local" / "label.h5")
    assert len(objects) > 10 and labels.max() == len(objects)
    return labels, objects


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """Candidates of the GPU step on the demo volume, and their labels from one local NMS tile
    over the whole volume (so the SLURM run's tiling is checked too)."""
    import local_prediction
    from stardist_hpc.demo import IMAGE_NAME, write_demo_data

    directory = tmp_path_factory.mktemp("demo")
    write_demo_data(directory)
    config = directory / "local.yaml"
    config.write_text(yaml.safe_dump({
        "image": {"path": str(directory / IMAGE_NAME)},
        "model": {"basedir": str(REPO / "models"), "name": "demo"},
        "prediction": {"block_shape": [64, 128, 128]},
        "output": {"path": str(directory / "prediction.h5")}}))
    assert local_prediction.main([str(config)]) == 0
    candidates = directory / "prediction.h5"
    return candidates, _local_reference(directory, candidates, tile_shape=(None, None, None))


@pytest.fixture(scope="module")
def large_run(tmp_path_factory):
    """A 32x192x192 volume with 200 nuclei (96 rays): long enough to cancel a worker."""
    directory = tmp_path_factory.mktemp("large")
    candidates = _candidates(directory, (32, 192, 192), 200, 96, seed=21)
    return candidates, _local_reference(directory, candidates)


# ---------------------------------------------------------------------------------------------
# the driver job


def _slurm_config(tmp_path, candidates, *, tile_shape, chunk_shape):
    cluster = {"mode": "slurm",
               "slurm": {"jobs": 2, "cores": 1, "processes": 1, "memory": "2GB",
                         "walltime": "00:10:00", "interface": "lo",
                         "scheduler_host": "127.0.0.1", "worker_timeout": 120,
                         "job_extra_directives": [f"--output={tmp_path}/worker-%j.log"]}}
    return _write_config(tmp_path / "slurm.yaml", candidates, tmp_path / "slurm",
                         tile_shape=tile_shape, chunk_shape=chunk_shape, cluster=cluster)


def _submit_driver(env, tmp_path, config):
    out = _slurm(env, "sbatch", "--parsable", f"--output={tmp_path}/driver-%j.log",
                 f"--chdir={REPO}", str(REPO / "jobscript_template.sh"), str(config))
    return int(out.strip().split(";")[0])


def _state(env, job_id):
    """The job's state while squeue knows it, else None."""
    result = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], env=env,
                            capture_output=True, text=True, timeout=COMMAND_TIMEOUT)
    return result.stdout.strip() or None


def _wait_until_done(env, job_id, log_path):
    deadline = time.monotonic() + JOB_TIMEOUT
    while _state(env, job_id) in ACTIVE_STATES:
        if time.monotonic() > deadline:
            subprocess.run(["scancel", str(job_id)], env=env, timeout=COMMAND_TIMEOUT)
            tail = log_path.read_text()[-3000:] if log_path.exists() else "(no log)"
            pytest.fail(f"driver job {job_id} still running after {JOB_TIMEOUT} s:\n{tail}")
        time.sleep(1)


def _completed_jobs(env, after_id):
    """{job id: (name, state, exit code)} of the jobs after ``after_id`` in the completion log."""
    jobs = {}
    out = _slurm(env, "sacct", "-c", "-n", "-P", "-o", "jobid,jobname,state,exitcode")
    for line in out.splitlines():
        job_id, name, state, exit_code = line.split("|")
        if int(job_id) >= after_id:
            jobs[int(job_id)] = (name, state, exit_code)
    return jobs


def _driver_record(env, driver_id):
    """The driver's completion-log record (jobcomp may lag a moment behind squeue)."""
    for _ in range(30):
        record = _completed_jobs(env, driver_id).get(driver_id)
        if record:
            return record
        time.sleep(1)
    pytest.fail(f"driver job {driver_id} is not in `sacct -c`")


def _check_run(env, tmp_path, driver_id, reference):
    """The driver succeeded, the workers were SLURM jobs on loopback, labels equal the reference.

    Returns the worker jobs of the run, {job id: (name, state, exit code)}.
    """
    log_path = tmp_path / f"driver-{driver_id}.log"
    log_text = log_path.read_text()
    assert _driver_record(env, driver_id) == (DRIVER_NAME, "COMPLETED", "0:0"), log_text[-3000:]
    # the driver log ends with hpc.run's summary
    lines = [line for line in re.split(r"[\r\n]+", log_text) if line.strip()]
    assert SUMMARY.search(lines[-2]), lines[-5:]
    assert "seconds: index" in lines[-1], lines[-5:]
    assert "Dask dashboard: http://127.0.0.1:" in log_text
    assert f"driver job {driver_id} on" in log_text

    # the label volume equals the local run
    labels, objects = _read(tmp_path / "slurm" / "label.h5")
    ref_labels, ref_objects = reference
    assert labels.dtype == ref_labels.dtype and labels.shape == ref_labels.shape
    assert np.array_equal(labels, ref_labels), \
        f"{np.count_nonzero(labels != ref_labels)} voxel(s) differ from the local run"
    np.testing.assert_array_equal(objects, ref_objects)
    assert f"-> {len(ref_objects)} objects" in lines[-2]

    # the workers were SLURM jobs that joined this run's scheduler, all on loopback
    workers = {i: r for i, r in _completed_jobs(env, driver_id + 1).items()
               if r[0] == WORKER_NAME}
    assert workers, f"no {WORKER_NAME} job after driver {driver_id} in `sacct -c`"
    joined = []
    for job_id in workers:
        worker_log = tmp_path / f"worker-{job_id}.log"
        if not worker_log.exists():
            continue      # a job cancelled while pending writes no log
        text = worker_log.read_text()
        addresses = re.findall(r"\b(?:tcp|http)://([\w.:\[\]-]+?):\d+", text)
        if "CANCELLED" in text and not addresses:
            continue      # one cancelled while it started (the run was over) names none
        assert addresses and all(a == "127.0.0.1" for a in addresses), \
            f"worker {job_id} used non-loopback addresses {set(addresses)}:\n{text[-2000:]}"
        if re.search(r"Registered to:\s+tcp://127\.0\.0\.1:\d+", text):
            joined.append(job_id)
            # as local workers: a short GIL switch interval, the kernels loaded at the start
            assert f"Run preload setup: {WORKER_SETUP}" in text, text[-2000:]
    assert joined, f"no worker log of jobs {sorted(workers)} shows a registration"
    return workers, joined


def test_sbatch_driver_matches_local_run(slurm_env, demo_run, tmp_path):
    candidates, reference = demo_run
    config = _slurm_config(tmp_path, candidates, tile_shape=(None, 128, 128),
                           chunk_shape=(32, 128, 128))
    driver_id = _submit_driver(slurm_env, tmp_path, config)
    _wait_until_done(slurm_env, driver_id, tmp_path / f"driver-{driver_id}.log")
    _check_run(slurm_env, tmp_path, driver_id, reference)


def _running_worker(env, driver_id):
    """The id of a running worker job of this driver, or None."""
    out = _slurm(env, "squeue", "-h", "-o", "%i %j", "--states=RUNNING")
    for line in out.splitlines():
        job_id, name = line.split(maxsplit=1)
        if name == WORKER_NAME and int(job_id) > driver_id:
            return int(job_id)
    return None


def test_scancel_of_a_worker_changes_nothing(slurm_env, large_run, tmp_path):
    candidates, reference = large_run
    config = _slurm_config(tmp_path, candidates, tile_shape=(None, 24, 24),
                           chunk_shape=(8, 32, 32))
    driver_id = _submit_driver(slurm_env, tmp_path, config)
    log_path = tmp_path / f"driver-{driver_id}.log"
    # cancel the first worker once it has joined the scheduler and taken work
    victim, deadline = None, time.monotonic() + 120
    while victim is None:
        assert time.monotonic() < deadline, "no worker joined within 120 s"
        assert _state(slurm_env, driver_id) in ACTIVE_STATES, \
            "the driver ended before a worker could be cancelled:\n" + log_path.read_text()[-3000:]
        worker = _running_worker(slurm_env, driver_id)
        worker_log = tmp_path / f"worker-{worker}.log"
        if worker is not None and worker_log.exists() and "Registered to" in worker_log.read_text():
            time.sleep(2)   # let it work on some tasks
            victim = worker
        else:
            time.sleep(0.2)
    assert _state(slurm_env, driver_id) == "RUNNING", "the run is too short to cancel a worker"
    _slurm(slurm_env, "scancel", str(victim))
    _wait_until_done(slurm_env, driver_id, log_path)
    workers, joined = _check_run(slurm_env, tmp_path, driver_id, reference)
    assert workers[victim][1] == "CANCELLED"
    assert [j for j in joined if j != victim], "no other worker took over the cancelled one"
