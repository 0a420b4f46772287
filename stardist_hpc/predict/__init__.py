"""The GPU step: block-wise StarDist3D prediction of an image into a candidate file.

TensorFlow is imported only when a model is loaded.
"""
