#!/usr/bin/env python
"""The GPU step: python local_prediction.py CONFIG (see stardist_hpc.cli and --help)."""
import sys

from stardist_hpc.cli import predict_main as main

if __name__ == "__main__":
    sys.exit(main())
