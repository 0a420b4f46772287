#!/usr/bin/env python
"""Distributed NMS and labeling of StarDist3D candidates into one uint32 label volume.

Reads the candidate file written by local_prediction.py (or the original pipeline's
probabilities.h5), runs non-maximum suppression tile by tile and renders the kept nuclei chunk
by chunk on a Dask cluster (local processes or SLURM jobs), and writes label.h5.
Rerunning the same command after an interruption resumes from the checkpoints in work_dir.

Example: python hpc_prediction.py hpc_prediction_template.yaml --set cluster.mode=local
"""
import sys

from stardist_hpc.cli import run_script
from stardist_hpc.config import HpcConfig


def main(argv=None):
    return run_script(argv, description=__doc__, config_cls=HpcConfig,
                      runner="stardist_hpc.hpc:run")


if __name__ == "__main__":
    sys.exit(main())
