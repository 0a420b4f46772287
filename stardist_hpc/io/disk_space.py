"""A full disk or quota as one line: which filesystem, which file, and that a rerun resumes.

Every output is written under a temporary name and published by a rename (:mod:`.atomic`), so a
write that fails for lack of space leaves nothing at a final path, and the checkpoints written
before it stay valid: freeing space and rerunning the same command resumes.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from ..errors import UserError

#: errno values of a full filesystem or an exhausted quota.
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
#: HDF5 reports a failed write in its message text (``errno = 28``), not in ``OSError.errno``.
#: what h5py raises when HDF5 fails to write (RuntimeError when it fails while closing).
WRITE_ERRORS = (OSError, RuntimeError)
#: room left for HDF5's metadata (object headers, chunk indices) when free space is checked
#: before an HDF5 write: generous, as they are a few kB per dataset.
METADATA_BYTES = 1 << 20
_HDF5_ERRNO = re.compile(r"errno = (\d+)")


def _errnos(error):
    """The errno values an exception and the exceptions it was raised during carry."""
    seen = []
    while error is not None and error not in seen:
        seen.append(error)
        if isinstance(error, OSError):
            yield error.errno
        # h5py raises RuntimeError for a write that fails while it closes a file
        for number in _HDF5_ERRNO.findall(str(error)):
            yield int(number)
        error = error.__cause__ or error.__context__


def is_disk_full(error):
    """Whether ``error`` (or one it was raised during) is ENOSPC or EDQUOT."""
    return any(number in DISK_FULL_ERRNOS for number in _errnos(error))


def mount_point(path):
    """The mount point of the filesystem that holds ``path`` (or would hold it)."""
    path = Path(os.path.realpath(path))
    while not path.exists():
        path = path.parent
    device = path.stat().st_dev
    while path != path.parent and path.parent.stat().st_dev == device:
        path = path.parent
    return path


class DiskFullError(UserError):
    """A write found its filesystem full or its quota spent (a rerun with space resumes)."""


def disk_full_error(path):
    """The one-line error of a write of ``path`` that found no space."""
    return DiskFullError(f"no space left on {mount_point(path)} while writing {path}; free space "
                     "and rerun to resume")


def check_free_space(path, n_bytes):
    """Refuse to start writing ``n_bytes`` to ``path`` when its filesystem has less free.

    Cheap (one ``statvfs``) and only a first check: a quota, or other writers, can still fill
    the disk during the write, which :func:`is_disk_full` then recognises (HDF5 files are
    written by :func:`~.hdf5.writing_hdf5`, for which a failed write is an exception too).
    It stops a long write before it starts rather than after it has filled the disk.
    """
    if shutil.disk_usage(mount_point(path)).free < n_bytes:
        raise disk_full_error(path)


@contextlib.contextmanager
def reporting_disk_full(path):
    """Turn a write error of ``path`` caused by a full disk or quota into :class:`DiskFullError`."""
    try:
        yield
    except WRITE_ERRORS as error:
        if is_disk_full(error):
            raise disk_full_error(path) from None
        raise
