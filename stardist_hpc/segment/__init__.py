"""The HPC step: tile-wise NMS and chunk-wise rendering on a Dask cluster into the label file.

Nothing here imports TensorFlow or :mod:`stardist_hpc.predict` (tests/test_layout.py).
"""
