"""Opening an HDF5 input for reading, with the one-line errors users see."""
from __future__ import annotations

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
