"""One writer per output: a lock file beside each output (or in each work_dir) of a running run.

A second run on the same ``prediction.h5``, ``label.h5`` or ``work_dir`` (on this machine or on
another node of a shared filesystem) stops at once with a one-line error naming the running one,
before it touches any of its files. HDF5's own file locking cannot do this: it is often off on
Lustre and NFS (``HDF5_USE_FILE_LOCKING=FALSE``), and where it is on, the second writer learns of
it only after it has opened (and, with mode ``"w"``, truncated) the first one's file.

The lock file is created with ``O_CREAT | O_EXCL``, which is atomic on local filesystems and on
NFSv3+ and Lustre, and holds the host, PID and start time of its run. A lock left by a process
of *this* host that no longer runs (killed, node rebooted) is taken over with a log line; one of
another host is respected, since its process cannot be seen from here: the message says how to
remove it if that run is dead.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from pathlib import Path

import psutil

from ..errors import UserError
from .disk_space import disk_full_error, is_disk_full

log = logging.getLogger(__name__)

#: suffix of the lock file beside an output file.
LOCK_SUFFIX = ".lock"
#: the lock file inside a work directory.
WORK_DIR_LOCK = "run.lock"
#: seconds after which an empty lock file is a run's that died between creating and writing it
#: (which takes microseconds).
EMPTY_LOCK_SECONDS = 10.0
#: seconds a process may have started after the time its lock records and still be its owner
#: (the lock is written just after start-up; a later start means the PID was reused).
PID_REUSE_SLACK_SECONDS = 1.0


def lock_path_of(output):
    """The lock file of an output file (``label.h5`` -> ``label.h5.lock``)."""
    output = Path(output)
    return output.with_name(output.name + LOCK_SUFFIX)


def _this_process():
    process = psutil.Process()
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": process.create_time(),
            "started_utc": time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                         time.gmtime(process.create_time()))}


def _read_owner(path):
    """The owner recorded in a lock file; {} if it is empty or unreadable (being written)."""
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _owner_alive(owner):
    """Whether the recorded owner (a process of this host) still runs."""
    try:
        started = psutil.Process(int(owner["pid"])).create_time()
    except (psutil.NoSuchProcess, KeyError, TypeError, ValueError):
        return False
    except psutil.AccessDenied:
        return True   # a process of another user
    return started <= float(owner.get("started", started)) + PID_REUSE_SLACK_SECONDS


def _abandoned_empty(path):
    """Whether ``path`` is an empty lock file older than :data:`EMPTY_LOCK_SECONDS`."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return True   # removed meanwhile: try to create it again
    return stat.st_size == 0 and time.time() - stat.st_mtime > EMPTY_LOCK_SECONDS


def _describe(owner):
    if not owner:
        return "a run that is starting (its lock file is still empty)"
    return (f"the run of PID {owner.get('pid')} on host {owner.get('host')}, started "
            f"{owner.get('started_utc')}")


def _held_error(path, output, owner):
    here = owner.get("host") == socket.gethostname()
    fix = ("wait for it to finish" if here or not owner else
           f"wait for it to finish; if that run is dead (its node failed), delete {path}")
    return UserError(f"{output} is being written by {_describe(owner)} (lock {path}): "
                     f"{fix}, then rerun")


def _create(path, owner):
    """Create the lock file holding ``owner``; False if one exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(owner, f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        path.unlink()
        if is_disk_full(error):
            raise disk_full_error(path) from None
        raise
    return True


def _take_over(path, stale):
    """Remove the stale lock ``path`` (holding ``stale``); False if another run got there first.

    The lock is renamed aside and read back: if what was renamed is not the stale lock seen
    before (another run took it over and created its own in between), it is linked back
    (``link`` never replaces a file) and this run gives way.
    """
    aside = path.with_name(f"{path.name}.{os.getpid()}.stale")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return True   # removed meanwhile: try to create it again
    taken = _read_owner(aside)
    if taken != stale:
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
        aside.unlink()
        return False
    aside.unlink()
    log.warning("taking over the lock %s of %s, which no longer runs", path, _describe(stale))
    return True


def _acquire(path, output, me):
    """Create the lock ``path`` for ``me``, taking over a stale one of this host."""
    path.parent.mkdir(parents=True, exist_ok=True)
    while not _create(path, me):
        owner = _read_owner(path)
        stale = (_abandoned_empty(path) if not owner else
                 owner.get("host") == me["host"] and not _owner_alive(owner))
        if not stale or not _take_over(path, owner):
            raise _held_error(path, output, _read_owner(path) or owner)


def _release(path, me):
    """Remove the lock ``path`` if it is still this run's."""
    if _read_owner(path) == me:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def run_lock(*outputs):
    """Hold the lock of each output for the duration of the block.

    Parameters
    ----------
    outputs : sequence of (lock_path, name)
        Where the lock file goes and what it protects (named in the message), e.g.
        ``(lock_path_of(label_path), label_path)`` or ``(work_dir / WORK_DIR_LOCK, work_dir)``.

    Raises
    ------
    UserError
        If another run holds one of the locks (those already taken are released).
    """
    me = _this_process()
    with contextlib.ExitStack() as held:
        for path, output in outputs:
            path = Path(path)
            _acquire(path, output, me)
            held.callback(_release, path, me)
        yield
