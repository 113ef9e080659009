"""`mpirun -np 2 srn train --ensemble ...` as a user runs it: real Open MPI, real ranks, real signals.

* Two ranks write the serial run's model bit for bit (brick seeds depend on the brick, never on the rank), with one
  progress bar (rank 0's) that counts both ranks' steps.
* A rank killed outright (SIGKILL, as a lost node) makes mpirun stop the other one: no model file, the finished
  bricks and the unfinished brick's checkpoint stay in OUTPUT.parts; the same command with --resume trains only
  the unfinished brick and writes the uninterrupted model.
* A rank whose brick fails (an MPMD launch gives rank 1 a device that does not exist: a real error inside its
  training, no test hook) fails every rank: each exits 1 and the job prints one error line.
* Checks before training happen on rank 0 and reach every rank: parts of an earlier run without --resume are one
  error line, every rank exits 1.
"""

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from srn_core.modelfile import load_tensors

MPIRUN = shutil.which("mpirun")
pytestmark = pytest.mark.skipif(MPIRUN is None, reason="needs Open MPI's mpirun (Debian openmpi-bin)")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# One thread per process: the serial reference then sums in the order each rank does.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
STEPS = 120
TRAIN = ["--ensemble", "3", "1", "1", "--ghost", "1", "--steps", str(STEPS), "--batch-size", "2048", "--params", "9000",
         "--float32", "--seed", "3", "--checkpoint-every", "10", "--progress-interval", "0"]


def _srn(folder, *extra):
    return [sys.executable, "-m", "srn.cli", "train", str(folder / "v.raw"), "--raw-shape", "16", "18", "24",
            "--raw-dtype", "<f4", "-o", str(folder / "m.srn"), *TRAIN, *map(str, extra)]


def _mpirun(*apps):
    """``mpirun -np 1 APP0 : -np 1 APP1 ...`` (one rank per command line: an MPMD launch when they differ). Each
    rank runs through ``sh`` so that its own exit status is kept in ``rc.<rank>`` beside the output."""
    # --bind-to none: on a machine shared with other work a rank pinned to a busy core would lag behind the other.
    line = [MPIRUN, "--allow-run-as-root", "--oversubscribe", "--bind-to", "none"]
    for i, app in enumerate(apps):
        script = f'{shlex.join(app)}; code=$?; echo $code > "$SRN_TEST_RC.$OMPI_COMM_WORLD_RANK"; exit $code'
        line += ([":"] if i else []) + ["-x", "SRN_TEST_RC", "-np", "1", "sh", "-c", script]
    return line


def _volume(folder):
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (16, 18, 24)], indexing="ij")
    (np.sin(6 * x) * y + z * z).astype("<f4").tofile(folder / "v.raw")


def _rank_codes(folder, size=2):
    return [int((folder / f"rc.{r}").read_text()) for r in range(size)]


@pytest.fixture(scope="module")
def serial(tmp_path_factory):
    """The serial run's model file, and its stderr."""
    folder = tmp_path_factory.mktemp("serial")
    _volume(folder)
    out = subprocess.run(_srn(folder), capture_output=True, text=True, env=ENV, timeout=300)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(folder)) == ["m.srn", "v.raw"]  # the parts folder is gone once the file is written
    return load_tensors(folder / "m.srn"), out.stderr


def _assert_same_model(path, serial):
    (tensors, meta), ((ref, ref_meta), _) = load_tensors(path), serial
    assert tensors.keys() == ref.keys() and len(ref) > 3
    for key in ref:
        assert torch.equal(tensors[key], ref[key]), key  # bit for bit
    assert meta["architecture"] == "ensemble" and meta["config"] == ref_meta["config"]
    assert meta["training"]["ensemble_grid"] == [3, 1, 1] and meta["training"]["ensemble_ghost"] == 1
    assert [b["steps"] for b in meta["training"]["ensemble_bricks"]] == [STEPS] * 3


def _progress(stderr, total):
    return [int(n) for n in re.findall(rf"^train: (\d+)/{total} steps", stderr, re.MULTILINE)]


def test_two_ranks_write_the_serial_model_with_one_progress_bar(tmp_path, serial):
    _volume(tmp_path)
    env = {**ENV, "SRN_TEST_RC": str(tmp_path / "rc")}
    started = time.monotonic()
    out = subprocess.run(_mpirun(_srn(tmp_path), _srn(tmp_path)), capture_output=True, text=True, env=env,
                         timeout=300)
    print(f"mpirun -np 2 ensemble of 3 bricks: {time.monotonic() - started:.1f} s wall")
    assert out.returncode == 0 and _rank_codes(tmp_path) == [0, 0], out.stderr
    assert sorted(p for p in os.listdir(tmp_path) if not p.startswith("rc.")) == ["m.srn", "v.raw"]
    _assert_same_model(tmp_path / "m.srn", serial)
    # One bar (rank 0's) over every brick's steps: both ranks' reports move it, and it ends at the total.
    assert out.stderr.count("training an ensemble of 3 x 1 x 1 apmgsrn bricks (ghost 1)") == 1
    assert "on 2 MPI ranks" in out.stderr
    counts = _progress(out.stderr, 3 * STEPS)
    assert counts == sorted(counts) and counts[-1] == 3 * STEPS, out.stderr
    # Rank 0 trains bricks 0 and 2 (240 steps); the bar passed that before the end only with rank 1's reports.
    assert len(counts) >= 10 and len(set(counts)) >= 10, out.stderr
    assert "3/3 bricks done" in out.stderr
    assert re.search(r"PSNR ~\d+\.\d\d dB \(brick 1\)$", out.stderr, re.MULTILINE)  # rank 1's brick, relayed
    assert out.stdout.count("model     ") == 1 and "over 3 bricks" in out.stdout  # rank 0 alone prints


def test_a_killed_rank_leaves_no_model_and_resume_trains_only_the_unfinished_bricks(tmp_path, serial):
    """Rank 0 trains bricks 0 and 2, rank 1 brick 1. Once brick 1 has its first checkpoint, rank 1 is killed
    outright (SIGKILL, as a lost node); about a second later mpirun stops rank 0 (SIGTERM) in the middle of its
    bricks, which it leaves checkpointed."""
    _volume(tmp_path)
    parts = tmp_path / "m.srn.parts"
    tag = str(tmp_path / "rc")
    env = {**ENV, "SRN_TEST_RC": tag}
    started = time.monotonic()
    with open(tmp_path / "err.txt", "w") as err:
        proc = subprocess.Popen(_mpirun(_srn(tmp_path), _srn(tmp_path)), stdout=subprocess.DEVNULL, stderr=err,
                                env=env)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None and not (parts / "brick-00001.checkpoint").exists():
            time.sleep(0.005)
        pids = _rank_pids(tag)
        assert proc.poll() is None and 1 in pids, (pids, (tmp_path / "err.txt").read_text())
        os.kill(pids[1], signal.SIGKILL)
        proc.wait(timeout=120)
    killed = time.monotonic() - started
    text = (tmp_path / "err.txt").read_text()
    assert proc.returncode != 0, text
    assert not (tmp_path / "m.srn").exists()
    kept = sorted(os.listdir(parts))
    finished = [k for k in range(3) if f"brick-{k:05d}.safetensors" in kept]
    assert 1 not in finished and "brick-00001.checkpoint" in kept, kept
    for k in set(range(3)) - set(finished):  # every unfinished brick that started has its checkpoint
        if f"brick-{k:05d}.checkpoint" in kept:  # (at STEPS when stopped after its training, before its file)
            assert 0 < load_tensors(parts / f"brick-{k:05d}.checkpoint")[1]["checkpoint"]["step"] <= STEPS

    started = time.monotonic()
    out = subprocess.run(_mpirun(_srn(tmp_path, "--resume"), _srn(tmp_path, "--resume")), capture_output=True,
                         text=True, env=env, timeout=300)
    print(f"mpirun -np 2, rank 1 killed: {killed:.1f} s wall; --resume: {time.monotonic() - started:.1f} s wall; "
          f"kept {kept}")
    assert out.returncode == 0 and _rank_codes(tmp_path) == [0, 0], out.stderr
    _assert_same_model(tmp_path / "m.srn", serial)
    assert not parts.exists()
    # The finished bricks were not trained again: the bar starts with their steps, every report lies above them.
    counts = _progress(out.stderr, 3 * STEPS)
    assert counts and counts[-1] == 3 * STEPS, out.stderr
    assert all(c > len(finished) * STEPS for c in counts), (finished, out.stderr)


def _rank_pids(tag):
    """``{rank: pid}`` of the Python processes of the mpirun whose ranks have ``SRN_TEST_RC=tag``."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = dict(v.split(b"=", 1) for v in f.read().split(b"\0") if b"=" in v)
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            continue
        if env.get(b"SRN_TEST_RC", b"").decode() == tag and b"srn.cli" in cmdline and cmdline[0] != b"sh":
            found[int(env[b"OMPI_COMM_WORLD_RANK"])] = int(entry)
    return found


def test_a_failing_rank_fails_every_rank_with_one_message(tmp_path):
    _volume(tmp_path)
    env = {**ENV, "SRN_TEST_RC": str(tmp_path / "rc")}
    started = time.monotonic()
    out = subprocess.run(_mpirun(_srn(tmp_path), _srn(tmp_path, "--device", "cuda:99")), capture_output=True,
                         text=True, env=env, timeout=300)
    print(f"mpirun -np 2, rank 1 failing: {time.monotonic() - started:.1f} s wall")
    assert out.returncode == 1 and _rank_codes(tmp_path) == [1, 1], out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("srn train: error: ensemble training failed (rank 1: "), \
        out.stderr
    assert "cuda:99" in errors[0] and f"kept in '{tmp_path}/m.srn.parts'" in errors[0]
    assert not (tmp_path / "m.srn").exists()


def test_a_check_before_training_fails_every_rank_alike(tmp_path):
    _volume(tmp_path)
    (tmp_path / "m.srn.parts").mkdir()
    env = {**ENV, "SRN_TEST_RC": str(tmp_path / "rc")}
    out = subprocess.run(_mpirun(_srn(tmp_path), _srn(tmp_path)), capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 1 and _rank_codes(tmp_path) == [1, 1], out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert errors == [f"srn train: error: parts folder '{tmp_path}/m.srn.parts' of an interrupted ensemble run "
                      f"exists; add --resume to continue it, or delete it to start afresh."], out.stderr
    assert "training an ensemble" not in out.stderr and os.listdir(tmp_path / "m.srn.parts") == []
