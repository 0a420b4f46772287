#!/usr/bin/env python
"""Open a ``label.ome.zarr`` of hpc_prediction.py in napari (napari-ome-zarr) and save a
screenshot: the check that a real viewer reads the multiscale labels and their physical scale.

Run it where napari is installed (not needed by the project), headless under Xvfb::

    python -m venv napari-venv && napari-venv/bin/pip install "napari[pyqt5]" napari-ome-zarr
    xvfb-run -a -s "-screen 0 1400x1000x24" napari-venv/bin/python \\
        doc/screenshots/view_in_napari.py output/label.ome.zarr doc/screenshots/napari.png

It prints what napari loaded (levels, shapes, scale) and writes the screenshot of the middle
z-plane of the full-resolution level (napari picks the level it shows from the zoom).
"""
import sys
from pathlib import Path

import napari

#: window size of the screenshot, pixels.
WINDOW = (1400, 1000)


def main(store, screenshot):
    viewer = napari.Viewer(show=True, title=f"{Path(store).name} (napari {napari.__version__})")
    viewer.window.resize(*WINDOW)
    [layer] = viewer.open(str(Path(store) / "labels" / "nuclei"), plugin="napari-ome-zarr")
    layer.visible = True   # napari-ome-zarr opens label layers hidden
    levels = layer.data if layer.multiscale else [layer.data]
    print(f"layer {layer.name!r}: {type(layer).__name__}, multiscale {layer.multiscale}, "
          f"{len(levels)} level(s): {[tuple(level.shape) for level in levels]}, "
          f"scale {tuple(layer.scale)}, units {tuple(str(u) for u in viewer.layers[0].units)}")
    viewer.dims.set_point(0, layer.extent.world[1][0] / 2)
    viewer.reset_view()
    viewer.screenshot(str(screenshot), canvas_only=False, flash=False)
    print(f"wrote {screenshot}")
    viewer.close()


if __name__ == "__main__":
    main(*sys.argv[1:3])
