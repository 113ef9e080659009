"""Transfer functions: ParaView preset JSON or point lists in, a lookup table of colour and opacity out.

A :class:`TransferFunction` holds VTK's two functions: colour points ``(x, r, g, b)`` interpolated in a colour
space (``RGB``, ``Lab``, ``Diverging``, ``HSV``, ``Step``; what ``vtkColorTransferFunction`` does) and opacity
points ``(x, alpha, midpoint, sharpness)`` (``vtkPiecewiseFunction``'s node shape). Both clamp outside their
points, as VTK does by default. Rendering never evaluates the functions per sample: :meth:`TransferFunction.table`
bakes them into a :class:`TransferTable` of ``size`` entries over one value range, and the renderer looks
values up in it. A table can also be made directly (``TransferTable(lo, hi, rgba)``), which is how the VTK
layer hands over a live ``vtkColorTransferFunction`` / ``vtkPiecewiseFunction`` exactly as VTK evaluates it.

ParaView preset files are JSON: an array of objects (or one object) with ``Name``, ``RGBPoints`` (flat
``x, r, g, b, ...``), optional ``Points`` (flat ``x, alpha, midpoint, sharpness, ...``) and ``ColorSpace``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

PRESET_DIR = Path(__file__).with_name("presets")
COLOR_SPACES = ("RGB", "LAB", "DIVERGING", "HSV", "STEP")
DEFAULT_TABLE_SIZE = 4096


# =================================================================================================
# The table the renderer uses
# =================================================================================================
class TransferTable:
    """Colour and opacity sampled at ``size`` evenly spaced values from ``lo`` to ``hi`` (both included).

    ``rgba`` is float32 ``(size, 4)``: RGB in [0, 1] and the *uncorrected* opacity (per unit distance, VTK's
    ``ScalarOpacityUnitDistance``). Lookup is nearest-entry; values outside ``[lo, hi]`` clamp to the ends.
    """

    def __init__(self, lo: float, hi: float, rgba):
        rgba = torch.as_tensor(np.asarray(rgba, dtype=np.float32)).reshape(-1, 4).clamp(0.0, 1.0).contiguous()
        if rgba.shape[0] < 2:
            raise ValueError(f"a transfer table needs at least 2 entries, got {rgba.shape[0]}.")
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
            raise ValueError(f"transfer table range must be finite with lo <= hi, got ({lo}, {hi}).")
        self.lo, self.hi, self.rgba = lo, hi, rgba
        self._range_max = None

    @property
    def size(self) -> int:
        return int(self.rgba.shape[0])

    @property
    def is_empty(self) -> bool:
        """True when every opacity is zero: nothing can ever be seen."""
        return bool((self.rgba[:, 3] <= 0).all())

    def indices(self, values: torch.Tensor) -> torch.Tensor:
        """Nearest table entry of each value (int64), clamped to the table."""
        scale = (self.size - 1) / (self.hi - self.lo) if self.hi > self.lo else 0.0
        idx = ((values.float() - self.lo) * scale + 0.5).floor_().clamp_(0, self.size - 1)
        return idx.long()

    def lookup(self, values: torch.Tensor) -> torch.Tensor:
        """``(N, 4)`` colour and uncorrected opacity at ``values``."""
        return self.rgba.to(values.device)[self.indices(values)]

    def max_opacity(self, vmin: torch.Tensor, vmax: torch.Tensor) -> torch.Tensor:
        """Largest opacity the table gives to any value in ``[vmin, vmax]`` (elementwise; for macro-cells).

        The index range is widened to every entry nearest-rounding can reach, so the bound is conservative.
        """
        if self._range_max is None:
            self._range_max = _sparse_max_table(self.rgba[:, 3])
        scale = (self.size - 1) / (self.hi - self.lo) if self.hi > self.lo else 0.0
        i0 = ((vmin.double() - self.lo) * scale).floor().clamp(0, self.size - 1).long()
        i1 = ((vmax.double() - self.lo) * scale).ceil().clamp(0, self.size - 1).long()
        i1 = torch.maximum(i0, i1)
        return _range_max(self._range_max, i0, i1)

    def __repr__(self) -> str:
        return f"TransferTable(lo={self.lo:.6g}, hi={self.hi:.6g}, size={self.size})"


def _sparse_max_table(values: torch.Tensor) -> list[torch.Tensor]:
    """Level k holds the max over windows of 2**k entries (a sparse table: O(1) range-max queries)."""
    levels = [values.clone()]
    k = 1
    while (1 << k) <= values.shape[0]:
        prev = levels[-1]
        half = 1 << (k - 1)
        levels.append(torch.maximum(prev[:-half], prev[half:]))
        k += 1
    return levels


def _range_max(levels: list[torch.Tensor], i0: torch.Tensor, i1: torch.Tensor) -> torch.Tensor:
    length = (i1 - i0 + 1).clamp(min=1)
    k = torch.floor(torch.log2(length.double())).long()
    k = torch.where((1 << (k + 1)) <= length, k + 1, k)  # guard against log2 rounding just below an integer
    k = torch.where((1 << k) > length, k - 1, k)
    out = torch.zeros(i0.shape, dtype=levels[0].dtype)
    for level in torch.unique(k).tolist():
        sel = k == level
        table = levels[level]
        a, b = i0[sel], i1[sel] - (1 << level) + 1
        out[sel] = torch.maximum(table[a], table[b])
    return out


# =================================================================================================
# The functions
# =================================================================================================
@dataclass
class TransferFunction:
    """Colour and opacity transfer functions in data units (VTK semantics; see the module docstring)."""

    color_points: np.ndarray
    """``(n, 4)`` rows ``x, r, g, b`` with x increasing and r, g, b in [0, 1]."""
    opacity_points: np.ndarray
    """``(m, 4)`` rows ``x, alpha, midpoint, sharpness`` (``(m, 2)`` input gets midpoint 0.5, sharpness 0)."""
    color_space: str = "RGB"
    """Colour interpolation: ``RGB``, ``Lab``, ``Diverging``, ``HSV`` or ``Step`` (case-insensitive)."""
    name: str = ""

    def __post_init__(self):
        self.color_points = _check_points(self.color_points, 4, "color_points", (1, 2, 3))
        op = np.asarray(self.opacity_points, dtype=np.float64)
        if op.ndim == 2 and op.shape[1] == 2:
            op = np.concatenate([op, np.tile([0.5, 0.0], (op.shape[0], 1))], axis=1)
        self.opacity_points = _check_points(op, 4, "opacity_points", (1,))
        if not ((self.opacity_points[:, 2] > 0) & (self.opacity_points[:, 2] < 1)).all():
            raise ValueError("opacity_points midpoints must lie strictly between 0 and 1.")
        space = str(self.color_space).upper()
        if space not in COLOR_SPACES:
            raise ValueError(f"color_space must be one of RGB, Lab, Diverging, HSV, Step; got {self.color_space!r}.")
        self.color_space = space

    # ---- construction --------------------------------------------------------------------------
    @classmethod
    def from_points(cls, colors: Sequence[Sequence[float]], opacities: Sequence[Sequence[float]],
                    color_space: str = "RGB") -> "TransferFunction":
        """From ``[(x, r, g, b), ...]`` and ``[(x, alpha), ...]`` or ``[(x, alpha, midpoint, sharpness), ...]``."""
        return cls(np.asarray(colors, dtype=np.float64), np.asarray(opacities, dtype=np.float64), color_space)

    @classmethod
    def from_preset(cls, preset, value_range: Sequence[float] | None = None) -> "TransferFunction":
        """From a ParaView preset: a dict, a JSON file path, or a preset name (see :func:`find_preset`).

        With ``value_range`` the preset's points are rescaled from their own span onto it (what ParaView does
        when it applies a preset to an array); otherwise they are taken as data values. A preset without
        ``Points`` gets a linear opacity ramp from 0 to 1 over the colour span (the APMGSRN convention).
        Every error names where the preset came from (the file, or the preset's name) and the offending key.
        """
        if isinstance(preset, (str, os.PathLike)):
            preset, source = _find_preset(preset)
        else:
            source = f"preset {str(preset.get('Name', '')) if isinstance(preset, dict) else ''!r}"
        if not isinstance(preset, dict):
            raise ValueError(f"a preset must be a JSON object, got {type(preset).__name__}.")
        name = str(preset.get("Name", ""))
        if "RGBPoints" not in preset:
            kind = "an indexed (categorical) preset" if "IndexedColors" in preset else "a preset without RGBPoints"
            raise ValueError(f"{source} is {kind}; volume rendering needs RGBPoints.")
        rgb = _preset_points(preset, "RGBPoints", "x, r, g, b", source)
        _check_points(rgb, 4, f"{source}: RGBPoints", (1, 2, 3))
        if "Points" in preset:
            op = _preset_points(preset, "Points", "x, alpha, midpoint, sharpness", source)
            _check_points(op, 4, f"{source}: Points", (1,))
            if not ((op[:, 2] > 0) & (op[:, 2] < 1)).all():
                raise ValueError(f"{source}: Points midpoints (every third number of x, alpha, midpoint, sharpness) "
                                 f"must lie strictly between 0 and 1, got {op[:, 2].tolist()}.")
        else:
            op = np.array([[rgb[0, 0], 0.0, 0.5, 0.0], [rgb[-1, 0], 1.0, 0.5, 0.0]])
        space = preset.get("ColorSpace", "RGB")
        if not isinstance(space, str) or space.upper() not in COLOR_SPACES:
            raise ValueError(f"{source}: ColorSpace must be one of RGB, Lab, Diverging, HSV, Step; got {space!r}.")
        if value_range is not None:
            lo, hi = (float(v) for v in value_range)
            if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
                raise ValueError(f"value_range must be finite (min, max) with min <= max, got {tuple(value_range)}.")
            src_lo, src_hi = rgb[0, 0], rgb[-1, 0]
            span = src_hi - src_lo if src_hi > src_lo else 1.0
            rgb = rgb.copy()
            op = op.copy()
            rgb[:, 0] = lo + (rgb[:, 0] - src_lo) / span * (hi - lo)
            op[:, 0] = lo + (op[:, 0] - src_lo) / span * (hi - lo)
        try:
            return cls(rgb, op, space, name)
        except ValueError as exc:  # what is left (midpoints, points that overflow when rescaled)
            raise ValueError(f"{source}: {exc}") from None

    def to_preset(self) -> dict:
        """This function as a ParaView preset object (absolute values)."""
        return {"Name": self.name or "custom", "ColorSpace": _PRESET_SPACE_NAMES[self.color_space],
                "RGBPoints": self.color_points.reshape(-1).tolist(), "Points": self.opacity_points.reshape(-1).tolist()}

    # ---- evaluation ----------------------------------------------------------------------------
    @property
    def range(self) -> tuple[float, float]:
        """The span of all points (colour and opacity)."""
        xs = np.concatenate([self.color_points[:, 0], self.opacity_points[:, 0]])
        return float(xs.min()), float(xs.max())

    def colors(self, x: np.ndarray) -> np.ndarray:
        """RGB ``(N, 3)`` at data values ``x`` (clamped outside the points)."""
        return _interpolate_colors(self.color_points, np.asarray(x, dtype=np.float64), self.color_space)

    def opacities(self, x: np.ndarray) -> np.ndarray:
        """Opacity ``(N,)`` at data values ``x`` (clamped outside the points)."""
        return _interpolate_opacity(self.opacity_points, np.asarray(x, dtype=np.float64))

    def table(self, size: int = DEFAULT_TABLE_SIZE, value_range: Sequence[float] | None = None) -> TransferTable:
        """The functions sampled at ``size`` values spanning ``value_range`` (default: all points)."""
        if int(size) != size or size < 2:
            raise ValueError(f"table size must be an integer of at least 2, got {size!r}.")
        lo, hi = self.range if value_range is None else (float(value_range[0]), float(value_range[1]))
        x = np.linspace(lo, hi, int(size))
        rgba = np.concatenate([self.colors(x), self.opacities(x)[:, None]], axis=1)
        return TransferTable(lo, hi, rgba)


_PRESET_SPACE_NAMES = {"RGB": "RGB", "LAB": "Lab", "DIVERGING": "Diverging", "HSV": "HSV", "STEP": "Step"}


_JSON_TYPES = {dict: "object", str: "string", bool: "boolean", type(None): "null", int: "number", float: "number",
               list: "array"}


def _json_type(value) -> str:
    return "JSON " + _JSON_TYPES.get(type(value), type(value).__name__)


def _preset_points(preset: dict, key: str, row: str, source: str) -> np.ndarray:
    """``preset[key]``, a flat list of numbers ``row, row, ...``, as float64 rows of 4; one clear error otherwise."""
    value = preset[key]
    if isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
        value = value.reshape(-1).tolist()
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{source}: {key} must be a flat list of numbers ({row}, ...), got a {_json_type(value)}.")
    for i, v in enumerate(value):
        # bool is an int in Python, but true/false in a preset is a mistake, not a 1 or a 0
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ValueError(f"{source}: {key} must be a flat list of numbers ({row}, ...); the value at position "
                             f"{i} is a {_json_type(v)}.")
    if len(value) < 4 or len(value) % 4:
        raise ValueError(f"{source}: {key} must hold {row} quadruples, got {len(value)} numbers.")
    return np.asarray(value, dtype=np.float64).reshape(-1, 4)


def _check_points(points, width: int, name: str, unit_columns) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != width or p.shape[0] < 1:
        raise ValueError(f"{name} must be a list of rows of {width} numbers, got an array of shape {p.shape}.")
    if not np.isfinite(p).all():
        raise ValueError(f"{name} must be finite numbers.")
    if (np.diff(p[:, 0]) < 0).any():
        raise ValueError(f"{name} x values must be non-decreasing, got {p[:, 0].tolist()}.")
    cols = p[:, list(unit_columns)]
    if (cols < 0).any() or (cols > 1).any():
        raise ValueError(f"{name} colour/opacity values must lie in [0, 1].")
    return p


def _segments(xs: np.ndarray, x: np.ndarray):
    """For each x: left node index and position ``s`` in [0, 1] inside its segment (clamped outside)."""
    n = len(xs)
    if n == 1:
        return np.zeros(len(x), dtype=np.int64), np.zeros(len(x))
    i = np.clip(np.searchsorted(xs, x, side="right") - 1, 0, n - 2)
    width = xs[i + 1] - xs[i]
    s = np.where(width > 0, (x - xs[i]) / np.where(width > 0, width, 1.0), 1.0)
    return i, np.clip(s, 0.0, 1.0)


def _interpolate_opacity(points: np.ndarray, x: np.ndarray) -> np.ndarray:
    """vtkPiecewiseFunction's interpolation: midpoint shifts the half-way point, sharpness bends toward a step."""
    i, s = _segments(points[:, 0], x)
    v1 = points[i, 1]
    v2 = points[np.minimum(i + 1, len(points) - 1), 1]
    mid, sharp = points[i, 2], points[i, 3]
    s = np.where(s < mid, 0.5 * s / mid, 0.5 + 0.5 * (s - mid) / (1.0 - mid))
    linear = (1 - s) * v1 + s * v2
    # Hermite blend between the two values, tangents shrunk by the sharpness. VTK takes this path for every
    # sharpness of at least 0.01 (above 0.99 it is all but a step), and so do we.
    e = 1.0 + 10.0 * sharp
    with np.errstate(invalid="ignore"):
        sh = np.where(s < 0.5, 0.5 * np.power(np.maximum(s * 2, 0), e),
                      np.where(s > 0.5, 1.0 - 0.5 * np.power(np.maximum((1 - s) * 2, 0), e), s))
    ss, sss = sh * sh, sh * sh * sh
    t = (1.0 - sharp) * (v2 - v1)
    hermite = (2 * sss - 3 * ss + 1) * v1 + (-2 * sss + 3 * ss) * v2 + (sss - 2 * ss + sh) * t + (sss - ss) * t
    hermite = np.clip(hermite, np.minimum(v1, v2), np.maximum(v1, v2))
    out = np.where(sharp < 0.01, linear, hermite)
    return np.clip(out, 0.0, 1.0)


def _interpolate_colors(points: np.ndarray, x: np.ndarray, space: str) -> np.ndarray:
    i, s = _segments(points[:, 0], x)
    c1 = points[i, 1:4]
    c2 = points[np.minimum(i + 1, len(points) - 1), 1:4]
    s = s[:, None]
    if space == "RGB":
        out = (1 - s) * c1 + s * c2
    elif space == "STEP":
        out = np.where(s > 0.0, c2, c1)  # a node's colour holds from just after the previous node up to it
    elif space == "LAB":
        out = _lab_to_rgb((1 - s) * _rgb_to_lab(c1) + s * _rgb_to_lab(c2))
    elif space == "HSV":
        h1, h2 = _rgb_to_hsv(c1), _rgb_to_hsv(c2)
        dh = h2[:, 0] - h1[:, 0]
        dh = np.where(dh > 0.5, dh - 1.0, np.where(dh < -0.5, dh + 1.0, dh))  # the shorter way round
        hsv = (1 - s) * h1 + s * h2
        hsv[:, 0] = np.mod(h1[:, 0] + s[:, 0] * dh, 1.0)
        out = _hsv_to_rgb(hsv)
    else:  # DIVERGING
        out = _interpolate_diverging(c1, c2, s[:, 0])
    return np.clip(out, 0.0, 1.0)


# ---- colour spaces (sRGB, CIE Lab with D65 white, Moreland's Msh) ----------------------------------
_WHITE = np.array([0.9505, 1.0, 1.089])
_RGB2XYZ = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
_XYZ2RGB = np.array([[3.2406, -1.5372, -0.4986], [-0.9689, 1.8758, 0.0415], [0.0557, -0.2040, 1.0570]])


def _rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    t = (lin @ _RGB2XYZ.T) / _WHITE
    f = np.where(t > 0.008856, np.cbrt(t), 7.787 * t + 16.0 / 116.0)
    return np.stack([116.0 * f[:, 1] - 16.0, 500.0 * (f[:, 0] - f[:, 1]), 200.0 * (f[:, 1] - f[:, 2])], axis=1)


def _lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[:, 0] + 16.0) / 116.0
    f = np.stack([lab[:, 1] / 500.0 + fy, fy, fy - lab[:, 2] / 200.0], axis=1)
    t = np.where(f ** 3 > 0.008856, f ** 3, (f - 16.0 / 116.0) / 7.787)
    lin = (t * _WHITE) @ _XYZ2RGB.T
    rgb = np.where(lin > 0.0031308, 1.055 * np.power(np.maximum(lin, 0), 1 / 2.4) - 0.055, 12.92 * lin)
    rgb = np.maximum(rgb, 0.0)
    peak = rgb.max(axis=1, keepdims=True)
    return np.where(peak > 1.0, rgb / np.where(peak > 1.0, peak, 1.0), rgb)  # out of gamut: scale, keep hue


def _lab_to_msh(lab):
    m = np.linalg.norm(lab, axis=1)
    s = np.where(m > 0.001, np.arccos(np.clip(lab[:, 0] / np.where(m > 0.001, m, 1.0), -1, 1)), 0.0)
    h = np.where(s > 0.001, np.arctan2(lab[:, 2], lab[:, 1]), 0.0)
    return np.stack([m, s, h], axis=1)


def _msh_to_lab(msh):
    m, s, h = msh[:, 0], msh[:, 1], msh[:, 2]
    return np.stack([m * np.cos(s), m * np.sin(s) * np.cos(h), m * np.sin(s) * np.sin(h)], axis=1)


def _signed_angle_diff(a, b):
    """``a - b`` folded into [-pi, pi] the way VTK (>= 9.6) folds hue differences."""
    d = a - b
    pos = np.mod(d, 2 * np.pi)
    pos = np.where(pos > np.pi, 2 * np.pi - pos, pos)
    neg = -np.mod(-d, 2 * np.pi)
    neg = np.where(neg < -np.pi, neg + 2 * np.pi, neg)
    return np.where(d >= 0, pos, neg)


def _adjust_hue(msh, unsat_m):
    """Hue for an unsaturated end so the path spins away from it (Moreland 2009, as VTK does it)."""
    m, s, h = msh[:, 0], msh[:, 1], msh[:, 2]
    with np.errstate(invalid="ignore", divide="ignore"):
        spin = s * np.sqrt(np.maximum(unsat_m ** 2 - m ** 2, 0)) / (m * np.sin(s))
    spin = np.nan_to_num(spin)
    return np.where(m >= unsat_m - 0.1, h, np.where(h > -0.3 * np.pi, h + spin, h - spin))


def _interpolate_diverging(c1, c2, s):
    """Moreland's diverging interpolation in Msh space, through white when the ends differ in hue.

    Hue moves along the shorter way round, as in VTK 9.6 and later (older VTK, e.g. ParaView 5.11's, interpolates
    the hue angle linearly; the two agree unless neighbouring colours straddle the -pi/pi cut).
    """
    a, b = _lab_to_msh(_rgb_to_lab(c1)), _lab_to_msh(_rgb_to_lab(c2))
    split = (a[:, 1] > 0.05) & (b[:, 1] > 0.05) & (np.abs(_signed_angle_diff(a[:, 2], b[:, 2])) > 0.33 * np.pi)
    mid_m = np.maximum(np.maximum(a[:, 0], b[:, 0]), 88.0)
    white = np.stack([mid_m, np.zeros_like(mid_m), np.zeros_like(mid_m)], axis=1)
    first = split & (s < 0.5)
    second = split & ~(s < 0.5)
    b = np.where(first[:, None], white, b)
    a = np.where(second[:, None], white, a)
    s = np.where(first, 2 * s, np.where(second, 2 * s - 1, s))
    a_unsat, b_unsat = (a[:, 1] < 0.05) & (b[:, 1] > 0.05), (b[:, 1] < 0.05) & (a[:, 1] > 0.05)
    a[:, 2] = np.where(a_unsat, _adjust_hue(b, a[:, 0]), a[:, 2])
    b[:, 2] = np.where(b_unsat, _adjust_hue(a, b[:, 0]), b[:, 2])
    msh = (1 - s)[:, None] * a + s[:, None] * b
    msh[:, 2] = a[:, 2] + s * _signed_angle_diff(b[:, 2], a[:, 2])
    return _lab_to_rgb(_msh_to_lab(msh))


def _rgb_to_hsv(rgb):
    mx, mn = rgb.max(axis=1), rgb.min(axis=1)
    d = mx - mn
    safe = np.where(d > 0, d, 1.0)
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    h = np.where(mx == r, (g - b) / safe, np.where(mx == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = np.where(d > 0, np.mod(h / 6.0, 1.0), 0.0)
    s = np.where(mx > 0, d / np.where(mx > 0, mx, 1.0), 0.0)
    return np.stack([h, s, mx], axis=1)


def _hsv_to_rgb(hsv):
    h, s, v = hsv[:, 0] * 6.0, hsv[:, 1], hsv[:, 2]
    i = np.floor(h).astype(np.int64) % 6
    f = h - np.floor(h)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    table = np.stack([np.stack([v, t, p], 1), np.stack([q, v, p], 1), np.stack([p, v, t], 1),
                      np.stack([p, q, v], 1), np.stack([t, p, v], 1), np.stack([v, p, q], 1)], axis=0)
    return table[i, np.arange(len(h))]


# =================================================================================================
# Presets
# =================================================================================================
def preset_names() -> list[str]:
    """Names of the presets shipped with the renderer."""
    names = []
    for path in sorted(PRESET_DIR.glob("*.json")):
        names += [p.get("Name", path.stem) for p in _read_preset_file(path)]
    return names


def find_preset(name_or_path: str | os.PathLike) -> dict:
    """A preset object by file path (first entry, or the one whose ``Name`` matches) or by shipped name.

    Names match case-insensitively, ignoring spaces, hyphens and underscores (``cool-to-warm`` finds
    ``Cool to Warm``). ParaView's own ~200 presets are compiled into its libraries, not installed as files:
    export one from ParaView's *Choose Preset* dialog and pass the file.
    """
    return _find_preset(name_or_path)[0]


def _find_preset(name_or_path: str | os.PathLike) -> tuple[dict, str]:
    """:func:`find_preset`, and where the preset came from (for error messages)."""
    text = str(name_or_path)
    path = Path(text)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"transfer function file {text!r} does not exist.")
        if not path.is_file():
            raise ValueError(f"transfer function file {text!r} is not a file.")
        presets = _read_preset_file(path)
        if not presets:
            raise ValueError(f"transfer function file {text!r} holds no preset.")
        return presets[0], f"transfer function file {text!r}"
    key = _name_key(text)
    for file in sorted(PRESET_DIR.glob("*.json")):
        for preset in _read_preset_file(file):
            if _name_key(preset.get("Name", file.stem)) == key or _name_key(file.stem) == key:
                return preset, f"preset {str(preset.get('Name', file.stem))!r}"
    raise ValueError(f"unknown preset {text!r}; shipped presets are {preset_names()} (or pass a preset .json file).")


def _name_key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _read_preset_file(path: Path) -> list[dict]:
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"transfer function file {str(path)!r} is not UTF-8 text (a preset is JSON).") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"transfer function file {str(path)!r} is not valid JSON ({exc.msg}, line {exc.lineno}).") \
            from None
    except RecursionError:
        raise ValueError(f"transfer function file {str(path)!r} is nested too deeply to be a preset.") from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list) or not all(isinstance(p, dict) for p in data):
        raise ValueError(f"transfer function file {str(path)!r} must hold a preset object or an array of them.")
    return data
