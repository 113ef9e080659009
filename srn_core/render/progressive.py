"""Progressive refinement: a coarse image first, then an image hierarchy that reuses every ray already cast.

Level ``s`` (a power of two, coarsest first) casts the rays of the pixels whose row and column are multiples of
``s`` that no coarser level has cast; the preview fills the other pixels by bilinear interpolation of that
stride-``s`` grid. The last level (``s = 1``) completes the exact image, so the total work is one full render
split into passes whose first is ``1/s^2`` of it: what makes a CPU renderer usable while the camera moves.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F

from .camera import Camera, check_size
from .raymarch import Renderer, RenderStats


@dataclass
class ProgressiveFrame:
    """One step of a progressive render."""

    image: torch.Tensor
    """``(height, width, 4)`` premultiplied RGBA: exact where rays were cast, interpolated elsewhere."""
    stride: int
    """Pixel spacing of the rays cast so far (1: the image is complete and exact)."""
    seconds: float
    """Time since the progressive render started."""
    stats: RenderStats
    """Work done so far (cumulative)."""

    @property
    def final(self) -> bool:
        return self.stride == 1


def progressive_render(renderer: Renderer, camera: Camera, tf, width: int, height: int, start_stride: int = 8,
                       depth: torch.Tensor | None = None) -> Iterator[ProgressiveFrame]:
    """Yield a :class:`ProgressiveFrame` per level, strides ``start_stride, start_stride / 2, ..., 1``.

    ``start_stride`` must be a power of two. ``depth`` is as in :meth:`Renderer.render`.
    """
    width, height = check_size(width, height)
    if int(start_stride) != start_stride or start_stride < 1 or (int(start_stride) & (int(start_stride) - 1)):
        raise ValueError(f"start_stride must be a power of two (1, 2, 4, ...), got {start_stride!r}.")
    start = time.perf_counter()
    table = renderer.table(tf)  # build once for every level
    t_max = None
    if depth is not None:
        depth = torch.as_tensor(depth, dtype=torch.float32)
        if tuple(depth.shape) != (height, width):
            raise ValueError(f"depth must be shaped (height, width) = {(height, width)}, got {tuple(depth.shape)}.")
        t_max = depth.reshape(-1)
    image = torch.zeros(height * width, 4)
    rows = torch.arange(height)[:, None]
    cols = torch.arange(width)[None, :]
    total = RenderStats()
    stride = int(start_stride)
    while stride >= 1:
        on_level = (rows % stride == 0) & (cols % stride == 0)
        if stride < start_stride:
            coarser = 2 * stride
            on_level &= ~((rows % coarser == 0) & (cols % coarser == 0))
        pixels = torch.nonzero(on_level.reshape(-1)).reshape(-1)
        origins, dirs = camera.rays(width, height, pixels)
        rgba, stats = renderer.render_rays(origins, dirs, table, None if t_max is None else t_max[pixels])
        image[pixels] = rgba
        total.add(stats)
        full = image.reshape(height, width, 4)
        preview = full if stride == 1 else _fill_from_grid(full, stride)
        total.seconds = time.perf_counter() - start
        yield ProgressiveFrame(preview, stride, total.seconds, dataclasses.replace(total))
        stride //= 2


def _fill_from_grid(image: torch.Tensor, stride: int) -> torch.Tensor:
    """Bilinear interpolation of the pixels on the stride grid (rows and columns multiples of ``stride``)."""
    height, width = image.shape[:2]
    coarse = image[::stride, ::stride]  # (hc, wc, 4); coarse (i, j) is fine (i*stride, j*stride)
    hc, wc = coarse.shape[:2]
    ys = torch.arange(height, dtype=torch.float32) / stride
    xs = torch.arange(width, dtype=torch.float32) / stride
    gy = ys / max(hc - 1, 1) * 2 - 1 if hc > 1 else torch.zeros_like(ys)
    gx = xs / max(wc - 1, 1) * 2 - 1 if wc > 1 else torch.zeros_like(xs)
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)[None]  # (1, H, W, 2) as (x, y)
    src = coarse.permute(2, 0, 1)[None]
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0].permute(1, 2, 0).contiguous()
