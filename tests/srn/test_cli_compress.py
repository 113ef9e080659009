"""`srn compress MODEL -o OUT.srn`: re-encodes any model, writes OUT atomically (never over MODEL), and prints
the PSNR it measured between the original and the re-encoded model on the training grid."""

import functools
import json
import os
import re

import numpy as np
import pytest
import torch

from srn_core import metrics
from srn_core.loading import load_model
from srn_core.modelfile import load_tensors
from srn_runner import run_srn

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


srn = functools.partial(run_srn, env=ENV)


@pytest.fixture(scope="module")
def float32_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("compress")
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (20, 22, 26)], indexing="ij")
    np.save(d / "v.npy", (np.sin(4 * x) * y + z).astype(np.float32))
    out = srn("train", d / "v.npy", "-o", d / "f.srn", "--params", 6000, "--float32", "--steps", 150,
              "--batch-size", 1024, "--quiet")
    assert out.returncode == 0, out.stderr
    return d, d / "f.srn"


def printed(stdout, key):
    m = re.search(rf"^{key} +(\S+)", stdout, re.MULTILINE)
    assert m, stdout
    return m[1]


@pytest.mark.parametrize("bits", [8, 5])
def test_compress_writes_the_file_and_prints_the_psnr_it_measured(float32_model, bits, tmp_path):
    d, source = float32_model
    before = source.read_bytes()
    out = srn("compress", source, "-o", tmp_path / "c.srn", "--bits", bits, "--quiet")
    assert out.returncode == 0, out.stderr
    assert source.read_bytes() == before and os.listdir(tmp_path) == ["c.srn"]  # no temporary file left
    original, compressed = load_model(source), load_model(tmp_path / "c.srn")
    a, b = original.resample(), compressed.resample()
    # The printed figures are those of the two models on the training grid.
    assert float(printed(out.stdout, "PSNR")) == pytest.approx(metrics.psnr(a, b), abs=0.006)
    assert float(printed(out.stdout, "max abs error")) == pytest.approx(float(np.abs(a - b).max()), rel=1e-5)
    # Each grid value moved by at most half a quantization step of its channel.
    storage = load_tensors(tmp_path / "c.srn")[1]["storage"]
    for name, entry in storage.items():
        bits_stored = bits if entry["role"] == "grid" else 12
        assert entry["bits"] == bits_stored, name
        t0 = original.field.state_dict()[name[len("field."):]].reshape(entry["channels"], -1)
        t1 = compressed.field.state_dict()[name[len("field."):]].reshape(entry["channels"], -1)
        step = (t0.max(1).values - t0.min(1).values) / (2 ** bits_stored - 1)
        assert bool(((t1 - t0).abs() <= step[:, None] / 2 * (1 + 1e-5) + 1e-7).all()), name
    size = os.path.getsize(tmp_path / "c.srn")
    data_bytes = 4 * 20 * 22 * 26
    assert f"wrote          {tmp_path}/c.srn: {size:,} bytes (grids {bits}-bit + lzma, decoder 12-bit)" in out.stdout
    assert f"ratio {data_bytes / size:.1f}x vs float32 (data" in out.stdout
    assert f"ratio {data_bytes / os.path.getsize(source):.1f}x vs float32 (data" in out.stdout
    assert compressed.training["compressed_from"] == str(source)
    # the data's PSNR of the source model is kept, under a name that does not claim it for this file
    assert compressed.training["source_model_psnr"] == original.training["psnr"]
    assert "psnr" not in compressed.training


def test_fewer_bits_give_a_smaller_file_and_a_lower_psnr(float32_model, tmp_path):
    d, source = float32_model
    runs = {b: srn("compress", source, "-o", tmp_path / f"{b}.srn", "--bits", b, "--quiet") for b in (4, 6, 8)}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr for r in runs.values()]
    sizes = [os.path.getsize(tmp_path / f"{b}.srn") for b in (4, 6, 8)]
    psnrs = [float(printed(runs[b].stdout, "PSNR")) for b in (4, 6, 8)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 3 and sizes[-1] < os.path.getsize(source) / 2
    assert psnrs == sorted(psnrs) and psnrs[0] + 15 < psnrs[-1]  # about 6 dB per bit


def test_the_estimated_psnr_against_the_data_matches_srn_eval(float32_model, tmp_path):
    d, source = float32_model
    out = srn("compress", source, "-o", tmp_path / "c.srn", "--bits", 5, "--quiet")
    m = re.search(r"^PSNR vs data +([\d.]+) dB when trained -> about ([\d.]+) dB", out.stdout, re.MULTILINE)
    assert m, out.stdout
    assert float(m[1]) == pytest.approx(load_model(source).training["psnr"], abs=0.001)
    measured = float(printed(srn("eval", tmp_path / "c.srn", d / "v.npy").stdout, "PSNR"))
    assert float(m[2]) == pytest.approx(measured, abs=0.3)


def test_a_compressed_file_recompresses_and_other_codecs_work(float32_model, tmp_path):
    d, source = float32_model
    assert srn("compress", source, "-o", tmp_path / "a.srn", "--quiet").returncode == 0
    again = srn("compress", tmp_path / "a.srn", "-o", tmp_path / "b.srn", "--codec", "zstd", "--decoder-bits", 16,
                "--quiet")
    assert again.returncode == 0, again.stderr
    assert "(grids 8-bit + lzma, decoder 12-bit)" in again.stdout.splitlines()[0]
    storage = load_tensors(tmp_path / "b.srn")[1]["storage"]
    assert {e["bits"] for e in storage.values() if e["role"] == "weights"} == {16}
    # 8-bit codes of values that are already on an 8-bit grid are the same values: nothing more is lost
    assert float(printed(again.stdout, "PSNR")) > 80 or printed(again.stdout, "PSNR") == "inf"


def test_an_apmgsrn_folder_is_compressed(tmp_path):
    """A peer's checkpoint folder (options.json + a torch pickle) becomes one small compressed file."""
    gen = torch.Generator().manual_seed(0)
    folder = tmp_path / "peer"
    folder.mkdir()
    grids = torch.randn(2, 2, 6, 7, 8, generator=gen)
    transforms = torch.eye(4).repeat(2, 1, 1)
    transforms[:, :3] += 0.2 * torch.randn(2, 3, 4, generator=gen)
    widths = [16, 16, 16, 1]  # 2 grids x 2 features, padded to 16 inputs, as requires_padded_feats does
    state = {"encoder.transformation_matrices": transforms, "encoder.feature_grids": grids}
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        name = "decoder.2" if i == 2 else f"decoder.{i}.linear"
        state[name + ".weight"] = torch.randn(b, a, generator=gen) / a ** 0.5
    options = {"model": "AMGSRN", "n_dims": 3, "n_outputs": 1, "feature_grid_shape": "6,7,8", "n_features": 2,
               "n_grids": 2, "use_bias": False, "data": "plume.nc", "full_shape": [9, 10, 11],
               "requires_padded_feats": True, "use_tcnn_if_available": False, "n_layers": 2,
               "nodes_per_layer": 16, "data_min": 0.0, "data_max": 5.0, "align_corners": True,
               "grid_initialization": "default", "ensemble": False}
    (folder / "options.json").write_text(json.dumps(options))
    torch.save({"state_dict": state}, folder / "model.ckpt.tar")
    out = srn("compress", folder, "-o", tmp_path / "c.srn", "--quiet")
    assert out.returncode == 0, out.stderr
    original, compressed = load_model(folder), load_model(tmp_path / "c.srn")
    assert compressed.geometry == original.geometry and compressed.value_range == original.value_range
    assert float(printed(out.stdout, "PSNR")) == pytest.approx(
        metrics.psnr(original.resample(), compressed.resample()), abs=0.006)
    assert "PSNR vs data" not in out.stdout  # a peer's folder records no training PSNR to estimate from
    assert os.path.getsize(tmp_path / "c.srn") < sum(p.stat().st_size for p in folder.iterdir()) / 2
    before = (folder / "model.ckpt.tar").read_bytes()
    inside = srn("compress", folder, "-o", folder / "model.ckpt.tar", "--quiet")
    assert inside.returncode == 1 and inside.stderr == (
        f"srn compress: error: output '{folder}/model.ckpt.tar' is inside the model '{folder}'; writing the model "
        f"there would destroy the model it re-encodes.\n")
    assert (folder / "model.ckpt.tar").read_bytes() == before


@pytest.mark.parametrize("model, args, code, message", [
    ("f.srn", ["--bits", "0"], 2, "argument --bits: must be an integer from 4 to 16, got '0'."),
    ("f.srn", ["--bits", "40"], 2, "argument --bits: must be an integer from 4 to 16, got '40'."),
    ("f.srn", ["--decoder-bits", "x"], 2, "argument --decoder-bits: must be an integer from 4 to 16, got 'x'."),
    ("f.srn", ["--codec", "gzip"], 2, "argument --codec: invalid choice: 'gzip'"),
    ("f.srn", ["-o", "{d}/f.srn"], 1, "output '{d}/f.srn' is the model '{d}/f.srn' (the same file); writing the "
                                      "model there would destroy the model it re-encodes."),
    ("f.srn", ["-o", "{d}/hard.srn"], 1, "output '{d}/hard.srn' is the model '{d}/f.srn' (the same file)"),
    ("f.srn", ["-o", "{d}/out.vti"], 1, "output '{d}/out.vti' has the volume suffix '.vti' but a model file is "
                                        "written there"),
    ("f.srn", ["-o", "{d}/nofolder/c.srn"], 1, "output '{d}/nofolder/c.srn' must be a file path in an existing "
                                               "folder."),
    ("missing.srn", [], 1, "model file '{d}/missing.srn' does not exist."),
])
def test_bad_input_is_one_error_and_no_file(float32_model, model, args, code, message):
    d, source = float32_model
    if not (d / "hard.srn").exists():
        os.link(source, d / "hard.srn")
    before = {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()}
    args = [a.format(d=d) for a in args]
    output = [] if "-o" in args else ["-o", d / "new.srn"]
    out = srn("compress", d / model, *output, *args, "--quiet")
    assert out.returncode == code and "Traceback" not in out.stderr, out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("srn compress: error: "), out.stderr
    assert message.format(d=d) in errors[0]
    assert {p.name: p.read_bytes() for p in d.iterdir() if p.is_file()} == before  # nothing written or changed


def test_max_loss_picks_the_fewest_bits_within_the_budget(float32_model, tmp_path):
    from srn_core.compression import Compression
    from srn_core.compression_search import loss_db

    d, source = float32_model
    out = srn("compress", source, "-o", tmp_path / "c.srn", "--max-loss", 0.05, "--quiet")
    assert out.returncode == 0, out.stderr
    bits = {e["bits"] for e in load_tensors(tmp_path / "c.srn")[1]["storage"].values() if e["role"] == "grid"}
    assert len(bits) == 1
    chosen = bits.pop()
    original = load_model(source)
    assert loss_db(original, Compression(bits=chosen)) <= 0.05
    assert chosen == 4 or loss_db(original, Compression(bits=chosen - 1)) > 0.05
    assert f"{chosen}-bit grids" in out.stdout and "at most 0.05 dB" in out.stdout
    both = srn("compress", source, "-o", tmp_path / "d.srn", "--max-loss", 0.05, "--bits", 6, "--quiet")
    assert both.returncode != 0 and "--max-loss chooses --bits itself" in both.stderr
    assert not (tmp_path / "d.srn").exists()
