"""The QC report's figures as HTML: inline SVG charts and PNG pictures, without a plotting library.

Why not matplotlib: the report is written at the end of every run, and drawing its figures
with matplotlib took 2-3 CPU-seconds (imports, text layout, PNG rasterising) that, on a
machine whose cores run the workers, came out of the workers' time. These charts are a few
kilobytes of SVG text each, drawn in milliseconds; pictures (label projections, image planes,
heat maps) are PNGs encoded here with ``zlib``.

Every function returns one panel as an HTML fragment; :func:`row` puts panels side by side.
"""
from __future__ import annotations

import base64
import html
import itertools
import math
import struct
import zlib

import numpy as np

#: width of a row of panels in CSS pixels (the report's page is a little wider).
ROW_WIDTH = 1080
#: gap between panels of a row, in CSS pixels.
PANEL_GAP = 16
#: plot area margins inside an SVG panel (left, right, top, bottom), in pixels: room for the
#: tick labels, the axis labels and the title.
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 62, 14, 26, 46
#: font size of tick labels; titles and axis labels are 1 px larger.
FONT_SIZE = 11
#: about how many ticks a linear axis gets.
N_TICKS = 5
#: zlib level of the PNGs: fast, and the pictures are small (previews of a few hundred pixels).
PNG_COMPRESSION = 6
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: viridis at 0, 1/16, ..., 1 (matplotlib's colour map, in hex), interpolated linearly in
#: between (within 0.021 of matplotlib's 256 entries).
_VIRIDIS_HEX = ("440154", "48186a", "472d7b", "424086", "3b528b", "33638d", "2c728e",
                "26828e", "21918c", "1fa088", "28ae80", "3fbc73", "5ec962", "84d44b",
                "addc30", "d8e219", "fde725")
VIRIDIS = np.array([[int(code[i:i + 2], 16) for i in (0, 2, 4)]
                    for code in _VIRIDIS_HEX]) / 255.0
#: heat-map cells whose value lies above this fraction of the colour scale are bright (viridis
#: turns yellow): their numbers are written in black, the others' in white.
BRIGHT = 0.6
#: heat maps with at most this many cells have their values written in.
MAX_ANNOTATED = 64
#: a sans-serif digit is about this many font sizes wide; a cell's number may fill this
#: fraction of its width, in a font of at least MIN_CELL_FONT_SIZE pixels (else none is written).
CHARACTER_WIDTH = 0.6
CELL_TEXT_FILL = 0.9
MIN_CELL_FONT_SIZE = 7
#: width of a heat map's colour bar, in pixels.
COLOURBAR_WIDTH = 12
#: colours of bars (matplotlib's tab10 blue, orange, green, red, purple).
COLOURS = {"blue": "#1f77b4", "orange": "#ff7f0e", "green": "#2ca02c", "red": "#d62728",
           "purple": "#9467bd"}
#: CSS of the panels' rows (the report's page adds it to its own).
CSS = (".row{display:flex;gap:%dpx;align-items:flex-start}.panel{flex:none}"
       ".title{font-size:12px;text-align:center;margin:4px 0}"
       "img{image-rendering:pixelated}" % PANEL_GAP)
_GRADIENT_NUMBERS = itertools.count()


# ---------------------------------------------------------------------------------------------
# pictures


def to_bytes(fraction):
    """Colour values in [0, 1] (clipped) as uint8 0..255."""
    return np.round(np.clip(np.asarray(fraction, float), 0, 1) * 255).astype(np.uint8)


def png_bytes(rgb):
    """A PNG file of an RGB image ``rgb`` (uint8, or float in [0, 1]; shape (height, width,
    3))."""
    pixels = rgb if rgb.dtype == np.uint8 else to_bytes(rgb)
    height, width, _ = pixels.shape
    # each row starts with its filter type, 0 (none)
    rows = np.hstack([np.zeros((height, 1), np.uint8), pixels.reshape(height, -1)])
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)   # 8-bit RGB
    return (PNG_SIGNATURE + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESSION))
            + _png_chunk(b"IEND", b""))


def _png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def png_uri(rgb):
    """``rgb`` as a ``data:`` URI of a PNG."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(rgb)).decode("ascii")


def picture(rgb, title, aspect=1.0, n_panels=1, height=320):
    """An image panel: ``rgb`` shown with rows ``aspect`` times as tall as its columns are wide,
    scaled to fit its share of a row and ``height`` pixels, each voxel a sharp block."""
    rows, columns = rgb.shape[0] * aspect, rgb.shape[1]
    scale = min(panel_width(n_panels) / columns, height / rows)
    return (f'<div class="panel"><div class="title">{html.escape(title)}</div>'
            f'<img alt="{html.escape(title)}" src="{png_uri(rgb)}" '
            f'width="{round(columns * scale)}" height="{round(rows * scale)}"></div>')


def row(panels):
    """Panels (HTML fragments of this module) side by side."""
    return f'<div class="row">{"".join(panels)}</div>'


def hsv_to_rgb(hsv):
    """RGB of HSV colours (all in [0, 1], last axis (h, s, v))."""
    h, s, v = (hsv[..., i] for i in range(3))
    sector = np.floor(h * 6.0)
    f = h * 6.0 - sector
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)]
    sector = sector.astype(np.int64) % 6
    return np.stack([np.choose(sector, [c[i] for c in choices]) for i in range(3)], axis=-1)


def viridis(fraction):
    """RGB of viridis at ``fraction`` (array in [0, 1])."""
    position = np.clip(np.asarray(fraction, float), 0, 1) * (len(VIRIDIS) - 1)
    return np.stack([np.interp(position, np.arange(len(VIRIDIS)), VIRIDIS[:, i])
                     for i in range(3)], axis=-1)


def _hex(rgb):
    return "#" + to_bytes(rgb).tobytes().hex()


# ---------------------------------------------------------------------------------------------
# axes


def panel_width(n_panels):
    """Width in pixels of one of ``n_panels`` panels side by side in a row."""
    return (ROW_WIDTH - PANEL_GAP * (n_panels - 1)) // n_panels


def nice_ticks(lo, hi, n=N_TICKS, integer=False):
    """Round tick values (1, 2 or 5 times a power of ten apart, whole numbers with
    ``integer``) covering [lo, hi]."""
    if not hi > lo:
        return [lo]
    raw = (hi - lo) / n
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    step = max(step, 1) if integer else step
    first = math.floor(lo / step + 1e-9) * step
    count = math.ceil((hi - first) / step - 1e-9)
    return [first + i * step for i in range(count + 1)]


def log_ticks(lo, hi):
    """Powers of ten within [lo, hi]; with fewer than two of them, 1, 2 and 5 times powers of
    ten; with fewer still, lo and hi themselves."""
    exponents = range(math.floor(math.log10(lo)), math.floor(math.log10(hi)) + 1)
    for mantissas in ((1,), (1, 2, 5)):
        ticks = [m * 10.0 ** e for e in exponents for m in mantissas
                 if lo * (1 - 1e-9) <= m * 10.0 ** e <= hi * (1 + 1e-9)]
        if len(ticks) >= 2:
            return ticks
    return [lo, hi]


def _label(value):
    return f"{value:.4g}"


class _Plot:
    """One SVG panel: a plot area mapping data to pixels, and the SVG elements drawn on it."""

    def __init__(self, n_panels, height, x_range, y_range, log_x=False):
        self.width, self.height = panel_width(n_panels), height
        self.x_range, self.y_range, self.log_x = x_range, y_range, log_x
        self.left, self.right = MARGIN_LEFT, self.width - MARGIN_RIGHT
        self.top, self.bottom = MARGIN_TOP, height - MARGIN_BOTTOM
        self.elements = []

    def x(self, value):
        lo, hi = self.x_range
        if self.log_x:
            value, lo, hi = (math.log10(v) for v in (value, lo, hi))
        return self.left + (value - lo) / ((hi - lo) or 1) * (self.right - self.left)

    def y(self, value):
        lo, hi = self.y_range
        return self.bottom - (value - lo) / ((hi - lo) or 1) * (self.bottom - self.top)

    def add(self, element):
        self.elements.append(element)

    def text(self, x, y, text, anchor="middle", size=FONT_SIZE, extra=""):
        self.add(f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" font-size="{size}"'
                 f'{extra}>{html.escape(text)}</text>')

    def rect(self, x0, y0, x1, y1, colour):
        self.add(f'<rect x="{min(x0, x1):.1f}" y="{min(y0, y1):.1f}" '
                 f'width="{abs(x1 - x0):.1f}" height="{abs(y1 - y0):.1f}" fill="{colour}"/>')

    def line(self, x0, y0, x1, y1, extra='stroke="#222"'):
        self.add(f'<line x1="{x0:.1f}" y1="{y0:.1f}" x2="{x1:.1f}" y2="{y1:.1f}" {extra}/>')

    def frame(self, title, xlabel="", ylabel="", x_ticks=(), y_ticks=(), tick_offset=0.0):
        """Axes lines, ticks (at value + ``tick_offset``) with labels, the axis labels and the
        title."""
        self.line(self.left, self.bottom, self.right, self.bottom)
        self.line(self.left, self.bottom, self.left, self.top)
        for value in x_ticks:
            x = self.x(value + tick_offset)
            self.line(x, self.bottom, x, self.bottom + 4)
            self.text(x, self.bottom + 16, _label(value))
        for value in y_ticks:
            y = self.y(value + tick_offset)
            self.line(self.left - 4, y, self.left, y)
            self.text(self.left - 6, y + 4, _label(value), "end")
        self.text((self.left + self.right) / 2, self.bottom + 34, xlabel, size=FONT_SIZE + 1)
        middle = (self.top + self.bottom) / 2
        self.text(14, middle, ylabel, size=FONT_SIZE + 1,
                  extra=f' transform="rotate(-90 14 {middle:.1f})"')
        self.text(self.width / 2, 16, title, size=FONT_SIZE + 1)

    def svg(self):
        return (f'<svg class="panel" width="{self.width}" height="{self.height}" '
                f'viewBox="0 0 {self.width} {self.height}" font-family="sans-serif">'
                f'{"".join(self.elements)}</svg>')


# ---------------------------------------------------------------------------------------------
# charts


def histogram(values, title, xlabel, ylabel="objects", bins=50, log_x=False, colour="blue",
              n_panels=1, height=260):
    """A histogram of ``values`` (finite numbers) in ``bins`` bins, geometric with ``log_x``."""
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if log_x:
        values = values[values > 0]
    if not len(values):
        plot = _Plot(n_panels, height, (0, 1), (0, 1))
        plot.frame(title, xlabel, ylabel)
        return plot.svg()
    lo, hi = float(values.min()), float(values.max())
    if log_x:
        edges = np.geomspace(lo, max(hi, 2 * lo), bins + 1)
    else:
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    counts, _ = np.histogram(values, edges)
    y_ticks = nice_ticks(0, max(int(counts.max()), 1), integer=True)
    plot = _Plot(n_panels, height, (edges[0], edges[-1]), (0, y_ticks[-1]), log_x)
    for count, left, right in zip(counts, edges[:-1], edges[1:]):
        if count:
            plot.rect(plot.x(left), plot.y(0), plot.x(right), plot.y(count), COLOURS[colour])
    x_ticks = (log_ticks(edges[0], edges[-1]) if log_x else
               [t for t in nice_ticks(edges[0], edges[-1]) if edges[0] <= t <= edges[-1]])
    plot.frame(title, xlabel, ylabel, x_ticks, y_ticks)
    return plot.svg()


def bars(names, values, title, ylabel, errors=None, colours=None, reference=None,
         n_panels=1, height=260):
    """A bar per name (``\\n`` in a name starts a second line), with optional error bars and a
    dashed horizontal line at ``reference``."""
    values = [0.0 if not np.isfinite(v) else float(v) for v in values]
    errors = [0.0] * len(values) if errors is None else [float(e) for e in errors]
    top = max([v + e for v, e in zip(values, errors)] + [reference or 0, 1e-9])
    y_ticks = nice_ticks(0, top)
    plot = _Plot(n_panels, height, (0, max(len(values), 1)), (0, y_ticks[-1]))
    for i, (name, value, error) in enumerate(zip(names, values, errors)):
        colour = COLOURS[colours[i] if colours else "blue"]
        plot.rect(plot.x(i + 0.15), plot.y(0), plot.x(i + 0.85), plot.y(value), colour)
        if error:
            centre = plot.x(i + 0.5)
            plot.line(centre, plot.y(value - error), centre, plot.y(value + error))
        for k, part in enumerate(str(name).split("\n")):
            plot.text(plot.x(i + 0.5), plot.bottom + 16 + 13 * k, part)
    if reference is not None:
        plot.line(plot.left, plot.y(reference), plot.right, plot.y(reference),
                  'stroke="#222" stroke-dasharray="5 4"')
    plot.frame(title, ylabel=ylabel, y_ticks=y_ticks)
    return plot.svg()


def heat_map(values, title, xlabel, ylabel, n_panels=1, height=260):
    """A (y, x) map of ``values`` as viridis cells with a colour bar, numbers written in small
    maps (at most :data:`MAX_ANNOTATED` cells). The cells are one PNG, whatever their count."""
    values = np.asarray(values, float)
    lo, hi = float(values.min()), float(values.max())
    fraction = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    ny, nx = values.shape
    plot = _Plot(n_panels, height, (0, nx), (ny, 0))
    plot.right -= COLOURBAR_WIDTH + 44   # room for the colour bar and its labels
    size = min((plot.right - plot.left) / nx, (plot.bottom - plot.top) / ny)
    plot.right, plot.bottom = plot.left + size * nx, plot.top + size * ny
    plot.add(f'<image x="{plot.left}" y="{plot.top}" width="{size * nx:.1f}" '
             f'height="{size * ny:.1f}" preserveAspectRatio="none" '
             f'style="image-rendering:pixelated" href="{png_uri(viridis(fraction))}"/>')
    if values.size <= MAX_ANNOTATED:
        _annotate(plot, values, fraction, size)
    plot.height = round(plot.bottom + MARGIN_BOTTOM)   # the cells are square: no blank below
    _colour_bar(plot, lo, hi)
    plot.frame(title, xlabel, ylabel, _integer_ticks(nx), _integer_ticks(ny), tick_offset=0.5)
    return plot.svg()


def _annotate(plot, values, fraction, cell_size):
    """Write each cell's value in it, in a font small enough for the longest value to fit
    (none if that would be below :data:`MIN_CELL_FONT_SIZE`)."""
    texts = {cell: f"{value:.3g}" for cell, value in np.ndenumerate(values)}
    longest = max(len(text) for text in texts.values())
    size = min(FONT_SIZE, CELL_TEXT_FILL * cell_size / (CHARACTER_WIDTH * longest))
    if size < MIN_CELL_FONT_SIZE:
        return
    for (y, x), text in texts.items():
        colour = "#000" if fraction[y, x] > BRIGHT else "#fff"
        plot.text(plot.x(x + 0.5), plot.y(y + 0.5) + size / 3, text, size=round(size, 1),
                  extra=f' fill="{colour}"')


def _integer_ticks(n):
    """Tick values for cells 0 .. n - 1 (ticks sit at the cells' centres)."""
    return [int(t) for t in nice_ticks(0, n - 1, integer=True) if t < n]


def _colour_bar(plot, lo, hi):
    """A vertical viridis bar right of the plot area, labelled from ``lo`` to ``hi``."""
    x, top, bottom = plot.right + 10, plot.top, plot.bottom
    stops = "".join(f'<stop offset="{i / (len(VIRIDIS) - 1):.3f}" stop-color="{_hex(rgb)}"/>'
                    for i, rgb in enumerate(VIRIDIS[::-1]))
    identifier = f"viridis-{next(_GRADIENT_NUMBERS)}"   # ids are global in the page
    plot.add(f'<defs><linearGradient id="{identifier}" x1="0" y1="0" x2="0" y2="1">{stops}'
             f'</linearGradient></defs><rect x="{x:.1f}" y="{top:.1f}" '
             f'width="{COLOURBAR_WIDTH}" height="{bottom - top:.1f}" '
             f'fill="url(#{identifier})"/>')
    for value in ([lo] if not hi > lo else nice_ticks(lo, hi)):
        if lo <= value <= hi:
            y = bottom - ((value - lo) / (hi - lo) if hi > lo else 0) * (bottom - top)
            plot.text(x + COLOURBAR_WIDTH + 4, y + 4, _label(value), "start")
