"""Resampling throughput, side by side: the core alone, the VTK source, and pvbatch on 1 and 2 MPI ranks.

    .venv/bin/python benchmarks/resample.py                 # 256^3 points, a fresh APMGSRN model
    .venv/bin/python benchmarks/resample.py --dims 128 --model brain.srn

Every row evaluates the same model on the same image of ``dims^3`` points with the same chunk size and
reports points per second of the evaluation alone (model loaded and warmed up; file writing excluded):

* core: :meth:`NeuralVolume.resample` in this process;
* VTK source: ``NeuralVolumeSource.Update()`` with the vtk wheel in this process;
* pvbatch: ``examples/resample_to_vti.py`` under Debian's pvbatch (time of ``UpdatePipeline``, as the script
  prints it), serially and with ``mpirun -np 2`` (each rank evaluates half of the image). The wall column
  adds process start-up, plugin loading and writing the ``.vti``/``.pvti``.

Torch threads per process are shown because Open MPI binds each of 2 ranks to one core. ParaView rows are
skipped with a note when ParaView or its venv is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

import torch  # noqa: E402

import paraview_env  # noqa: E402
from srn_core.geometry import ImageGeometry  # noqa: E402
from srn_core.loading import load_model  # noqa: E402
from srn_core.model import NeuralVolume  # noqa: E402


def make_model(path: Path, budget: int) -> NeuralVolume:
    """A briefly trained APMGSRN on a 64^3 analytic field (speed does not depend on the weights' quality)."""
    import numpy as np

    from srn_core.data import Volume
    from srn_core.fields import field_for_budget
    from srn_core.training import TrainConfig, train

    g = ImageGeometry((64, 64, 64), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, 64),) * 3, indexing="ij")
    volume = Volume((np.sin(3 * x) * np.cos(2 * y) + z * z).astype(np.float32), g, "value")
    field = field_for_budget("apmgsrn", budget, g.shape, volume.value_range)
    result = train(volume, field, TrainConfig(steps=20, batch_size=4096, seed=0, device="cpu"))
    result.model.save(path)
    return result.model


def time_core(model: NeuralVolume, geometry: ImageGeometry, chunk: int) -> float:
    model.resample(ImageGeometry((16, 16, 16), geometry.origin, geometry.spacing), chunk_size=chunk)  # warm-up
    start = time.perf_counter()
    model.resample(geometry, chunk_size=chunk)
    return time.perf_counter() - start


def time_vtk_source(path: Path, dims, chunk: int) -> float:
    from paraview_plugin import NeuralVolumeSource

    source = NeuralVolumeSource()
    source.SetFileName(str(path))
    source.SetChunkSize(chunk)
    source.SetDevice("cpu")
    source.SetSamplingDimensions(16, 16, 16)
    source.Update()  # loads the model and warms torch up
    source.SetSamplingDimensions(*dims)
    start = time.perf_counter()
    source.Update()
    elapsed = time.perf_counter() - start
    if source.last_error:
        raise RuntimeError(source.last_error)
    return elapsed


def time_pvbatch(path: Path, dims, chunk: int, ranks: int, env: dict, out: Path) -> tuple[dict, float]:
    example = str(REPO / "examples" / "resample_to_vti.py")
    target = out / (f"pv{ranks}.pvti" if ranks > 1 else "pv1.vti")
    args = [example, str(path), str(target), "--dims", *map(str, dims), "--chunk-size", str(chunk), "--device", "cpu"]
    cmd = paraview_env.mpirun_command(ranks, "pvbatch", env) + args if ranks > 1 else ["pvbatch"] + args
    start = time.perf_counter()
    result = paraview_env.run(cmd, env, timeout=3600)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    summary = json.loads([line for line in result.stdout.splitlines() if line.startswith("{")][-1])
    return summary, wall


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", type=int, default=256, help="points per axis of the resampled image (default 256)")
    p.add_argument("--model", type=Path, default=None, help="model file (default: a fresh APMGSRN)")
    p.add_argument("--budget", type=int, default=65536, help="parameters of the fresh model")
    p.add_argument("--chunk-size", type=int, default=65536)
    p.add_argument("--repeat", type=int, default=1, help="runs per row; the fastest counts (shared machines)")
    args = p.parse_args(argv)
    load_before = os.getloadavg()[0]
    dims = (args.dims,) * 3
    with tempfile.TemporaryDirectory(prefix="nv-resample-") as tmp:
        tmp = Path(tmp)
        path = args.model or tmp / "bench.srn"
        model = load_model(path, device="cpu") if args.model else make_model(path, args.budget)
        geometry = ImageGeometry.from_bounds(model.bounds, dims)
        n = geometry.num_points
        rows = []
        t = min(time_core(model, geometry, args.chunk_size) for _ in range(args.repeat))
        rows.append(("core: NeuralVolume.resample", n / t, t, None, torch.get_num_threads()))
        t = min(time_vtk_source(path, dims, args.chunk_size) for _ in range(args.repeat))
        rows.append(("VTK source (vtk wheel)", n / t, t, None, torch.get_num_threads()))
        reason = paraview_env.missing_reason()
        if reason is None:
            x = paraview_env.Xvfb()
            env = paraview_env.environment(x.start())
            try:
                for ranks in (1, 2):
                    runs = [time_pvbatch(path, dims, args.chunk_size, ranks, env, tmp) for _ in range(args.repeat)]
                    summary, wall = min(runs, key=lambda run: run[0]["evaluate_s"])
                    t = summary["evaluate_s"]
                    label = "pvbatch, 1 rank" if ranks == 1 else f"mpirun -np {ranks} pvbatch"
                    rows.append((label, n / t, t, wall, summary["torch_threads"]))
            finally:
                x.stop()
        print(f"Resampling {dims[0]}x{dims[1]}x{dims[2]} = {n:,} points; {model.field.architecture} with "
              f"{model.num_parameters:,} parameters ({model.field.config_dict()}); chunk size {args.chunk_size}; "
              f"torch {torch.__version__}; {os.cpu_count()} CPUs, 1-min load average {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after.")
        print(f"| {'path':<30} | {'points/s':>12} | {'evaluate s':>10} | {'wall s':>7} | {'threads/rank':>12} |")
        print(f"|{'-' * 32}|{'-' * 14}|{'-' * 12}|{'-' * 9}|{'-' * 14}|")
        for label, rate, seconds, wall, threads in rows:
            w = f"{wall:7.2f}" if wall is not None else f"{'':7}"
            print(f"| {label:<30} | {rate:>12,.0f} | {seconds:>10.2f} | {w} | {threads:>12} |")
        if reason is not None:
            print(f"(ParaView rows skipped: {reason})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
