"""`srn train` on an input larger than --data-memory: the file is opened box by box and training streams bricks
of it (srn_core.streaming), saying so and with what bound; a VTI whose data cannot be read box by box
(compressed) is read whole as before, with a warning when it is larger than the bound."""

import functools
import os
import re

import numpy as np
import pytest

from srn.io import write_volume
from srn_core.geometry import ImageGeometry
from srn_core.modelfile import load_tensors
from srn_runner import run_srn

srn = functools.partial(run_srn, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
SHAPE = (40, 40, 40)  # 256 kB of float32: 8 bricks of 32 cells (33^3 voxels, 144 kB each) to stream
TRAIN = ["--steps", 100, "--batch-size", 2048, "--params", 6000, "--float32", "--quiet"]


def _values():
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in SHAPE], indexing="ij")
    return (np.sin(6 * x) * y + z * z).astype("<f4")


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    folder = tmp_path_factory.mktemp("raw")
    _values().tofile(folder / "v.raw")
    return folder


def _summary_psnr(stdout):
    return float(re.search(r"^PSNR      (\d+\.\d+) dB over all 64,000 voxels$", stdout, re.MULTILINE).group(1))


def test_a_raw_file_larger_than_data_memory_streams_within_the_bound(raw, tmp_path):
    out = srn("train", raw / "v.raw", "--raw-shape", *SHAPE, "--raw-dtype", "<f4", "-o", tmp_path / "m.srn",
              "--data-memory", "150kB", *TRAIN)
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[1] == ("srn train: streaming 'v' from disk (256 kB of float32, more than "
                                          "--data-memory 150 kB): at most 150 kB of it is in memory at a time")
    training = load_tensors(tmp_path / "m.srn")[1]["training"]
    streamed = training["streamed"]
    assert streamed["data_memory"] == 150_000 and streamed["bricks"] == 8 and streamed["resident_bricks"] == 1
    # The first resident brick (33^3 voxels) and at least one swapped in after it were read from the file.
    assert streamed["bytes_read"] > 4 * 33 ** 3
    assert training["source"] == str(raw / "v.raw") and training["steps"] == 100
    # The PSNR printed (and stored) is measured over the whole file, slab by slab.
    assert _summary_psnr(out.stdout) == pytest.approx(training["psnr"], abs=0.005)


def test_an_ensemble_streams_each_brick_larger_than_data_memory(raw, tmp_path):
    # 2 x 1 x 1 bricks with 2 ghost voxels: boxes of 23 x 40 x 40 points (147 kB) against a 120 kB bound.
    out = srn("train", raw / "v.raw", "--raw-shape", *SHAPE, "--raw-dtype", "<f4", "-o", tmp_path / "m.srn",
              "--data-memory", "120kB", "--ensemble", 2, 1, 1, "--ghost", 2, *TRAIN)
    assert out.returncode == 0, out.stderr
    assert ("srn train: streaming each brick of 'v' from disk (147 kB of float32, more than --data-memory 120 kB): "
            "at most 120 kB of it is in memory at a time") in out.stderr.splitlines()
    training = load_tensors(tmp_path / "m.srn")[1]["training"]
    assert training["ensemble_grid"] == [2, 1, 1] and training["ensemble_ghost"] == 2
    assert sorted(os.listdir(tmp_path)) == ["m.srn"]


def srn_here(capsys, *args):
    """``srn ARGS`` in this process (a few steps: no interpreter and torch to start)."""
    from types import SimpleNamespace

    from srn.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


def test_data_memory_above_the_input_size_reads_it_whole(raw, tmp_path, capsys):
    out = srn_here(capsys, "train", raw / "v.raw", "--raw-shape", *SHAPE, "--raw-dtype", "<f4", "-o",
                   tmp_path / "m.srn", "--data-memory", "1MB", *TRAIN[:-1], "--steps", 5, "--quiet")
    assert out.returncode == 0, out.stderr
    assert "streaming" not in out.stderr
    assert "streamed" not in load_tensors(tmp_path / "m.srn")[1]["training"]


def test_a_compressed_vti_is_read_whole_with_a_warning(tmp_path, capsys):
    write_volume(tmp_path / "v.vti", _values(), ImageGeometry(SHAPE[::-1], (0, 0, 0), (1, 1, 1)), "density")
    out = srn_here(capsys, "train", tmp_path / "v.vti", "-o", tmp_path / "m.srn", "--data-memory", "150kB",
                   *TRAIN[:-1], "--steps", 5, "--quiet")
    assert out.returncode == 0, out.stderr
    warnings = [line for line in out.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"srn train: warning: VTK image '{tmp_path}/v.vti' cannot "
                                                         f"be read out of core: its data are compressed"), out.stderr
    assert warnings[0].endswith("; it is read whole (256 kB of float32, more than --data-memory 150 kB).")
    assert "streaming" not in out.stderr
    assert "streamed" not in load_tensors(tmp_path / "m.srn")[1]["training"]
