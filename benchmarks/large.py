"""Data larger than memory: out-of-core training, ensembles against one model, training spread over MPI ranks.

Data: ``ch2better`` (Debian ``mricron-data``, a 301 x 370 x 316 human T1 MRI at 0.5 mm, uint8 read as float32) and
``inia19`` (168 x 206 x 128, float32), both ``/usr/share/mricron/templates``. PSNR = 20 log10(R) - 10 log10(MSE)
over every voxel, R the data's own value range.

1. **Out of core**:

   * ``fits``: ch2better as a raw float32 file (134 MiB), trained ``--steps`` steps in memory (the whole volume
     loaded) and streamed (``--fits-memory``, default 64 MiB, resident; bricks swapped in and out), same seed,
     budget and steps: the PSNR difference is what streaming costs.
   * ``big``: ch2better resampled trilinearly (corner aligned) to 1024^3 float32, a 4 GiB raw file written once
     into ``--work`` slab by slab; ``srn train --float32`` on it (100x: 10.7 M parameters) with
     ``--data-memory 512MiB`` for ``--big-steps`` steps, run
     under ``/usr/bin/time -v``: peak resident memory (``Maximum resident set size``) of the whole command,
     statistics pass and final PSNR over all 1.07e9 voxels included.
2. **Ensembles** (``ensemble``): on ch2better and inia19 at ``--ratio``, one APMGSRN of the whole budget against
   ensembles of ``--grids`` bricks (budget split evenly, each brick ``--seconds`` / bricks of training): equal
   total parameters and equal total training time; file bytes are the float32 model files'.
3. **MPI** (``mpi``): ``mpirun -np 1`` and ``-np 2`` ``srn train --ensemble 2 2 1`` on inia19 for
   ``--mpi-steps`` steps per brick, one torch thread per rank (``OMP_NUM_THREADS=1``). Throughput = points trained
   (bricks x steps x batch) / the training time of the busiest rank (the sum of its bricks' training seconds,
   recorded in the model file); the wall time of the whole command is reported beside it.

    .venv/bin/python benchmarks/large.py [--parts fits big ensemble mpi] [--work /tmp/nv_large]
        [--steps 1000] [--batch-size 16384] [--big-steps 400] [--ratio 100] [--seconds 60] [--grids 2,1,1 2,2,2]
        [--mpi-steps 300] [--quick]

Writes benchmarks/results/large.json (rewritten atomically after every part) and prints a table per part. Timings
depend on the load: run it alone (``flock /tmp/nv_cpu.lock ...`` on shared machines).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srn_core.data import read_nifti  # noqa: E402
from srn_core.ensemble_training import train_ensemble  # noqa: E402
from srn_core.loading import load_model  # noqa: E402
from srn_core.memory import parse_bytes  # noqa: E402
from srn_core.modelfile import atomic_write  # noqa: E402
from srn_core.training import TrainConfig, fit  # noqa: E402
from srn_core.volume_files import open_source  # noqa: E402

TEMPLATES = Path("/usr/share/mricron/templates")
VOLUMES = {"ch2better": TEMPLATES / "ch2better.nii.gz", "inia19": TEMPLATES / "inia19-t1-brain.nii.gz"}
SRN = [str(ROOT / ".venv" / "bin" / "srn")]
MIB = 1 << 20


def load(name: str):
    return read_nifti(VOLUMES[name], name=name)


def write_raw(volume, path: Path) -> None:
    """``volume``'s float32 values as a headerless raw file (array order z, y, x), atomically."""
    atomic_write(path, lambda tmp: volume.values.astype("<f4").tofile(tmp))


def write_upsampled(volume, size: int, path: Path) -> dict:
    """``volume`` resampled trilinearly (corner aligned) to ``size``^3 float32, written slab by slab (bounded
    memory), atomically; reused when a file of that recipe is already there."""
    recipe = {"source": volume.name, "shape": list(volume.geometry.shape), "size": size, "method": "trilinear"}
    marker = path.with_suffix(".json")
    if path.exists() and marker.exists() and json.loads(marker.read_text()) == recipe and \
            path.stat().st_size == 4 * size ** 3:
        return recipe
    src = torch.from_numpy(volume.values)[None, None]
    axis = torch.linspace(-1, 1, size)

    def write(tmp):
        with open(tmp, "wb") as f:
            slab = 8
            for z0 in range(0, size, slab):
                z = axis[z0:z0 + slab]
                gz, gy, gx = torch.meshgrid(z, axis, axis, indexing="ij")
                grid = torch.stack([gx, gy, gz], dim=-1)[None]
                values = torch.nn.functional.grid_sample(src, grid, mode="bilinear", align_corners=True)
                f.write(values[0, 0].numpy().astype("<f4").tobytes())

    atomic_write(path, write)
    atomic_write(marker, lambda tmp: Path(tmp).write_text(json.dumps(recipe)))
    return recipe


def peak_rss(command: list[str], env=None) -> tuple[int, float, str]:
    """``(peak resident bytes, wall seconds, stdout)`` of ``command`` run under ``/usr/bin/time -v``."""
    t0 = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-v", *command], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    return kb * 1024, wall, proc.stdout


# ---- 1. out of core --------------------------------------------------------------------------------
def fits(args, work: Path) -> dict:
    ch2 = load("ch2better")
    raw = work / "ch2better.raw"
    if not raw.exists():
        write_raw(ch2, raw)
    shape = list(ch2.geometry.shape)
    budget = ch2.geometry.num_points // args.ratio
    config = dict(steps=args.steps, batch_size=args.batch_size, seed=0)
    rows = {}
    # Both read from the same raw file: under the bound it is loaded whole (today's path), over it streamed.
    for mode, memory in (("in memory", None), ("streamed", parse_bytes(args.fits_memory))):
        source = open_source(raw, raw_shape=shape, raw_dtype="<f4", spacing=ch2.geometry.spacing)
        cfg = TrainConfig(**config, **({} if memory is None else {"data_memory": memory}))
        t0 = time.perf_counter()
        result = fit(source, "apmgsrn", budget, cfg)
        rows[mode] = {"psnr": result.psnr, "train_seconds": result.seconds, "wall_seconds": time.perf_counter() - t0,
                      "steps": result.steps, "data_memory": memory}
        print(f"  ch2better {mode}: {result.psnr:.2f} dB after {result.steps} steps ({result.seconds:.0f} s)",
              flush=True)
    return {"volume": "ch2better", "dims": list(ch2.geometry.dims), "budget": budget, **config, "rows": rows,
            "psnr_difference": rows["streamed"]["psnr"] - rows["in memory"]["psnr"]}


def big(args, work: Path) -> dict:
    ch2 = load("ch2better")
    size = args.big_size
    big = work / f"ch2better_{size}.raw"
    t0 = time.perf_counter()
    write_upsampled(ch2, size, big)
    made = time.perf_counter() - t0
    out = work / f"ch2better_{size}.srn"
    for stale in (out, Path(f"{out}.checkpoint")):  # a killed earlier run's checkpoint would need --resume
        stale.unlink(missing_ok=True)
    spacing = [str(s * (n - 1) / (size - 1)) for s, n in zip(ch2.geometry.spacing, ch2.geometry.dims)]
    command = [*SRN, "train", str(big), "--raw-shape", *[str(size)] * 3, "--raw-dtype", "<f4", "--spacing", *spacing,
               "--data-memory", args.big_memory, "--steps", str(args.big_steps), "--batch-size", str(args.batch_size),
               "--float32", "-o", str(out), "--quiet"]
    print(f"  {' '.join(command)}", flush=True)
    rss, wall, _ = peak_rss(command)
    model = load_model(out)
    big_row = {"file": str(big), "file_bytes": big.stat().st_size, "made_seconds": made, "data_memory": args.big_memory,
               "steps": model.training.get("steps"), "train_seconds": model.training.get("seconds"),
               "psnr": model.training.get("psnr"), "peak_rss_bytes": rss, "wall_seconds": wall,
               "model_file_bytes": out.stat().st_size, "parameters": model.num_parameters}
    return big_row


# ---- 2. ensembles ---------------------------------------------------------------------------------
def ensembles(args, work: Path) -> list[dict]:
    rows = []
    for name in args.volumes:
        volume = load(name)
        budget = volume.geometry.num_points // args.ratio
        for grid in [(1, 1, 1), *args.grids]:
            n = grid[0] * grid[1] * grid[2]
            config = TrainConfig(batch_size=args.batch_size, seed=0, steps=10 ** 6, time_limit=args.seconds / n)
            path = work / f"{name}_{'x'.join(map(str, grid))}.srn"
            t0 = time.perf_counter()
            if n == 1:
                result = fit(volume, "apmgsrn", budget, config)
            else:
                result = train_ensemble(volume, grid, "apmgsrn", budget, config, work_dir=work / f"{path.name}.parts")
            result.model.save(path)
            row = {"volume": name, "grid": list(grid), "budget": budget, "parameters": result.model.num_parameters,
                   "file_bytes": path.stat().st_size, "psnr": result.psnr, "train_seconds": result.seconds,
                   "wall_seconds": time.perf_counter() - t0, "steps": result.steps}
            rows.append(row)
            print(f"  {name} {grid}: {row['psnr']:.2f} dB, {row['file_bytes']:,} bytes, "
                  f"{row['parameters']:,} parameters", flush=True)
    return rows


# ---- 3. MPI ---------------------------------------------------------------------------------------
def mpi(args, work: Path) -> list[dict]:
    volume = load("inia19")
    data = work / "inia19.npy"
    np.save(data, volume.values)
    rows = []
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for ranks in (1, 2):
        out = work / f"inia19_mpi{ranks}.srn"
        out.unlink(missing_ok=True)
        command = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "-x", "OMP_NUM_THREADS",
                   "-x", "OMP_WAIT_POLICY", "-np", str(ranks), *SRN, "train", str(data), "--ensemble", "2", "2", "1",
                   "--steps", str(args.mpi_steps), "--batch-size", str(args.batch_size), "-o", str(out), "--quiet"]
        t0 = time.perf_counter()
        proc = subprocess.run(command, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
        model = load_model(out)
        bricks = model.training["ensemble_bricks"]
        per_rank = [0.0] * ranks
        for k, brick in enumerate(bricks):
            per_rank[k % ranks] += brick["seconds"]
        points = sum(b["steps"] for b in bricks) * args.batch_size
        rows.append({"ranks": ranks, "bricks": len(bricks), "points": points, "busiest_rank_seconds": max(per_rank),
                     "points_per_second": points / max(per_rank), "wall_seconds": wall, "psnr": model.training.get("psnr")})
        print(f"  np {ranks}: {rows[-1]['points_per_second']:,.0f} points/s, wall {wall:.1f} s", flush=True)
    rows[1]["speedup"] = rows[1]["points_per_second"] / rows[0]["points_per_second"]
    return rows


def args_size(row: dict) -> str:
    return f"{round((row['file_bytes'] / 4) ** (1 / 3))}^3"


def table(report: dict) -> str:
    lines = []
    if "fits" in report or "big" in report:
        lines += ["| out of core | data | data memory | steps | PSNR dB | train s | peak RSS |", "|---|---|---:|---:|---:|---:|---:|"]
        for mode, r in report.get("fits", {}).get("rows", {}).items():
            mem = "whole" if r["data_memory"] is None else f"{r['data_memory'] / MIB:.0f} MiB"
            lines.append(f"| ch2better {mode} | 134 MiB | {mem} | {r['steps']} | {r['psnr']:.2f} | {r['train_seconds']:.0f} | |")
        if "big" in report:
            b = report["big"]
            lines.append(f"| ch2better {args_size(b)} streamed | {b['file_bytes'] / 2**30:.1f} GiB | {b['data_memory']} | "
                         f"{b['steps']} | {b['psnr']:.2f} | {b['train_seconds']:.0f} | {b['peak_rss_bytes'] / 2**30:.2f} GiB |")
        if "fits" in report:
            lines.append(f"\nstreamed - in memory at equal steps: {report['fits']['psnr_difference']:+.2f} dB\n")
    if "ensemble" in report:
        lines += ["| volume | bricks | parameters | file bytes | PSNR dB | train s |", "|---|---|---:|---:|---:|---:|"]
        for r in report["ensemble"]:
            lines.append(f"| {r['volume']} | {'x'.join(map(str, r['grid']))} | {r['parameters']:,} | {r['file_bytes']:,} | "
                         f"{r['psnr']:.2f} | {r['train_seconds']:.0f} |")
        lines.append("")
    if "mpi" in report:
        lines += ["| ranks | points/s | busiest rank s | wall s | speed-up |", "|---:|---:|---:|---:|---:|"]
        for r in report["mpi"]:
            lines.append(f"| {r['ranks']} | {r['points_per_second']:,.0f} | {r['busiest_rank_seconds']:.1f} | "
                         f"{r['wall_seconds']:.1f} | {r.get('speedup', 1.0):.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["fits", "big", "ensemble", "mpi"],
                   choices=["fits", "big", "ensemble", "mpi"])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "nv_large"),
                   help="folder for the data files (the 4 GiB one is kept and reused) and models")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=16384)
    p.add_argument("--big-size", type=int, default=1024)
    p.add_argument("--big-steps", type=int, default=400)
    p.add_argument("--big-memory", default="512MiB")
    p.add_argument("--fits-memory", default="64MiB")
    p.add_argument("--ratio", type=int, default=100)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--grids", nargs="+", default=["2,1,1", "2,2,2"])
    p.add_argument("--volumes", nargs="+", default=["ch2better", "inia19"])
    p.add_argument("--mpi-steps", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="a smoke run: few steps, a 256^3 'big' file, 4 s ensembles")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "large.json"))
    args = p.parse_args(argv)
    args.grids = [tuple(int(v) for v in g.split(",")) for g in args.grids]
    if args.quick:
        args.steps, args.big_steps, args.big_size, args.seconds, args.mpi_steps = 100, 50, 256, 4.0, 40
        args.output = args.output.replace(".json", "_quick.json")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    report = {"meta": {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S"), "load_before": os.getloadavg(),
                       "args": {k: v for k, v in vars(args).items() if k != "grids"}, "grids": args.grids}}
    out = Path(args.output)

    def save():
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(report, indent=1) + "\n"))

    previous = json.loads(out.read_text()) if out.exists() else {}
    report.update({k: v for k, v in previous.items() if k in ("fits", "big", "ensemble", "mpi") and k not in args.parts})
    for part, run in (("fits", fits), ("big", big), ("ensemble", ensembles), ("mpi", mpi)):
        if part in args.parts:
            print(f"{part}:", flush=True)
            report[part] = run(args, work)
            save()
    print(table(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
