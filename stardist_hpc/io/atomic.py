"""The one way files are published: written under a temporary name, synced, then renamed.

A file that exists under its final name is complete, so a run killed at any moment resumes by
redoing only the missing files, and after a node crash no half-written file has its final name.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import shutil
import threading
from pathlib import Path
from typing import NamedTuple

from .disk_space import reporting_disk_full

log = logging.getLogger(__name__)

#: suffix of a temporary of :func:`atomic_path`, after the writing process's PID.
TEMPORARY_SUFFIX = ".tmp"


def _fsync(path, flags=os.O_RDONLY):
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def sync_directory(directory):
    """Make the renames into ``directory`` durable (fsync of the directory)."""
    _fsync(directory, os.O_RDONLY | os.O_DIRECTORY)


def _libc_syncfs():
    """libc's ``syncfs(fd)`` (Linux: commits one filesystem's data and metadata), or None."""
    try:
        return ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):   # no libc symbol; Windows has no CDLL(None)
        return None


_SYNCFS = _libc_syncfs()


def sync_filesystem(directory):
    """Make everything written to the filesystem of ``directory`` durable (``syncfs``)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS(fd) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), str(directory))
    finally:
        os.close(fd)


class _Deferred(NamedTuple):
    """What a :func:`synced_at_end` block syncs when it ends."""
    files: list
    directories: set


#: per thread, the syncs that an enclosing :func:`synced_at_end` defers (or None).
_deferred = threading.local()


def publish(tmp_path, path):
    """Rename the complete file ``tmp_path`` to ``path``, durably (file and directory synced;
    at the end of an enclosing :func:`synced_at_end`)."""
    pending = getattr(_deferred, "pending", None)
    if pending is None:
        _fsync(tmp_path)
        os.replace(tmp_path, path)
        sync_directory(Path(path).parent)
        return
    os.replace(tmp_path, path)
    pending.files.append(Path(path))
    pending.directories.add(Path(path).parent)


@contextlib.contextmanager
def synced_at_end():
    """Within the block, :func:`publish` renames each file unsynced; when the block succeeds,
    they are all made durable at once: one ``syncfs`` per filesystem they are on (where libc
    has none or the filesystem refuses it, every file is synced, then each directory once).

    Only for checkpoints that their readers verify (an ``.npz``, whose zip CRCs are checked,
    and files whose CRC-32 another checkpoint records): a crash inside the block can leave
    such a file torn under its final name, and the resume finds it damaged and redoes it.
    When the block returns, its files are as durable as with a sync before each rename.

    Why: a task that publishes many files (a labeling task: two per chunk, and its OME-Zarr
    level 0) waited for a journal commit at each sync, and the tasks of two workers for each
    other's (the disk commits one at a time): with a sync per file, the labeling tasks of 2
    workers ran ~1.3x as long as those of 1 on the benchmark set, and as long without syncs
    at all. One ``syncfs`` commits the block's files in one journal commit (and whatever else
    the filesystem holds unwritten: on a busy shared filesystem, more than the block's own).
    """
    outer = getattr(_deferred, "pending", None)
    _deferred.pending = pending = _Deferred([], set())
    try:
        yield
    finally:
        _deferred.pending = outer
    if outer is not None:   # the enclosing block syncs them
        outer.files.extend(pending.files)
        outer.directories.update(pending.directories)
    elif _SYNCFS is None or not _synced_filesystems(pending):
        _sync_each(pending)


#: what a filesystem or sandbox that refuses ``syncfs`` answers (then files are synced one
#: by one).
_SYNCFS_REFUSED = (errno.ENOSYS, errno.EINVAL, errno.EPERM, errno.EOPNOTSUPP)


def _synced_filesystems(pending: _Deferred):
    """``syncfs`` each filesystem of a :func:`synced_at_end` block; False if one refused."""
    try:
        for directory in {os.stat(d).st_dev: d for d in sorted(pending.directories)}.values():
            sync_filesystem(directory)
    except OSError as error:
        if error.errno not in _SYNCFS_REFUSED:
            raise
        return False
    return True


def _sync_each(pending: _Deferred):
    """Sync the files of a :func:`synced_at_end` block one by one, then their directories."""
    for path in pending.files:
        _fsync(path)
    for directory in sorted(pending.directories):
        sync_directory(directory)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path next to ``path``; rename it to ``path`` if the block succeeds.

    A write that finds its filesystem full (or the quota spent) becomes the one-line
    UserError of :func:`~.disk_space.disk_full_error`.
    """
    path = Path(path)
    tmp_path = path.with_name(f"{path.name}.{os.getpid()}{TEMPORARY_SUFFIX}")
    try:
        with reporting_disk_full(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            yield tmp_path
            publish(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


def _process_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True   # a process of another user
    return True


def remove_stale_temporaries(path, suffix=TEMPORARY_SUFFIX):
    """Delete the temporaries of ``path`` that killed processes of this host left behind.

    :func:`atomic_path` names a temporary after the writing process (``<name>.<pid>.tmp``),
    which removes it unless it is killed; so does the rename that replaces a directory
    (``<name>.<pid>.old``: give that ``suffix``; directories are removed whole). Only for
    files that processes of this host write (the driver's outputs): a worker on another node
    may be writing a temporary whose PID means nothing here.
    """
    path = Path(path)
    for temporary in path.parent.glob(f"{path.name}.*{suffix}"):
        pid = temporary.name[len(path.name) + 1:-len(suffix)]
        if pid.isdigit() and not _process_alive(int(pid)):
            log.info("removing %s, left by an interrupted run", temporary)
            if temporary.is_dir():
                shutil.rmtree(temporary, ignore_errors=True)
            else:
                temporary.unlink(missing_ok=True)


def remove_temporaries_below(directory):
    """Delete every :func:`atomic_path` temporary (``<name>.<pid>.tmp``) below ``directory``.

    Only while this run holds the directory's run lock (:mod:`.run_lock`): no other run then
    writes there, so each temporary was left by a killed process, wherever it ran (a worker
    on another node too, whose PID means nothing here).
    """
    stale = [p for p in Path(directory).rglob(f"*{TEMPORARY_SUFFIX}")
             if p.is_file() and p.name[:-len(TEMPORARY_SUFFIX)].rpartition(".")[2].isdigit()]
    for temporary in stale:
        temporary.unlink(missing_ok=True)
    if stale:
        log.info("removed %d temporary file(s) of killed writers below %s (e.g. %s)",
                 len(stale), directory, stale[0].name)


def write_bytes(path, data):
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp_path:
        tmp_path.write_bytes(data)
