"""The comparison picture of ``srn eval --figure``: original, reconstruction and error on the three mid slices.

One PNG a scientist can open anywhere, drawn with NumPy alone (no plotting library is a dependency) and written
with the renderer's PNG writer. Rows are the mid slices across z, y and x; columns the original, the
reconstruction (both on the original's grey scale) and the signed error ``reconstruction - original`` on a
blue-white-red scale of its own, symmetric about 0. Each slice is drawn with the world axes the usual way
(first in-plane axis to the right, second upwards) and with square world units, so anisotropic voxels keep
their true proportions.
"""

from __future__ import annotations

import os

import numpy as np

from srn_core.geometry import ImageGeometry
from srn_core.render.image import to_uint8, write_png

PANEL = 256
"""Pixels of the longest world extent among the slices."""
GAP, MARGIN, SCALE = 14, 10, 2
BACKGROUND = (0.12, 0.12, 0.12)
TEXT = (0.95, 0.95, 0.95)
NO_DATA = (0.85, 0.75, 0.0)
"""Masked (non-finite) reference points, and non-finite reconstructed values."""
ERROR_PERCENTILE = 99.9
"""The error scale is this percentile of |error| (a few outliers must not wash the map out)."""
GREY_PERCENTILE = 99.5
"""The grey scale spans the reference's minimum to this percentile (a few bright voxels, such as vessels in an MRI,
would otherwise leave the rest dark)."""

# A 5 x 7 pixel font for the labels: one string of 7 rows of 5 columns per character ('#' is ink).
_GLYPHS = {
    "A": " ### #   ##   #######   ##   ##   #", "B": "#### #   ##   ##### #   ##   ##### ",
    "C": " ### #   ##    #    #    #   # ### ", "D": "#### #   ##   ##   ##   ##   ##### ",
    "E": "######    #    #### #    #    #####", "F": "######    #    #### #    #    #    ",
    "G": " ### #   ##    # ####   ##   # ####", "H": "#   ##   ##   #######   ##   ##   #",
    "I": " ###   #    #    #    #    #   ### ", "J": "  ###   #    #    #    #    ## ##  ",
    "K": "#   ##  # # #  ##   # #  #  # #   #", "L": "#    #    #    #    #    #    #####",
    "M": "#   ### ### # ##   ##   ##   ##   #", "N": "#   ###  ## # ##  ###   ##   ##   #",
    "O": " ### #   ##   ##   ##   ##   # ### ", "P": "#### #   ##   ##### #    #    #    ",
    "Q": " ### #   ##   ##   ## # ##  #  ## #", "R": "#### #   ##   ##### # #  #  # #   #",
    "S": " #####    #     ###     #    ##### ", "T": "#####  #    #    #    #    #    #  ",
    "U": "#   ##   ##   ##   ##   ##   # ### ", "V": "#   ##   ##   ##   ##   # # #   #  ",
    "W": "#   ##   ##   ## # ## # ## # # # # ", "X": "#   ##   # # #   #   # # #   ##   #",
    "Y": "#   ##   # # #   #    #    #    #  ", "Z": "#####    #   #   #   #   #    #####",
    "0": " ### #   ##  ### # ###  ##   # ### ", "1": "  #   ##    #    #    #    #   ### ",
    "2": " ### #   #    #   #   #   #   #####", "3": "#####   #   #     #     ##   # ### ",
    "4": "   #   ##  # # #  ######   #    #  ", "5": "######    ####     #    ##   # ### ",
    "6": "  ##  #   #    #### #   ##   # ### ", "7": "#####    #   #   #   #    #    #   ",
    "8": " ### #   ##   # ### #   ##   # ### ", "9": " ### #   ##   # ####    #   #  ##  ",
    " ": " " * 35, ".": " " * 30 + "  #  ", ",": " " * 25 + "  #   #   "[:10], "-": " " * 15 + "#####" + " " * 15,
    "+": " " * 5 + "  #    #  #####  #    #  " + " " * 5, "=": " " * 10 + "#####     #####" + " " * 10,
    "(": "   #  #   #    #    #     #     #  ", ")": " #     #     #    #    #   #   #   ",
    ":": " " * 5 + "  #  " + " " * 10 + "  #  " + " " * 10, "/": "    #    #   #   #   #   #    #    ",
    "%": "##   ##  #   #   #   #   #  ##   ##",
}


def text_width(text: str) -> int:
    return len(text) * 6 * SCALE - SCALE


def draw_text(canvas: np.ndarray, text: str, row: int, col: int, colour=TEXT) -> None:
    """Draw ``text`` (upper-cased; unknown characters as blanks) with its top-left corner at ``(row, col)``."""
    h, w = canvas.shape[:2]
    for i, ch in enumerate(text.upper()):
        glyph = np.array([c == "#" for c in _GLYPHS.get(ch, _GLYPHS[" "])], bool).reshape(7, 5)
        ink = np.kron(glyph, np.ones((SCALE, SCALE), bool))
        r0, c0 = row, col + i * 6 * SCALE
        rows, cols = np.nonzero(ink)
        keep = (r0 + rows < h) & (c0 + cols < w) & (r0 + rows >= 0) & (c0 + cols >= 0)
        canvas[r0 + rows[keep], c0 + cols[keep]] = colour


def grey(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Values to grey RGB over ``[lo, hi]``; non-finite values in :data:`NO_DATA`."""
    t = np.clip((values - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    rgb = np.repeat(np.nan_to_num(t)[..., None], 3, axis=-1)
    rgb[~np.isfinite(values)] = NO_DATA
    return rgb


def diverging(values: np.ndarray, scale: float) -> np.ndarray:
    """Signed values to blue (-scale) - white (0) - red (+scale), clipped; non-finite in :data:`NO_DATA`."""
    t = np.clip(np.nan_to_num(values / (scale if scale > 0 else 1.0)), -1.0, 1.0)[..., None]
    white, blue, red = np.ones(3), np.array([0.23, 0.30, 0.75]), np.array([0.71, 0.02, 0.15])
    rgb = np.where(t < 0, white + (-t) * (blue - white), white + t * (red - white))
    rgb[~np.isfinite(values)] = NO_DATA
    return rgb


def mid_slices(values: np.ndarray, geometry: ImageGeometry) -> list[tuple[str, np.ndarray, tuple[float, float]]]:
    """``(label, slice, (width, height) in world units)`` for the mid slices across z, y and x, each ready to show
    with row 0 at the top (second in-plane axis pointing up)."""
    nx, ny, nz = geometry.dims
    sx, sy, sz = geometry.spacing
    k, j, i = nz // 2, ny // 2, nx // 2
    return [
        (f"Z = {k}", values[k, ::-1, :], (nx * sx, ny * sy)),   # x right, y up
        (f"Y = {j}", values[::-1, j, :], (nx * sx, nz * sz)),   # x right, z up
        (f"X = {i}", values[::-1, :, i], (ny * sy, nz * sz)),   # y right, z up
    ]


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of ``(h, w, ...)`` to ``(height, width, ...)`` (pixel centres)."""
    rows = np.minimum(((np.arange(height) + 0.5) * image.shape[0] / height).astype(int), image.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * image.shape[1] / width).astype(int), image.shape[1] - 1)
    return image[rows][:, cols]


def comparison_figure(reference: np.ndarray, reconstruction: np.ndarray, geometry: ImageGeometry,
                      title: str = "") -> np.ndarray:
    """The picture as uint8 RGB ``(H, W, 3)``; ``reference`` holds NaN at masked points."""
    ref = np.asarray(reference, dtype=np.float64)
    rec = np.asarray(reconstruction, dtype=np.float64)
    if ref.shape != geometry.shape or rec.shape != geometry.shape:
        raise ValueError(f"reference {ref.shape} and reconstruction {rec.shape} must both be {geometry.shape}.")
    finite = np.isfinite(ref)
    if not finite.any():
        raise ValueError("the reference holds no finite value; nothing to draw.")
    lo, hi = float(ref[finite].min()), float(np.percentile(ref[finite], GREY_PERCENTILE))
    err = rec - ref
    counted = np.abs(err[np.isfinite(err)])
    scale = float(np.percentile(counted, ERROR_PERCENTILE)) if counted.size else 0.0

    rows = list(zip(mid_slices(ref, geometry), mid_slices(rec, geometry), mid_slices(err, geometry)))
    longest = max(max(size) for (_, _, size), _, _ in rows)
    px = PANEL / longest
    shapes = [(max(1, round(size[1] * px)), max(1, round(size[0] * px))) for (_, _, size), _, _ in rows]
    col_w = max(max(w for _, w in shapes), text_width("RECONSTRUCTION"))
    label_w = text_width("Z = 0000") + GAP
    line = 7 * SCALE
    top = MARGIN + (line + GAP if title else 0) + line + GAP
    bar = 12
    height = top + sum(h for h, _ in shapes) + GAP * (len(rows) - 1) + GAP + bar + 4 + line + MARGIN
    width = MARGIN + label_w + 3 * col_w + 2 * GAP + MARGIN
    canvas = np.empty((height, width, 3))
    canvas[:] = BACKGROUND

    x0 = [MARGIN + label_w + c * (col_w + GAP) for c in range(3)]
    if title:
        draw_text(canvas, title, MARGIN, MARGIN)
    for c, name in enumerate(("ORIGINAL", "RECONSTRUCTION", "ERROR = RECON - ORIG")):
        draw_text(canvas, name, top - line - GAP, x0[c] + (col_w - text_width(name)) // 2)
    y = top
    for ((label, ref_slice, _), (_, rec_slice, _), (_, err_slice, _)), (h, w) in zip(rows, shapes):
        draw_text(canvas, label, y + (h - line) // 2, MARGIN)
        for c, rgb in enumerate((grey(ref_slice, lo, hi), grey(rec_slice, lo, hi), diverging(err_slice, scale))):
            left = x0[c] + (col_w - w) // 2
            canvas[y:y + h, left:left + w] = _resize(rgb, h, w)
        y += h + GAP

    # Colour bars with their end values: the shared grey scale under the first two columns, the error's own.
    ramp = np.linspace(0.0, 1.0, 2 * col_w + GAP)[None, :]
    canvas[y:y + bar, x0[0]:x0[0] + 2 * col_w + GAP] = grey(lo + ramp * (hi - lo), lo, hi)
    canvas[y:y + bar, x0[2]:x0[2] + col_w] = diverging(np.linspace(-scale, scale, col_w)[None, :], scale)
    y += bar + 4
    draw_text(canvas, f"{lo:.4g}", y, x0[0])
    draw_text(canvas, f"{hi:.4g}", y, x0[1] + col_w - text_width(f"{hi:.4g}"))
    draw_text(canvas, f"-{scale:.3g}", y, x0[2])
    draw_text(canvas, f"+{scale:.3g}", y, x0[2] + col_w - text_width(f"+{scale:.3g}"))
    return to_uint8(canvas)


def check_figure_path(path: str | os.PathLike) -> None:
    if not str(path).lower().endswith(".png"):
        raise ValueError(f"--figure {str(path)!r} must be a .png file.")


def write_comparison_figure(path: str | os.PathLike, reference: np.ndarray, reconstruction: np.ndarray,
                            geometry: ImageGeometry, title: str = "") -> None:
    """Draw :func:`comparison_figure` and write it as a PNG, atomically."""
    check_figure_path(path)
    write_png(path, comparison_figure(reference, reconstruction, geometry, title))
