"""Ratios count bytes: `srn train --ratio/--size` size the FILE written (compressed by default), and `srn train`,
`srn info` and `srn eval` print the ratio of the data's float32 bytes to the file's actual bytes."""

import functools
import os
import re

import numpy as np
import pytest

from srn_core.compression import Compression
from srn_core.loading import load_model
from srn_core.modelfile import load_tensors
from srn_runner import run_srn

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
FAST = ["--steps", "60", "--batch-size", "1024", "--quiet"]
SHAPE = (24, 28, 32)  # (nz, ny, nx)
DATA_BYTES = 4 * 24 * 28 * 32


srn = functools.partial(run_srn, env=ENV)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("ratio")
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in SHAPE], indexing="ij")
    np.save(d / "v.npy", (np.sin(4 * x) * y + z).astype(np.float32))
    return d


def printed_ratio(stdout):
    """``(ratio, file bytes, parameters)`` of a ``ratio ...x vs float32 (data ... / file N bytes: ...; P parameters)``
    line."""
    m = re.search(r"^ratio +([\d.]+)x vs float32 \(data [\d.]+ kB / file ([\d,]+) bytes: [^;]+; ([\d,]+) parameters\)$",
                  stdout, re.MULTILINE)
    assert m, stdout
    return float(m[1]), int(m[2].replace(",", "")), int(m[3].replace(",", ""))


@pytest.fixture(scope="module", params=[3, 6])
def trained(folder, request):
    """``(ratio, path, completed srn train)`` of a model trained with ``--ratio``."""
    path = folder / f"r{request.param}.srn"
    out = srn("train", folder / "v.npy", "-o", path, "--ratio", request.param, *FAST)
    assert out.returncode == 0, out.stderr
    return request.param, path, out


def test_train_ratio_is_the_compressed_files_ratio(trained):
    ratio, out_path, out = trained
    size = os.path.getsize(out_path)
    printed, file_bytes, params = printed_ratio(out.stdout)
    assert file_bytes == size and printed == pytest.approx(DATA_BYTES / size, abs=0.05)
    assert DATA_BYTES / size == pytest.approx(ratio, rel=0.10)  # the budget search aims at the file's bytes
    model = load_model(out_path)
    assert params == model.num_parameters and model.file_ratio == pytest.approx(DATA_BYTES / size)
    storage = load_tensors(out_path)[1]["storage"]  # compressed by default: 8-bit grids, lzma
    default = Compression()
    grids = [e for e in storage.values() if e["role"] == "grid"]
    assert grids and all(e["bits"] == default.bits and e.get("codec") == default.codec for e in grids)
    assert all(e["bits"] == default.decoder_bits for e in storage.values() if e["role"] == "weights")
    assert "warning" not in out.stderr


def test_size_is_the_files_size_and_float32_writes_the_float32_file(folder):
    compressed = srn("train", folder / "v.npy", "-o", folder / "s.srn", "--size", "12kB", *FAST)
    plain = srn("train", folder / "v.npy", "-o", folder / "f.srn", "--size", "12kB", "--float32", *FAST)
    assert compressed.returncode == 0 and plain.returncode == 0, compressed.stderr + plain.stderr
    assert os.path.getsize(folder / "s.srn") == pytest.approx(12_000, rel=0.10)
    assert 10_800 <= os.path.getsize(folder / "f.srn") <= 12_000  # float32 sizes are exact: never over
    assert "storage" not in load_tensors(folder / "f.srn")[1]
    # the same bytes buy several times the parameters when the file is compressed
    assert printed_ratio(compressed.stdout)[2] > 3 * printed_ratio(plain.stdout)[2]
    assert "the file will hold float32 parameters" in plain.stderr
    assert "the file will hold 8-bit grids, 12-bit decoder + lzma" in compressed.stderr


def test_bits_decoder_bits_and_codec_reach_the_file(folder):
    out = srn("train", folder / "v.npy", "-o", folder / "b.srn", "--params", 3000, "--bits", 5,
              "--decoder-bits", 9, "--codec", "zstd", *FAST)
    assert out.returncode == 0, out.stderr
    storage = load_tensors(folder / "b.srn")[1]["storage"]
    assert {e["bits"] for e in storage.values() if e["role"] == "grid"} == {5}
    assert {e["bits"] for e in storage.values() if e["role"] == "weights"} == {9}
    assert {e.get("codec", "none") for e in storage.values()} <= {"zstd", "none"}
    assert "warning" not in out.stderr  # --params names no file size, so there is no target to miss


def test_a_file_far_from_its_target_is_warned_about_once(folder):
    # After one step the grids are still their smooth initial values, which LZMA shrinks far below the
    # budget's estimate (measured 13,453 bytes for a 21,504-byte target).
    out = srn("train", folder / "v.npy", "-o", folder / "w.srn", "--ratio", 4, "--steps", 1, "--batch-size", 256,
              "--quiet")
    assert out.returncode == 0, out.stderr
    size = os.path.getsize(folder / "w.srn")
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert warnings == [f"srn train: warning: the model file '{folder}/w.srn' is {size:,} bytes, "
                        f"{size / 21_504 - 1:+.0%} off the 21,504-byte target (entropy coding depends on the "
                        f"trained values)."]


def test_info_and_eval_print_the_files_ratio_and_parameters(folder, trained):
    path = trained[1]
    size, model = os.path.getsize(path), load_model(path)
    info = srn("info", path)
    assert info.returncode == 0, info.stderr
    assert (f"file          {size:,} bytes (grids 8-bit + lzma, decoder 12-bit); ratio {DATA_BYTES / size:.1f}x vs "
            f"the float32 data") in info.stdout
    assert f"parameters    {model.num_parameters:,} " in info.stdout
    ev = srn("eval", path, folder / "v.npy")
    assert ev.returncode == 0, ev.stderr
    assert printed_ratio(ev.stdout) == (round(DATA_BYTES / size, 1), size, model.num_parameters)


@pytest.mark.parametrize("args, message", [
    (["--bits", "0"], "argument --bits: must be an integer from 4 to 16, got '0'."),
    (["--bits", "40"], "argument --bits: must be an integer from 4 to 16, got '40'."),
    (["--decoder-bits", "3"], "argument --decoder-bits: must be an integer from 4 to 16, got '3'."),
    (["--codec", "gzip"], "argument --codec: invalid choice: 'gzip'"),
    (["--float32", "--bits", "6"], "--float32 writes uncompressed parameters; it cannot be combined with --bits."),
    (["--ratio", "50"], "--ratio 50: a apmgsrn model file cannot be as small as 1,720 bytes"),
])
def test_bad_compression_options_give_one_error_before_training(folder, args, message):
    out = srn("train", folder / "v.npy", "-o", folder / "bad.srn", *FAST, *args)
    assert out.returncode in (1, 2) and "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("srn train: error: ") and message in errors[0], out.stderr
    assert "training apmgsrn" not in out.stderr and not (folder / "bad.srn").exists()
