#!/usr/bin/env python
"""What the outputs people open cost, and what the storage chunks give (issue #12, items 1-4).

What it measures
----------------
1. Writes ``benchmarks/scale.py``'s 1x candidate set (64x256x512, 2,048 nuclei, 96 rays, 88
   candidates per nucleus) with a voxel size of 2 x 0.5 x 0.5 micrometers.
2. Segments it twice on one local cluster of 2 workers (after a small warm-up run, so that
   neither pays the workers' imports and numba compilation), each with a fresh work_dir:

   * *before*: label.h5 only, its storage chunks the task chunks (64x256x256 = 16 MiB), no
     OME-Zarr, no TSV: the step as it was;
   * *after*: the defaults: storage chunks of 16x128x128 (1 MiB), ``label.ome.zarr`` (all
     levels) and ``objects.tsv``.

3. Prints both step times (sum of the stages), the after run's OME-Zarr + tables stage and
   its share of the step (target <= 15%, shared with the intensity measurements and the QC
   report of the same issue), and reading times of label.h5 (and of the OME-Zarr's level 0):
   every z-plane one by one against the whole volume at once.

How to run
----------
::

    .venv/bin/python benchmarks/outputs.py [--workdir DIR]

With ``--workdir`` the outputs are kept (``DIR/after/label.ome.zarr`` is what
``doc/screenshots/view_in_napari.py`` shows).
"""
from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict
from pathlib import Path

import h5py
from scale import BASE_NUCLEI, BASE_SHAPE, CANDIDATES_PER_NUCLEUS, N_RAYS, N_WORKERS, SEED

from stardist_hpc.io.candidate_checks import HEADER_CHECKSUM, header_checksum

log = logging.getLogger("benchmarks.outputs")

VOXEL_SIZE = (2.0, 0.5, 0.5)
#: the task chunk (labeling.chunk_shape default) = the storage chunk before this issue.
TASK_CHUNK = (64, 256, 256)
#: an h5py chunk cache that holds a z-slab of storage chunks (h5py's default: 1 MiB).
CHUNK_CACHE_BYTES = 64 * 2 ** 20
#: target share of the step for the OME-Zarr, the tables and the rest of issue #12's outputs.
SHARE_TARGET = 0.15


def write_candidates(path):
    from stardist_hpc.synthetic import write_dense_candidate_file
    n = write_dense_candidate_file(path, BASE_SHAPE, BASE_NUCLEI, n_rays=N_RAYS,
                                   candidates_per_nucleus=CANDIDATES_PER_NUCLEUS, seed=SEED)
    with h5py.File(path, "a") as f:   # as the GPU step records an image's voxel size
        f.attrs["voxel_size"], f.attrs["voxel_unit"] = VOXEL_SIZE, "micrometer"
        f.attrs[HEADER_CHECKSUM] = header_checksum(f.attrs)
    return n


def segment(client, candidates, run_dir, **outputs):
    from stardist_hpc import segment_candidates
    summary = segment_candidates(candidates, run_dir / "label.h5", work_dir=run_dir / "work",
                                 client=client, show_progress=False, **outputs)
    return asdict(summary.seconds)


def plane_and_whole_seconds(read_plane, read_whole, n_planes):
    """Seconds to read every z-plane one by one, and the whole volume at once."""
    started = time.perf_counter()
    for z in range(n_planes):
        read_plane(z)
    planes = time.perf_counter() - started
    started = time.perf_counter()
    read_whole()
    return planes, time.perf_counter() - started


def label_h5_reads(path, chunk_cache_bytes=None):
    cache = {} if chunk_cache_bytes is None else {"rdcc_nbytes": chunk_cache_bytes}
    with h5py.File(path, "r", **cache) as f:
        dset = f["labels"]
        return dset.chunks, plane_and_whole_seconds(lambda z: dset[z], lambda: dset[()],
                                                    dset.shape[0])


def ome_zarr_reads(path):
    import zarr
    array = zarr.open_array(path / "labels" / "nuclei" / "0", mode="r")
    return plane_and_whole_seconds(lambda z: array[z], lambda: array[...], array.shape[0])


def run(workdir):
    import distributed

    from stardist_hpc.config import LocalClusterSection
    from stardist_hpc.segment.cluster import local_cluster_kwargs
    from stardist_hpc.synthetic import demo_candidate_file
    candidates = workdir / "prediction.h5"
    n = write_candidates(candidates)
    log.info("wrote %d candidates in %s", n, "x".join(map(str, BASE_SHAPE)))
    kwargs = local_cluster_kwargs(LocalClusterSection(n_workers=N_WORKERS, threads_per_worker=1))
    with distributed.LocalCluster(**kwargs) as cluster, distributed.Client(cluster) as client:
        warm = workdir / "warm-up"
        segment(client, demo_candidate_file(workdir / "warm-up.h5"), warm)
        before = segment(client, candidates, workdir / "before", storage_shape=TASK_CHUNK,
                         ome_zarr=None, objects_tsv=None)
        after = segment(client, candidates, workdir / "after")
    return before, after


def report(workdir, before, after):
    step_before, step_after = sum(before.values()), sum(after.values())
    print(f"machine: 2 cores, 1-min load {os.getloadavg()[0]:.1f} at the end")
    print(f"{'':<34}{'before':>10}{'after':>10}")
    for stage in after:
        print(f"{stage + ' s':<34}{before[stage]:>10.1f}{after[stage]:>10.1f}")
    print(f"{'step s (sum of stages)':<34}{step_before:>10.1f}{step_after:>10.1f}")
    share = after["outputs"] / step_after
    verdict = "PASS" if share <= SHARE_TARGET else "MISS"
    print(f"OME-Zarr + tables: {after['outputs']:.1f} s = {100 * share:.1f}% of the step "
          f"(target <= {100 * SHARE_TARGET:.0f}%: {verdict}); step after / before "
          f"{step_after / step_before:.2f}")
    for name in ("before", "after"):
        chunks, (planes, whole) = label_h5_reads(workdir / name / "label.h5")
        print(f"label.h5 {name} (chunks {chunks}): {BASE_SHAPE[0]} z-planes one by one "
              f"{planes:.2f} s, whole volume {whole:.2f} s")
        _, (planes, whole) = label_h5_reads(workdir / name / "label.h5", CHUNK_CACHE_BYTES)
        print(f"  opened with rdcc_nbytes={CHUNK_CACHE_BYTES >> 20} MiB: planes {planes:.2f} s, "
              f"whole {whole:.2f} s")
    planes, whole = ome_zarr_reads(workdir / "after" / "label.ome.zarr")
    print(f"label.ome.zarr level 0: z-planes one by one {planes:.2f} s, whole {whole:.2f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=None,
                        help="keep the files here (default: a temporary directory)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("distributed", "stardist_hpc"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    with (tempfile.TemporaryDirectory() if args.workdir is None else
          nullcontext(args.workdir)) as folder:
        folder = Path(folder)
        before, after = run(folder)
        report(folder, before, after)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
