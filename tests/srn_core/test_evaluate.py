"""srn_core.evaluate: chunked evaluation, sub-extents, outside policies, bounded memory."""


import numpy as np
import pytest
import torch

from core_samples import small_model
from srn_core.evaluate import evaluate, evaluate_image, image_chunks
from srn_core.geometry import ImageGeometry


# ---- evaluation ----------------------------------------------------------------------------------

def test_chunked_evaluation_equals_unchunked():
    model = small_model()
    pts = torch.rand(5000, 3) * 2 - 1
    with torch.inference_mode():
        whole = model.field(pts)
    # Equal up to float32 rounding: BLAS blocks a matrix product differently for different batch sizes.
    for chunk in (1, 7, 999, 4096, 10_000):
        assert (evaluate(model.field, pts, chunk) - whole).abs().max() < 1e-5  # range 4: 2.5e-6 relative
    image = model.resample(chunk_size=1 << 20)
    for chunk in (1000, 333):
        assert np.abs(model.resample(chunk_size=chunk) - image).max() < 1e-5


def test_resampled_sub_extents_equal_crops_of_the_whole():
    model = small_model()
    g = model.geometry
    whole = model.resample(g)
    assert whole.shape == (12, 16, 20) and whole.dtype == np.float32
    for e in [(0, 19, 0, 15, 0, 11), (3, 9, 0, 15, 2, 2), (19, 19, 5, 6, 0, 11), (0, 9, 8, 15, 6, 11)]:
        piece = model.resample(g, extent=e, chunk_size=97)
        assert piece.shape == (e[5] - e[4] + 1, e[3] - e[2] + 1, e[1] - e[0] + 1)
        assert np.abs(piece - whole[e[4]:e[5] + 1, e[2]:e[3] + 1, e[0]:e[1] + 1]).max() < 1e-5, e
    # The same points asked for through a different geometry (a sub-box at the same spacing) agree too.
    sub = g.sub_geometry((3, 9, 0, 15, 2, 2))
    assert np.allclose(model.resample(sub), whole[2:3, :, 3:10], atol=1e-6)


def test_resample_any_resolution_and_outside_policies():
    model = small_model()
    b = model.bounds
    # A finer grid over the same box: its corner points are the model's corner points.
    fine = model.resample(ImageGeometry.from_bounds(b, (39, 31, 23)))
    coarse = model.resample()
    assert np.allclose(fine[::2, ::2, ::2], coarse, atol=1e-5)
    # A box twice as wide as the model: outside points follow the policy.
    wide = (b[0] - 10, b[1], b[2], b[3], b[4], b[5])
    geo = ImageGeometry.from_bounds(wide, (41, 16, 12))
    inside = geo.dims[0] - 20  # points with x >= b[0]
    nan = model.resample(geo, outside="nan")
    assert np.isnan(nan[:, :, :inside - 1]).all() and np.isfinite(nan[:, :, inside:]).all()
    fill = model.resample(geo, outside="fill", fill_value=-7.0)
    assert (fill[:, :, :inside - 1] == -7.0).all()
    clamp = model.resample(geo)
    assert np.allclose(clamp[:, :, 0], coarse[:, :, 0], atol=1e-6)  # border extension
    with pytest.raises(ValueError, match="outside must be one of"):
        model.resample(geo, outside="wrap")
    with pytest.raises(ValueError, match="chunk_size must be a positive integer, got 0"):
        model.resample(chunk_size=0)


def test_evaluate_image_peak_memory_is_bounded_by_the_chunk_size():
    # The chunked path never materialises all points: a 200^3 image with chunk 4096 allocates only the
    # output array plus small chunks (tracked by the points generated per call).
    calls = []
    def field(p):
        calls.append(p.shape[0])
        return p[:, 0]
    g = ImageGeometry((200, 200, 200))
    out = evaluate_image(field, g, g.bounds, chunk_size=4096)
    assert max(calls) == 4096 and sum(calls) == 200 ** 3
    assert out[0, 0, 199] == 1.0 and out[5, 7, 0] == -1.0


def test_image_chunks_stream_the_image_in_flat_order():
    """The pieces a streaming writer stores: at most chunk_size points each, concatenating to the image."""
    model = small_model()
    g = model.geometry
    chunks = []
    for c in image_chunks(model.field, g, model.bounds, chunk_size=500):
        assert not torch.is_inference_mode_enabled()  # the mode stays inside each piece, not in the consumer
        chunks.append(c)
    assert [c.shape[0] for c in chunks] == [500] * 7 + [g.num_points - 3500]
    assert all(c.dtype == torch.float32 for c in chunks)
    whole = torch.cat(chunks).numpy().reshape(g.shape)
    assert np.abs(whole - model.resample()).max() < 1e-5
    piece = list(image_chunks(model.field, g, model.bounds, extent=(3, 9, 0, 15, 2, 2), chunk_size=50))
    assert np.array_equal(torch.cat(piece).numpy(), model.resample(extent=(3, 9, 0, 15, 2, 2)).reshape(-1))
