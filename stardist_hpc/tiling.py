"""Regular grids of boxes over a volume (prediction blocks, NMS tiles, label chunks)."""
from __future__ import annotations

import itertools


def grid_boxes(shape, box_shape):
    """Yield ``(lo, hi)`` of the boxes of a regular grid that partition ``shape``.

    Boxes at the far end of an axis are clipped to the volume. ``None`` in ``box_shape`` means
    the full axis.
    """
    box_shape = tuple(s if b is None else b for s, b in zip(shape, box_shape))
    starts = [range(0, s, b) for s, b in zip(shape, box_shape)]
    for lo in itertools.product(*starts):
        yield lo, tuple(min(l + b, s) for l, b, s in zip(lo, box_shape, shape))
