"""Fidelity at equal parameter budgets: APMGSRN, fV-SRN, NGP and SIREN next to SZ3, on real volumes.

For each volume (inia19: Debian mricron-data; mni152: nilearn's bundled MNI152 T1) and each target ratio
(default 100x and 400x vs float32) every architecture is trained with the same parameter budget and the same
wall-clock limit, then evaluated on every voxel. SZ3 (pysz) is run in the same process at the same ratio,
found by bisection on its absolute error bound. PSNR = 20 log10(range) - 10 log10(MSE) over the whole volume.

Usage: .venv/bin/python benchmarks/fidelity.py [--volumes inia19 mni152] [--ratios 100 400]
                                               [--models apmgsrn fvsrn ngp siren] [--time-limit 120]
Writes benchmarks/results/fidelity.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from srn_core import metrics
from srn_core.fields import field_for_budget
from srn_core.training import TrainConfig, train

from volumes import load_volume  # benchmarks/ is on sys.path when a script in it runs

RESULTS = Path(__file__).resolve().parent / "results"


def sz3_at_ratio(values: np.ndarray, ratio: float) -> dict:
    """SZ3 with the absolute error bound whose compression ratio is closest to ``ratio`` (bisection in log space)."""
    from pysz import sz, szConfig, szErrorBoundMode

    rng = float(values.max() - values.min())

    def run(eb):
        cfg = szConfig()
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = eb
        t0 = time.perf_counter()
        comp, _ = sz.compress(values, cfg)
        seconds = time.perf_counter() - t0
        recon, _ = sz.decompress(comp, np.float32, values.shape)
        return values.nbytes / comp.nbytes, recon, seconds

    lo, hi = np.log(rng * 1e-6), np.log(rng * 0.5)
    best = None
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        cr, recon, seconds = run(float(np.exp(mid)))
        if best is None or abs(np.log(cr / ratio)) < abs(np.log(best[0] / ratio)):
            best = (cr, recon, seconds, float(np.exp(mid)))
        if cr < ratio:
            lo = mid
        else:
            hi = mid
        if abs(cr / ratio - 1) < 0.01:
            break
    cr, recon, seconds, eb = best
    return {"model": "sz3", "ratio": cr, "psnr": metrics.psnr(values, recon), "seconds": seconds,
            "error_bound": eb, "parameters": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volumes", nargs="+", default=["inia19", "mni152"])
    ap.add_argument("--ratios", nargs="+", type=float, default=[100.0, 400.0])
    ap.add_argument("--models", nargs="+", default=["apmgsrn", "fvsrn", "ngp", "siren"])
    ap.add_argument("--time-limit", type=float, default=120.0, help="training seconds per model")
    ap.add_argument("--steps", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=1 << 16)
    ap.add_argument("--output", default=str(RESULTS / "fidelity.json"))
    args = ap.parse_args(argv)

    rows = []
    for vname in args.volumes:
        vol = load_volume(vname)
        for ratio in args.ratios:
            budget = int(vol.geometry.num_points / ratio)
            for arch in args.models:
                torch.manual_seed(0)
                field = field_for_budget(arch, budget, vol.geometry.shape)
                cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, time_limit=args.time_limit,
                                  device="auto", seed=0)
                r = train(vol, field, cfg)
                rows.append({"volume": vname, "target_ratio": ratio, "model": arch,
                             "parameters": field.num_parameters(),
                             "ratio": vol.geometry.num_points / field.num_parameters(), "psnr": r.psnr,
                             "seconds": r.seconds, "steps": r.steps})
                _print_row(rows[-1])
            row = sz3_at_ratio(vol.values, ratio)
            row.update(volume=vname, target_ratio=ratio)
            rows.append(row)
            _print_row(row)

    print("\n| volume | target | model | parameters | ratio | PSNR dB | train s | steps |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['volume']} | {r['target_ratio']:.0f}x | {r['model']} | {r['parameters'] or '-'} | "
              f"{r['ratio']:.1f}x | {r['psnr']:.2f} | {r['seconds']:.1f} | {r.get('steps', '-')} |")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "time_limit_s": args.time_limit,
            "cuda": torch.cuda.is_available(), "python": sys.version.split()[0]}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    os.replace(tmp, out)
    print(f"\nwrote {out}")
    return 0


def _print_row(r):
    print(f"{r['volume']:8s} {r['target_ratio']:5.0f}x {r['model']:8s} ratio {r['ratio']:7.1f}x  "
          f"PSNR {r['psnr']:6.2f} dB  {r['seconds']:7.1f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
