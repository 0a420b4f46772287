"""The QC report of an HPC-step run: one self-contained HTML file, its figures inline SVG charts
and embedded PNG pictures (:mod:`.charts`).

Written by the driver at the end of every run (``output.report``), from what it holds anyway:
the objects table of ``label.h5``, the previews the labeling tasks made (:mod:`.preview`), the
NMS checkpoints (reruns per tile), the seconds of every stage and task, and with
``measure.image`` a few sampled planes of the image. Per-object arrays and previews of at most
``PREVIEW_PIXELS`` per side only; the volume is never read whole.

Figures (each a ``<figure id="fig-NAME">``, see :data:`FIGURES`): label maximum projections,
object volume and prob histograms, objects / NMS reruns / seconds per tile, the seam check,
seconds per stage and per chunk, and with ``measure.image`` image planes with label outlines and
mean intensity histograms.

The seam check (:func:`seam_table`): for every family of planes where the work was cut (NMS
tile boundaries and label chunk boundaries, along z, y and x), the number of objects whose
bounding box meets a boundary plane (cuts it, or ends on either side of it) per boundary plane,
divided by the same number for control planes half a period away, in the interiors. Planes of
one axis have the same area, so this is a ratio of densities per area; objects placed
independently of the tiling give 1 (within the Poisson error shown). Objects duplicated or cut
in two at a seam show as an excess (> 1), objects lost at seams as a deficit.
"""
from __future__ import annotations

import html
import math
import time
from pathlib import Path

import numpy as np

from .. import __version__
from ..geometry.tiling import Grid
from ..io.atomic import atomic_path
from ..io.label_file import read_objects
from . import charts
from .preview import preview_steps

#: figure ids, always present / present with ``measure.image``.
FIGURES = ("projections", "objects", "tiles", "seams", "times")
MEASURE_FIGURES = ("planes", "intensities")
#: histogram bins.
N_BINS = 50
#: golden-ratio hue step: consecutive ids get well separated colours.
HUE_STEP = (math.sqrt(5) - 1) / 2
#: saturation and value of label colours (background stays black).
LABEL_SATURATION, LABEL_VALUE = 0.75, 1.0
#: colour of label outlines drawn on image planes.
OUTLINE_COLOUR = (1.0, 0.2, 0.2)
#: percentiles of an image plane mapped to black and white.
DISPLAY_PERCENTILES = (1.0, 99.8)
#: image voxels read at once when sampling a plane (bounds the driver's memory).
PLANE_BAND_VOXELS = 2 ** 24
#: the boundary families of the seam check: name and which grid they come from.
SEAM_FAMILIES = ("tile", "chunk")
AXES = "zyx"
CSS = """body{font-family:sans-serif;max-width:1120px;margin:1em auto;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:1.5em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:2px 8px;
text-align:right}th{background:#f4f4f4}td:first-child,th:first-child{text-align:left}
figure{margin:.5em 0}figcaption,p.note{font-size:.85em;color:#555}""" + charts.CSS


# ---------------------------------------------------------------------------------------------
# numbers


def label_colours(labels):
    """RGB image (uint8) of a label array: black background, a distinct colour per id."""
    # the colours of the ids present, then one look-up per pixel: a few bytes per pixel
    ids, pixel_ids = np.unique(labels, return_inverse=True)
    hsv = np.stack([(ids.astype(np.float64) * HUE_STEP) % 1.0,
                    np.full(len(ids), LABEL_SATURATION),
                    np.where(ids > 0, LABEL_VALUE, 0.0)], axis=-1)
    palette = charts.to_bytes(charts.hsv_to_rgb(hsv))
    return palette[pixel_ids.reshape(labels.shape)]


def outlines(labels):
    """Voxels of a 2D label array whose 4-neighbourhood holds another label."""
    edge = np.zeros(labels.shape, bool)
    vertical, horizontal = labels[1:] != labels[:-1], labels[:, 1:] != labels[:, :-1]
    edge[1:] |= vertical
    edge[:-1] |= vertical
    edge[:, 1:] |= horizontal
    edge[:, :-1] |= horizontal
    return edge & (labels > 0)


def _boundaries(size, period):
    """Boundary planes between boxes of ``period`` along an axis of ``size``, and the control
    planes half a period after each box start (inside the boxes, one per box of full size)."""
    starts = np.arange(0, size, period)
    controls = starts + period // 2
    return starts[1:], controls[starts + period <= size]


def _planes_met(lo, hi, planes):
    """How many (object, plane) pairs meet: the object's voxels [lo, hi) touch or cross the
    plane between voxels p - 1 and p, i.e. lo <= p <= hi."""
    lo, hi = np.sort(lo), np.sort(hi)
    return int(sum(np.searchsorted(lo, p, "right") - np.searchsorted(hi, p, "left")
                   for p in planes))


def seam_table(objects, image_shape, tile_shape, chunk_shape):
    """The seam check (module docstring): one row per boundary family with any boundary.

    Returns
    -------
    list of dict
        ``family`` ('tile' or 'chunk'), ``axis``, ``period``, ``n_boundaries``, ``met``
        (objects meeting boundaries), ``n_controls``, ``control_met``, ``excess`` (ratio of
        the densities, NaN without controls) and ``error`` (its Poisson standard error).
    """
    rendered = objects[objects["voxel_count"] > 0]
    shapes = {"tile": Grid(image_shape, tile_shape).box_shape,
              "chunk": Grid(image_shape, chunk_shape).box_shape}
    rows = []
    for family in SEAM_FAMILIES:
        for axis, name in enumerate(AXES):
            period, size = shapes[family][axis], image_shape[axis]
            boundaries, controls = _boundaries(size, period)
            if not len(boundaries):
                continue
            lo, hi = rendered[f"{name}0"], rendered[f"{name}1"]
            met, control_met = _planes_met(lo, hi, boundaries), _planes_met(lo, hi, controls)
            rows.append(dict(family=family, axis=name, period=int(period),
                             n_boundaries=len(boundaries), met=met, n_controls=len(controls),
                             control_met=control_met, **_excess(met, len(boundaries),
                                                                control_met, len(controls))))
    return rows


def _excess(met, n_planes, control_met, n_controls):
    if not (n_controls and control_met and met):
        ratio = np.nan if not (n_controls and control_met) else 0.0
        return {"excess": ratio, "error": np.nan}
    ratio = (met / n_planes) / (control_met / n_controls)
    return {"excess": ratio, "error": ratio * math.sqrt(1 / met + 1 / control_met)}


def _per_tile(values_by_index, grid):
    """A (y, x) map over the boxes of ``grid``: values by flat box index, summed over z."""
    values = np.zeros(len(grid))
    for index, value in values_by_index.items():
        values[index] += value
    return values.reshape(grid.counts).sum(axis=0)


def objects_per_tile(objects, grid):
    """Objects whose centroid lies in each box of ``grid``, by flat box index."""
    rendered = objects[objects["voxel_count"] > 0]
    centroids = np.stack([rendered[f"centroid_{a}"] for a in AXES], axis=1)
    counts = np.bincount(grid.index_of(np.floor(centroids)), minlength=len(grid))
    return dict(enumerate(counts))


def image_planes(spec, image_shape, positions):
    """The first measured channel at the z ``positions``, sampled as the previews are."""
    steps = preview_steps(image_shape)
    _, ny, nx = image_shape
    band = max(steps[1], PLANE_BAND_VOXELS // nx // steps[1] * steps[1])
    # the image reader (zarr: a fifth of this module's imports) only for a report that shows it
    from ..io.image import open_volume
    planes = {}
    with open_volume(spec.image_section(spec.channels[0])) as volume:
        for z in positions:
            parts = [volume.read((z, y, 0), (z + 1, min(y + band, ny), nx))[0, ::steps[1],
                                                                          ::steps[2]]
                     for y in range(0, ny, band)]
            planes[z] = np.concatenate(parts)
    return planes


# ---------------------------------------------------------------------------------------------
# figures: each a list of panels (:mod:`.charts`)


def _aspect(steps, vertical, horizontal):
    """Display aspect of a preview whose rows and columns sample axes with these steps."""
    return steps[vertical] / steps[horizontal]


def projections_figure(previews):
    steps = previews.steps
    views = (("z", "max over z (y down, x across)", 1, 2),
             ("y", "max over y (z down, x across)", 0, 2),
             ("x", "max over x (z down, y across)", 0, 1))
    return [charts.picture(label_colours(previews.projections[along]), title,
                           _aspect(steps, vertical, horizontal), len(views))
            for along, title, vertical, horizontal in views]


def objects_figure(objects):
    counts = objects["voxel_count"][objects["voxel_count"] > 0]
    return [charts.histogram(counts, f"object volume ({len(objects) - len(counts)} without "
                                     "voxels)", "voxels per object", bins=N_BINS, log_x=True,
                             n_panels=2),
            charts.histogram(objects["prob"], "object probability", "prob", bins=N_BINS,
                             colour="orange", n_panels=2)]


def _map(values, title, kind="tile", n_panels=3):
    return charts.heat_map(values, title, f"{kind} x", f"{kind} y", n_panels)


def tiles_figure(objects, grid, nms):
    depth = f" (summed over {grid.counts[0]} along z)" if grid.counts[0] > 1 else ""
    return [_map(_per_tile(objects_per_tile(objects, grid), grid), "objects per tile" + depth),
            _map(_per_tile(dict(enumerate(nms.tile_reruns)), grid), "NMS reruns per tile"),
            _map(_per_tile(dict(enumerate(nms.tile_seconds)), grid),
                 "NMS kernel seconds per tile")]


def seams_figure(rows):
    return [charts.bars([f"{r['family']} {r['axis']}\n(every {r['period']})" for r in rows],
                        [r["excess"] for r in rows],
                        "seam check (1 = no seam effect; > 1 excess at boundaries)",
                        "boundary / control objects",
                        errors=[0 if np.isnan(r["error"]) else r["error"] for r in rows],
                        colours=["blue" if r["family"] == "tile" else "green" for r in rows],
                        reference=1.0)]


def times_figure(seconds, chunk_grid, chunk_seconds):
    stages = {name: getattr(seconds, name) for name in ("index", "nms", "gather", "labeling",
                                                         "write")}
    return [charts.bars(list(stages), list(stages.values()), "seconds per stage",
                        "seconds (wall clock)", colours=["purple"] * len(stages), n_panels=2),
            _map(_per_tile(chunk_seconds, chunk_grid),
                 "labeling task seconds per chunk (render + measure)", "chunk", n_panels=2)]


def planes_figure(planes, label_planes, steps):
    panels = []
    for z, image in planes.items():
        lo, hi = np.percentile(image, DISPLAY_PERCENTILES)
        grey = charts.to_bytes((image - lo) / max(hi - lo, np.finfo(float).tiny))
        rgb = np.repeat(grey[..., None], 3, axis=-1)
        rgb[outlines(label_planes[z])] = charts.to_bytes(OUTLINE_COLOUR)
        panels.append(charts.picture(rgb, f"plane z = {z}", _aspect(steps, 1, 2),
                                     len(planes)))
    return panels


def intensities_figure(columns):
    return [charts.histogram(stats["mean"], f"channel {channel}", "mean intensity",
                             bins=N_BINS, colour="red", n_panels=len(columns))
            for channel, stats in columns.items()]


# ---------------------------------------------------------------------------------------------
# HTML


def _table(rows, header=None):
    cells = ([f"<tr>{''.join(f'<th>{html.escape(str(h))}</th>' for h in header)}</tr>"]
             if header else [])
    cells += [f"<tr>{''.join(f'<td>{html.escape(str(v))}</td>' for v in row)}</tr>"
              for row in rows]
    return f"<table>{''.join(cells)}</table>"


def _section(name, title, panels, text=""):
    return (f'<section id="{name}"><h2>{html.escape(title)}</h2>{text}'
            f'<figure id="fig-{name}">{charts.row(panels)}</figure></section>')


def _summary(params, summary, n_tiles, n_chunks, extras):
    rows = [("label file", summary.labels), ("image shape (z, y, x)", params.image_shape),
            ("candidates", summary.n_candidates), ("objects", summary.n_objects),
            ("NMS backend, threshold", f"{params.nms_backend}, {params.nms_thresh:g}"),
            ("NMS tiles (tile shape, halo)", f"{n_tiles} ({params.tile_shape}, {params.halo})"),
            ("NMS rounds, tile reruns", f"{summary.n_rounds}, {summary.n_reruns}"),
            ("label chunks rendered (chunk shape)", f"{n_chunks} ({params.chunk_shape})"),
            ("labeling backend", params.labeling_backend),
            ("seconds of the step up to label.h5",
             f"{sum(vars(summary.seconds).values()):.1f}")]
    if params.measure is not None:
        measure = sum(extras.measure_seconds.values())
        render = sum(extras.render_seconds.values())
        rows += [("measured image (channels)", f"{params.measure.image} "
                                               f"{list(params.measure.channels)}"),
                 ("task seconds: render, measure", f"{render:.1f}, {measure:.1f}")]
    rows.append(("software version, written", f"{__version__}, "
                                              f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}"))
    return _table(rows)


def _seam_text(rows):
    if not rows:
        return "<p>No tile or chunk boundary inside the volume: nothing to check.</p>"
    header = ("family", "axis", "period", "boundary planes", "objects meeting boundaries",
              "control planes", "objects meeting controls", "excess", "± error")
    return _table([(r["family"], r["axis"], r["period"], r["n_boundaries"], r["met"],
                    r["n_controls"], r["control_met"], f"{r['excess']:.3f}",
                    f"{r['error']:.3f}") for r in rows], header) + (
        '<p class="note">Objects whose voxels touch or cross a boundary plane, per plane, '
        "divided by the same for control planes half a period away (inside tiles/chunks). "
        "Without a seam effect the ratio is 1 within its error; objects duplicated or cut "
        "at seams raise it, objects lost there lower it.</p>")


def write_report(path, params, summary, extras, nms):
    """Write the QC report of a run to ``path`` (atomically).

    Parameters
    ----------
    path : Path
    params : SegmentParams
    summary : RunSummary
    extras : ChunkSummary
        Previews, intensities and chunk seconds (:class:`.chunk_extras.ExtrasCollector`).
    nms : NmsSummary
        The NMS rounds' reruns and seconds per tile.
    """
    objects = read_objects(params.label_path)
    tile_grid = Grid(params.image_shape, params.tile_shape)
    chunk_grid = Grid(params.image_shape, params.chunk_shape)
    chunk_seconds = {i: extras.render_seconds[i] + extras.measure_seconds[i]
                     for i in extras.render_seconds}
    seams = seam_table(objects, params.image_shape, params.tile_shape, params.chunk_shape)
    sections = [
        _section("projections", "Label maximum projections", projections_figure(extras.previews),
                 f"<p class=\"note\">Every {extras.previews.steps} voxels (z, y, x) sampled "
                 "across the projection; colours by object id.</p>"),
        _section("objects", "Objects", objects_figure(objects)),
        _section("tiles", "NMS tiles", tiles_figure(objects, tile_grid, nms)),
        _section("seams", "Seam check", seams_figure(seams), _seam_text(seams)),
        _section("times", "Seconds", times_figure(summary.seconds, chunk_grid, chunk_seconds)),
    ]
    if params.measure is not None:
        planes = image_planes(params.measure, params.image_shape, list(extras.previews.planes))
        sections += [
            _section("planes", "Image planes with label outlines",
                     planes_figure(planes, extras.previews.planes, extras.previews.steps),
                     f"<p class=\"note\">Channel {params.measure.channels[0]}.</p>"),
            _section("intensities", "Mean intensity per object",
                     intensities_figure(extras.intensities.columns())),
        ]
    body = "".join(sections)
    document = (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
                f"<title>StarDist HPC report: {html.escape(str(summary.labels))}</title>"
                f"<style>{CSS}</style></head><body><h1>StarDist HPC run report</h1>"
                f"<section id=\"summary\"><h2>Run</h2>"
                f"{_summary(params, summary, len(tile_grid), len(chunk_seconds), extras)}"
                f"</section>{body}</body></html>\n")
    with atomic_path(Path(path)) as tmp_path:
        tmp_path.write_text(document)
