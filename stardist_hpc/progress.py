"""Progress of a loop, as both steps report it: a bar on a terminal, log lines elsewhere.

tqdm's carriage-return bars garble log files (SLURM's ``slurm-*.out``, ``tee``), so a bar is
drawn only when stderr is a terminal; otherwise an INFO line is logged when the loop starts
(what it sets out to do, also when it is killed before its end), every
``PROGRESS_LOG_SECONDS`` and when it ends, and a DEBUG line per item.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

from tqdm import tqdm

log = logging.getLogger(__name__)

#: seconds between progress lines when stderr is not a terminal.
PROGRESS_LOG_SECONDS = 30

T = TypeVar("T")


def progress(items: Iterable[T], total: int, description: str, unit: str, *, done: int = 0,
             show_progress: bool = True) -> Iterator[T]:
    """Yield ``items``, reporting ``"<description>: <i> of <total> <unit>s done"``.

    Parameters
    ----------
    items : iterable
    total : int
        Items of the whole loop, including ``done`` ones of an earlier, interrupted run.
    description, unit : str
        What the loop does and what it counts, e.g. ``"labeling"``, ``"task"``.
    done : int
        Items already done before ``items`` (counted from ``done + 1``).
    show_progress : bool
        Draw the bar (on a terminal) or log INFO lines; without it only DEBUG lines.
    """
    if show_progress and sys.stderr.isatty():
        yield from tqdm(items, total=total, initial=done, desc=description, unit=unit,
                        file=sys.stderr)
        return
    if show_progress:
        log.info("%s: %d of %d %ss done", description, done, total, unit)
    last = time.monotonic()
    for i, item in enumerate(items, start=done + 1):
        yield item
        due = show_progress and (time.monotonic() - last >= PROGRESS_LOG_SECONDS or i == total)
        log.log(logging.INFO if due else logging.DEBUG, "%s: %d of %d %ss done", description,
                i, total, unit)
        if due:
            last = time.monotonic()
