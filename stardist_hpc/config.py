"""Typed, frozen configurations of both scripts, validated once at start-up.

A YAML file maps one-to-one onto nested frozen dataclasses: every section is a dataclass, every
key a field. Unknown keys are errors with a suggestion, every value is checked against the form
its field's ``parse`` function expects, and relative paths are resolved against the directory of
the config file (so a config works from any working directory).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from .errors import UserError, did_you_mean

# ---------------------------------------------------------------------------------------------
# value parsers: each takes (value, where, base_dir) and returns the typed value or raises


def _fail(where, expected, value):
    raise UserError(f"config key '{where}': expected {expected}, got {value!r}")


def _int(value, where, _base, *, minimum=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(where, "an integer", value)
    if minimum is not None and value < minimum:
        _fail(where, f"an integer >= {minimum}", value)
    return value


def positive_int(value, where, base):
    return _int(value, where, base, minimum=1)


def optional(parse):
    """Parser accepting ``null`` besides what ``parse`` accepts."""
    def _parse(value, where, base):
        return None if value is None else parse(value, where, base)
    return _parse


def number(value, where, _base):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(where, "a number", value)
    return float(value)


def unit_interval(value, where, base):
    value = number(value, where, base)
    if not 0.0 <= value <= 1.0:
        _fail(where, "a number between 0 and 1", value)
    return value


def percentile(value, where, base):
    value = number(value, where, base)
    if not 0.0 <= value <= 100.0:
        _fail(where, "a percentile between 0 and 100", value)
    return value


def text(value, where, _base):
    if not isinstance(value, str) or not value:
        _fail(where, "a non-empty string", value)
    return value


def path(value, where, base):
    """A filesystem path; relative paths are taken relative to the config file's directory."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    p = Path(text(value, where, base)).expanduser()
    return p if p.is_absolute() else (base / p)


def writable(kind):
    """Parser of a path the script writes, a ``kind`` ("file" or "directory").

    Checked at start-up, so that a run does not fail only when it writes its result: an
    existing path must be a ``kind``, otherwise its nearest existing ancestor must be a
    writable directory (the missing directories below it are created when writing).
    """
    def _parse(value, where, base):
        target = path(value, where, base)
        if target.exists():
            if target.is_dir() != (kind == "directory"):
                _fail(where, f"the path of a {kind} to write ({target} exists and is not a "
                             f"{kind})", value)
            return target
        ancestor = next(p for p in target.parents if p.exists())
        if not ancestor.is_dir():
            _fail(where, f"a path below a directory ({ancestor} is a file)", value)
        if not os.access(ancestor, os.W_OK):
            _fail(where, f"a path in a writable directory ({ancestor} is not writable)", value)
        return target
    return _parse


def choice(*options):
    def _parse(value, where, _base):
        if value not in options:
            _fail(where, "one of " + ", ".join(map(repr, options)) + did_you_mean(value, options),
                  value)
        return value
    return _parse


def triple(item_parse, expected):
    """Parser of a list of three values (z, y, x), each checked by ``item_parse``."""
    def _parse(value, where, base):
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            _fail(where, f"a list of three {expected} [z, y, x]", value)
        return tuple(item_parse(v, f"{where}[{i}]", base) for i, v in enumerate(value))
    return _parse


def channels(value, where, base):
    """One channel index, or a non-empty list of distinct ones (a multi-channel model's input
    channels, in the model's order)."""
    if not isinstance(value, (list, tuple)):
        return _int(value, where, base, minimum=0)
    if not value or len(set(value)) < len(value):
        _fail(where, "a channel index or a non-empty list of distinct channel indices", value)
    return tuple(_int(v, f"{where}[{i}]", base, minimum=0) for i, v in enumerate(value))


def string_list(value, where, base):
    if not isinstance(value, (list, tuple)):
        _fail(where, "a list of strings", value)
    return tuple(text(v, f"{where}[{i}]", base) for i, v in enumerate(value))


def positive_number(value, where, base):
    value = number(value, where, base)
    if not value > 0:
        _fail(where, "a number > 0", value)
    return value


#: sbatch's --time forms: minutes, minutes:seconds, hours:minutes:seconds, days-hours,
#: days-hours:minutes, days-hours:minutes:seconds.
_WALLTIME = re.compile(r"^(\d+(:\d{1,2}){0,2}|\d+-\d+(:\d{1,2}){0,2})$")


def slurm_time(value, where, base):
    value = text(value, where, base)
    if not _WALLTIME.match(value):
        _fail(where, "a SLURM time such as 24:00:00, 90 or 2-00:00:00", value)
    return value


def memory_size(value, where, base):
    """A size such as 32GB or 4000MiB (as dask-jobqueue parses it)."""
    from dask.utils import parse_bytes
    value = text(value, where, base)
    try:
        if parse_bytes(value) > 0:
            return value
    except ValueError:
        pass
    _fail(where, "a memory size such as 32GB or 4000MiB", value)


def key(parse: Callable, default: Any = dataclasses.MISSING, doc: str = ""):
    """Declare a config key: its parser, its default (none = required) and a one-line doc."""
    return field(default=default, metadata={"parse": parse, "doc": doc})


# ---------------------------------------------------------------------------------------------
# generic loading


def _build(cls, raw, where, base):
    """Instantiate dataclass ``cls`` from mapping ``raw``, recursing into nested sections."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        _fail(where or "<top level>", "a mapping of keys", raw)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in fields:
            prefix = f"{where}." if where else ""
            raise UserError(f"unknown config key '{prefix}{name}'" + did_you_mean(name, fields)
                            + f"; known keys here: {', '.join(fields)}")
    values = {}
    for name, f in fields.items():
        sub = f"{where}.{name}" if where else name
        if "section" in f.metadata:
            values[name] = _build(f.metadata["section"], raw.get(name), sub, base)
        elif name in raw:
            values[name] = f.metadata["parse"](raw[name], sub, base)
        elif f.default is dataclasses.MISSING:
            raise UserError(f"config key '{sub}' is required")
        else:
            # defaults go through the parser too, so default paths resolve like given ones
            values[name] = f.metadata["parse"](f.default, sub, base)
    built = cls(**values)
    if hasattr(built, "check"):   # rules between the keys of one section
        built.check(where)
    return built


def section(cls):
    """Declare a nested config section (all of its keys have defaults or are checked inside)."""
    return field(default=None, metadata={"section": cls})


def apply_overrides(raw, overrides):
    """Apply ``--set a.b=value`` overrides (values parsed as YAML) to the raw config mapping."""
    for item in overrides:
        dotted, sep, value = item.partition("=")
        if not sep or not dotted:
            raise UserError(f"--set: expected key.sub=value, got {item!r}")
        *parents, leaf = dotted.split(".")
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {dotted}: '{p}' is not a section")
        node[leaf] = yaml.safe_load(value)
    return raw


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            name = self.construct_object(key_node, deep=deep)
            if name in seen:
                raise UserError(f"config key '{name}' appears twice (line "
                                f"{key_node.start_mark.line + 1}): expected each key once")
            seen.add(name)
        return super().construct_mapping(node, deep=deep)


def load(cls, config_path, overrides=()):
    """Read, override and validate a YAML config file into the frozen dataclass ``cls``."""
    config_path = Path(config_path)
    try:
        raw = yaml.load(config_path.read_text(), Loader=_UniqueKeyLoader)
        raw = {} if raw is None else raw
    except FileNotFoundError:
        raise UserError(f"config file {config_path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {config_path} cannot be read: {e}") from None
    except yaml.YAMLError as e:
        raise UserError(f"config file {config_path} is not valid YAML: "
                        + " ".join(str(e).split())) from None
    except UserError as e:
        raise UserError(f"config file {config_path}: {e}") from None
    if not isinstance(raw, dict):
        raise UserError(f"config file {config_path}: expected a mapping of sections such as "
                        f"{', '.join(f.name for f in dataclasses.fields(cls))}, got "
                        f"{type(raw).__name__} {raw!r:.40}")
    raw = apply_overrides(raw, overrides)
    return _build(cls, raw, "", config_path.resolve().parent)


def arguments_config(cls, **sections):
    """Validate Python API arguments, given as the YAML sections they stand for, into ``cls``.

    The same parsers check them as check a config file (so ``backend="Fast"`` fails as
    ``nms.backend: Fast`` does); relative paths are taken relative to the working directory.
    ``None`` for a whole section means its defaults.
    """
    raw = {name: value for name, value in sections.items() if value is not None}
    return _build(cls, raw, "", Path.cwd())


def describe(cls, where=""):
    """Yield ``(dotted key, default, doc)`` for every key of ``cls``, for docs and tests."""
    for f in dataclasses.fields(cls):
        sub = f"{where}.{f.name}" if where else f.name
        if "section" in f.metadata:
            yield from describe(f.metadata["section"], sub)
        else:
            default = None if f.default is dataclasses.MISSING else f.default
            yield sub, default, f.metadata["doc"]


# ---------------------------------------------------------------------------------------------
# the GPU step: local_prediction.py

HALO_AUTO = "auto"
MISSING_CHUNKS_ERROR, MISSING_CHUNKS_FILL = "error", "fill"
NMS_BACKEND_STARDIST = LABELING_BACKEND_STARDIST = "stardist"
NMS_BACKEND_FAST = LABELING_BACKEND_FAST = "fast"


#: parser of ``image.voxel_size`` (also of predict_candidates' argument).
voxel_size_triple = optional(triple(positive_number, "numbers > 0"))


@dataclass(frozen=True)
class ImageSection:
    path: Path = key(path, doc="image file: .tif/.tiff (incl. BigTIFF), .h5/.hdf5, .ims or .zarr")
    dataset: str | None = key(optional(text), None,
                              "dataset inside an .h5/.zarr file (null: the only 3D/4D one)")
    channel: int | tuple = key(channels, 0,
                               "channel to segment, for images with a channel axis; a list "
                               "(one per model input channel, in order) for a multi-channel "
                               "model")
    axes: str | None = key(optional(text), None,
                           "axes of the stored array, e.g. ZYX, CZYX, ZCYX (null: guess)")
    missing_chunks: str = key(choice(MISSING_CHUNKS_ERROR, MISSING_CHUNKS_FILL),
                              MISSING_CHUNKS_ERROR,
                              "a zarr array with chunks missing from its store: 'error', or "
                              "'fill' (read them as the fill value)")
    voxel_size: tuple | None = key(voxel_size_triple, None,
                                   "voxel size [z, y, x] in micrometers (null: from the image "
                                   "file's metadata, else unknown)")


@dataclass(frozen=True)
class ModelSection:
    basedir: Path = key(path, doc="directory holding model folders, e.g. models")
    name: str = key(text, doc="model folder inside basedir, e.g. demo")


@dataclass(frozen=True)
class NormalizeSection:
    pmin: float = key(percentile, 1.0, "lower percentile mapped to 0")
    pmax: float = key(percentile, 99.8, "upper percentile mapped to 1")
    method: str | None = key(optional(choice("exact", "sample")), None,
                             "percentiles of every voxel (exact) or of a strided sample (null: "
                             "exact for 8/16-bit integer images, sample otherwise)")
    sample_size: int = key(positive_int, 4_000_000,
                           "voxels sampled (strided over the whole volume) for the percentiles")
    lo: float | None = key(optional(number), None,
                           "fixed intensity mapped to 0, instead of percentiles (with hi)")
    hi: float | None = key(optional(number), None,
                           "fixed intensity mapped to 1, instead of percentiles (with lo)")

    def __post_init__(self):
        # lo and hi only make sense together: one alone would silently mix two schemes
        if (self.lo is None) != (self.hi is None):
            given, missing = (f"prediction.normalize.{k}" for k in
                              (("lo", "hi") if self.hi is None else ("hi", "lo")))
            raise UserError(f"config key '{missing}' is required when '{given}' is given")
        if self.lo is not None and not self.hi > self.lo:
            _fail("prediction.normalize.hi", f"a number greater than lo ({self.lo})", self.hi)

    def check(self, where):
        if not self.pmin < self.pmax:
            _fail(f"{where}.pmin", f"a percentile below pmax ({self.pmax:g}; pmin >= pmax "
                                   "would invert the image)", self.pmin)


@dataclass(frozen=True)
class PredictionSection:
    block_shape: tuple = key(triple(positive_int, "positive integers"), (64, 256, 256),
                             "image region per model call, before context is added")
    n_tiles: tuple | None = key(optional(triple(positive_int, "positive integers")), None,
                                "StarDist n_tiles inside a block (null: picked so that each "
                                "tile has at most max_tile_voxels)")
    max_tile_voxels: int = key(positive_int, 8_388_608,
                               "voxels per network call (with context) when n_tiles is null")
    prob_thresh: float | None = key(optional(unit_interval), None,
                                    "candidate probability threshold (null: thresholds.json)")
    normalize: NormalizeSection = section(NormalizeSection)


@dataclass(frozen=True)
class LocalOutputSection:
    path: Path = key(writable("file"), "output/prediction.h5", "candidate file to write")


@dataclass(frozen=True)
class LocalConfig:
    """Configuration of ``local_prediction.py``."""
    image: ImageSection = section(ImageSection)
    model: ModelSection = section(ModelSection)
    prediction: PredictionSection = section(PredictionSection)
    output: LocalOutputSection = section(LocalOutputSection)


# ---------------------------------------------------------------------------------------------
# the HPC step: hpc_prediction.py


def _tile_axis(value, where, base):
    return None if value is None else positive_int(value, where, base)


def _halo(value, where, base):
    if value == HALO_AUTO:
        return value
    if isinstance(value, (list, tuple)):
        return triple(lambda v, w, b: _int(v, w, b, minimum=0), "integers >= 0")(value, where, base)
    _fail(where, f"'{HALO_AUTO}' or a list of three integers >= 0", value)


@dataclass(frozen=True)
class InputSection:
    prediction: Path = key(path, "output/prediction.h5",
                           "candidate file: this project's prediction.h5 or probabilities.h5")


@dataclass(frozen=True)
class HpcModelSection:
    basedir: Path | None = key(optional(path), None,
                               "directory holding model folders (null: use the file's attributes)")
    name: str | None = key(optional(text), None,
                           "model folder inside basedir (null: use the file's attributes)")


@dataclass(frozen=True)
class HpcOutputSection:
    labels: Path = key(writable("file"), "output/label.h5", "label volume to write")
    work_dir: Path = key(writable("directory"), "output/work",
                         "checkpoints for resuming; safe to delete after")
    report: Path | None = key(optional(writable("file")), "output/report.html",
                              "QC report (one self-contained HTML file) to write (null: none)")
    chunk_shape: tuple = key(triple(positive_int, "positive integers"), (16, 128, 128),
                             "storage chunk of label.h5 and the OME-Zarr levels (what a viewer "
                             "reads at once; fitted to divide labeling.chunk_shape)")
    ome_zarr: Path | None = key(optional(writable("directory")), "output/label.ome.zarr",
                                "multiscale OME-Zarr (NGFF 0.4) label image (null: none)")
    objects_tsv: Path | None = key(optional(writable("file")), "output/objects.tsv",
                                   "objects table as TSV with MoBIE's columns (null: none)")
    objects_parquet: Path | None = key(optional(writable("file")), None,
                                       "objects table as Parquet, needs pyarrow (null: none)")


@dataclass(frozen=True)
class NmsSection:
    thresh: float | None = key(optional(unit_interval), None,
                               "overlap threshold (null: the model's/file's nms threshold)")
    tile_shape: tuple = key(triple(_tile_axis, "positive integers or null"), (None, 512, 512),
                            "NMS tile core shape; null means the full axis")
    halo: Any = key(_halo, HALO_AUTO, "context around each tile: 'auto' or [z, y, x] voxels")
    backend: str = key(choice(NMS_BACKEND_STARDIST, NMS_BACKEND_FAST), NMS_BACKEND_FAST,
                       "NMS implementation: 'fast' (voxel counting, this package) or 'stardist' "
                       "(StarDist's own)")


@dataclass(frozen=True)
class LabelingSection:
    chunk_shape: tuple = key(triple(positive_int, "positive integers"), (64, 256, 256),
                             "label rendering task and HDF5 chunk shape")
    backend: str = key(choice(LABELING_BACKEND_STARDIST, LABELING_BACKEND_FAST),
                       LABELING_BACKEND_STARDIST,
                       "voxel inside test: 'stardist' (StarDist's renderer, ported) or 'fast' "
                       "(cone table)")


#: ``measure.channels`` value measuring every channel of the image.
MEASURE_ALL_CHANNELS = "all"


def _channels(value, where, base):
    if value == MEASURE_ALL_CHANNELS:
        return value
    if not isinstance(value, (list, tuple)) or not value:
        _fail(where, f"'{MEASURE_ALL_CHANNELS}' or a non-empty list of channel indices", value)
    channels = tuple(_int(v, f"{where}[{i}]", base, minimum=0) for i, v in enumerate(value))
    if len(set(channels)) != len(channels):
        _fail(where, "each channel index once", value)
    return channels


@dataclass(frozen=True)
class MeasureSection:
    """``measure``: per-nucleus intensities, measured while the labels are rendered."""
    image: Path | None = key(optional(path), None,
                             "image to measure, any file the GPU step reads (null: no "
                             "measurements)")
    dataset: str | None = key(optional(text), None,
                              "dataset inside an .h5/.zarr file (null: the only 3D/4D one)")
    axes: str | None = key(optional(text), None,
                           "axes of the stored array, e.g. ZYX, CZYX, ZCYX (null: guess)")
    channels: Any = key(_channels, MEASURE_ALL_CHANNELS,
                        "channels to measure: 'all' or a list of indices, e.g. [0, 2]")
    missing_chunks: str = key(choice(MISSING_CHUNKS_ERROR, MISSING_CHUNKS_FILL),
                              MISSING_CHUNKS_ERROR,
                              "a zarr array with chunks missing from its store: 'error' or "
                              "'fill'")


@dataclass(frozen=True)
class LocalClusterSection:
    n_workers: int | None = key(optional(positive_int), None, "worker processes (null: all cores)")
    threads_per_worker: int = key(positive_int, 1, "threads per worker process")


#: what a null ``cluster.slurm`` key of dask-jobqueue's means.
_SITE = "null: the site's dask-jobqueue config"


@dataclass(frozen=True)
class SlurmSection:
    """``cluster.slurm``: worker jobs. Every key but ``jobs``, ``scheduler_host`` and
    ``worker_timeout`` is the ``SLURMCluster`` argument of the same name; null leaves it to
    dask-jobqueue's config (``~/.config/dask/jobqueue.yaml`` or ``$DASK_CONFIG``)."""
    jobs: int = key(positive_int, 16, "worker jobs to submit")
    cores: int | None = key(optional(positive_int), None, f"cores per job ({_SITE})")
    processes: int | None = key(optional(positive_int), None,
                                f"worker processes per job ({_SITE})")
    memory: str | None = key(optional(memory_size), None, f"memory per job, e.g. 32GB ({_SITE})")
    walltime: str | None = key(optional(slurm_time), None, f"walltime per job ({_SITE})")
    queue: str | None = key(optional(text), None, f"partition, sbatch -p ({_SITE})")
    account: str | None = key(optional(text), None, f"account, sbatch -A ({_SITE})")
    interface: str | None = key(optional(text), None,
                                f"network interface of the workers ({_SITE})")
    local_directory: str | None = key(optional(text), None,
                                      f"node-local scratch for workers ({_SITE})")
    job_extra_directives: tuple | None = key(optional(string_list), None,
                                             f"extra #SBATCH lines, e.g. ['--qos=long'] "
                                             f"({_SITE})")
    job_script_prologue: tuple | None = key(optional(string_list), None,
                                            f"shell lines run before each worker starts "
                                            f"({_SITE})")
    worker_extra_args: tuple | None = key(optional(string_list), None,
                                          f"extra arguments of each dask worker ({_SITE}); "
                                          "--no-dashboard is always added")
    scheduler_host: str | None = key(optional(text), None,
                                     "address the scheduler listens on (null: dask-jobqueue's "
                                     "choice from interface)")
    worker_timeout: float = key(positive_number, 600.0, "seconds to wait for the first worker")


@dataclass(frozen=True)
class ClusterSection:
    mode: str = key(choice("local", "slurm"), "local", "local Dask cluster or SLURM jobs")
    no_worker_timeout: float = key(positive_number, 300.0,
                                   "seconds the driver waits with no worker left before it stops")
    local: LocalClusterSection = section(LocalClusterSection)
    slurm: SlurmSection = section(SlurmSection)


@dataclass(frozen=True)
class HpcConfig:
    """Configuration of ``hpc_prediction.py``."""
    input: InputSection = section(InputSection)
    model: HpcModelSection = section(HpcModelSection)
    output: HpcOutputSection = section(HpcOutputSection)
    nms: NmsSection = section(NmsSection)
    labeling: LabelingSection = section(LabelingSection)
    measure: MeasureSection = section(MeasureSection)
    cluster: ClusterSection = section(ClusterSection)
