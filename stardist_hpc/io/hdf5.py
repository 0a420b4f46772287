"""Opening an HDF5 input for reading, with the one-line errors users see; writing an HDF5
file so that a full disk is an exception, not a crash."""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import os

import h5py

from ..errors import UserError


def open_hdf5(path, kind: str, expected: str = "") -> h5py.File:
    """Open ``path`` read-only; a missing or unreadable file is a :class:`UserError`.

    Parameters
    ----------
    path : str or Path
    kind : str
        What the file is, starting the message (e.g. ``"candidate file"``).
    expected : str, optional
        Appended to the message in parentheses: the config key or the file expected.

    Returns
    -------
    h5py.File
    """
    suffix = f" ({expected})" if expected else ""
    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise UserError(f"{kind} {path} does not exist{suffix}") from None
    except OSError as e:
        # h5py names the cause, e.g. "file signature not found" or "truncated file"
        raise UserError(f"{kind} {path} is not a readable HDF5 file: "
                        + " ".join(str(e).split()) + suffix) from None


#: values of HDF5_USE_FILE_LOCKING with which HDF5 does not lock files (as HDF5 reads it).
_LOCKING_OFF = ("FALSE", "0")


class _WriteGuard(io.FileIO):
    """The file under an HDF5 file being written: a failed write is never reported to HDF5.

    HDF5 does not survive a failed write (a full disk or quota): it retries the write when
    it closes the dataset or file, and a close that fails leaves its caches inconsistent, so
    that the process later crashes (SIGSEGV, "double free or corruption") - also when the
    failed write was one HDF5 made by itself, closing a dataset. HDF5 therefore writes
    through this object (h5py's ``fileobj`` driver): the first failed write is kept in
    ``error`` and every later one is dropped, so HDF5 closes cleanly a file that is garbage
    from then on, and :func:`writing_hdf5` raises the error once it is closed.
    """

    error = None

    def write(self, data):
        if self.error is None:
            view = memoryview(data).cast("B")
            try:
                while view:   # a write may be partial; the one after it raises ENOSPC
                    written = super().write(view)
                    if not written:   # no progress, no error: would loop for ever
                        raise OSError(errno.EIO, "write wrote nothing", self.name)
                    view = view[written:]
            except OSError as error:
                self.error = error
        return len(data)

    def lock(self):
        """Lock the file as HDF5 does (unless HDF5_USE_FILE_LOCKING turns it off), so
        that HDF5 in another process cannot open it while it is written (BlockingIOError)."""
        if os.environ.get("HDF5_USE_FILE_LOCKING", "").upper() in _LOCKING_OFF:
            return
        try:
            fcntl.flock(self.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise
        except OSError:   # a filesystem without flock (HDF5's BEST_EFFORT)
            pass


class GuardedFile(h5py.File):
    """An HDF5 file opened by :func:`writing_hdf5`."""

    _guard: _WriteGuard

    @property
    def write_failed(self):
        """Whether a write to the file failed (the file is then to be discarded)."""
        return self._guard.error is not None

    def raise_failed_write(self):
        """Raise the error of the first write that failed (if any): a long write stops there
        rather than at its end."""
        if self.write_failed:
            raise self._guard.error


#: h5py's mode -> the mode of the file under it.
_RAW_MODES = {"w": "w+", "x": "x+", "r+": "r+"}


@contextlib.contextmanager
def writing_hdf5(path, mode="w"):
    """Open ``path`` as an HDF5 file to write (``mode`` 'w', 'x' or 'r+'), so that a full
    disk or quota never crashes the process (see :class:`_WriteGuard`).

    Yields
    ------
    GuardedFile
        Closed at the end of the block; then the first failed write (an OSError, e.g.
        ENOSPC; also in place of an error the block raised after it) is raised, and the
        file is to be discarded.
    """
    guard = _WriteGuard(path, _RAW_MODES[mode])
    try:
        guard.lock()
        # the file under it is new and empty for 'x' (h5py's 'x' would test a name)
        with GuardedFile(guard, "w" if mode == "x" else mode) as f:
            f._guard = guard
            yield f
    except Exception:
        if guard.error is None:
            raise
        # else raised below: an error after a failed write follows from it (data dropped)
    finally:
        guard.close()
    if guard.error is not None:
        raise guard.error
