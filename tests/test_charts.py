"""The QC report's charts (``segment/charts.py``): its PNGs, colours and ticks, and a report
written without a plotting library."""
import subprocess
import sys

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.colors import hsv_to_rgb as matplotlib_hsv_to_rgb
from PIL import Image

from stardist_hpc.segment import charts
from stardist_hpc.segment.report import label_colours

#: viridis from 17 anchors against matplotlib's 256 entries (the most at the bend near 1).
VIRIDIS_ATOL = 0.025


def test_png_decodes_to_the_pixels_it_was_given(tmp_path):
    rgb = np.random.default_rng(0).random((7, 13, 3))
    path = tmp_path / "picture.png"
    path.write_bytes(charts.png_bytes(rgb))
    with Image.open(path) as image:
        decoded = np.asarray(image.convert("RGB"))
    assert decoded.shape == (7, 13, 3)
    assert np.array_equal(decoded, np.round(rgb * 255).astype(np.uint8))


def test_colours_match_matplotlib():
    hsv = np.random.default_rng(1).random((50, 3))
    assert np.allclose(charts.hsv_to_rgb(hsv), matplotlib_hsv_to_rgb(hsv))
    fractions = np.linspace(0, 1, 101)
    assert np.allclose(charts.viridis(fractions), colormaps["viridis"](fractions)[:, :3],
                       atol=VIRIDIS_ATOL)


@pytest.mark.parametrize("lo, hi, expected", [
    (0, 1, [0, 0.2, 0.4, 0.6, 0.8, 1.0]),
    (0, 37, [0, 10, 20, 30, 40]),
    (3, 3, [3]),
    (0.013, 0.021, [0.012, 0.014, 0.016, 0.018, 0.02, 0.022]),
])
def test_nice_ticks_cover_the_range_in_round_steps(lo, hi, expected):
    assert np.allclose(charts.nice_ticks(lo, hi), expected)


def test_integer_ticks_step_by_whole_numbers():
    assert charts.nice_ticks(0, 2, integer=True) == [0, 1, 2]


def test_log_ticks_are_powers_of_ten_or_round_multiples_or_the_ends():
    assert charts.log_ticks(3, 5000) == [10, 100, 1000]
    assert charts.log_ticks(53, 517) == [100, 200, 500]
    assert charts.log_ticks(21, 39) == [21, 39]


def test_charts_of_empty_and_constant_data_draw():
    for panel in (charts.histogram([], "empty", "x"),
                  charts.histogram([np.nan, 5.0, 5.0], "constant", "x", log_x=True),
                  charts.bars([], [], "none", "y"),
                  charts.heat_map(np.zeros((1, 1)), "one cell", "x", "y")):
        assert panel.startswith("<svg") and panel.endswith("</svg>")


def test_a_heat_map_writes_numbers_only_in_small_maps_and_where_they_fit():
    small = charts.heat_map(np.arange(4.0).reshape(2, 2), "small", "x", "y")
    large = charts.heat_map(np.arange(100.0).reshape(10, 10), "large", "x", "y")
    assert ">3</text>" in small and ">99</text>" not in large
    # numbers that would not fit their cells at a readable size are left out
    crowded = charts.heat_map(np.linspace(0.07616, 0.09, 64).reshape(8, 8), "crowded", "x", "y",
                              n_panels=3)
    assert ">0.0762</text>" not in crowded
    assert large.count("<image") == 1   # the cells are one picture, however many


def test_the_report_imports_no_plotting_library():
    code = ("import sys, stardist_hpc.segment.step, stardist_hpc.segment.report; "
            "print(sorted(m for m in ('matplotlib', 'PIL') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


def test_label_colours_are_bytes_black_for_background_and_one_per_id():
    labels = np.array([[0, 7, 7], [70_000, 0, 7]], np.uint32)   # an id above 16 bits
    rgb = label_colours(labels)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert not rgb[labels == 0].any()
    assert (rgb[labels == 7] == rgb[0, 1]).all() and (rgb[1, 0] != rgb[0, 1]).any()
