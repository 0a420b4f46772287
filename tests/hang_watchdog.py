"""A test that hangs fails the run with the stacks of every process it started.

Without this, a hung test keeps the suite waiting until CI's own time limit ends the job, and
the log shows nothing of where it stood. Each test, with its fixtures' setup and teardown,
gets :data:`HANG_SECONDS`. Past that, the stacks of this process and of every process it
started (Dask workers, scripts run as subprocesses) are written down, native frames included
where py-spy is installed (the test extra installs it), and all of them are killed.
pytest-xdist then reports its worker as crashed in that test and runs the rest on a new worker
(without xdist the run stops there); the run's summary prints the stacks (an xdist worker's own
stderr reaches no terminal).
"""
from __future__ import annotations

import faulthandler
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import psutil
import pytest

#: seconds a test may take with its setup and teardown; the slowest takes ~60 s here
#: (starting the SLURM test cluster or a killed-and-resumed run), ~2 cores, nothing else running
HANG_SECONDS = 600
#: seconds one py-spy dump may take
DUMP_SECONDS = 60
#: exit code of a worker stopped by the watchdog (pytest's own codes end at 5)
HANG_EXIT_CODE = 70
#: environment variable naming the directory where this run's workers write their reports
REPORT_DIR_VARIABLE = "STARDIST_HPC_TEST_HANG_REPORTS"


def _py_spy():
    """The py-spy executable beside this Python, or on PATH (None: not installed)."""
    beside = Path(sys.executable).with_name("py-spy")
    return str(beside) if beside.exists() else shutil.which("py-spy")


def _dump(pid, out):
    """Print the stacks of process ``pid`` to ``out`` (py-spy, else nothing for others)."""
    spy = _py_spy()
    if spy is None:
        if pid == os.getpid():
            faulthandler.dump_traceback(file=out, all_threads=True)
        else:
            print("    (install py-spy to see its stacks)", file=out, flush=True)
        return
    try:
        subprocess.run([spy, "dump", "--native", "--pid", str(pid)], stdout=out, stderr=out,
                       timeout=DUMP_SECONDS, check=False)
    except (OSError, subprocess.SubprocessError) as error:
        print(f"    py-spy failed: {error}", file=out, flush=True)


def _report_and_exit(nodeid):
    """Report the hung test ``nodeid`` (a file for the controller, and stderr) and end this
    process."""
    report = Path(os.environ[REPORT_DIR_VARIABLE]) / f"{os.getpid()}.txt"
    with open(report, "w") as out:
        _report(nodeid, out)
    sys.__stderr__.write(report.read_text())
    sys.__stderr__.flush()
    os._exit(HANG_EXIT_CODE)


def _report(nodeid, out):
    """Write the stacks of this process and its descendants to ``out``, then kill those."""
    me = psutil.Process()
    children = me.children(recursive=True)
    print(f"\n===== {nodeid} still runs after {HANG_SECONDS} s: the stacks of its "
          f"{1 + len(children)} process(es), then all are killed", file=out, flush=True)
    for process in (me, *children):
        try:
            command = " ".join(process.cmdline())
        except psutil.Error:
            continue
        print(f"----- process {process.pid}: {command}", file=out, flush=True)
        _dump(process.pid, out)
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def pytest_configure(config):
    """The run's report directory, made before pytest-xdist starts its workers (which inherit
    the environment)."""
    if not hasattr(config, "workerinput"):
        os.environ[REPORT_DIR_VARIABLE] = tempfile.mkdtemp(prefix="stardist-hpc-hangs-")


def pytest_terminal_summary(terminalreporter):
    """Print the stacks of the tests the watchdog stopped (on the controller)."""
    for report in sorted(Path(os.environ[REPORT_DIR_VARIABLE]).glob("*.txt")):
        terminalreporter.section(f"hung test, stacks ({report.name})")
        terminalreporter.write(report.read_text())


def pytest_unconfigure(config):
    """Remove the run's report directory (on the controller)."""
    if not hasattr(config, "workerinput"):
        shutil.rmtree(os.environ.pop(REPORT_DIR_VARIABLE), ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Run the test ``item`` (setup, call, teardown) under a timer of :data:`HANG_SECONDS`."""
    timer = threading.Timer(HANG_SECONDS, _report_and_exit, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
