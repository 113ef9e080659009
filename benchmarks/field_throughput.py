"""Field throughput: points per second of the fused APMGSRN kernel against the PyTorch reference path.

    .venv/bin/python benchmarks/field_throughput.py            # about 3 minutes
    .venv/bin/python benchmarks/field_throughput.py --model brain.srn --repeats 7

The model is ``benchmarks/results/inia19_render.srn`` (the 44k-parameter APMGSRN of ``benchmarks/render.py``)
when it exists, else trained for ``--train-seconds`` on inia19 by that benchmark's recipe and cached there (how well
it is trained does not change the speed).
Both paths run through :func:`srn_core.evaluate.evaluate` (``fused=True`` / ``fused=False``) on

* ``random``: 2^20 uniform points of the model cube (a renderer's samples, scattered), per chunk size;
* ``bricks``: bricks of 33^3 lattice points (32 voxels plus a one-voxel apron, x fastest), one call per brick:
  what a brick cache decodes;

with 1 and 2 torch threads, quiet and beside one busy process (``python -c 'while True: pass'`` in its own
session, as a second program would be). Each figure is the best of ``--repeats`` runs. The compile and cache
load times of the kernel are measured in fresh processes with an empty ``NUMBA_CACHE_DIR``.

Prints a table and writes ``benchmarks/results/field_throughput.json``. On a 2-core machine, run it while nothing
else measures: its own busy process is the only contention it means to see.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srn_core.evaluate import evaluate  # noqa: E402
from srn_core.data import read_nifti  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
INIA19 = "/usr/share/mricron/templates/inia19-t1-brain.nii.gz"
RENDER_MODEL = RESULTS / "inia19_render.srn"
BRICK = 33
CHUNK_SIZES = (4096, 65536, 1 << 20)


def field_points_per_second(evaluator: Callable[[torch.Tensor], object], points: torch.Tensor | list,
                            repeats: int = 5) -> float:
    """Best-of-``repeats`` points per second of ``evaluator`` over ``points`` (one tensor ``(N, 3)``, or a list
    of them evaluated one call each, as bricks are), after one warm-up call."""
    batches = points if isinstance(points, list) else [points]
    total = sum(int(b.shape[0]) for b in batches)
    evaluator(batches[0][:64])  # warm-up: kernel load, weight packing, thread pool start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            evaluator(batch)
        best = min(best, time.perf_counter() - start)
    return total / best


def model_and_path(path: Path | None, train_seconds: float):
    """The model to measure and where it came from: ``path``, else the render benchmark's model (trained and
    cached by ``benchmarks/render.py``'s own recipe when missing)."""
    from render import trained_model  # the sibling benchmark: one recipe and one cached file for both

    volume = None if path is not None or RENDER_MODEL.is_file() else read_nifti(INIA19, name="inia19")
    return trained_model(path, train_seconds, volume)


def brick_points(model, n_bricks: int, seed: int = 0) -> list[torch.Tensor]:
    """``n_bricks`` bricks of ``BRICK``^3 lattice points (x fastest) at random voxel offsets of the model's grid."""
    nx, ny, nz = model.geometry.dims
    g = torch.Generator().manual_seed(seed)
    bricks = []
    for _ in range(n_bricks):
        axes = []
        for n in (nx, ny, nz):
            first = int(torch.randint(0, max(1, n - BRICK), (1,), generator=g))
            axes.append(-1 + 2 * (first + torch.arange(BRICK, dtype=torch.float32)) / (n - 1))
        z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
        bricks.append(torch.stack([x.reshape(-1), y.reshape(-1), z.reshape(-1)], dim=1).contiguous())
    return bricks


def measure(field, random_points, bricks, repeats: int, threads: int) -> list[dict]:
    torch.set_num_threads(threads)
    rows = []
    for fused in (True, False):
        path = "fused" if fused else "reference"
        for chunk in CHUNK_SIZES:
            rate = field_points_per_second(lambda p: evaluate(field, p, chunk, fused=fused), random_points, repeats)
            rows.append(dict(points="random", path=path, chunk=chunk, threads=threads, rate=rate))
        rate = field_points_per_second(lambda p: evaluate(field, p, 1 << 16, fused=fused), bricks, repeats)
        rows.append(dict(points=f"bricks of {BRICK}^3", path=path, chunk=BRICK ** 3, threads=threads, rate=rate))
    return rows


def start_busy_process() -> subprocess.Popen:
    busy = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    busy.stdout.readline()
    return busy


COLD_START = """
import time
start = time.perf_counter()
import torch, srn_core
from srn_core.fields import field_for_budget
from srn_core.kernels import fused_evaluator
field = field_for_budget("apmgsrn", 44_000, (128, 206, 168))
imported = time.perf_counter()
fused_evaluator(field)(torch.zeros(8, 3))
print(imported - start, time.perf_counter() - imported)
"""


def kernel_start_times() -> dict:
    """Seconds for the first fused call in a fresh process: with an empty numba cache (compile), then with the
    cache that run left (load)."""
    times = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        for label in ("compile", "load from cache"):
            out = subprocess.run([sys.executable, "-c", COLD_START], env=env, cwd=str(ROOT), capture_output=True,
                                 text=True, timeout=600, check=True)
            imports, first_call = (float(v) for v in out.stdout.split())
            times[label] = first_call
            times["import srn_core and torch"] = imports
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model file (default: the render benchmark's inia19 model)")
    ap.add_argument("--train-seconds", type=float, default=60.0)
    ap.add_argument("--points", type=int, default=1 << 20)
    ap.add_argument("--bricks", type=int, default=24, help="33^3 bricks per brick measurement (default 24)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--output", type=Path, default=RESULTS / "field_throughput.json")
    args = ap.parse_args(argv)

    import numba

    model, model_path = model_and_path(args.model, args.train_seconds)
    field = model.field
    random_points = torch.rand(args.points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    bricks = brick_points(model, args.bricks)
    reference = evaluate(field, random_points[:100_000], fused=False)
    difference = float((evaluate(field, random_points[:100_000]) - reference).abs().max())
    span = float(model.value_range[1] - model.value_range[0])
    default_threads = torch.get_num_threads()

    load_before = os.getloadavg()[0]
    rows = []
    for threads in (1, 2):
        rows += [dict(r, busy=False) for r in measure(field, random_points, bricks, args.repeats, threads)]
    busy = start_busy_process()
    try:
        for threads in (1, 2):
            rows += [dict(r, busy=True) for r in measure(field, random_points, bricks, args.repeats, threads)]
    finally:
        busy.kill()
        busy.wait()
    load_after = os.getloadavg()[0]
    torch.set_num_threads(default_threads)
    start_times = kernel_start_times()

    def rate_of(**key):
        return next(r["rate"] for r in rows if all(r[k] == v for k, v in key.items()))

    print(f"{model_path}: {field.num_parameters():,} parameters, {field.config}")
    print(f"fused vs reference: max difference {difference:.2e} ({difference / span:.1e} of the value range)")
    print(f"numba {numba.__version__}, threading layer {numba.threading_layer()}; {os.cpu_count()} CPUs; "
          f"1-minute load average {load_before:.2f} before, {load_after:.2f} after")
    print(f"\n{'points':<16} {'chunk':>8} {'threads':>7} {'busy':>5} {'fused M/s':>10} {'reference M/s':>14} "
          f"{'speed-up':>9}")
    for r in rows:
        if r["path"] != "fused":
            continue
        ref = rate_of(points=r["points"], path="reference", chunk=r["chunk"], threads=r["threads"], busy=r["busy"])
        r["speedup"] = r["rate"] / ref
        print(f"{r['points']:<16} {r['chunk']:>8} {r['threads']:>7} {'yes' if r['busy'] else 'no':>5} "
              f"{r['rate'] / 1e6:>10.2f} {ref / 1e6:>14.2f} {r['speedup']:>8.1f}x")
    print("\nfirst fused call in a fresh process: " + ", ".join(f"{k} {v:.2f} s" for k, v in start_times.items()))

    report = dict(model=model_path, parameters=field.num_parameters(), config=field.config_dict(),
                  max_difference=difference, max_difference_relative=difference / span,
                  numba=numba.__version__, threading_layer=numba.threading_layer(), torch=torch.__version__,
                  cpus=os.cpu_count(), processor=platform.processor() or platform.machine(),
                  load_before=load_before, load_after=load_after, repeats=args.repeats, rows=rows,
                  start_seconds=start_times)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
