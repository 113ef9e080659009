"""A pinhole / parallel camera with VTK's conventions, and the rays it shoots through pixel centres.

``position``, ``focal_point``, ``view_up``, ``view_angle`` (vertical, degrees) and ``parallel_projection`` /
``parallel_scale`` (half the view height in world units) mean exactly what they mean on a ``vtkCamera``, so a
VTK or ParaView camera copies over field by field. :meth:`Camera.reset` / :meth:`azimuth` / :meth:`elevation` /
:meth:`zoom` reproduce ``vtkRenderer.ResetCamera`` and the ``vtkCamera`` motions of the same names, which is
what the CLI's ``--azimuth/--elevation/--zoom`` mean.

Images are row-major with row 0 at the top (like a PNG); VTK's display coordinates have row 0 at the bottom,
and the VTK layer flips when it exchanges images with a render window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch

from ..geometry import check_bounds


@dataclass(frozen=True)
class Camera:
    """A VTK-style camera (all lengths in world units)."""

    position: tuple[float, float, float] = (0.0, 0.0, 1.0)
    """Eye position."""
    focal_point: tuple[float, float, float] = (0.0, 0.0, 0.0)
    """The point looked at; ``focal_point - position`` is the direction of projection."""
    view_up: tuple[float, float, float] = (0.0, 1.0, 0.0)
    """Up direction; only its part orthogonal to the direction of projection matters."""
    view_angle: float = 30.0
    """Vertical field of view in degrees (perspective projection), VTK's default 30."""
    parallel_projection: bool = False
    """Orthographic projection when true."""
    parallel_scale: float = 1.0
    """Half the height of the view in world units (parallel projection)."""

    def __post_init__(self):
        for name in ("position", "focal_point", "view_up"):
            v = tuple(float(x) for x in getattr(self, name))
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise ValueError(f"camera {name} must be three finite numbers, got {getattr(self, name)!r}.")
            object.__setattr__(self, name, v)
        if not (0.0 < float(self.view_angle) < 180.0):
            raise ValueError(f"camera view_angle must be in (0, 180) degrees, got {self.view_angle!r}.")
        if not (float(self.parallel_scale) > 0.0):
            raise ValueError(f"camera parallel_scale must be positive, got {self.parallel_scale!r}.")
        object.__setattr__(self, "view_angle", float(self.view_angle))
        object.__setattr__(self, "parallel_scale", float(self.parallel_scale))
        object.__setattr__(self, "parallel_projection", bool(self.parallel_projection))
        d = _sub(self.focal_point, self.position)
        if _norm(d) == 0.0:
            raise ValueError(f"camera position and focal_point coincide at {self.position}.")
        if _norm(_cross(d, self.view_up)) <= 1e-12 * _norm(d) * max(_norm(self.view_up), 1e-300):
            raise ValueError(f"camera view_up {self.view_up} is parallel to the direction of projection {d}.")

    # ---- frame ---------------------------------------------------------------------------------
    def frame(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """Unit vectors ``(right, up, forward)``: forward points from the eye to the focal point."""
        forward = _unit(_sub(self.focal_point, self.position))
        right = _unit(_cross(forward, self.view_up))
        up = _cross(right, forward)
        return right, up, forward

    @property
    def distance(self) -> float:
        return _norm(_sub(self.focal_point, self.position))

    # ---- VTK motions ---------------------------------------------------------------------------
    @classmethod
    def reset(cls, bounds: Sequence[float], view_angle: float = 30.0, direction: Sequence[float] = (0.0, 0.0, -1.0),
              view_up: Sequence[float] = (0.0, 1.0, 0.0), parallel_projection: bool = False) -> "Camera":
        """What ``vtkRenderer.ResetCamera(bounds)`` gives: the focal point at the centre, the bounding sphere in view.

        ``direction`` is the direction of projection (VTK's default camera looks down ``-z`` with ``+y`` up).
        """
        b = check_bounds(bounds)
        center = tuple((b[2 * a] + b[2 * a + 1]) / 2 for a in range(3))
        radius = 0.5 * math.sqrt(sum((b[2 * a + 1] - b[2 * a]) ** 2 for a in range(3)))
        radius = radius if radius > 0 else 1.0
        distance = radius / math.sin(math.radians(view_angle) / 2)
        d = _unit(tuple(float(x) for x in direction))
        position = tuple(center[a] - distance * d[a] for a in range(3))
        return cls(position, center, tuple(view_up), view_angle, parallel_projection, radius)

    def azimuth(self, degrees: float) -> "Camera":
        """Rotate the eye about the view-up vector through the focal point (``vtkCamera.Azimuth``)."""
        pos = _rotate_about(self.position, self.focal_point, self.view_up, degrees)
        return replace(self, position=pos)

    def elevation(self, degrees: float) -> "Camera":
        """Rotate the eye about the camera's right axis through the focal point (``vtkCamera.Elevation``),
        then make the view up orthogonal again (``OrthogonalizeViewUp``) so it stays valid past 90 degrees."""
        right, up, _ = self.frame()
        pos = _rotate_about(self.position, self.focal_point, tuple(-x for x in right), degrees)
        moved = replace(self, position=pos, view_up=_rotate_about(up, (0.0, 0.0, 0.0), tuple(-x for x in right), degrees))
        return moved

    def zoom(self, factor: float) -> "Camera":
        """Narrow the view by ``factor`` (``vtkCamera.Zoom``: view angle, or parallel scale, divided by it)."""
        if not (factor > 0):
            raise ValueError(f"zoom factor must be positive, got {factor!r}.")
        if self.parallel_projection:
            return replace(self, parallel_scale=self.parallel_scale / factor)
        return replace(self, view_angle=self.view_angle / factor)

    # ---- rays ----------------------------------------------------------------------------------
    def rays(self, width: int, height: int, pixels: torch.Tensor | None = None,
             dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space rays ``(origins (N, 3), unit directions (N, 3))`` through pixel centres.

        ``pixels`` (int64, flat indices ``row * width + col`` with row 0 at the top) selects a subset; by
        default every pixel, row-major. Perspective rays start at the eye; parallel rays start on the plane
        through the eye, so the ray parameter is the distance in front of the camera in both projections.
        """
        width, height = check_size(width, height)
        if pixels is None:
            pixels = torch.arange(width * height, dtype=torch.int64)
        col = (pixels % width).to(torch.float64)
        row = (pixels // width).to(torch.float64)
        # Normalised device coordinates of pixel centres; row 0 is the top of the image (+y).
        x = (col + 0.5) * (2.0 / width) - 1.0
        y = 1.0 - (row + 0.5) * (2.0 / height)
        aspect = width / height
        right, up, forward = (torch.tensor(v, dtype=torch.float64) for v in self.frame())
        eye = torch.tensor(self.position, dtype=torch.float64)
        if self.parallel_projection:
            s = self.parallel_scale
            origins = eye + (x * s * aspect)[:, None] * right + (y * s)[:, None] * up
            dirs = forward.expand(origins.shape[0], 3)
        else:
            h = math.tan(math.radians(self.view_angle) / 2)
            dirs = forward + (x * h * aspect)[:, None] * right + (y * h)[:, None] * up
            dirs = dirs / dirs.norm(dim=1, keepdim=True)
            origins = eye.expand(dirs.shape[0], 3)
        return origins.to(dtype).contiguous(), dirs.to(dtype).contiguous()

    def to_dict(self) -> dict:
        return {"position": list(self.position), "focal_point": list(self.focal_point), "view_up": list(self.view_up),
                "view_angle": self.view_angle, "parallel_projection": self.parallel_projection,
                "parallel_scale": self.parallel_scale}


def check_size(width, height) -> tuple[int, int]:
    """Validate an image size in pixels."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise ValueError(f"image size must be two positive integers, got {(width, height)!r}.") from None
    if w < 1 or h < 1 or w != width or h != height:
        raise ValueError(f"image size must be two positive integers, got {(width, height)!r}.")
    return w, h


# ---- small vector helpers on tuples (cameras are a handful of numbers; no tensors needed) ------------
def _sub(a, b):
    return tuple(float(x) - float(y) for x, y in zip(a, b))


def _norm(a) -> float:
    return math.sqrt(sum(x * x for x in a))


def _unit(a):
    n = _norm(a)
    if n == 0.0:
        raise ValueError(f"cannot normalise the zero vector {tuple(a)}.")
    return tuple(x / n for x in a)


def _cross(a, b):
    return (a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0])


def _rotate_about(point, center, axis, degrees):
    """Rotate ``point`` about the line through ``center`` along ``axis`` (right-hand rule, like RotateWXYZ)."""
    k = _unit(axis)
    v = _sub(point, center)
    c, s = math.cos(math.radians(degrees)), math.sin(math.radians(degrees))
    kv = sum(ki * vi for ki, vi in zip(k, v))
    kxv = _cross(k, v)
    r = tuple(v[i] * c + kxv[i] * s + k[i] * kv * (1 - c) for i in range(3))
    return tuple(float(center[i]) + r[i] for i in range(3))
