"""Rendered images: composite over a background, convert to 8-bit, write PNG (zlib only), compare two images."""

from __future__ import annotations

import os
import struct
import zlib
from typing import Sequence

import numpy as np
import torch

from ..modelfile import atomic_write


def over_background(image, background: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Premultiplied RGBA ``(H, W, 4)`` composited over an opaque ``background`` colour: float RGB ``(H, W, 3)``."""
    img = torch.as_tensor(image).float().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3)
    if img.ndim != 3 or img.shape[2] != 4:
        raise ValueError(f"image must be (height, width, 4) premultiplied RGBA, got shape {img.shape}.")
    return img[..., :3] + (1.0 - img[..., 3:4]) * bg


def to_uint8(rgb: np.ndarray) -> np.ndarray:
    """Float colours in [0, 1] to 8-bit (rounded, clamped)."""
    return np.clip(np.rint(np.asarray(rgb, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)


def write_png(path: str | os.PathLike, pixels: np.ndarray) -> None:
    """Write 8-bit ``(H, W, 3)`` RGB or ``(H, W, 4)`` RGBA pixels (row 0 at the top) as a PNG, atomically."""
    px = np.ascontiguousarray(pixels)
    if px.dtype != np.uint8 or px.ndim != 3 or px.shape[2] not in (3, 4):
        raise ValueError(f"PNG pixels must be uint8 (height, width, 3 or 4), got {px.dtype} {px.shape}.")
    h, w, c = px.shape
    raw = np.concatenate([np.zeros((h, 1), np.uint8), px.reshape(h, w * c)], axis=1).tobytes()  # filter 0 rows

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", w, h, 8, 6 if c == 4 else 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def image_psnr(a: np.ndarray, b: np.ndarray, peak: float | None = None) -> float:
    """PSNR (dB) between two images of equal shape; ``peak`` defaults to 255 for uint8 and 1 for floats."""
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}.")
    if peak is None:
        peak = 255.0 if a.dtype == np.uint8 else 1.0
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak * peak / mse)


def rms_difference(a: np.ndarray, b: np.ndarray) -> float:
    """Root-mean-square difference of two images (in their own units)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}.")
    return float(np.sqrt(np.mean((a - b) ** 2)))
