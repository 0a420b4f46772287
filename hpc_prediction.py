#!/usr/bin/env python
"""The HPC step: python hpc_prediction.py CONFIG (see stardist_hpc.cli and --help)."""
import sys

from stardist_hpc.cli import segment_main as main

if __name__ == "__main__":
    sys.exit(main())
