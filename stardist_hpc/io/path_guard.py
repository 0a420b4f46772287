"""Refuse outputs that would overwrite an input, before anything is written.

A run writes its outputs by truncating or renaming onto their paths, so an output that is an
input under another name (a symlink, a hard link, ``a/../a``) or lies inside an input's folder
(a zarr store, a model folder), or a work directory holding an input, would destroy data.
"""
from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Mapping, Sequence

from ..errors import UserError


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: equal after resolving symlinks, or one inode."""
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def _inside(inner: Path, outer: Path) -> bool:
    return outer.resolve() in inner.resolve().parents


def check_outputs_apart(inputs: Mapping[str, Path], outputs: Mapping[str, Sequence[Path]],
                        directories: Mapping[str, Path] = None) -> None:
    """Raise a one-line :class:`UserError` if an output would write over an input.

    Parameters
    ----------
    inputs : mapping of str to Path
        Config key -> input file or folder (image, zarr store, candidate file, model folder).
    outputs : mapping of str to sequence of Path
        Config key -> the files the run writes for it (the file and its temporaries).
    directories : mapping of str to Path, optional
        Config key -> directory the run writes into (a work_dir): it must neither hold an
        input nor lie inside one.

    Raises
    ------
    UserError
        Naming the output's key, the input's key and both paths.
    """
    for out_key, paths in outputs.items():
        for out, (in_key, inp) in itertools.product(paths, inputs.items()):
            if _same_file(out, inp):
                _refuse(out_key, out, f"the file of {in_key}")
            if _inside(out, inp):
                _refuse(out_key, out, f"inside {in_key} ({inp})")
    for dir_key, directory in (directories or {}).items():
        for in_key, inp in inputs.items():
            if _same_file(directory, inp) or _inside(inp, directory):
                _refuse(dir_key, directory, f"a directory holding {in_key} ({inp})")
            if _inside(directory, inp):
                _refuse(dir_key, directory, f"inside {in_key} ({inp})")


def _refuse(key: str, path: Path, relation: str):
    raise UserError(f"config key '{key}': expected a path apart from the inputs, got {path}, "
                    f"which is {relation}; writing there would destroy the input, choose "
                    "another path")
