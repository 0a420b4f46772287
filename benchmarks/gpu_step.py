#!/usr/bin/env python
"""Benchmark of the GPU step (block-wise StarDist3D prediction), measured side by side in one run.

What it measures
----------------
1. Writes two synthetic nuclei volumes (uint16 TIFF, as ``stardist_hpc.demo`` writes the demo
   image): one of ``--shape`` and one twice as large along every axis (8x the voxels, the same
   nucleus density).
2. Runs the GPU step, ``stardist_hpc.predict.step.run(config)``, on each volume in a fresh
   subprocess, with the same ``--block-shape`` for both (so the large volume has 8x the blocks).
   Each child reports its peak RSS (``VmHWM``), the wall time of ``run`` and the fields of
   the returned ``PredictionSummary``.
3. Runs a whole-image ``model.predict_sparse`` on the normalised large volume in a third
   subprocess, for comparison: what the block-wise step saves in memory. When the whole image
   does not fit in memory the child dies; the table then shows FAILED and the peak RSS the
   kernel accounted to it (``os.wait4``) before it died.
4. Prints a table and the ratios with their targets (PASS/MISS):

   * peak memory large / small, target <= 1.25 (memory bounded by the block, not the image);
   * share of the prediction loop spent inside the network call (``network_seconds /
     seconds``), target >= 0.8 (reading, normalising and writing hidden behind the network);
   * candidates per second;
   * whole-image peak RSS vs block-wise peak RSS on the same (large) volume.

Peak RSS includes TensorFlow (the baseline column: the RSS right after importing it) and the
resident pages of the memory-mapped TIFF. Peak memory is set by the largest model call: a
block's core plus the network's context on its inner sides (or the StarDist tiles it is split
into under ``prediction.max_tile_voxels``). A volume only one or two blocks wide has no block
with context on both sides, so the defaults use small blocks and a small volume three blocks
wide along every axis: both volumes then reach the same largest call, and the ratio shows
whether anything else grows with the image. ``cpu s`` is the child's CPU time (imports
included): far less than cores x wall time means the child waited for cores other processes held.

With ``--stand-in``
-------------------
What a GPU would see, without one: the step runs in one child on a ``--stand-in-shape``
(default 64x1024x1024) uint16 image of random intensities, with the network replaced by
``StandInNetwork``, which returns outputs of the right shapes at no cost and with the demo
model's candidate density. The report gives the busy seconds and voxels/s of each lane (read,
normalise, network, post, write; they run in parallel threads), of the exact-percentile pass,
of the block loop, and of the step without its network (target >= 5e7 voxels/s on 2 cores): the
rate a GPU network would have to beat before the host sets the pace.

How to run
----------
::

    .venv/bin/python benchmarks/gpu_step.py
    .venv/bin/python benchmarks/gpu_step.py --stand-in
    .venv/bin/python benchmarks/gpu_step.py --shape 32 128 128 --block-shape 32 128 128 \\
        --model-basedir /tmp/trainprobe --prob-thresh 0.1

The report goes to stdout, progress to stderr; each child's log is written next to its volume
in ``--workdir`` (default: a temporary directory, deleted at the end).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from measure import KIB_PER_MIB, current_rss_mib, high_water_rss_mib, verdict

from stardist_hpc.demo import DEMO_NUCLEI, DEMO_SEED, DEMO_SHAPE

log = logging.getLogger("benchmarks.gpu_step")

#: default image shape (z, y, x) of the small volume: three default blocks along every axis.
DEFAULT_SHAPE = (24, 96, 96)
#: default block (core) shape of both block-wise runs: small, so that both volumes have blocks
#: with context on every side (see the module docstring).
DEFAULT_BLOCK_SHAPE = (8, 32, 32)
#: nuclei per voxel: the demo volume's.
NUCLEI_DENSITY = DEMO_NUCLEI / math.prod(DEMO_SHAPE)
#: the large volume is this many times the small one along every axis.
SCALE_PER_AXIS = 2
#: seed of the small volume (the demo's, unseen in training); the large one uses the next one.
SEED = DEMO_SEED
#: targets of the report.
MEMORY_RATIO_TARGET = 1.25
NETWORK_SHARE_TARGET = 0.8
#: guards divisions by a duration against zero.
EPSILON_SECONDS = 1e-9
#: prefix of the JSON line a child prints on stdout.
RESULT_PREFIX = "GPU_STEP_RESULT "
#: lines of a failed child's log shown in the error.
LOG_TAIL_LINES = 30
CHILD_KINDS = ("blockwise", "whole", "standin")
#: --stand-in: image shape (z, y, x) and block shape of the run without a network.
STAND_IN_SHAPE = (64, 1024, 1024)
STAND_IN_BLOCK_SHAPE = (64, 256, 256)
#: --stand-in: candidates per voxel, as the demo model finds them on the demo-density volume
#: (7223 candidates on 48x192x192 voxels, README).
STAND_IN_CANDIDATES_PER_VOXEL = 7223 / (48 * 192 * 192)
#: --stand-in: ray lengths of the stand-in's outputs are uniform in this range (voxels); some
#: fall below StarDist's 1e-3 floor so that the clamp does work.
STAND_IN_DIST_RANGE = (-0.5, 12.0)
#: targets of the stand-in run: voxels/s of the step without its network (moonshot 1e8).
STAND_IN_RATE_TARGET = 5e7
#: exit codes of a child killed for lack of memory: SIGABRT (std::bad_alloc), SIGKILL (OOM killer).
OUT_OF_MEMORY_EXIT_CODES = (-signal.SIGABRT, -signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# measurements inside a child process




def _import_tensorflow_baseline():
    """Import StarDist/TensorFlow and return the RSS afterwards (the part no block can save)."""
    import stardist.models  # noqa: F401  (the import is the point)
    return current_rss_mib()


def child_blockwise(config_path):
    """Run the GPU step on the config's image; return the measurements as a dict."""
    from stardist_hpc.config import LocalConfig, load

    baseline = _import_tensorflow_baseline()
    from stardist_hpc.predict.step import run

    config = load(LocalConfig, config_path)
    start = time.perf_counter()
    summary = run(config)
    wall = time.perf_counter() - start
    return dict(asdict(summary), network_seconds=summary.network_seconds, wall_seconds=wall,
                peak_rss_mib=high_water_rss_mib(), baseline_rss_mib=baseline)


def child_whole(config_path):
    """Predict the config's whole image with one ``predict_sparse`` call; return measurements."""
    from stardist_hpc.config import LocalConfig, load
    from stardist_hpc.io.image import open_volume
    from stardist_hpc.io.model_files import read_model_info
    from stardist_hpc.predict.normalization import configured_normalization

    baseline = _import_tensorflow_baseline()
    from stardist.models import StarDist3D

    config = load(LocalConfig, config_path)
    start = time.perf_counter()
    info = read_model_info(config.model.basedir, config.model.name)
    model = StarDist3D(None, name=config.model.name, basedir=str(config.model.basedir))
    prob_thresh = (info.prob_thresh if config.prediction.prob_thresh is None
                   else config.prediction.prob_thresh)
    with open_volume(config.image) as volume:
        normalization = configured_normalization(volume, config.prediction.normalize)
        image = normalization.apply(volume.read((0, 0, 0), volume.shape))
    t0 = time.perf_counter()
    prob, _, _ = model.predict_sparse(image, prob_thresh=prob_thresh, axes="ZYX",
                                      show_tile_progress=False)
    network = time.perf_counter() - t0
    wall = time.perf_counter() - start
    return dict(blocks=1, candidates=int(len(prob)), seconds=network, network_seconds=network,
                wall_seconds=wall, peak_rss_mib=high_water_rss_mib(), baseline_rss_mib=baseline)


class StandInNetwork:
    """Zero-cost stand-in for the network: outputs of the right shapes, no computation.

    Returns views into one buffer of random outputs per run (as large as the largest tile's),
    so every call costs nothing while post-processing reads memory as it would read a real
    network's output. A fraction of cells (``STAND_IN_CANDIDATES_PER_VOXEL`` per voxel) is
    above ``prob_thresh``. Filling the buffer (on the first call and when a larger tile comes)
    is no network work: its time, ``fill_seconds``, is taken out of the network lane.
    """

    def __init__(self, network, prob_thresh, seed=0):
        self.network, self.prob_thresh = network, prob_thresh
        self.geometry, self.tiles, self.grid = network.geometry, network.tiles, network.grid
        self._rng = np.random.default_rng(seed)
        self._prob = self._dist = None
        self.fill_seconds = 0.0

    def __call__(self, tile):
        cells = tuple(s // g for s, g in zip(tile.shape[:3], self.grid))
        if self._prob is None or any(c > b for c, b in zip(cells, self._prob.shape)):
            start = time.perf_counter()
            self._fill(tuple(max(c, b) for c, b in zip(cells, self._prob.shape[:3]))
                       if self._prob is not None else cells)
            self.fill_seconds += time.perf_counter() - start
        view = tuple(slice(0, c) for c in cells)
        return self._prob[view], self._dist[view]

    def _fill(self, cells):
        """Random outputs for tiles of up to ``cells`` grid cells."""
        n_rays = self.network.model.config.n_rays
        above = STAND_IN_CANDIDATES_PER_VOXEL * math.prod(self.grid)   # per cell
        uniform = self._rng.random((*cells, 1), dtype=np.float32)
        # cells with uniform < above get prob in (thresh, 1]; the rest stay below thresh
        self._prob = np.where(uniform < above, 1 - uniform, uniform * self.prob_thresh)
        low, high = STAND_IN_DIST_RANGE
        self._dist = self._rng.random((*cells, n_rays), dtype=np.float32)
        self._dist *= high - low
        self._dist += low


def child_standin(config_path):
    """Run the block loop with :class:`StandInNetwork`; return the lanes' seconds and rates."""
    from stardist_hpc.config import LocalConfig, load
    from stardist_hpc.io.candidates import CandidateMeta, CandidateWriter
    from stardist_hpc.io.image import open_volume
    from stardist_hpc.io.model_files import read_model_info
    from stardist_hpc.predict.normalization import configured_normalization
    from stardist_hpc.predict.step import Network, load_model, log_summary, predict_volume

    config = load(LocalConfig, config_path)
    info = read_model_info(config.model.basedir, config.model.name)
    network = StandInNetwork(Network(load_model(config.model.basedir / config.model.name)),
                             info.prob_thresh)
    with open_volume(config.image) as volume:
        t0 = time.perf_counter()
        normalization = configured_normalization(volume, config.prediction.normalize)
        percentile_seconds = time.perf_counter() - t0
        meta = CandidateMeta(image_shape=tuple(volume.shape), rays_json=info.rays_json,
                             grid=info.grid, prob_thresh=info.prob_thresh,
                             nms_thresh=info.nms_thresh)
        with CandidateWriter(config.output.path, meta) as writer:
            summary = predict_volume(network, volume, normalization, writer,
                                     block_shape=config.prediction.block_shape,
                                     prob_thresh=info.prob_thresh, n_tiles=None,
                                     max_tile_voxels=config.prediction.max_tile_voxels)
    summary.lane_seconds["network"] -= network.fill_seconds
    log_summary(summary, config.output.path)
    return dict(asdict(summary), fill_seconds=network.fill_seconds,
                percentile_seconds=percentile_seconds,
                norm_method=normalization.method, peak_rss_mib=high_water_rss_mib())


def write_noise_volume(path, shape, seed):
    """A uint16 TIFF of random intensities: the stand-in network does not look at them."""
    import tifffile

    rng = np.random.default_rng(seed)
    tifffile.imwrite(path, rng.integers(0, 2**16, shape, dtype=np.uint16))


def run_stand_in(workdir, args):
    """Write the stand-in volume and config, run the stand-in child and print its report."""
    shape = tuple(args.stand_in_shape)
    image, config = workdir / "standin.tif", workdir / "standin.yaml"
    write_noise_volume(image, shape, SEED)
    args.block_shape = args.stand_in_block_shape
    write_config(config, image, workdir / "standin_prediction.h5", args)
    log.info("running the stand-in network on %s", shape)
    result = run_child("standin", config, workdir)
    if "failed" in result:
        print(f"stand-in run FAILED: {result['failed']}")
        return 1
    print_stand_in(result, shape)
    return 0


def print_stand_in(result, shape):
    """Print voxels/s of the whole step, of the step without its network, and of each lane."""
    voxels = result["voxels"]
    # the buffer fills are the stand-in's set-up, not the step's: out of the wall time too
    loop = max(result["seconds"] - result["fill_seconds"], EPSILON_SECONDS)
    network = result["lane_seconds"]["network"]
    print(f"stand-in network, image {'x'.join(map(str, shape))} uint16, {result['blocks']} "
          f"blocks, {result['candidates']} candidates, peak RSS {result['peak_rss_mib']:.0f} MiB")
    print(f"{'lane':<28}{'busy s':>9}{'voxels/s':>11}")
    for lane, seconds in result["lane_seconds"].items():
        print(f"{lane:<28}{seconds:>9.2f}{voxels / max(seconds, EPSILON_SECONDS):>11.3g}")
    print(f"{'percentiles (' + result['norm_method'] + ', own pass)':<28}"
          f"{result['percentile_seconds']:>9.2f}"
          f"{voxels / max(result['percentile_seconds'], EPSILON_SECONDS):>11.3g}")
    print(f"{'block loop (wall, no fills)':<28}{loop:>9.2f}{voxels / loop:>11.3g}")
    without = voxels / max(loop - network, EPSILON_SECONDS)
    print(f"step without its network: {without:.3g} voxels/s (block loop minus network calls)"
          f"  target >= {STAND_IN_RATE_TARGET:.0e}  {verdict(without >= STAND_IN_RATE_TARGET)}")
    whole = voxels / (loop + result["percentile_seconds"])
    print(f"whole step incl. the percentile pass: {whole:.3g} voxels/s")


def child_main(kind, config_path):
    """Entry point of a child: measure, then print the result as one JSON line on stdout."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    measure = {"blockwise": child_blockwise, "whole": child_whole,
               "standin": child_standin}[kind]
    print(RESULT_PREFIX + json.dumps(measure(config_path)), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
# the parent: volumes, configs, children, report


def write_volume(path, shape, seed):
    """Write a synthetic nuclei volume of ``shape`` as uint16 TIFF; return its nucleus count."""
    from stardist_hpc.demo import write_uint16_tiff
    from stardist_hpc.synthetic import nuclei_volume

    n_nuclei = round(NUCLEI_DENSITY * math.prod(shape))
    image, labels = nuclei_volume(shape, n_nuclei, seed=seed)
    write_uint16_tiff(path, image)
    log.info("wrote %s: shape %s, %d nuclei", path, shape, labels.max())
    return int(labels.max())


def write_config(path, image, output, args):
    """Write the LocalConfig YAML of one run."""
    import yaml

    prediction = {"block_shape": list(args.block_shape)}
    if args.prob_thresh is not None:
        prediction["prob_thresh"] = args.prob_thresh
    raw = {"image": {"path": str(image)},
           "model": {"basedir": str(Path(args.model_basedir).resolve()), "name": args.model_name},
           "prediction": prediction, "output": {"path": str(output)}}
    Path(path).write_text(yaml.safe_dump(raw))


@dataclass(frozen=True)
class Run:
    """One child run: its label, what it measured, and the volume it ran on."""
    label: str
    volume: str
    result: dict


def _wait_with_rusage(proc):
    """Wait for ``proc``; return its exit code and resource usage (known even after a crash)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def run_child(kind, config_path, workdir):
    """Run one measurement in a fresh Python process; return its result dict.

    A child that dies (e.g. out of memory) gives ``{"failed": reason, "peak_rss_mib": ...}``,
    its peak RSS taken from the kernel's accounting of the dead process.
    """
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(config_path)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    stem = workdir / f"{Path(config_path).stem}_{kind}"
    log_path, out_path = stem.with_suffix(".log"), stem.with_suffix(".out")
    with open(log_path, "w") as child_log, open(out_path, "w") as child_out:
        code, usage = _wait_with_rusage(subprocess.Popen(cmd, stdout=child_out,
                                                         stderr=child_log, env=env))
    lines = [l for l in out_path.read_text().splitlines() if l.startswith(RESULT_PREFIX)]
    if code == 0 and lines:
        # CPU seconds of the whole child (imports and model loading included): far less than
        # cores x wall time means the child waited, e.g. for cores other processes took.
        return dict(json.loads(lines[-1][len(RESULT_PREFIX):]),
                    cpu_seconds=usage.ru_utime + usage.ru_stime)
    peak = usage.ru_maxrss / KIB_PER_MIB
    tail = log_path.read_text().splitlines()[-LOG_TAIL_LINES:]
    log.error("%s child failed (exit code %d); end of its log:\n%s", kind, code, "\n".join(tail))
    oom = code in OUT_OF_MEMORY_EXIT_CODES or any("bad_alloc" in l or "MemoryError" in l
                                                 for l in tail)
    return {"failed": "out of memory" if oom else f"exit code {code}", "peak_rss_mib": peak}


def measure_all(workdir, args):
    """Write both volumes and run the three children; return the runs in report order."""
    shapes = {"small": tuple(args.shape),
              "large": tuple(SCALE_PER_AXIS * s for s in args.shape)}
    runs, configs = [], {}
    for i, (name, shape) in enumerate(shapes.items()):
        image = workdir / f"{name}.tif"
        write_volume(image, shape, SEED + i)
        configs[name] = workdir / f"{name}.yaml"
        write_config(configs[name], image, workdir / f"{name}_prediction.h5", args)
    plan = [("block-wise", "small", "blockwise"), ("block-wise", "large", "blockwise"),
            ("whole-image", "large", "whole")]
    for label, name, kind in plan:
        log.info("running %s on the %s volume %s", label, name, shapes[name])
        result = run_child(kind, configs[name], workdir)
        log.info("%s %s: %s", label, name, result)
        runs.append(Run(label, "x".join(map(str, shapes[name])), result))
    return runs



def _share(result):
    """Share of the prediction loop spent inside the network call."""
    return result["network_seconds"] / max(result["seconds"], EPSILON_SECONDS)


def _rate(result):
    """Candidates per second of the prediction loop."""
    return result["candidates"] / max(result["seconds"], EPSILON_SECONDS)


def print_table(runs):
    """Print one row per run; a failed run shows why and the peak RSS it reached."""
    header = (f"{'run':<12}{'volume':>12}{'blocks':>7}{'cand':>8}{'wall s':>8}{'loop s':>8}"
              f"{'net s':>8}{'share':>7}{'cand/s':>8}{'cpu s':>8}{'base MiB':>9}{'peak MiB':>9}")
    print(header)
    print("-" * len(header))
    for run in runs:
        r = run.result
        if "failed" in r:
            print(f"{run.label:<12}{run.volume:>12}  FAILED: {r['failed']:<60}"
                  f"{r['peak_rss_mib']:>9.0f}")
            continue
        print(f"{run.label:<12}{run.volume:>12}{r['blocks']:>7}{r['candidates']:>8}"
              f"{r['wall_seconds']:>8.1f}{r['seconds']:>8.1f}{r['network_seconds']:>8.1f}"
              f"{_share(r):>7.2f}{_rate(r):>8.0f}{r['cpu_seconds']:>8.1f}"
              f"{r['baseline_rss_mib']:>9.0f}"
              f"{r['peak_rss_mib']:>9.0f}")


def print_ratios(small, large, whole):
    """Print the ratios against their targets (block-wise runs must have succeeded)."""
    memory_ratio = large["peak_rss_mib"] / small["peak_rss_mib"]
    above = [r["peak_rss_mib"] - r["baseline_rss_mib"] for r in (small, large)]
    print(f"memory large/small (block-wise): {memory_ratio:.2f}  target <= "
          f"{MEMORY_RATIO_TARGET}  {verdict(memory_ratio <= MEMORY_RATIO_TARGET)}  "
          f"(above the TensorFlow baseline: {above[0]:.0f} vs {above[1]:.0f} MiB)")
    for name, r in (("small", small), ("large", large)):
        share = _share(r)
        print(f"network share, {name}: {share:.2f} ({r['network_seconds']:.1f} of "
              f"{r['seconds']:.1f} s)  target >= {NETWORK_SHARE_TARGET}  "
              f"{verdict(share >= NETWORK_SHARE_TARGET)}")
    print(f"candidates/s: small {_rate(small):.0f}, large {_rate(large):.0f}")
    whole_peak = whole["peak_rss_mib"]
    if "failed" in whole:
        print(f"whole-image on the large volume FAILED ({whole['failed']}; peak RSS before it "
              f"died {whole_peak:.0f} MiB); block-wise peak {large['peak_rss_mib']:.0f} MiB")
        return
    print(f"whole-image vs block-wise peak RSS, large volume: {whole_peak:.0f} vs "
          f"{large['peak_rss_mib']:.0f} MiB (x{whole_peak / large['peak_rss_mib']:.2f}; "
          f"block-wise saves {whole_peak - large['peak_rss_mib']:.0f} MiB)")
    same = "equal" if whole["candidates"] == large["candidates"] else "DIFFERENT"
    print(f"candidates, large volume: whole-image {whole['candidates']}, block-wise "
          f"{large['candidates']} ({same})")


def parse_args(argv):
    """Command-line options (``--child`` is internal: it runs one measurement)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", type=int, nargs=3, default=DEFAULT_SHAPE,
                        metavar=("Z", "Y", "X"),
                        help="small volume shape; the large one is 2x per axis")
    parser.add_argument("--block-shape", type=int, nargs=3, default=DEFAULT_BLOCK_SHAPE,
                        metavar=("Z", "Y", "X"), help="prediction.block_shape of both runs")
    parser.add_argument("--model-basedir", default="models", help="directory of model folders")
    parser.add_argument("--model-name", default="demo", help="model folder inside basedir")
    parser.add_argument("--prob-thresh", type=float, default=None,
                        help="candidate probability threshold (default: the model's)")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where volumes, configs and logs go (default: a temporary dir)")
    parser.add_argument("--stand-in", action="store_true",
                        help="run the step with a zero-cost stand-in network instead (lanes "
                             "and voxels/s of everything but the network)")
    parser.add_argument("--stand-in-shape", type=int, nargs=3, default=STAND_IN_SHAPE,
                        metavar=("Z", "Y", "X"), help="image shape of the stand-in run")
    parser.add_argument("--stand-in-block-shape", type=int, nargs=3,
                        default=STAND_IN_BLOCK_SHAPE, metavar=("Z", "Y", "X"),
                        help="prediction.block_shape of the stand-in run")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "CONFIG"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None):
    """Run the benchmark (or, with ``--child``, one of its measurements) and print the report."""
    args = parse_args(argv)
    if args.child:
        kind, config_path = args.child
        if kind not in CHILD_KINDS:
            raise SystemExit(f"--child: unknown kind {kind!r}")
        return child_main(kind, config_path)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    workdir_context = (tempfile.TemporaryDirectory(prefix="gpu_step_") if args.workdir is None
                       else nullcontext(args.workdir))
    with workdir_context as workdir:
        Path(workdir).mkdir(parents=True, exist_ok=True)
        if args.stand_in:
            return run_stand_in(Path(workdir), args)
        runs = measure_all(Path(workdir), args)
    print(f"GPU step benchmark: model {args.model_basedir}/{args.model_name}, block shape "
          f"{'x'.join(map(str, args.block_shape))}, prob_thresh "
          f"{args.prob_thresh if args.prob_thresh is not None else 'model'}")
    print_table(runs)
    small, large, whole = (run.result for run in runs)
    if "failed" in small or "failed" in large:
        print("block-wise run failed: no ratios (see the log above)")
        return 1
    print_ratios(small, large, whole)
    return 0


if __name__ == "__main__":
    sys.exit(main())
