"""`srn resample` and `srn eval`: mismatched references, bounded memory, allocation checks, clamping, figures."""

import os
import subprocess
import sys

import numpy as np
import pytest

from core_samples import analytic_values
from srn_runner import run_srn


srn = run_srn


def peak_rss_mb(*args) -> float:
    """Peak resident memory (MB) of one `srn` subprocess: ru_maxrss of the only child of a fresh wrapper."""
    wrapper = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
               "assert r.returncode == 0, r.stderr; print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", wrapper, sys.executable, "-m", "srn.cli", *map(str, args)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1]) / 1024.0  # KiB on Linux


@pytest.fixture(scope="module")
def reference(trained_model, tmp_path_factory):
    """The model file and its training data as a .npy, with the geometry options that place it."""
    path, model = trained_model
    d = tmp_path_factory.mktemp("eval")
    np.save(d / "ref.npy", analytic_values(model.geometry))
    g = model.geometry
    placing = ["--spacing", *g.spacing, "--origin", *g.origin]
    return path, model, d, placing


def errors(stderr: str) -> list[str]:
    return [line for line in stderr.strip().splitlines() if "error" in line]


def test_eval_of_the_training_grid_prints_the_metrics(reference):
    path, model, d, placing = reference
    out = srn("eval", path, d / "ref.npy", *placing)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    assert float(out.stdout.split("PSNR")[1].split()[0]) > 30  # measured 35.7 dB


def test_eval_refuses_a_reference_of_other_dims_naming_both(reference, tmp_path):
    """A transposed array (as a NIfTI read in another axis order would be) is not the training grid."""
    path, model, d, placing = reference
    np.save(tmp_path / "t.npy", np.ascontiguousarray(np.transpose(analytic_values(model.geometry), (0, 2, 1))))
    out = srn("eval", path, tmp_path / "t.npy", *placing)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert errors(out.stderr) == [
        f"srn eval: error: reference {str(tmp_path / 't.npy')!r} has dims 28 x 32 x 24 but the model was trained "
        f"on dims 32 x 28 x 24; evaluate against the training grid (or resample the model with srn resample)."]
    crop = srn("eval", path, d / "ref.npy", *placing, "--axis-order", "zyx")
    assert crop.returncode == 0  # the same data again: accepted


def test_eval_warns_once_when_the_bounds_differ(reference):
    path, model, d, placing = reference
    out = srn("eval", path, d / "ref.npy")  # no --spacing/--origin: unit spacing at the origin
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines() == [
        "srn eval: warning: reference bounds (0, 31, 0, 27, 0, 23) differ from the model's training bounds "
        "(1, 16.5, -2, 4.75, 0.5, 23.5); comparing at the reference's world points (outside the model's box "
        "the border values)."]


def test_resample_refuses_dims_that_cannot_fit_in_memory_or_on_disk(reference, tmp_path):
    """Checked before anything is allocated or evaluated: one error, not an OOM kill."""
    path = reference[0]
    for suffix, where in ((".vti", "of memory but only"), (".npy", "on disk but only")):
        out = srn("resample", path, "-o", tmp_path / f"x{suffix}", "--dims", 100000, 100000, 100000)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert len(errors(out.stderr)) == 1, out.stderr
        assert errors(out.stderr)[0].startswith(
            f"srn resample: error: --dims 100000 100000 100000 (a float32 output) needs 4e+03 TB {where}"), out.stderr
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope="module")
def quick_model(tmp_path_factory):
    """A small fV-SRN (fast to evaluate) saved as a model file: the memory tests only need many points."""
    from srn_core.fields import field_for_budget
    from srn_core.geometry import ImageGeometry
    from srn_core.model import NeuralVolume

    g = ImageGeometry((32, 28, 24))
    path = tmp_path_factory.mktemp("quick") / "quick.srn"
    NeuralVolume(field_for_budget("fvsrn", 3000, g.shape, (0.0, 1.0)).eval(), g, "v").save(path)
    return path


@pytest.mark.parametrize("suffix, bound", [(".npy", 0.5), (".vti", 1.6)])
def test_resample_peak_memory_is_bounded(quick_model, tmp_path, suffix, bound):
    """Streaming: the peak RSS of a 192^3 resample (27 MiB of float32) above the same command on a 2^3 grid
    (interpreter, torch, VTK, model) stays under ``bound`` x the output: .npy stores each piece as it comes
    (O(chunk)), .vti fills the one array VTK writes. The chunk is small so that the evaluation's own buffers do
    not blur the figure. Before: about 1.0x (.npy, the whole image in memory) and 2.0x (.vti, a copy for VTK)."""
    base = peak_rss_mb("resample", quick_model, "-o", tmp_path / f"small{suffix}", "--dims", 2, 2, 2,
                       "--chunk-size", 8192, "--quiet")
    big = peak_rss_mb("resample", quick_model, "-o", tmp_path / f"big{suffix}", "--dims", 192, 192, 192,
                      "--chunk-size", 8192, "--quiet")
    output_mb = 192 ** 3 * 4 / 2 ** 20
    assert big - base < bound * output_mb, (base, big)


def test_resample_streams_npy_and_vti_equal_to_the_model(reference, tmp_path):
    from paraview_plugin.vtk_image import read_vti
    from srn_core.geometry import ImageGeometry

    path, model, d, _ = reference
    g = ImageGeometry.from_bounds(model.bounds, (17, 13, 11))
    for suffix in (".npy", ".vti"):
        out = srn("resample", path, "-o", tmp_path / f"r{suffix}", "--dims", 17, 13, 11, "--chunk-size", 100)
        assert out.returncode == 0, out.stderr
        assert out.stderr.startswith("resample: 2431/2431 points (100%)")  # progress: a line when not a terminal
    expected = model.resample(g)
    assert np.abs(np.load(tmp_path / "r.npy") - expected).max() < 1e-5
    vti = read_vti(tmp_path / "r.vti")
    assert vti.geometry == g and vti.name == model.array_name and np.abs(vti.values - expected).max() < 1e-5
    assert sorted(os.listdir(tmp_path)) == ["r.npy", "r.vti"]


def test_no_clamp_lets_values_leave_the_training_range(tmp_path):
    """Clamping to the training value range is the default (defect 7); --no-clamp gives the raw network."""
    from core_samples import small_model

    model = small_model()  # random grids: the network answers outside its range (-1, 3) in places
    model.save(tmp_path / "s.srn")
    assert srn("resample", tmp_path / "s.srn", "-o", tmp_path / "c.npy", "--quiet").returncode == 0
    assert srn("resample", tmp_path / "s.srn", "-o", tmp_path / "r.npy", "--quiet", "--no-clamp").returncode == 0
    clamped, raw = np.load(tmp_path / "c.npy"), np.load(tmp_path / "r.npy")
    assert clamped.min() == -1.0 and clamped.max() == 3.0
    assert raw.min() < -3.5 and raw.max() > 3.05  # measured -3.60 and 3.06
    assert np.array_equal(np.clip(raw, -1.0, 3.0), clamped)
    # Against a reference inside the range (here the clamped values themselves) clamping can only help.
    g = model.geometry
    placing = ["--spacing", *g.spacing, "--origin", *g.origin]
    default = srn("eval", tmp_path / "s.srn", tmp_path / "c.npy", *placing)
    unclamped = srn("eval", tmp_path / "s.srn", tmp_path / "c.npy", *placing, "--no-clamp")
    assert default.returncode == 0 and unclamped.returncode == 0, default.stderr + unclamped.stderr
    assert "PSNR          inf dB" in default.stdout
    assert 10 < float(unclamped.stdout.split("PSNR")[1].split()[0]) < 60


def test_eval_figure_writes_the_comparison_png(reference, tmp_path):
    import struct

    from srn.figures import comparison_figure

    path, model, d, placing = reference
    out = srn("eval", path, d / "ref.npy", *placing, "--figure", tmp_path / "cmp.png")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == f"figure        {tmp_path / 'cmp.png'}"
    png = (tmp_path / "cmp.png").read_bytes()
    width, height = struct.unpack(">II", png[16:24])
    psnr = float(out.stdout.split("PSNR")[1].split()[0])
    expected = comparison_figure(analytic_values(model.geometry), model.resample(), model.geometry,
                                 title=f"ref: PSNR {psnr:.2f} dB")
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and (height, width) == expected.shape[:2]
    bad = srn("eval", path, d / "ref.npy", *placing, "--figure", tmp_path / "cmp.jpg")
    assert bad.returncode == 1 and bad.stderr.strip().endswith("--figure '" + str(tmp_path / "cmp.jpg")
                                                               + "' must be a .png file.")
    assert sorted(os.listdir(tmp_path)) == ["cmp.png"]
