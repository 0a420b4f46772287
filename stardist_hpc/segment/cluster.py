"""The Dask cluster of the HPC step: local worker processes or SLURM jobs, and running tasks.

Tasks are plain functions of picklable arguments. They are submitted with retries, so the
tasks of a lost worker (a preempted or killed SLURM job) are redone elsewhere, and their
results are handed back as they complete, so the caller can checkpoint and report progress.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import time
import uuid
from pathlib import Path
from typing import NamedTuple

from ..config import ClusterSection, LocalClusterSection, SlurmSection
from ..errors import UserError
from ..progress import progress
from . import task_processes

log = logging.getLogger(__name__)

#: loopback address: a local cluster is reachable from this machine only.
LOCALHOST = "127.0.0.1"
#: cgroup v2 CPU limit of this process's group ("quota period", or "max period").
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"
#: times a task is retried after its worker died.
TASK_RETRIES = 2
#: seconds between two looks at the cluster while no task completes (for the watchdog).
WATCH_SECONDS = 1.0


def available_cpus():
    """CPUs this process may use: its affinity (a SLURM allocation), capped by a cgroup quota.

    ``os.cpu_count()`` counts the whole machine, which would start more workers than the
    allocation holds cores.
    """
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass   # no cgroup v2 CPU limit readable: the affinity decides
    return cpus


#: module preloaded into each worker, local or SLURM (see its docstring).
WORKER_SETUP = "stardist_hpc.segment.worker_setup"


def _config_preloads():
    """The preloads of Dask's config (the site's or the user's): an explicit preload replaces
    that key, so whoever passes one passes these too."""
    import dask
    return list(dask.config.get("distributed.worker.preload", None) or ())


def local_cluster_kwargs(local: LocalClusterSection):
    """Keyword arguments of ``distributed.LocalCluster`` for the ``cluster.local`` section."""
    # the workers' own log lines (connections closing when a run stops on bad input or Ctrl-C)
    # would follow the driver's one-line error: shown only with -v
    worker_logs = logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.CRITICAL
    return dict(n_workers=local.n_workers or available_cpus(),
                threads_per_worker=local.threads_per_worker, processes=True, host=LOCALHOST,
                dashboard_address=f"{LOCALHOST}:0", silence_logs=worker_logs,
                preload=[WORKER_SETUP, *_config_preloads()])


#: ``cluster.slurm`` keys that are ``SLURMCluster`` arguments of the same name: passed only when
#: set, so that a null leaves the value to the site's dask-jobqueue config.
JOBQUEUE_KEYS = ("cores", "processes", "memory", "walltime", "queue", "account", "interface",
                 "local_directory", "job_extra_directives", "job_script_prologue")
#: keys without which dask-jobqueue cannot size a job, with an example value for the message.
REQUIRED_KEYS = {"cores": "14", "memory": "32GB"}
#: always added to the workers' arguments: workers open no port beyond the one the scheduler
#: talks to.
WORKER_ARGS = ("--no-dashboard",)
#: the worker option that loads :data:`WORKER_SETUP` (added unless the arguments load it).
PRELOAD_OPTION = "--preload"


def site_setting(name):
    """The site's dask-jobqueue value of ``cluster.slurm.<name>`` (``jobqueue.slurm.<name>``).

    Parameters
    ----------
    name : str
        A ``cluster.slurm`` key, e.g. ``job_script_prologue``.

    Returns
    -------
    object
        From ``~/.config/dask/jobqueue.yaml``, ``$DASK_CONFIG`` or dask-jobqueue's own defaults;
        None if unset.
    """
    import dask
    import dask_jobqueue  # noqa: F401  (registers dask-jobqueue's defaults in dask.config)
    return dask.config.get(f"jobqueue.slurm.{name.replace('_', '-')}", None)


def _check_required(given):
    """Refuse a run whose jobs have no size, neither in our config nor in the site's."""
    for name, example in REQUIRED_KEYS.items():
        if name not in given and site_setting(name) is None:
            raise UserError(
                f"cluster.slurm.{name} is not set here nor in the site's dask-jobqueue config: "
                f"set cluster.slurm.{name} (e.g. {example}), or jobqueue.slurm.{name} in "
                f"~/.config/dask/jobqueue.yaml (or $DASK_CONFIG)")


def processes_per_job(slurm: SlurmSection):
    """Worker processes per job: ours, else the site's, else one per core (ours or the site's).

    Every core computes whatever ``processes`` is (a worker of several threads runs each task
    in a task process of its own, :mod:`.task_processes`); one process per core needs no task
    processes, so every task runs under its nanny's memory limit.
    """
    for value in (slurm.processes, site_setting("processes")):
        if value is not None:
            return value
    return slurm.cores or site_setting("cores")


def _worker_args(slurm: SlurmSection):
    """The workers' extra arguments (ours, else the site's) followed by :data:`WORKER_ARGS`
    and the preload of :data:`WORKER_SETUP`, as for local workers (a site's own preloads
    stay: ``dask worker`` takes several)."""
    given = slurm.worker_extra_args
    args = list(site_setting("worker_extra_args") or () if given is None else given)
    args += [a for a in WORKER_ARGS if a not in args]
    if WORKER_SETUP in args:
        return args
    # without a --preload of theirs, the workers would run the config's preloads: keep them
    preloads = [WORKER_SETUP] + ([] if PRELOAD_OPTION in args else _config_preloads())
    return args + [a for module in preloads for a in (PRELOAD_OPTION, module)]


def slurm_cluster_kwargs(slurm: SlurmSection):
    """Keyword arguments of ``dask_jobqueue.SLURMCluster`` for the ``cluster.slurm`` section.

    Config keys map one-to-one onto SLURMCluster arguments; a null key is left out, so
    dask-jobqueue takes the site's value (``jobqueue.slurm.*`` in ``~/.config/dask`` or
    ``$DASK_CONFIG``), else its own default; but for ``processes``, where the default is one
    process per core instead of dask-jobqueue's (about the square root of the cores; see
    :func:`processes_per_job`). With ``scheduler_host`` set, the scheduler and its dashboard
    listen there only (the site's other scheduler options are kept).

    Raises
    ------
    UserError
        If ``cores`` or ``memory`` is set neither here nor in the site's config.
    """
    kwargs = {name: getattr(slurm, name) for name in JOBQUEUE_KEYS
              if getattr(slurm, name) is not None}
    _check_required(kwargs)
    kwargs = {name: list(v) if isinstance(v, tuple) else v for name, v in kwargs.items()}
    kwargs["processes"] = processes_per_job(slurm)
    kwargs["worker_extra_args"] = _worker_args(slurm)
    if slurm.scheduler_host is not None:
        kwargs["scheduler_options"] = {**(site_setting("scheduler_options") or {}),
                                       "host": slurm.scheduler_host,
                                       "dashboard_address": f"{slurm.scheduler_host}:0"}
    return kwargs


def check_cluster(cluster: ClusterSection):
    """Refuse SLURM settings that could not start a job, before any work is done.

    Raises
    ------
    UserError
        As :func:`slurm_cluster_kwargs` does.
    """
    if cluster.mode == "slurm":
        slurm_cluster_kwargs(cluster.slurm)


@contextlib.contextmanager
def slurm_cluster(slurm: SlurmSection):
    """A ``SLURMCluster`` of the ``cluster.slurm`` section (its scheduler runs; no job is
    submitted until it is scaled).

    Raises
    ------
    UserError
        For settings dask-jobqueue refuses (e.g. a memory it cannot parse).
    """
    from dask_jobqueue import SLURMCluster
    _quiet_distributed_logs()
    kwargs = slurm_cluster_kwargs(slurm)
    try:
        cluster = SLURMCluster(**kwargs)
    except ValueError as e:
        raise UserError(f"dask-jobqueue refused the cluster.slurm settings: {e}") from None
    with cluster:
        try:
            yield cluster
        finally:
            _mark_refused_jobs_failed(cluster)


def _mark_refused_jobs_failed(cluster):
    """Give jobs that sbatch refused the status ``failed``.

    A job whose submission failed keeps ``Status.created`` (it has nothing to close), and
    ``SpecCluster.close`` asserts that no job is left in that state.
    """
    from distributed.core import Status
    for job in list(cluster.workers.values()):
        if job.status == Status.created and getattr(job, "job_id", None) is None:
            job.status = Status.failed


def job_script(config) -> str:
    """The job script each SLURM worker job would be submitted with; submits nothing.

    Parameters
    ----------
    config : HpcConfig

    Returns
    -------
    str
        dask-jobqueue's ``SLURMCluster.job_script()`` for ``config.cluster.slurm``.
    """
    if config.cluster.mode != "slurm":
        log.warning("cluster.mode is %s: this is the job script cluster.mode slurm would "
                    "submit", config.cluster.mode)
    with slurm_cluster(config.cluster.slurm) as cluster:
        return cluster.job_script()


class _SubmissionFailures(logging.Filter):
    """Catch dask-jobqueue's failed ``sbatch`` calls, which its background task only logs.

    ``scale`` submits the jobs in a callback of the cluster's event loop; tornado logs the
    callback's error with a traceback (logger ``tornado.application``) while the driver waits
    for workers that never come. The filter keeps the error for the driver and the traceback
    off stderr.
    """

    LOGGER = "tornado.application"
    #: how dask-jobqueue's message of a failed command begins, and where its stderr starts.
    FAILED = "Command exited with non-zero exit code"
    STDERR = "stderr:"

    def __init__(self):
        super().__init__()
        self.answers = []

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, RuntimeError) and str(error).startswith(self.FAILED):
            self.answers.append(str(error).rpartition(self.STDERR)[2].strip() or str(error))
            return False
        return True

    @contextlib.contextmanager
    def installed(self):
        logger = logging.getLogger(self.LOGGER)
        logger.addFilter(self)
        try:
            yield self
        finally:
            logger.removeFilter(self)


#: seconds between two looks for a refused submission while waiting for the first worker.
SUBMISSION_POLL_SECONDS = 0.5


def _effective(slurm: SlurmSection, name):
    """``cluster.slurm.<name>`` as the jobs get it: ours, else the site's (None if neither)."""
    value = getattr(slurm, name)
    return site_setting(name) if value is None else value


def _wait_for_slurm_workers(client, slurm: SlurmSection, refused=()):
    """Wait for the first worker; stop at once when sbatch refused a job (``refused`` holds
    sbatch's answers as they come)."""
    deadline = time.monotonic() + slurm.worker_timeout
    while not refused:
        try:
            client.wait_for_workers(1, timeout=min(SUBMISSION_POLL_SECONDS,
                                                   max(0.0, deadline - time.monotonic())))
            return
        except TimeoutError:
            if time.monotonic() >= deadline:
                break
    if refused:
        raise UserError(f"sbatch refused the worker job: {refused[0]} (check cluster.slurm."
                        "queue, account, walltime and memory; --job-script prints the job "
                        "script)")
    where = [f"{name} ({value})" if (value := _effective(slurm, name)) is not None
             else name for name in ("queue", "account")]
    raise UserError(
            f"no SLURM worker joined within {slurm.worker_timeout:g} s: check that the jobs "
            f"start (squeue -u $USER), that cluster.slurm.{where[0]} and {where[1]} are "
            f"valid, and the jobs' sbatch output (slurm-*.out) for errors; workers must reach "
            f"the scheduler (cluster.slurm.scheduler_host, interface)"
        ) from None


class _InterruptedSyncFilter(logging.Filter):
    """Drop the traceback tornado logs when Ctrl-C interrupts distributed's ``sync`` before
    its coroutine has started: ``sync.<locals>.cancel`` then reads a variable not yet
    assigned (a NameError in distributed, harmless: the run is stopping), and the traceback
    would precede the driver's one-line message."""

    def filter(self, record):
        error = record.exc_info[1] if record.exc_info else None
        return not (isinstance(error, NameError)
                    and "sync.<locals>.cancel" in record.getMessage())


_INTERRUPTED_SYNC = _InterruptedSyncFilter()


class _AbandonedGatherFilter(logging.Filter):
    """Drop asyncio's "Task exception was never retrieved" for a gather that `_result` gave
    up on (its result was lost with its worker): when the client closes, that gather ends in
    distributed's ``AllExit``, which nobody awaits any more (harmless: the run is stopping),
    and the traceback would follow the driver's one-line message."""

    def filter(self, record):
        return not ("never retrieved" in record.getMessage()
                    and "AllExit" in str(getattr(record, "future", "")) + record.getMessage())


_ABANDONED_GATHER = _AbandonedGatherFilter()


def _quiet_distributed_logs():
    """Keep Dask's INFO chatter out of the progress unless debug logging is on.

    Importing ``distributed`` sets its logger to INFO, undoing the CLI's set-up.
    """
    if not log.isEnabledFor(logging.DEBUG):
        logging.getLogger("distributed").setLevel(logging.WARNING)
    tornado_log = logging.getLogger("tornado.application")
    if _INTERRUPTED_SYNC not in tornado_log.filters:
        tornado_log.addFilter(_INTERRUPTED_SYNC)
    asyncio_log = logging.getLogger("asyncio")
    if _ABANDONED_GATHER not in asyncio_log.filters:
        asyncio_log.addFilter(_ABANDONED_GATHER)


@contextlib.contextmanager
def start_cluster(cluster: ClusterSection):
    """Start the configured Dask cluster and yield a client connected to it.

    Parameters
    ----------
    cluster : ClusterSection

    Yields
    ------
    distributed.Client

    Raises
    ------
    UserError
        If the SLURM settings are incomplete, or no SLURM worker joins within
        ``cluster.slurm.worker_timeout`` seconds.
    """
    import distributed
    _quiet_distributed_logs()
    if cluster.mode == "slurm":
        cluster_context = slurm_cluster(cluster.slurm)
    else:
        cluster_context = distributed.LocalCluster(**local_cluster_kwargs(cluster.local))
    with cluster_context as dask_cluster, distributed.Client(dask_cluster) as client:
        log.info("Dask dashboard: %s", client.dashboard_link)
        if cluster.mode == "slurm":
            with _SubmissionFailures().installed() as failures:
                dask_cluster.scale(jobs=cluster.slurm.jobs)
                _wait_for_slurm_workers(client, cluster.slurm, failures.answers)
        yield client


class _BadInput(NamedTuple):
    """A task's UserError, returned as a value: raised in the driver, with its one line."""
    error: UserError


def _reporting_bad_input(function, *arguments):
    """Run a task (in a task process of the worker, if it has them: :mod:`.task_processes`);
    bad input it meets comes back as :class:`_BadInput`, not as an exception.

    Raised on a worker, a UserError would be logged there with its traceback and retried
    like a lost worker, though rerunning cannot fix an input.
    """
    return task_processes.run(_catching_bad_input, function, *arguments)


def _catching_bad_input(function, *arguments):
    try:
        return function(*arguments)
    except UserError as error:
        return _BadInput(error)


#: tiles or chunks a task's name lists before "and N more".
NAMED_PLACES = 4


def _task_name(function, arguments):
    """A task as the user can find it: its function and the indices of its tiles or chunks
    (an argument with an ``index``, or a list of them: a batch)."""
    places = [a for argument in arguments
              for a in (argument if isinstance(argument, list) else [argument])]
    indices = [a.index for a in places if isinstance(getattr(a, "index", None), int)]
    if not indices:
        return function.__name__
    more = len(indices) - NAMED_PLACES
    return (f"{function.__name__} {', '.join(map(str, indices[:NAMED_PLACES]))}"
            + (f" and {more} more" if more > 0 else ""))


def _killed_error(function, arguments, description, memory_limit=None):
    from dask.utils import format_bytes
    limit = "" if memory_limit is None else f" of {format_bytes(memory_limit)}"
    return UserError(
        f"task {_task_name(function, arguments)} ({description}) killed its worker every time "
        f"it ran ({TASK_RETRIES} retries spent); the likely cause is the worker's memory limit"
        f"{limit} (the OOM killer or Dask's nanny stops a worker that exceeds it): raise "
        "cluster.slurm.memory (or use fewer cluster.local.n_workers, which gives each more), or "
        "make the tasks smaller (nms.tile_shape, labeling.chunk_shape); rerun to resume")


def _no_worker_error(timeout, description):
    return UserError(
        f"no Dask worker left for {timeout:g} s during {description} (all died or their jobs "
        "ended: see the jobs' slurm-*.out, or dmesg for the OOM killer); rerun to resume "
        "(cluster.no_worker_timeout sets the wait)")


class _Watchdog:
    """Stops the wait for tasks when no worker has been connected for ``timeout`` seconds."""

    def __init__(self, client, timeout, description):
        self._client, self._timeout, self._description = client, timeout, description
        self._last_seen = time.monotonic()

    def look(self):
        """Called after each :data:`WATCH_SECONDS` without progress: raise if no worker is
        left for too long."""
        if self._client.scheduler_info()["workers"]:
            self._last_seen = time.monotonic()
        elif time.monotonic() - self._last_seen > self._timeout:
            raise _no_worker_error(self._timeout, self._description)


def run_tasks(client, function, argument_tuples, description, *, show_progress=True,
              no_worker_timeout=ClusterSection.no_worker_timeout):
    """Run ``function(*arguments)`` for every tuple on the cluster; yield results as they come.

    Parameters
    ----------
    client : distributed.Client
    function : callable
        A plain module-level function (tasks are not pure: they write checkpoints).
    argument_tuples : sequence of tuple
    description : str
        Progress label (see :func:`stardist_hpc.progress.progress`).
    show_progress : bool
        Report progress: a bar on a terminal, else a log line now and then.
    no_worker_timeout : float
        Seconds to wait while no worker is connected before stopping
        [cluster.no_worker_timeout].

    Yields
    ------
    object
        Each task's result, in completion order.

    Raises
    ------
    UserError
        For bad input a task met, a task that killed its worker every time it ran, or no
        worker left for ``no_worker_timeout`` seconds.
    """
    import distributed
    if not argument_tuples:
        return
    futures = client.map(functools.partial(_reporting_bad_input, function),
                         *zip(*argument_tuples), pure=False, retries=TASK_RETRIES,
                         key=[f"{function.__name__}-{uuid.uuid4().hex}" for _ in argument_tuples])
    arguments_of = dict(zip((f.key for f in futures), argument_tuples))
    # read now: when a task has killed its last retry's worker, the replacement may not have
    # joined yet, and no worker is left to ask
    memory_limit = _memory_limit(client)
    watchdog = _Watchdog(client, no_worker_timeout, description)
    try:
        for future in progress(_finished(futures, watchdog), len(futures), description, "task",
                               show_progress=show_progress):
            try:
                result = _result(future, watchdog)
            except distributed.KilledWorker:
                raise _killed_error(function, arguments_of[future.key], description,
                                    _memory_limit(client) or memory_limit) from None
            if isinstance(result, _BadInput):
                raise result.error
            yield result
            future.release()
    except UserError:
        client.cancel(futures)   # the other tasks' results are of no use now
        raise


def _finished(futures, watchdog):
    """Yield ``futures`` as they finish (in completion order).

    Each future reports itself into a queue when it finishes: O(1) per task. (Waiting with
    ``distributed.wait(pending, return_when="FIRST_COMPLETED")`` after each completion made
    the driver wait on every pending future again: ~10 ms of driver CPU per task with 400
    tasks, on the cores the workers need.)
    """
    done = queue.SimpleQueue()
    for future in futures:
        future.add_done_callback(done.put)
    for _ in futures:
        while True:
            try:
                yield done.get(timeout=WATCH_SECONDS)
                break
            except queue.Empty:
                watchdog.look()


def _result(future, watchdog):
    """``future.result()`` under the watchdog: the result of a finished task is lost with its
    worker when that dies before the result is fetched, and then waits for the task to run
    again (forever, with no worker left)."""
    while True:
        with contextlib.suppress(TimeoutError):
            return future.result(timeout=WATCH_SECONDS)
        watchdog.look()


def _memory_limit(client):
    """The memory limit of the cluster's workers in bytes (the largest; None: unknown or
    no limit, or no worker left)."""
    limits = [worker.get("memory_limit") or 0
              for worker in client.scheduler_info()["workers"].values()]
    return max(limits, default=0) or None


def run_in_process(function, argument_tuples, description):
    """Executor with the interface of :func:`run_tasks` that runs the tasks here, in order.

    For tests and debugging: the same task functions, without a cluster.
    """
    log.debug("%s: %d task(s) in process", description, len(argument_tuples))
    return [function(*arguments) for arguments in argument_tuples]
