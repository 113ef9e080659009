"""Compressed model files: quantization bounds, bit packing, file ratios and damaged quantization metadata."""

import json
import os
import struct

import numpy as np
import pytest
import torch

from core_samples import small_model
from srn_core.compression import (Compression, dequantize, estimated_file_bytes, fake_quantize, pack_codes,
                                  parameters_for_file_size, quantize, tensor_roles, unpack_codes)
from srn_core.fields import field_for_budget
from srn_core.loading import load_model
from srn_core.modelfile import ModelFileError


@pytest.mark.parametrize("bits", [4, 5, 6, 8, 10, 12, 16])
def test_quantize_round_trip_is_within_half_a_step(bits):
    torch.manual_seed(bits)
    x = torch.randn(6, 3, 7, 5, 4) * torch.linspace(0.1, 10, 6)[:, None, None, None, None] + 3.0
    codes, offset, scale = quantize(x, bits, channels=18)
    assert int(codes.min()) >= 0 and int(codes.max()) <= 2 ** bits - 1
    flat = x.reshape(18, -1).double()
    # The analytic bound: each channel's range over 2**bits - 1 steps, half a step at most.
    step = (flat.max(1).values - flat.min(1).values) / (2 ** bits - 1)
    assert torch.allclose(scale.double(), step, rtol=1e-6)
    y = dequantize(codes, offset, scale, x.shape).reshape(18, -1).double()
    error = (y - flat).abs().max(1).values
    assert bool((error <= step / 2 * (1 + 1e-5) + 1e-6 * flat.abs().max(1).values).all())
    # The extremes are kept (codes 0 and 2**bits - 1 land on min and max).
    assert torch.allclose(y.min(1).values, flat.min(1).values, rtol=0, atol=1e-5)


def test_a_constant_channel_is_exact():
    x = torch.full((2, 1, 3, 3, 3), 2.5)
    x[1] = -7.0
    codes, offset, scale = quantize(x, 8, channels=2)
    assert scale.tolist() == [0.0, 0.0]
    assert torch.equal(dequantize(codes, offset, scale, x.shape), x)


@pytest.mark.parametrize("bits", [1, 3, 4, 5, 7, 8, 11, 13, 16])
@pytest.mark.parametrize("count", [1, 7, 8, 1001])
def test_bit_packing_round_trips(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    codes = rng.integers(0, 2 ** bits, size=count)
    packed = pack_codes(codes, bits)
    assert len(packed) == (count * bits + 7) // 8
    assert np.array_equal(unpack_codes(packed, bits, count), codes)


def test_bit_packing_is_little_endian():
    # Values 1, 2, 7 at 3 bits: bits 100 010 111 (LSB first) -> bytes 0b11010001, 0b00000001.
    assert pack_codes(np.array([1, 2, 7]), 3) == bytes([0b11010001, 0b00000001])


def test_fake_quantize_forward_matches_the_stored_values_and_passes_gradients():
    torch.manual_seed(0)
    x = torch.randn(4, 2, 3, 3, 3, requires_grad=True)
    y = fake_quantize(x, 6, channel_dims=2)
    codes, offset, scale = quantize(x, 6, channels=8)
    assert torch.allclose(y.detach(), dequantize(codes, offset, scale, x.shape), atol=1e-6)
    (y * torch.arange(y.numel()).reshape(y.shape)).sum().backward()
    assert torch.equal(x.grad, torch.arange(x.numel(), dtype=torch.float32).reshape(x.shape))


def test_roles_keep_transforms_and_range_exact():
    roles = tensor_roles(small_model().field)
    assert roles == {"transforms": "exact", "feature_grids": "grid", "value_range": "exact",
                     "decoder.0.weight": "weights", "decoder.2.weight": "weights", "decoder.4.weight": "weights"}


@pytest.mark.parametrize("compression", [Compression(), Compression(bits=4, decoder_bits=8), Compression(bits=16),
                                         Compression(codec="zstd"), Compression(bits=6, codec="none"),
                                         Compression(codec="sz3")],
                         ids=["8-lzma", "4-8-lzma", "16-lzma", "8-zstd", "6-none", "sz3"])
def test_compressed_file_loads_within_the_quantization_bound(tmp_path, compression):
    model = small_model()
    path = tmp_path / "m.srn"
    model.save(path, compression)
    loaded = load_model(path)
    assert loaded.file_bytes == os.path.getsize(path) == model.file_bytes
    assert loaded.storage["field.feature_grids"]["role"] == "grid"
    before, after = model.field.state_dict(), loaded.field.state_dict()
    assert torch.equal(after["transforms"], before["transforms"])  # exact: stored as float32
    assert torch.equal(after["value_range"], before["value_range"])
    grids = before["feature_grids"].reshape(8, -1)
    span = grids.max(1).values - grids.min(1).values
    bound = span * compression.relative_error_bound if compression.codec == "sz3" else span / (2 ** compression.bits - 1) / 2
    error = (after["feature_grids"].reshape(8, -1) - grids).abs().max(1).values
    assert bool((error <= bound * (1 + 1e-4) + 1e-6).all()), (error, bound)
    w = before["decoder.2.weight"]
    w_step = (w.max(1).values - w.min(1).values) / (2 ** compression.decoder_bits - 1)
    assert bool(((loaded.field.state_dict()["decoder.2.weight"] - w).abs().max(1).values <= w_step / 2 * 1.0001 + 1e-7).all())


def test_file_ratio_is_data_bytes_over_file_bytes(tmp_path):
    model = small_model()
    for compression in (None, Compression()):
        path = tmp_path / f"m{compression is None}.srn"
        model.save(path, compression)
        loaded = load_model(path)
        assert loaded.file_ratio == pytest.approx(20 * 16 * 12 * 4 / os.path.getsize(path), rel=1e-12)
        assert loaded.compression_ratio == loaded.file_ratio
    assert "ratio" in loaded.describe() and f"{os.path.getsize(path):,} bytes" in loaded.describe()


def test_estimated_size_is_close_to_the_real_file(tmp_path):
    torch.manual_seed(0)
    field = field_for_budget("apmgsrn", 40_000, (64, 64, 64))
    with torch.no_grad():
        field.feature_grids.normal_(0, 1)
    model = small_model()
    model.field = field
    for compression in (None, Compression(codec="none"), Compression(bits=6, codec="none")):
        model.save(tmp_path / "m.srn", compression)
        assert estimated_file_bytes(field, compression) == pytest.approx(model.file_bytes, rel=0.03)


@pytest.mark.parametrize("architecture, compression", [("apmgsrn", None), ("apmgsrn", Compression()),
                                                        ("apmgsrn", Compression(bits=5)), ("fvsrn", Compression()),
                                                        ("ngp", Compression()), ("siren", Compression())])
def test_the_budget_search_picks_the_largest_model_whose_file_fits(architecture, compression):
    shape, nbytes = (128, 206, 168), 100_000
    budget = parameters_for_file_size(architecture, nbytes, shape, compression)
    with torch.device("meta"):
        fits = estimated_file_bytes(field_for_budget(architecture, budget, shape), compression)
        over = estimated_file_bytes(field_for_budget(architecture, int(budget * 1.01) + 1, shape), compression)
    assert fits <= nbytes < over


def test_a_file_smaller_than_any_model_is_refused():
    with pytest.raises(ValueError, match=r"cannot be as small as 500 bytes"):
        parameters_for_file_size("apmgsrn", 500, (64, 64, 64), Compression())


@pytest.mark.parametrize("kwargs, message", [
    ({"bits": 0}, "bits must be an integer from 4 to 16, got 0."),
    ({"bits": 40}, "bits must be an integer from 4 to 16, got 40."),
    ({"decoder_bits": 2}, "decoder_bits must be an integer from 4 to 16, got 2."),
    ({"codec": "gzip"}, "codec must be one of lzma, zstd, none, sz3, got 'gzip'."),
    ({"codec": "zstd", "error_bound": 0.01}, "error_bound applies to the sz3 codec only"),
    ({"codec": "sz3", "error_bound": 2.0}, "error_bound must be a fraction of the value range in (0, 1), got 2.0."),
])
def test_bad_compression_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError) as info:
        Compression(**kwargs)
    assert message in str(info.value)


# ---- damaged quantization metadata --------------------------------------------------------------------
def _rewrite(path, edit_storage=None, edit_tensors=None):
    """Rewrite a compressed model file with its storage metadata and/or payloads edited."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))["__metadata__"]
    meta = json.loads(header["neural_volume"])
    if edit_storage:
        edit_storage(meta["storage"])
    if edit_tensors:
        edit_tensors(tensors)
    save_file(tensors, str(path), metadata={"neural_volume": json.dumps(meta)})


GRID = "field.feature_grids"


def _set(key, value, name=GRID):
    def edit(storage):
        storage[name][key] = value
    return edit


def _scale_nan(tensors):
    # lossless stage off (codec none) so the scale bytes can be poked: offsets first (8 channels), then scales.
    raw = bytearray(tensors[GRID].numpy().tobytes())
    raw[32:36] = struct.pack("<f", float("nan"))
    tensors[GRID] = torch.frombuffer(raw, dtype=torch.uint8).clone()


def _truncate(tensors):
    tensors[GRID] = tensors[GRID][:-10].clone()


def _garble(tensors):
    raw = bytearray(tensors[GRID].numpy().tobytes())
    for i in range(0, len(raw), 3):
        raw[i] ^= 0x5A
    tensors[GRID] = torch.frombuffer(raw, dtype=torch.uint8).clone()


@pytest.mark.parametrize("compression, storage_edit, tensor_edit, message", [
    (Compression(), _set("bits", 0), None, "bits must be an integer from 1 to 16, got 0."),
    (Compression(), _set("bits", 40), None, "bits must be an integer from 1 to 16, got 40."),
    (Compression(), _set("bits", "8"), None, "bits must be an integer from 1 to 16, got '8'."),
    (Compression(), _set("bits", 4), None, "a code exceeds 4 bits (a damaged file)."),
    (Compression(codec="none"), None, _scale_nan, "quantization offsets and scales must be finite"),
    (Compression(codec="none"), None, _truncate, "the payload holds"),
    (Compression(codec="none"), _set("bytes", 10 ** 6), None, "the payload holds"),
    (Compression(), None, _garble, "its lzma stream does not decode"),
    (Compression(codec="zstd"), None, _garble, "its zstd stream does not decode"),
    (Compression(), _set("dict_size", 1 << 40), None, "dict_size 1,099,511,627,776 is larger than LZMA's"),
    (Compression(), _set("raw_bytes", 10 ** 9), None, "raw_bytes 1000000000 does not match"),
    (Compression(), _set("shape", [4, 2, 500, 600, 700]), None, "stored with shape [4, 2, 500, 600, 700], but the config declares"),
    (Compression(), _set("encoding", "jpeg"), None, "unknown encoding 'jpeg'"),
    (Compression(), _set("codec", "brotli"), None, "unknown codec 'brotli'"),
    (Compression(codec="sz3"), None, _garble, "SZ3 stream"),
    (Compression(codec="sz3"), _set("stream_bytes", [1, 2]), None, "stream_bytes must list 8 positive stream lengths"),
], ids=["bits0", "bits40", "bits-string", "bits-too-few", "nan-scale", "short-payload", "declared-longer", "lzma-garbage",
        "zstd-garbage", "lzma-dict",
        "raw-bytes", "huge-shape", "encoding", "codec", "sz3-garbage", "sz3-lengths"])
def test_damaged_quantization_metadata_gives_one_clear_error(tmp_path, compression, storage_edit, tensor_edit,
                                                             message):
    path = tmp_path / "m.srn"
    small_model().save(path, compression)
    _rewrite(path, storage_edit, tensor_edit)
    with pytest.raises(ModelFileError) as info:
        load_model(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text


def test_a_damaged_compressed_model_writes_no_output(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "m.srn"
    small_model().save(path, Compression())
    _rewrite(path, _set("bits", 40))
    out = tmp_path / "out.vti"
    run = subprocess.run([sys.executable, "-m", "srn.cli", "resample", str(path), "-o", str(out)],
                         capture_output=True, text=True)
    assert run.returncode != 0 and "bits must be an integer from 1 to 16, got 40." in run.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["m.srn"]


def test_an_ensemble_compresses_brick_by_brick(tmp_path):
    from srn_core.fields import build_field

    brick = {"n_grids": 2, "n_features": 1, "grid_shape": [4, 5, 6], "width": 8}
    config = {"grid": [2, 1, 1], "brick_architecture": "apmgsrn", "brick_configs": [brick, brick],
              "brick_bounds": [[-1, 0.1, -1, 1, -1, 1], [-0.1, 1, -1, 1, -1, 1]]}
    torch.manual_seed(0)
    field = build_field("ensemble", config, (0.0, 2.0))
    with torch.no_grad():
        for b in field.bricks:
            b.feature_grids.normal_(0, 1)
    roles = tensor_roles(field)
    assert {k for k, r in roles.items() if r == "grid"} == {"bricks.0.feature_grids", "bricks.1.feature_grids"}
    assert roles["bricks.1.transforms"] == "exact" and roles["bricks.0.decoder.0.weight"] == "weights"
    model = small_model()
    model.field = field.eval()
    model.save(tmp_path / "e.srn", Compression())
    loaded = load_model(tmp_path / "e.srn")
    points = torch.rand(500, 3) * 2 - 1
    field.clamp_output = loaded.field.clamp_output = False
    with torch.inference_mode():
        exact, decoded = field(points), loaded.field(points)
    assert float(exact.std()) > 0.05  # a field that varies, so agreement means something
    assert float((decoded - exact).abs().max()) < 0.05 * float(exact.std())
    # Each brick's grid decodes to exactly its own per-channel 8-bit quantization.
    for name in ("bricks.0.feature_grids", "bricks.1.feature_grids"):
        original = field.state_dict()[name]
        codes, offset, scale = quantize(original, 8, channels=2)
        assert torch.equal(loaded.field.state_dict()[name], dequantize(codes, offset, scale, original.shape))


def test_a_file_size_budget_for_a_time_varying_model_counts_every_key_frame():
    from srn_core.compression import estimated_file_bytes, parameters_for_file_size
    from srn_core.fields import TimeVaryingField

    key_times = [0.0, 1.0, 2.0, 3.0]
    budget = parameters_for_file_size("apmgsrn", 40_000, (5, 40, 50), Compression(), key_times=key_times)
    shell = TimeVaryingField(TimeVaryingField.config_for("apmgsrn", budget, (5, 40, 50), key_times))
    assert 0.9 * 40_000 <= estimated_file_bytes(shell, Compression()) <= 40_000
    # Four key frames of 8-bit grids share one decoder: about four times the parameters of one static file.
    single = parameters_for_file_size("apmgsrn", 10_000, (5, 40, 50), Compression())
    assert budget > 3.5 * single, (budget, single)
