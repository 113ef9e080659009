"""Bad input volumes fed to `srn train` and `srn eval` (defect 13's catalogue, the data files): one error line
naming the problem, exit code 1, no traceback, no output file; and --mask-nonfinite honoured by every format."""

import functools
import os

import numpy as np
import pytest

from core_samples import analytic_values
from srn_runner import run_srn

INIA19 = "/usr/share/mricron/templates/inia19-t1-brain.nii.gz"


srn = functools.partial(run_srn, timeout=120)


def assert_one_error(out, command: str, message: str) -> None:
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"srn {command}: error: ") and message in lines[0], out.stderr


def train(path, out, *extra):
    return srn("train", path, "-o", out, "--steps", 5, "--batch-size", 256, "--ratio", 2, "--quiet", *extra)


def test_truncated_nifti(tmp_path):
    if not os.path.exists(INIA19):
        pytest.skip("Debian package mricron-data is not installed")
    whole = open(INIA19, "rb").read()
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 3])
    out = train(tmp_path / "cut.nii.gz", tmp_path / "m.srn")
    assert_one_error(out, "train", f"NIfTI file {str(tmp_path / 'cut.nii.gz')!r} is truncated or corrupt")
    assert sorted(os.listdir(tmp_path)) == ["cut.nii.gz"]


@pytest.mark.parametrize("dtype, message", [
    ("bogus", "raw dtype 'bogus' (--raw-dtype) is not a NumPy dtype; use e.g. <f4, uint8 or >i2."),
    ("O", "raw dtype 'O' (--raw-dtype) is not numeric"),
])
def test_raw_dtype_that_is_not_a_dtype(tmp_path, dtype, message):
    np.zeros(4 * 4 * 4, np.float32).tofile(tmp_path / "v.raw")
    out = train(tmp_path / "v.raw", tmp_path / "m.srn", "--raw-shape", 4, 4, 4, "--raw-dtype", dtype)
    assert_one_error(out, "train", message)
    assert sorted(os.listdir(tmp_path)) == ["v.raw"]


def test_values_near_the_float32_limit(tmp_path):
    """max - min = 6e38 overflows float32 (the training target and the model's rescaling would be inf)."""
    values = np.linspace(-3e38, 3e38, 6 * 5 * 4, dtype=np.float32).reshape(4, 5, 6)
    np.save(tmp_path / "v.npy", values)
    out = train(tmp_path / "v.npy", tmp_path / "m.srn")
    assert_one_error(out, "train", "volume 'v' spans [-3e+38, 3e+38]: its range max - min overflows float32")
    assert sorted(os.listdir(tmp_path)) == ["v.npy"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("name", ["v.npy", "v.nii.gz", "v.vti", "v.raw"])
def test_a_fifo_as_the_input_volume_is_refused_not_waited_on(tmp_path, name):
    os.mkfifo(tmp_path / name)
    extra = ["--raw-shape", 2, 2, 2, "--raw-dtype", "<f4"] if name.endswith(".raw") else []
    out = train(tmp_path / name, tmp_path / "m.srn", *extra)  # the timeout fails the test if it blocks
    assert_one_error(out, "train", f"input file {str(tmp_path / name)!r} is not a regular file")
    assert sorted(os.listdir(tmp_path)) == [name]


# ---- --mask-nonfinite reaches every reader (defect 10) ------------------------------------------------------

@pytest.mark.parametrize("fmt", ["npy", "raw", "nii.gz"])
def test_mask_nonfinite_is_honoured_by_every_format(trained_model, tmp_path, fmt):
    """A reference with NaN and Inf holes: refused with a pointer to --mask-nonfinite, evaluated with it."""
    path, model = trained_model
    g = model.geometry
    values = analytic_values(g)  # (z, y, x)
    values[3, 4, 5] = np.nan
    values[10, 1, 2] = -np.inf
    placing = ["--origin", *g.origin]
    ref = tmp_path / f"ref.{fmt}"
    if fmt == "npy":
        np.save(ref, values)
        placing += ["--spacing", *g.spacing]
    elif fmt == "raw":
        values.tofile(ref)
        placing += ["--spacing", *g.spacing, "--raw-shape", *values.shape, "--raw-dtype", "<f4"]
    else:
        import nibabel
        img = nibabel.Nifti1Image(np.ascontiguousarray(np.transpose(values, (2, 1, 0))), np.eye(4))
        img.header.set_zooms(g.spacing)
        nibabel.save(img, str(ref))
    refused = srn("eval", path, ref, *placing)
    assert_one_error(refused, "eval", "holds 2 non-finite values (NaN/Inf); pass --mask-nonfinite")
    masked = srn("eval", path, ref, *placing, "--mask-nonfinite")
    assert masked.returncode == 0 and masked.stderr == "", masked.stderr
    psnr = float(masked.stdout.split("PSNR")[1].split()[0])
    clean = model.resample()
    from srn_core import metrics
    expected = metrics.psnr(values, clean)  # the metric excludes the two non-finite reference points
    assert psnr == pytest.approx(expected, abs=2e-3)
