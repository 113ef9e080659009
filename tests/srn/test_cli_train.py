"""`srn train` as a user runs it: progress on a pipe, and interrupted runs (Ctrl-C, SIGTERM, SIGKILL) that resume
to exactly the model of an uninterrupted run."""

import os
import random
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from srn_core.modelfile import load_tensors

# One CPU thread: the machine's other processes then cost these runs time, not the collapse of defect 4.
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
# 600 steps: past density_start (500), so the checkpoints also carry the feature-density optimizer and the
# learning-rate schedule that starts once the grids are frozen.
TRAIN = ["--steps", "600", "--batch-size", "1024", "--ratio", "2", "--progress-interval", "0"]


def _command(folder, *extra):
    return [sys.executable, "-m", "srn.cli", "train", str(folder / "v.npy"), "-o", str(folder / "m.srn"),
            *TRAIN, *map(str, extra)]


def _volume(folder):
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (12, 14, 16)], indexing="ij")
    np.save(folder / "v.npy", (np.sin(4 * x) * y + z).astype(np.float32))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The model file of an uninterrupted run, and its progress output."""
    folder = tmp_path_factory.mktemp("straight")
    _volume(folder)
    out = subprocess.run(_command(folder), capture_output=True, text=True, env=ENV, timeout=600)
    assert out.returncode == 0, out.stderr
    return load_tensors(folder / "m.srn"), out


def _assert_same_model(path, reference):
    (tensors, meta), ((ref_tensors, ref_meta), _) = load_tensors(path), reference
    assert tensors.keys() == ref_tensors.keys()
    for key in ref_tensors:
        assert torch.equal(tensors[key], ref_tensors[key]), key  # bit for bit
    assert meta["training"]["steps"] == ref_meta["training"]["steps"] == 600


def test_progress_is_printed_as_lines_when_stderr_is_not_a_terminal(reference):
    stderr = reference[1].stderr
    lines = re.findall(r"^train: (\d+)/600 steps \((\d+)%\), \d+ s elapsed, ETA \d+ s, PSNR ~(\d+\.\d\d) dB, "
                       r"loss \d\.\d\de-\d\d, lr 1e-02$", stderr, re.MULTILINE)
    # --progress-interval 0: one line per progress report (every 25 steps), the steps and percentages exact
    assert [(int(n), int(p)) for n, p, _ in lines] == [(n, round(100 * n / 600)) for n in range(25, 601, 25)]
    assert float(lines[-1][2]) > 15  # the running PSNR estimate of the last batches
    assert "\r" not in stderr  # no carriage-return redraws in a log


def _wait_for_progress(proc, err_path, min_step=0, timeout=300):
    """Block until the run printed a progress line of at least ``min_step`` (it is then inside the loop)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        steps = [int(s) for s in re.findall(r"^train: (\d+)/", err_path.read_text(), re.MULTILINE)]
        if steps and steps[-1] >= min_step:
            return steps[-1]
        time.sleep(0.02)
    return None


def test_signals_at_random_moments_then_resume_give_the_uninterrupted_model(tmp_path, reference):
    """Ctrl-C and SIGTERM (what schedulers and mpirun send), each twice, at random moments, then --resume."""
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM)
    _volume(tmp_path)
    rng = random.Random()
    history = []
    resume = []
    for signum in signals:
        err_path = tmp_path / "stderr.txt"
        with open(err_path, "w") as err:
            proc = subprocess.Popen(_command(tmp_path, *resume), stdout=subprocess.DEVNULL, stderr=err, env=ENV)
            if _wait_for_progress(proc, err_path) is not None:
                delay = rng.uniform(0.0, 1.0)  # anywhere inside a step, a callback or a checkpoint write
                time.sleep(delay)
                proc.send_signal(signum)
                history.append((signum, delay))
            proc.wait(timeout=300)
        text = err_path.read_text()
        assert "Traceback" not in text, text
        if proc.returncode == 0 or not (tmp_path / "m.srn.checkpoint").exists():
            break  # finished before the signal, or interrupted after the model was written
        # Stopped between two steps with the state saved, or killed by SIGTERM once training had returned
        # (the last checkpoint already holds the finished state).
        name = "Ctrl-C" if signum == signal.SIGINT else "SIGTERM"
        assert (proc.returncode == 128 + signum and f"interrupted ({name}) at step" in text
                or proc.returncode in (130, -signal.SIGTERM)), (proc.returncode, text, history)
        resume = ["--resume"]
    if (tmp_path / "m.srn.checkpoint").exists():
        done = subprocess.run(_command(tmp_path, "--resume"), capture_output=True, text=True, env=ENV, timeout=600)
        assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == ["m.srn", "stderr.txt", "v.npy"], history
    _assert_same_model(tmp_path / "m.srn", reference)


def test_sigkill_leaves_a_checkpoint_by_steps_that_resumes_exactly(tmp_path, reference):
    """Killed outright long before the first timed checkpoint (60 s): the step-based one is there."""
    _volume(tmp_path)
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen(_command(tmp_path, "--checkpoint-every", 20), stdout=subprocess.DEVNULL,
                                stderr=err, env=ENV)
        reached = _wait_for_progress(proc, err_path, min_step=50)
        proc.kill()
        proc.wait(timeout=60)
    assert reached is not None and reached < 600, err_path.read_text()
    saved = load_tensors(tmp_path / "m.srn.checkpoint")[1]["checkpoint"]["step"]
    assert saved % 20 == 0 and saved >= 40
    done = subprocess.run(_command(tmp_path, "--resume"), capture_output=True, text=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "m.srn.checkpoint").exists()
    _assert_same_model(tmp_path / "m.srn", reference)
