#!/usr/bin/env python
"""Block-wise StarDist3D prediction of a large 3D image into a sparse candidate file.

Streams the image block by block through a trained StarDist3D model and appends the candidates
(prob, dist, points) of each block to an HDF5 file that hpc_prediction.py consumes. Memory is
bounded by prediction.block_shape, not by the image size.

Example: python local_prediction.py local_template.yaml --set prediction.block_shape=[32,128,128]
"""
import sys

from stardist_hpc.cli import run_script
from stardist_hpc.config import LocalConfig


def main(argv=None):
    return run_script(argv, description=__doc__, config_cls=LocalConfig,
                      runner="stardist_hpc.predict:run")


if __name__ == "__main__":
    sys.exit(main())
