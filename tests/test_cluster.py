"""The Dask cluster: SLURM job scripts from the config, local workers, retried tasks."""
import os

import pytest

from stardist_hpc.config import ClusterSection, LocalClusterSection, SlurmSection
from stardist_hpc.errors import UserError
from stardist_hpc.segment.cluster import (
    _wait_for_slurm_workers,
    run_tasks,
    slurm_cluster_kwargs,
    start_cluster,
)

SLURM = SlurmSection(jobs=3, cores=8, processes=2, memory="20GB", walltime="02:30:00",
                     queue="gpu-short", account="lab42", interface=None,
                     local_directory="/scratch/dask", job_extra_directives=("--qos=long",),
                     job_script_prologue=("module load cuda", "source env/bin/activate"),
                     scheduler_host="127.0.0.1", worker_timeout=5.0)


def test_slurm_job_script_holds_the_configured_directives():
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
        _wait_for_slurm_workers(_SilentClient(), SLURM)


def _die_once(marker, value):
    """A task whose first attempt kills its worker process, as a lost SLURM job would."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value * 2


def test_local_cluster_redoes_the_tasks_of_a_lost_worker(tmp_path):
    cluster = ClusterSection(mode="local",
                             local=LocalClusterSection(n_workers=2, threads_per_worker=1),
                             slurm=SLURM)
    with start_cluster(cluster) as client:
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert all(address.startswith("tcp://127.0.0.1:") for address in workers)
        results = run_tasks(client, _die_once,
                            [(str(tmp_path / "died"), i) for i in range(4)], "test")
        assert sorted(results) == [0, 2, 4, 6]
