"""The Dask cluster: SLURM job scripts from the config and the site's settings, local workers,
retried tasks."""
import dataclasses
import os
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import dask
import psutil
import pytest
import yaml

from stardist_hpc.config import (
    ClusterSection,
    HpcConfig,
    LocalClusterSection,
    SlurmSection,
    arguments_config,
)
from stardist_hpc.errors import UserError
from stardist_hpc.segment.cluster import (
    WORKER_SETUP,
    _wait_for_slurm_workers,
    job_script,
    run_tasks,
    slurm_cluster_kwargs,
    start_cluster,
)

REPO = Path(__file__).resolve().parents[1]

SLURM = SlurmSection(jobs=3, cores=8, processes=2, memory="20GB", walltime="02:30:00",
                     queue="gpu-short", account="lab42", interface=None,
                     local_directory="/scratch/dask", job_extra_directives=("--qos=long",),
                     job_script_prologue=("module load cuda", "source env/bin/activate"),
                     scheduler_host="127.0.0.1", worker_timeout=5.0)


def _write_site_config(folder, settings):
    """A site's ``jobqueue.yaml`` holding ``settings`` under ``jobqueue.slurm``."""
    folder.mkdir(exist_ok=True)
    (folder / "jobqueue.yaml").write_text(yaml.safe_dump({"jobqueue": {"slurm": settings}}))
    return folder


@pytest.fixture
def site_config(tmp_path):
    """Set the site's dask-jobqueue config (only it: no ~/.config/dask) for one test."""
    import dask
    import dask_jobqueue  # noqa: F401  (its defaults must be registered before the refresh)

    def use(settings):
        dask.config.refresh(paths=[str(_write_site_config(tmp_path / "dask", settings))])
    use({})
    yield use
    dask.config.refresh()


#: a site's jobqueue.yaml, as HPC sites write it once for all their users.
SITE = {"cores": 6, "memory": "12GB", "walltime": "05:00:00", "queue": "site-queue",
        "account": "site-account", "job-extra-directives": ["--qos=site"],
        "job-script-prologue": ["module load site-python"],
        "worker-extra-args": ["--lifetime", "23h"]}


def _script(tmp_path, **slurm):
    """The worker job script of a config whose cluster.slurm section is ``slurm``."""
    config = arguments_config(HpcConfig,
                              output={"labels": tmp_path / "label.h5", "work_dir": tmp_path / "w"},
                              cluster={"mode": "slurm",
                                       "slurm": {"scheduler_host": "127.0.0.1", **slurm}})
    return job_script(config)


def _assert_lines(script, present=(), absent=()):
    for line in present:
        assert line in script, f"{line!r} not in job script:\n{script}"
    for line in absent:
        assert line not in script, f"{line!r} in job script:\n{script}"


def test_the_sites_jobqueue_settings_apply_when_ours_are_null(site_config, tmp_path):
    site_config(SITE)
    _assert_lines(_script(tmp_path), present=(
        "#SBATCH --cpus-per-task=6", "#SBATCH -t 05:00:00", "#SBATCH -p site-queue",
        "#SBATCH -A site-account", "#SBATCH --qos=site", "module load site-python",
        "--lifetime 23h", "--no-dashboard"))


def test_our_yaml_overrides_the_site_key_by_key(site_config, tmp_path):
    site_config(SITE)
    script = _script(tmp_path, cores=8, queue="our-queue",
                     job_script_prologue=["module load our-python"],
                     worker_extra_args=["--lifetime", "2h"])
    _assert_lines(script, present=(
        "#SBATCH --cpus-per-task=8", "#SBATCH -p our-queue", "module load our-python",
        "--lifetime 2h", "--no-dashboard",
        # the keys we leave null stay the site's
        "#SBATCH -t 05:00:00", "#SBATCH -A site-account", "#SBATCH --qos=site"),
        absent=("site-queue", "site-python", "--lifetime 23h", "--cpus-per-task=6"))


def test_worker_jobs_preload_the_worker_setup_beside_the_sites_preloads(site_config, tmp_path):
    """SLURM workers get the local workers' setup (GIL switch interval, kernel warm-up)."""
    site_config(SITE)
    preload = f"--preload {WORKER_SETUP}"
    _assert_lines(_script(tmp_path), present=(preload, "--lifetime 23h"))
    script = _script(tmp_path, worker_extra_args=["--preload", "our_setup"])
    _assert_lines(script, present=("--preload our_setup", preload))
    # the preloads of Dask's config, which an explicit --preload would drop, are passed on
    with dask.config.set({"distributed.worker.preload": ["site_setup"]}):
        _assert_lines(_script(tmp_path), present=(preload, "--preload site_setup"))
    # named already: not twice
    script = _script(tmp_path, worker_extra_args=["--preload", WORKER_SETUP])
    assert script.count(WORKER_SETUP) == 1, script


@pytest.mark.parametrize("ours, missing", [({}, "cores"), ({"cores": 4}, "memory"),
                                           ({"memory": "4GB"}, "cores")])
def test_job_size_missing_from_both_configs_names_the_key(site_config, tmp_path, ours, missing):
    with pytest.raises(UserError, match=f"cluster.slurm.{missing} is not set here nor in the "
                                        f"site's dask-jobqueue config"):
        _script(tmp_path, **ours)


def test_job_script_option_prints_the_script_and_submits_nothing(tmp_path):
    """``--job-script`` in a fresh process whose site config comes from $DASK_CONFIG."""
    site = _write_site_config(tmp_path / "dask", SITE)
    config = tmp_path / "hpc.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"mode": "slurm", "slurm": {
        "scheduler_host": "127.0.0.1", "memory": "3GB"}}}))
    code = ("import sys; from stardist_hpc.cli import segment_main; "
            f"code = segment_main([{str(config)!r}, '--job-script']); "
            "assert 'tensorflow' not in sys.modules; sys.exit(code)")
    env = {**os.environ, "DASK_CONFIG": str(site), "PATH": "/usr/bin:/bin"}   # no sbatch
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _assert_lines(done.stdout, present=("#SBATCH --cpus-per-task=6", "#SBATCH -p site-queue",
                                        "module load site-python", "--no-dashboard"))
    assert "--mem=3G" in done.stdout or "--mem=2G" in done.stdout


def test_missing_job_size_is_a_one_line_error_before_any_work(tmp_path):
    config = tmp_path / "hpc.yaml"
    config.write_text(yaml.safe_dump({"cluster": {"mode": "slurm"}}))
    env = {**os.environ, "DASK_CONFIG": str(_write_site_config(tmp_path / "dask", {}))}
    done = subprocess.run([sys.executable, "hpc_prediction.py", str(config), "--job-script"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert "cluster.slurm.cores is not set" in done.stderr.strip().splitlines()[-1]


def test_slurm_job_script_holds_the_configured_directives(site_config):
    from dask_jobqueue import SLURMCluster
    kwargs = slurm_cluster_kwargs(SLURM)
    assert kwargs["scheduler_options"] == {"host": "127.0.0.1",
                                           "dashboard_address": "127.0.0.1:0"}
    with SLURMCluster(**kwargs) as cluster:   # starts a scheduler only; submits nothing
        script = cluster.job_script()
    for line in ("#SBATCH -p gpu-short", "#SBATCH -A lab42", "#SBATCH -t 02:30:00",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --qos=long", "module load cuda",
                 "source env/bin/activate", "--nworkers 2", "--local-directory /scratch/dask"):
        assert line in script, f"{line!r} not in job script:\n{script}"
    assert "#SBATCH --mem=19G" in script or "#SBATCH --mem=20G" in script


class _SilentClient:
    def wait_for_workers(self, n_workers, timeout):
        raise TimeoutError


def test_missing_slurm_workers_tell_the_user_what_to_check():
    with pytest.raises(UserError, match="squeue.*gpu-short.*lab42.*slurm-\\*.out"):
        _wait_for_slurm_workers(_SilentClient(), dataclasses.replace(SLURM, worker_timeout=0.01))


def test_missing_slurm_workers_name_the_sites_queue_and_account(site_config):
    site_config(SITE)
    with pytest.raises(UserError, match="queue \\(site-queue\\) and account \\(site-account"):
        _wait_for_slurm_workers(_SilentClient(), SlurmSection(worker_timeout=5.0))


def test_processes_default_to_one_per_core_unless_set(site_config, tmp_path):
    site_config(SITE)
    _assert_lines(_script(tmp_path), present=("--nworkers 6", "--nthreads 1"))
    _assert_lines(_script(tmp_path, cores=4), present=("--nworkers 4", "--nthreads 1"))
    _assert_lines(_script(tmp_path, cores=4, processes=2),
                  present=("--nworkers 2", "--nthreads 2"))
    site_config({**SITE, "processes": 3})
    _assert_lines(_script(tmp_path), present=("--nworkers 3", "--nthreads 2"))


def _die_once(marker, value):
    """A task whose first attempt kills its worker process, as a lost SLURM job would."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value * 2


@pytest.mark.parametrize("threads", [1, 2])
def test_local_cluster_redoes_the_tasks_of_a_lost_worker(tmp_path, threads):
    """With 2 threads the task dies in its task process: the worker exits and is restarted."""
    cluster = ClusterSection(mode="local",
                             local=LocalClusterSection(n_workers=2, threads_per_worker=threads),
                             slurm=SLURM)
    with start_cluster(cluster) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
        results = run_tasks(client, _die_once,
                            [(str(tmp_path / "died"), i) for i in range(4)], "test")
        assert sorted(results) == [0, 2, 4, 6]


def _task_process_ids(seconds):
    """(pid, parent pid) of the process that runs this task, after ``seconds`` of work."""
    time.sleep(seconds)
    return os.getpid(), os.getppid()


#: seconds for a task process to notice that its worker is gone (it looks every second).
TASK_PROCESS_EXIT_SECONDS = 10.0


def test_the_threads_of_a_worker_run_their_tasks_in_processes_that_leave_with_it():
    """Threads of one process would wait for each other's GIL: each task gets a process."""
    cluster = ClusterSection(mode="local",
                             local=LocalClusterSection(n_workers=1, threads_per_worker=2),
                             slurm=SLURM)
    with start_cluster(cluster) as client:
        [worker_pid] = client.run(os.getpid).values()
        # two tasks at once, one per thread: each in a process of its own under the worker
        ran = sorted(run_tasks(client, _task_process_ids, [(1.0,), (1.0,)], "test",
                               show_progress=False))
        assert len({pid for pid, _ in ran}) == 2
        assert {parent for _, parent in ran} == {worker_pid}
        os.kill(worker_pid, 9)   # as SLURM or the OOM killer would: no teardown runs
        deadline = time.monotonic() + TASK_PROCESS_EXIT_SECONDS
        while any(_alive(pid) for pid, _ in ran) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid, _ in ran if _alive(pid)]


def _alive(pid):
    """Whether ``pid`` still runs (a zombie has stopped), as test_interruptions looks."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


#: what a site's sbatch prints when it refuses a job.
SBATCH_REFUSAL = "sbatch: error: invalid partition specified: gpu-short"


def test_a_refused_sbatch_ends_the_run_at_once_with_sbatch_s_own_words(tmp_path):
    from stardist_hpc.synthetic import demo_candidate_file
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f"#!/bin/sh\necho '{SBATCH_REFUSAL}' >&2\nexit 1\n")
    sbatch.chmod(0o755)
    config = tmp_path / "hpc.yaml"
    config.write_text(yaml.safe_dump({
        "input": {"prediction": str(demo_candidate_file(tmp_path / "prediction.h5"))},
        "model": {"basedir": None, "name": None},
        "output": {"labels": str(tmp_path / "label.h5"), "work_dir": str(tmp_path / "work")},
        "cluster": {"mode": "slurm", "slurm": {"scheduler_host": "127.0.0.1", "cores": 1,
                                               "memory": "1GB", "jobs": 2,
                                               "worker_timeout": 600}}}))
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
           "DASK_CONFIG": str(_write_site_config(tmp_path / "dask", {}))}
    done = subprocess.run([sys.executable, "hpc_prediction.py", str(config)], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=120)
    last = done.stderr.strip().splitlines()[-1]
    assert done.returncode == 2, done.stderr[-3000:]
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert "sbatch refused the worker job" in last and SBATCH_REFUSAL in last
    assert not (tmp_path / "label.h5").exists()


def _kill_own_worker(value):
    """A task that kills its worker process every time, as the OOM killer would."""
    os._exit(1)


class _Plan:
    index = 7


def test_a_task_that_keeps_killing_its_workers_is_one_line_naming_it_and_the_memory():
    import dask
    cluster = ClusterSection(mode="local",
                             local=LocalClusterSection(n_workers=1, threads_per_worker=1),
                             slurm=SLURM)
    # each death is a KilledWorker at once, so only the retries are spent; the limit is named
    # though the error comes when the only worker has just died (its replacement not joined)
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            start_cluster(cluster) as client:
        with pytest.raises(UserError, match=r"task _kill_own_worker 7 \(NMS round 0\) killed its "
                                            r"worker.*memory limit of \d.*cluster.slurm.memory"):
            list(run_tasks(client, _kill_own_worker, [(_Plan(),)], "NMS round 0",
                           show_progress=False))


def test_the_driver_stops_when_no_worker_is_left():
    import distributed
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as lc, \
            distributed.Client(lc) as client:
        with pytest.raises(UserError, match=r"no Dask worker left for 0.5 s during labeling.*"
                                            r"cluster.no_worker_timeout"):
            list(run_tasks(client, abs, [(-1,)], "labeling", show_progress=False,
                           no_worker_timeout=0.5))


@pytest.mark.parametrize("seconds, joined_loaded", [(0.0, True), (5.0, False)])
def test_the_preload_waits_for_the_nms_kernels_a_bounded_time(monkeypatch, seconds,
                                                               joined_loaded):
    """A worker joins once its kernels are loaded, or after WARM_UP_WAIT_SECONDS while they
    still compile (a fresh installation: longer than a SLURM worker may take to start)."""
    from stardist_hpc.segment import worker_setup
    loaded = threading.Event()

    def warm_up():
        time.sleep(seconds)
        loaded.set()

    monkeypatch.setattr(worker_setup, "warm_up_nms_kernels", warm_up)
    monkeypatch.setattr(worker_setup, "WARM_UP_WAIT_SECONDS", 0.5)
    monkeypatch.setattr(worker_setup.signal, "signal", lambda *args: None)
    monkeypatch.setattr(worker_setup.sys, "setswitchinterval", lambda interval: None)
    started = time.monotonic()
    one_thread = types.SimpleNamespace(state=types.SimpleNamespace(nthreads=1))
    worker_setup.dask_setup(worker=one_thread)
    assert loaded.is_set() == joined_loaded
    assert time.monotonic() - started < 2.0
