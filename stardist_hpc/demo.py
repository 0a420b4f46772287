"""The bundled demo: write a synthetic nuclei volume, and summarise a finished run against it.

Usage::

    python -m stardist_hpc.demo data DIR              # DIR/nuclei.tif and DIR/ground_truth.tif
    python -m stardist_hpc.demo summary DIR LABEL_H5  # objects found, matching F1 vs ground truth
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import h5py
import numpy as np
import tifffile

from .synthetic import nuclei_volume

log = logging.getLogger("stardist_hpc.demo")

DEMO_SHAPE = (64, 256, 256)
DEMO_NUCLEI = 400
#: seed of the demo volume: different from every training volume of models/train_demo.py.
DEMO_SEED = 4242
IMAGE_NAME, TRUTH_NAME = "nuclei.tif", "ground_truth.tif"
#: IoU at which a predicted nucleus counts as matching a true one (the field's usual choice).
MATCH_IOU = 0.5
#: brightest value of the written uint16 image: headroom below 65535, as cameras leave it.
UINT16_PEAK = 60000


def write_uint16_tiff(path, image):
    """Write a float image as a uint16 TIFF spanning 0..UINT16_PEAK, as a microscope would."""
    scaled = (image - image.min()) / max(float(np.ptp(image)), np.finfo(np.float32).eps)
    tifffile.imwrite(path, np.round(scaled * UINT16_PEAK).astype(np.uint16))


def write_demo_data(directory):
    """Write the demo image (uint16) and its ground truth (uint32) into ``directory``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    image, truth = nuclei_volume(DEMO_SHAPE, DEMO_NUCLEI, seed=DEMO_SEED)
    write_uint16_tiff(directory / IMAGE_NAME, image)
    tifffile.imwrite(directory / TRUTH_NAME, truth)
    log.info("demo volume %s with %d nuclei written to %s", DEMO_SHAPE, truth.max(), directory)


def summarize(directory, label_path):
    """Log the objects of ``label_path`` and their matching score against the ground truth."""
    from stardist.matching import matching

    truth = tifffile.imread(Path(directory) / TRUTH_NAME)
    with h5py.File(label_path, "r") as f:
        labels = f["labels"][()]
        n_objects = len(f["objects"])
    stats = matching(truth, labels, thresh=MATCH_IOU)
    log.info("demo result: %d objects (ground truth %d), dtype %s; at IoU %.1f: "
             "precision %.3f, recall %.3f, F1 %.3f", n_objects, truth.max(), labels.dtype,
             MATCH_IOU, stats.precision, stats.recall, stats.f1)
    return stats


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data").add_argument("directory", type=Path)
    summary = sub.add_parser("summary")
    summary.add_argument("directory", type=Path)
    summary.add_argument("labels", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    if args.command == "data":
        write_demo_data(args.directory)
    else:
        summarize(args.directory, args.labels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
