"""Bad-input catalogue, `srn train` options and outputs: one clear error line, no traceback, nothing lost.

Every case runs the real command in a subprocess. An error must come before any training (a bad output found
only after hours of training loses them), name the parameter and its value, leave the input untouched and write
no file. A full disk when the model is written (a file-size limit set on the running process) must keep the
checkpoint, so that `--resume` writes the model without training again.
"""

import functools
import os
import resource
import subprocess
import sys
import time

import numpy as np
import pytest

from privileges import without_root_override
from srn_core.modelfile import load_tensors
from srn_runner import run_srn

# One CPU thread: the machine's other processes then cost these runs time, not the collapse of defect 4.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "SRN_MEMORY_LIMIT": "4GB"}
FAST = ["--steps", "5", "--batch-size", "256", "--quiet"]


srn = functools.partial(run_srn, env=ENV)


@pytest.fixture
def folder(tmp_path):
    z, y, x = np.meshgrid(*[np.linspace(0, 1, n) for n in (12, 14, 16)], indexing="ij")
    values = (np.sin(4 * x) * y + z).astype(np.float32)
    np.save(tmp_path / "vol.npy", values)
    values.tofile(tmp_path / "data.bin")  # raw float32: a volume under a name with no volume suffix
    os.link(tmp_path / "vol.npy", tmp_path / "hard.srn")
    os.symlink(tmp_path / "vol.npy", tmp_path / "sym.srn")
    (tmp_path / "folder.srn").mkdir()
    return tmp_path


def _one_error(out, code, message):
    assert out.returncode == code, out.stderr
    assert "Traceback" not in out.stderr
    errors = [line for line in out.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("srn train: error: ") and message in errors[0], out.stderr
    assert "training apmgsrn" not in out.stderr  # refused before any training started


@pytest.mark.parametrize("args, code, message", [
    (["--ratio", "0"], 2, "argument --ratio: must be a positive number, got '0'."),
    (["--ratio", "-3"], 2, "argument --ratio: must be a positive number, got '-3'."),
    (["--ratio", "nan"], 2, "argument --ratio: must be a positive number, got 'nan'."),
    (["--time-limit", "-1"], 2, "argument --time-limit: must be a positive number, got '-1'."),
    (["--time-limit", "0"], 2, "argument --time-limit: must be a positive number, got '0'."),
    (["--lr", "-0.01"], 2, "argument --lr: must be a positive number, got '-0.01'."),
    (["--checkpoint-every", "0"], 2, "argument --checkpoint-every: must be a positive integer, got '0'."),
    (["--size", "lots"], 2, "argument --size: must look like 500KB, 1MB or 2.5GiB, got 'lots'."),
    # --size is the file's size: 20 GB of 8-bit grid codes (after LZMA) are 25 billion parameters
    (["--size", "20GB"], 1, "--size 20 GB (25,395,200,000 parameters) needs 406 GB of memory but only 4 GB is "
                            "available; ask for less."),
    (["--params", "3000000000"], 1, "--params 3000000000 needs 48 GB of memory but only 4 GB is available"),
    (["-o", "{t}/vol.npy"], 1, "output '{t}/vol.npy' has the volume suffix '.npy' but a model file is written "
                               "there; name it e.g. vol.srn."),
    (["-o", "{t}/model.vti"], 1, "output '{t}/model.vti' has the volume suffix '.vti'"),
    (["-o", "{t}/model.nii.gz"], 1, "output '{t}/model.nii.gz' has the volume suffix '.nii.gz'"),
    (["-o", "{t}/hard.srn"], 1, "output '{t}/hard.srn' is the input volume '{t}/vol.npy' (the same file); "
                                "writing the model there would replace the training data."),
    (["-o", "{t}/sym.srn"], 1, "output '{t}/sym.srn' is the input volume '{t}/vol.npy' (the same file)"),
    (["-o", "{t}/folder.srn"], 1, "output '{t}/folder.srn' is a directory"),
    (["--resume"], 1, "checkpoint '{t}/m.srn.checkpoint' does not exist; nothing to resume."),
])
def test_bad_train_options_and_outputs_give_one_error_and_write_nothing(folder, args, code, message):
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    args = [a.format(t=folder) for a in args]
    output = [] if "-o" in args else ["-o", folder / "m.srn"]
    budget = [] if {"--size", "--params", "--ratio"} & set(args) else ["--ratio", "2"]  # a budget that trains
    out = srn("train", folder / "vol.npy", *output, *FAST, *budget, *args)
    _one_error(out, code, message.format(t=folder))
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} == before  # input intact, no file


def test_an_output_that_is_the_input_under_any_name_is_refused(folder):
    # A raw input needs no volume suffix, so only the same-file test can see that it is the output too.
    before = (folder / "data.bin").read_bytes()
    out = srn("train", folder / "data.bin", "-o", folder / "data.bin", "--raw-shape", 12, 14, 16,
              "--raw-dtype", "<f4", *FAST, "--ratio", 2)
    _one_error(out, 1, f"output '{folder}/data.bin' is the input volume '{folder}/data.bin' (the same file)")
    assert (folder / "data.bin").read_bytes() == before


def test_a_checkpoint_of_an_interrupted_run_is_not_overwritten_without_resume(folder):
    (folder / "m.srn.checkpoint").write_bytes(b"hours of training")
    out = srn("train", folder / "vol.npy", "-o", folder / "m.srn", *FAST, "--ratio", 2)
    _one_error(out, 1, f"checkpoint '{folder}/m.srn.checkpoint' of an interrupted run exists; add --resume to "
                       f"continue it, or delete it to start afresh.")
    assert (folder / "m.srn.checkpoint").read_bytes() == b"hours of training"


def test_a_read_only_output_folder_fails_before_training(folder):
    (folder / "ro").mkdir()
    os.chmod(folder / "ro", 0o555)
    try:
        out = srn("train", folder / "vol.npy", "-o", folder / "ro" / "m.srn", "--steps", 100000, "--ratio", 2,
                  preexec_fn=without_root_override if os.geteuid() == 0 else None)
    finally:
        os.chmod(folder / "ro", 0o755)
    _one_error(out, 1, f"cannot write the model to folder '{folder}/ro' (Permission denied); choose an output "
                       f"in a writable folder.")
    assert out.stderr.count("\n") == 1 and os.listdir(folder / "ro") == []


def test_a_full_disk_when_writing_the_model_keeps_the_checkpoint(folder):
    """The disk fills during training: one error line, the checkpoint kept; --resume then writes the model."""
    cmd = ["train", folder / "vol.npy", "-o", folder / "m.srn", "--steps", 100000, "--time-limit", 3,
           "--batch-size", 1024, "--ratio", 2, "--checkpoint-every", 10, "--quiet"]
    proc = subprocess.Popen([sys.executable, "-m", "srn.cli", *map(str, cmd)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    checkpoint = folder / "m.srn.checkpoint"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    # From now on no file of this process may grow past 1000 bytes: the model (9 kB) and checkpoints cannot
    # be written, as on a full disk (the write fails with EFBIG, "File too large").
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (1000, 1000))
    saved = load_tensors(checkpoint)[1]["checkpoint"]["step"]
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert errors == [f"srn train: error: could not write the model '{folder}/m.srn' (File too large); the "
                      f"training state is kept in '{checkpoint}': fix that and run the same command with "
                      f"--resume to write the model without training again."], err
    assert "srn train: warning: could not write the training checkpoint" in err  # said once, training went on
    assert not (folder / "m.srn").exists() and not [p for p in os.listdir(folder) if p.endswith(".tmp")]
    assert load_tensors(checkpoint)[1]["checkpoint"]["step"] == saved  # the last good one, untouched
    done = srn(*cmd, "--resume")
    assert done.returncode == 0, done.stderr
    assert (folder / "m.srn").exists() and not checkpoint.exists()
