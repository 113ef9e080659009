"""Training throughput and quality: the fused CPU path against the PyTorch reference path (and the APMGSRN code).

Parts (``--parts``, default all):

1. ``throughput``: the APMGSRN paper code's small configuration, 8 grids x 2 features x 16^3 and a bias-free
   16-32-32-1 decoder (67,232 parameters), trained on the centred 64^3 crop of INIA19 for ``--steps`` steps at
   each of ``--batches`` points per step, on the reference path (``TrainConfig(fused=False)``) and the fused path,
   with the default schedule (the density loss moves the grids from step 500 to 80 % of the steps). Steps/s,
   points/s, PSNR over the crop, and the speed-up at equal batch. With ``--apmgsrn SCRIPT`` (a driver of the
   APMGSRN code itself, kept outside this repository: it prints one JSON line with ``seconds`` and ``psnr`` for
   ``--batch B --steps S``), that code runs beside ours at each batch, in the same order every repeat, and its
   ratio is reported too. ``--repeats`` runs everything again in turn (this machine's speed drifts by 20-30 %);
   the table shows the fastest of the repeats.
2. ``profile``: from the same runs, milliseconds per step in each phase of :data:`srn_core.training.STEP_PHASES`
   (``TrainResult.profile``).
3. ``quality``: INIA19 at 100x as ``scripts/demo.sh`` trains it (``srn train ... --model apmgsrn --ratio 100
   --steps 5000 --time-limit SECONDS``), once with ``SRN_FUSED=0`` and once without: PSNR at equal time; and the
   same at equal steps (``--quality-steps``, no time limit). PSNR and steps as the model file records them.
4. ``contention``: the fused path's points/s at batch 20,000 (the 67k model, 300 steps, density loss on every
   step) alone and beside one busy process started in its own session (as ``benchmarks/contention.py`` does), and
   the reference path beside it; each run in a fresh process.

    .venv/bin/python benchmarks/training.py [--parts throughput quality contention] [--steps 1500]
        [--batches 20000 65536] [--repeats 1] [--apmgsrn /path/run_ref.py] [--seconds 150] [--quality-steps 1000]
        [--quick]

Writes benchmarks/results/training.json (rewritten after every part) and prints a table per part. Timings depend
on the load: run it alone (``flock /tmp/nv_cpu.lock ...`` on shared machines).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# srn_core first: importing it sets OMP_WAIT_POLICY before torch loads.
from srn_core.data import Volume  # noqa: E402
from srn_core.fields import APMGSRN, APMGSRNConfig  # noqa: E402
from srn_core.geometry import ImageGeometry  # noqa: E402
from srn_core.loading import load_model  # noqa: E402
from srn_core.training import STEP_PHASES, TrainConfig, train  # noqa: E402
from benchmarks.volumes import load_volume  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

INIA19 = "/usr/share/mricron/templates/inia19-t1-brain.nii.gz"
PYTHON = str(ROOT / ".venv" / "bin" / "python")


def crop64() -> Volume:
    """The centred 64^3 crop of INIA19 (the APMGSRN comparison's data)."""
    values = load_volume("inia19").values
    z0, y0, x0 = [(s - 64) // 2 for s in values.shape]
    return Volume(np.ascontiguousarray(values[z0:z0 + 64, y0:y0 + 64, x0:x0 + 64]),
                  ImageGeometry((64, 64, 64), (0, 0, 0), (1, 1, 1)), "inia19_crop64")


def small_apmgsrn(seed: int) -> APMGSRN:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return APMGSRN(APMGSRNConfig(n_grids=8, n_features=2, grid_shape=(16, 16, 16), width=32))


def run_ours(volume, batch: int, steps: int, fused: bool, seed: int, **config) -> dict:
    field = small_apmgsrn(seed)
    result = train(volume, field, TrainConfig(steps=steps, batch_size=batch, seed=seed, device="cpu", fused=fused,
                                              **config))
    return {"code": "fused" if fused else "reference", "batch": batch, "steps": result.steps,
            "seconds": result.seconds, "steps_per_s": result.steps / result.seconds,
            "points_per_s": result.steps * batch / result.seconds, "psnr": result.psnr,
            "parameters": sum(p.numel() for p in field.parameters()),
            "profile_ms": {k: 1e3 * v / result.steps for k, v in result.profile.items()}}


def run_apmgsrn(script: str, batch: int, steps: int, seed: int) -> dict:
    out = subprocess.run([PYTHON, script, "--batch", str(batch), "--steps", str(steps), "--seed", str(seed)],
                         capture_output=True, text=True, check=True, cwd=str(Path(script).parent))
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(code="APMGSRN code", steps_per_s=steps / row["seconds"], points_per_s=steps * batch / row["seconds"])
    return row


def throughput(args) -> list[dict]:
    volume = crop64()
    runs = []
    for repeat in range(args.repeats):
        for batch in args.batches:
            for code in (["APMGSRN code"] if args.apmgsrn else []) + ["reference", "fused"]:
                if code == "APMGSRN code":
                    row = run_apmgsrn(args.apmgsrn, batch, args.steps, args.seed)
                else:
                    row = run_ours(volume, batch, args.steps, code == "fused", args.seed)
                row["repeat"] = repeat
                runs.append(row)
                print(f"  {code:13s} batch {batch:6d}: {row['seconds']:7.2f} s, {row['psnr']:.2f} dB", flush=True)
    return runs


def best(runs: list[dict]) -> dict:
    """The fastest run of each (code, batch)."""
    chosen = {}
    for row in runs:
        key = (row["code"], row["batch"])
        if key not in chosen or row["seconds"] < chosen[key]["seconds"]:
            chosen[key] = row
    return chosen


def throughput_table(runs: list[dict]) -> str:
    chosen = best(runs)
    lines = ["| code | batch | steps | seconds | steps/s | M points/s | PSNR dB | fused vs this |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (code, batch), row in sorted(chosen.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        fused = chosen.get(("fused", batch))
        ratio = f"{fused['points_per_s'] / row['points_per_s']:.2f}x" if fused else ""
        lines.append(f"| {code} | {batch:,} | {row['steps']} | {row['seconds']:.2f} | {row['steps_per_s']:.1f} | "
                     f"{row['points_per_s'] / 1e6:.2f} | {row['psnr']:.2f} | {ratio} |")
    return "\n".join(lines)


def profile_table(runs: list[dict]) -> str:
    chosen = [row for (code, _), row in sorted(best(runs).items(), key=lambda kv: (kv[0][1], kv[0][0]))
              if "profile_ms" in row]
    head = "| phase | " + " | ".join(f"{r['code']} {r['batch']:,}" for r in chosen) + " |"
    lines = [head, "|---|" + "---:|" * len(chosen)]
    for phase in STEP_PHASES:
        cells = []
        for r in chosen:
            total = sum(r["profile_ms"].values())
            cells.append(f"{r['profile_ms'][phase]:.2f} ({100 * r['profile_ms'][phase] / total:.0f} %)")
        lines.append(f"| {phase} | " + " | ".join(cells) + " |")
    lines.append("| **step** | " + " | ".join(f"**{sum(r['profile_ms'].values()):.2f}**" for r in chosen) + " |")
    return "\n".join(lines)


def quality(args) -> list[dict]:
    rows = []
    for label, limit, steps in (("equal time", args.seconds, 5000), ("equal steps", None, args.quality_steps)):
        for fused in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                out = Path(tmp) / "m.srn"
                command = [str(ROOT / ".venv" / "bin" / "srn"), "train", INIA19, "-o", str(out), "--model", "apmgsrn",
                           "--ratio", "100", "--steps", str(steps), "--quiet"]
                if limit:
                    command += ["--time-limit", str(limit)]
                env = dict(os.environ, SRN_FUSED="1" if fused else "0")
                start = time.perf_counter()
                subprocess.run(command, check=True, env=env, capture_output=True, text=True)
                wall = time.perf_counter() - start
                model = load_model(out)
                t = model.training
                rows.append({"comparison": label, "code": "fused" if fused else "reference", "steps": t["steps"],
                             "seconds": t["seconds"], "psnr": t["psnr"], "psnr_float": t.get("psnr_float"),
                             "bytes": out.stat().st_size, "parameters": model.num_parameters, "wall_s": wall})
                print(f"  {label:11s} {rows[-1]['code']:9s}: {t['steps']} steps in {t['seconds']:.1f} s, "
                      f"{t['psnr']:.2f} dB", flush=True)
    return rows


def quality_table(rows: list[dict]) -> str:
    lines = ["| comparison | code | steps | train s | PSNR dB (file) | bytes | parameters |", "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['comparison']} | {r['code']} | {r['steps']} | {r['seconds']:.1f} | {r['psnr']:.2f} | "
                     f"{r['bytes']:,} | {r['parameters']:,} |")
    return "\n".join(lines)


CONTENTION_CHILD = """
import json, sys
sys.path.insert(0, {root!r})
from benchmarks.training import crop64, run_ours
row = run_ours(crop64(), 20000, {steps}, {fused}, 0, density_start=0)
print(json.dumps({{k: v for k, v in row.items() if k != "profile_ms"}}))
"""


def contention(args) -> list[dict]:
    rows = []
    for label, fused, busy in (("fused alone", True, False), ("fused beside a busy process", True, True),
                               ("reference alone", False, False), ("reference beside a busy process", False, True)):
        spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"], start_new_session=True) if busy else None
        try:
            code = CONTENTION_CHILD.format(root=str(ROOT), steps=args.contention_steps, fused=fused)
            out = subprocess.run([PYTHON, "-c", code], capture_output=True, text=True, check=True)
        finally:
            if spinner is not None:
                spinner.kill()
                spinner.wait()
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["run"] = label
        rows.append(row)
        print(f"  {label:32s}: {row['points_per_s'] / 1e6:.2f} M points/s", flush=True)
    return rows


def contention_table(rows: list[dict]) -> str:
    by = {r["run"]: r for r in rows}
    lines = ["| run | M points/s | busy / alone |", "|---|---:|---:|"]
    for r in rows:
        alone = by[r["run"].split(" beside")[0].replace(" alone", "") + " alone"]
        lines.append(f"| {r['run']} | {r['points_per_s'] / 1e6:.2f} | {r['points_per_s'] / alone['points_per_s']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["throughput", "quality", "contention"],
                   choices=["throughput", "quality", "contention"])
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batches", type=int, nargs="+", default=[20000, 65536])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apmgsrn", help="a driver script of the APMGSRN code (outside this repository)")
    p.add_argument("--seconds", type=float, default=150)
    p.add_argument("--quality-steps", type=int, default=1000)
    p.add_argument("--contention-steps", type=int, default=300)
    p.add_argument("--quick", action="store_true", help="a few steps of everything, to check the script")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "training.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.batches, args.seconds, args.quality_steps, args.contention_steps = 40, [4000], 10, 30, 30
        args.output = args.output.replace(".json", "_quick.json")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    report = {"machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                          "torch": torch.__version__, "load_before": os.getloadavg()[0]}, "args": vars(args)}

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(report, indent=1) + "\n")
        os.replace(tmp, out)

    if "throughput" in args.parts:
        print("throughput (64^3 INIA19 crop, 67,232 parameters)")
        report["throughput"] = throughput(args)
        save()
        print(throughput_table(report["throughput"]) + "\n\nprofile, ms per step (share)\n" +
              profile_table(report["throughput"]) + "\n")
    if "quality" in args.parts:
        print(f"quality (INIA19 at 100x, demo settings, {args.seconds:g} s / {args.quality_steps} steps)")
        report["quality"] = quality(args)
        save()
        print(quality_table(report["quality"]) + "\n")
    if "contention" in args.parts:
        print("contention (batch 20,000, density loss every step)")
        report["contention"] = contention(args)
        save()
        print(contention_table(report["contention"]) + "\n")
    report["machine"]["load_after"] = os.getloadavg()[0]
    save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
