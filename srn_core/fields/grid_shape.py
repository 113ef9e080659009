"""Sizing feature grids for a budget: the shape shared by the grid-based fields."""

from __future__ import annotations

import math


def fit_grid_shape(voxels: int, data_shape_zyx, slack: int = 3) -> tuple[int, int, int]:
    """A grid shape ``(D, H, W)`` with about ``voxels`` cells (never more) and the data's aspect ratio.

    Tries every pair of axes within ``slack`` cells of the ideal real-valued shape with the third axis filling
    the budget, so the product lands within about 1 % of ``voxels`` even for small grids, where changing one
    axis by one cell moves the count by several percent (shrinking only the largest axis can land 10 % short).
    """
    voxels = max(8, int(voxels))
    dims = [max(1, int(s)) for s in data_shape_zyx]
    # The real-valued shape with the data's proportions and ``voxels`` cells; an axis that would get fewer
    # than 2 cells (a thin slab) is pinned at 2 and the others share the rest.
    ideal: list[float] = [0.0, 0.0, 0.0]
    pinned: set[int] = set()
    while True:
        free = [a for a in range(3) if a not in pinned]
        scale = (voxels / 2 ** len(pinned) / math.prod(dims[a] for a in free)) ** (1 / len(free))
        ideal = [2.0 if a in pinned else dims[a] * scale for a in range(3)]
        small = [a for a in free if ideal[a] < 2]
        if not small or len(pinned) + len(small) == 3:
            ideal = [max(2.0, v) for v in ideal]
            break
        pinned.update(small)
    ranges = [range(max(2, math.floor(v) - slack), max(2, math.ceil(v) + slack) + 1) for v in ideal]
    # Two axes near their ideal sizes, the third as large as the budget allows (each axis in turn).
    shapes = set()
    for solved in range(3):
        a, b = (x for x in range(3) if x != solved)
        for na in ranges[a]:
            for nb in ranges[b]:
                n = voxels // (na * nb)
                if n >= 2:
                    shape = [0, 0, 0]
                    shape[a], shape[b], shape[solved] = na, nb, n
                    shapes.add(tuple(shape))
    if not shapes:
        return (2, 2, 2)
    def shortfall(shape):
        return 1.0 - shape[0] * shape[1] * shape[2] / voxels

    def distortion(shape):  # log distance from the data's proportions
        return sum(abs(math.log(n / v)) for n, v in zip(shape, ideal))

    # Trade cells against proportions (1 % fewer cells ~ 0.2 of log distortion), within 1.5 % of the budget;
    # tiny grids (a few cells per axis, where one cell is 10 % or more) may fall short by half a cell.
    limit = max(0.015, 0.5 / min(ideal), min(shortfall(s) for s in shapes))
    return min((s for s in shapes if shortfall(s) <= limit), key=lambda s: (100 * shortfall(s) + 5 * distortion(s), s))
