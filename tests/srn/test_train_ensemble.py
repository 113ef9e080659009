"""`srn train --ensemble NX NY NZ` in one process: the file it writes, the one progress bar over every brick,
Ctrl-C/SIGTERM and --resume, the OUTPUT.parts rules and the one clear error of every bad option.

(Several ranks under mpirun: tests/srn/test_train_mpi.py.)
"""

import os
import re
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from srn_core.ensemble_training import DEFAULT_GHOST
from srn_core.loading import load_model
from srn_core.modelfile import load_tensors

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
STEPS = 100
TRAIN = ["--ensemble", "2", "1", "1", "--steps", str(STEPS), "--batch-size", "2048", "--seed", "1",
         "--checkpoint-every", "10", "--progress-interval", "0"]


def _volume(folder):
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (16, 18, 24)], indexing="ij")
    np.save(folder / "v.npy", (np.sin(6 * x) * y + z * z).astype(np.float32))


def _command(folder, *extra):
    return [sys.executable, "-m", "srn.cli", "train", str(folder / "v.npy"), "-o", str(folder / "m.srn"), *TRAIN,
            *map(str, extra)]


def srn_here(capsys, *args):
    """``srn ARGS`` in this process (the error paths end before any training, so they are fast here)."""
    from srn.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 2 x 1 x 1 run sized by --ratio: ``(folder, stdout, stderr)``."""
    folder = tmp_path_factory.mktemp("ensemble")
    _volume(folder)
    out = subprocess.run(_command(folder, "--ratio", 2), capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    return folder, out.stdout, out.stderr


def test_the_ensemble_file_holds_every_brick_and_fits_the_ratio(reference):
    folder, stdout, stderr = reference
    assert sorted(os.listdir(folder)) == ["m.srn", "v.npy"]  # OUTPUT.parts removed once the file was written
    model = load_model(folder / "m.srn")
    assert model.field.architecture == "ensemble" and len(model.field.bricks) == 2
    assert model.geometry.dims == (24, 18, 16)
    training = model.training
    assert training["ensemble_grid"] == [2, 1, 1] and training["ensemble_ghost"] == DEFAULT_GHOST
    assert [b["steps"] for b in training["ensemble_bricks"]] == [STEPS, STEPS]
    assert training["source"] == str(folder / "v.npy")
    # --ratio 2 is the whole file's: 24*18*16*4 / 2 = 13,824 bytes, shared by the bricks (within 10 %: no warning)
    size = os.path.getsize(folder / "m.srn")
    assert abs(size / 13_824 - 1) <= 0.10, size
    assert "warning" not in stderr
    assert re.search(rf"^training an ensemble of 2 x 1 x 1 apmgsrn bricks \(ghost {DEFAULT_GHOST}\) on 'v' "
                     r"\(24, 18, 16\) from "
                     r".*v\.npy: --ratio 2 \(a file of 13\.8 kB, 2 bricks of [\d,]+ parameters\)", stderr,
                     re.MULTILINE), stderr
    assert f"steps     {2 * STEPS} over 2 bricks in" in stdout
    psnr = float(re.search(r"^PSNR      (\d+\.\d+) dB", stdout, re.MULTILINE).group(1))
    assert psnr == pytest.approx(training["psnr"], abs=0.005) and psnr > 30


def test_one_progress_bar_counts_every_bricks_steps(reference):
    stderr = reference[2]
    lines = re.findall(r"^train: (\d+)/(\d+) steps \((\d+)%\), \d+ s elapsed, ETA \d+ s, (\d)/2 bricks done, "
                       r"PSNR ~\d+\.\d\d dB \(brick (\d)\)$", stderr, re.MULTILINE)
    # --progress-interval 0: a line per report (every 25 steps of a brick), over 2 x 100 steps
    assert [int(n) for n, *_ in lines] == [*range(25, 201, 25)]
    assert {int(total) for _, total, *_ in lines} == {2 * STEPS}
    assert [int(p) for _, _, p, *_ in lines] == [round(100 * n / 200) for n in range(25, 201, 25)]
    assert [int(d) for *_, d, _ in lines] == [0, 0, 0, 1, 1, 1, 1, 2]
    assert [int(k) for *_, k in lines] == [0, 0, 0, 0, 1, 1, 1, 1]
    assert "\r" not in stderr


def test_sigterm_keeps_the_parts_and_resume_gives_the_uninterrupted_model(tmp_path, reference, capsys):
    _volume(tmp_path)
    parts = tmp_path / "m.srn.parts"
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(_command(tmp_path, "--ratio", 2), stdout=subprocess.DEVNULL, stderr=err, env=ENV)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not (parts / "brick-00001.checkpoint").exists():
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    text = (tmp_path / "err.txt").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, text
    assert f"srn train: interrupted (SIGTERM); the finished bricks and checkpoints are kept in '{parts}'. Run the " \
           f"same command with --resume to continue." in text
    assert not (tmp_path / "m.srn").exists()
    assert {"brick-00000.safetensors", "brick-00001.checkpoint"} <= set(os.listdir(parts))
    again = srn_here(capsys, *_command(tmp_path, "--ratio", 2)[3:])  # without --resume: refused, parts kept
    assert again.returncode == 1 and again.stderr.splitlines() == [
        f"srn train: error: parts folder '{parts}' of an interrupted ensemble run exists; add --resume to continue "
        f"it, or delete it to start afresh."], again.stderr
    done = subprocess.run(_command(tmp_path, "--ratio", 2, "--resume"), capture_output=True, text=True, env=ENV,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["err.txt", "m.srn", "v.npy"]
    (tensors, meta), (ref, ref_meta) = load_tensors(tmp_path / "m.srn"), load_tensors(reference[0] / "m.srn")
    assert tensors.keys() == ref.keys()
    for key in ref:
        assert torch.equal(tensors[key], ref[key]), key  # bit for bit
    assert meta["training"]["psnr"] == ref_meta["training"]["psnr"]


@pytest.mark.parametrize("args, code, message", [
    (["--ensemble", "0", "1", "1"], 2, "argument --ensemble: must be a positive integer, got '0'."),
    (["--ensemble", "2", "1"], 2, "argument --ensemble: expected 3 arguments"),
    (["--ensemble", "2", "x", "1"], 2, "argument --ensemble: must be a positive integer, got 'x'."),
    (["--ensemble", "2", "1", "1", "--ghost", "-1"], 2, "argument --ghost: must be a whole number, 0 or more, "
                                                         "got '-1'."),
    (["--ensemble", "24", "1", "1"], 1, "--ensemble 24 1 1: ensemble grid (24, 1, 1) has 24 bricks along x, but "
                                        "the volume's 24 points there leave a brick under 2 points of its own; use "
                                        "at most 23."),
    (["--ghost", "3"], 1, "--ghost 3 needs --ensemble NX NY NZ: ghost voxels widen an ensemble's bricks."),
    (["--ensemble", "2", "2", "1", "--params", "3"], 1, "--params 3 leaves less than one parameter to each of the "
                                                        "4 bricks."),
    (["--ensemble", "2", "1", "1", "--ratio", "1000"], 1, "--ratio 1000 over 2 bricks: a apmgsrn model file cannot "
                                                          "be as small as 13 bytes"),
    (["--ensemble", "2", "1", "1", "--key-frames", "2"], 1, "--key-frames 2 needs a time series; --ensemble trains "
                                                            "one volume."),
    (["--ensemble", "2", "1", "1", "--resume"], 1, "parts folder '{t}/m.srn.parts' does not exist; nothing to "
                                                   "resume."),
    (["--data-memory", "0"], 2, "argument --data-memory: must be a positive size like 500KB, 1MB or 2.5GiB, got "
                                "'0'."),
])
def test_bad_ensemble_options_give_one_error_and_write_nothing(tmp_path, capsys, args, code, message):
    _volume(tmp_path)
    args = [a.replace("{t}", str(tmp_path)) for a in args]
    if code == 2:  # argparse exits
        with pytest.raises(SystemExit) as exit_:
            srn_here(capsys, "train", tmp_path / "v.npy", "-o", tmp_path / "m.srn", "--params", 2000, *args)
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        assert err.strip().splitlines()[-1].endswith(message.replace("{t}", str(tmp_path))), err
    else:
        out = srn_here(capsys, "train", tmp_path / "v.npy", "-o", tmp_path / "m.srn", "--steps", 5, *args,
                       *([] if {"--params", "--ratio"} & set(args) else ["--params", 2000]))
        assert out.returncode == 1, out.stderr
        assert out.stderr.strip().splitlines() == [f"srn train: error: {message.replace('{t}', str(tmp_path))}"] \
            or (out.stderr.count("\n") == 1 and out.stderr.startswith(f"srn train: error: {message}")), out.stderr
    assert sorted(os.listdir(tmp_path)) == ["v.npy"]


def test_a_series_is_not_an_ensemble_input(tmp_path, capsys):
    _volume(tmp_path)
    np.save(tmp_path / "w.npy", np.load(tmp_path / "v.npy") * 2)
    out = srn_here(capsys, "train", tmp_path / "v.npy", tmp_path / "w.npy", "-o", tmp_path / "m.srn", "--ensemble",
                   2, 1, 1, "--params", 2000, "--array", "density")
    assert out.returncode == 1 and out.stderr.strip().splitlines() == [
        f"srn train: error: --ensemble trains one static volume, but the input (2 files ({tmp_path}/v.npy ... "
        f"{tmp_path}/w.npy)) is a time series of 2 steps; pick one step with --time I."], out.stderr
