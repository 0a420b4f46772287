"""The one exception type that reaches users: a one-line message and exit code 2."""
from __future__ import annotations

import difflib

#: exit code of both scripts for bad input (as argparse uses for bad arguments).
EXIT_BAD_INPUT = 2


class UserError(Exception):
    """Bad input the user can fix; the CLI prints ``str(error)`` on one line and exits with 2."""


def did_you_mean(name, choices):
    """Suffix suggesting the closest of ``choices`` to a misspelled ``name`` ('' if none)."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""
