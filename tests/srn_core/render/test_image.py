"""srn_core.render.image: the PNG writer round-trips its pixels."""

from __future__ import annotations

import struct
import zlib

import numpy as np

from srn_core.render.image import write_png


def test_png_writer_round_trip(tmp_path):
    px = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = tmp_path / "x.png"
    write_png(path, px)
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    w, h = struct.unpack(">II", blob[16:24])
    start = blob.index(b"IDAT") + 4
    (n,) = struct.unpack(">I", blob[start - 8:start - 4])
    raw = np.frombuffer(zlib.decompress(blob[start:start + n]), np.uint8).reshape(h, 1 + 3 * w)
    assert (w, h) == (7, 5) and not raw[:, 0].any()
    assert np.array_equal(raw[:, 1:].reshape(5, 7, 3), px)
