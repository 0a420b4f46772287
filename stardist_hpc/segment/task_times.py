"""Seconds of every task, per tile and chunk, for the QC report.

:func:`timing` wraps an executor (``execute(function, argument_tuples, description)``, see
:mod:`.nms`): each task measures its own wall-clock seconds on the worker, and the driver adds
them up by task function and by the ``index`` of the task's plan (the NMS tile, or the label
chunk). The stages see the same results as without it.
"""
from __future__ import annotations

import time
from collections import defaultdict


class _Timed:
    """``function`` returning its task's place index and seconds with its result.

    Picklable, and named as ``function`` (task keys, tests and benchmarks go by the name).
    """

    def __init__(self, function):
        self.function = function
        self.__name__, self.__module__ = function.__name__, function.__module__

    def __call__(self, *arguments):
        started = time.perf_counter()
        result = self.function(*arguments)
        return _place(arguments), time.perf_counter() - started, result


def _place(arguments):
    """The index of the first argument that has one (a TilePlan or a ChunkTask), else None."""
    return next((a.index for a in arguments if hasattr(a, "index")), None)


class TaskTimes:
    """Seconds by task function name and place index, summed over the tasks of this run."""

    def __init__(self):
        self.seconds = defaultdict(lambda: defaultdict(float))

    def by_place(self, *names):
        """Seconds per place index, summed over the task functions ``names``."""
        total = defaultdict(float)
        for name in names:
            for place, seconds in self.seconds[name].items():
                total[place] += seconds
        return dict(total)


def timing(execute, times: TaskTimes):
    """An executor like ``execute`` that records each task's seconds in ``times``."""
    def timed_execute(function, argument_tuples, description):
        for place, seconds, result in execute(_Timed(function), argument_tuples, description):
            times.seconds[function.__name__][place] += seconds
            yield result
    return timed_execute

