"""Time-varying models: against per-step models and SZ3 at equal bytes, temporal super-resolution, design choices.

Series (``benchmarks/volumes.py``, :func:`load_series`): ``u_wind`` (15 monthly steps x 5 x 144 x 192) and
``colpex`` (6 steps 10 minutes apart x 10 x 83 x 83), real Met Office output from PyPI ``iris-sample-data``.
Every model file is written in the project's compressed format (``Compression()``: 8-bit grids, 12-bit decoder,
LZMA), reloaded with ``load_model`` and evaluated from the file; the bytes on disk (header included) are what
count. PSNR = 20 log10(R) - 10 log10(MSE) with R the whole series' value range and MSE over every voxel of
every step (``srn_core.series.series_psnr``); per-step PSNRs use the same R.

1. **Equal bytes** (``equal_bytes``): at each ratio (the whole series' float32 bytes / total file bytes)

   * ``time-varying``: one model of the series (``fit`` on a ``TimeSeries``; key frames = steps; TrainConfig's
     ``steps_per_batch`` and ``between_fraction`` unless ``--steps-per-batch`` / ``--between-fraction`` say
     otherwise), its budget the largest whose compressed file fits the target
     (``compression.parameters_for_file_size`` with the key times, as ``srn train --ratio`` sizes a file);
   * ``per-step``: one APMGSRN per step, each sized for target / steps; their bytes are summed;
   * ``sz3-per-step``: SZ3 (pysz, one absolute error bound for every step, searched until the summed stream
     bytes are within 2 % of the target) and ``sz3-4d``: one SZ3 stream of the whole (t, z, y, x) array.

   Each per-step model trains ``--seconds``; the time-varying model gets the sum of their training seconds.
   Budgets come from a file-size estimate, so the files land a few per cent off the target: every model row
   also carries SZ3 at that row's own bytes, and the verdict compares the time-varying model with the per-step
   models' PSNR interpolated (linearly in log bytes) to the time-varying file's bytes.
2. **Temporal super-resolution** (``super_resolution``): a time-varying model of every other step (0, 2, 4, ...;
   times kept, file ``--sr-ratio`` of those steps' bytes, trained trained-steps x ``--seconds``), evaluated on
   the skipped steps, beside linear interpolation of the raw neighbouring steps; to say where its error comes
   from, also the model at its trained steps, linear interpolation of the model's own reconstructions at the
   neighbours, and Catmull-Rom (cubic) interpolation of the raw trained steps (end intervals reuse the end step).
   Trained twice: with the between-step fraction of the command line and with none.
3. **Design** (``design``): at ``--design-ratio`` on ``--design-series``, equal bytes and equal time (or, with
   ``--design-steps N``, exactly N optimisation steps each: reproducible on a loaded machine): key frames = steps
   vs about steps / 2; between-step training on vs off; all steps per batch vs 4 drawn at random. And, measured
   offline on every time-varying model of part 1 (the file format unchanged): the LZMA and zstd bytes of its key-frame grid codes
   as the file stores them (8-bit codes, one offset and scale per frame, grid and feature), as differences
   between neighbouring frames, with one offset and scale per grid and feature shared by all frames, and that
   shared form differenced; the shared form's PSNR shows what its coarser quantization costs.

    .venv/bin/python benchmarks/time_varying.py [--quick] [--seconds 6] [--series u_wind colpex]
        [--ratios 25 50 100] [--parts equal_bytes super_resolution design] [--batch-size 16384]
        [--steps-per-batch S] [--between-fraction F] [--sr-ratio 50] [--design-ratio 50]
        [--design-series u_wind] [--design-steps N]

``--quick``: a smoke run (0.5 s per step model, one ratio) of every part, written to time_varying_quick.json.
The JSON (``--output``, default benchmarks/results/time_varying.json) is rewritten atomically after every row. Timings depend on the load:
run the numbers that count alone (``flock /tmp/nv_cpu.lock ...`` on shared machines).
"""

from __future__ import annotations

import argparse
import lzma
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: idle OpenMP threads must not spin

import numpy as np
import torch

from srn_core import compression
from srn_core.compression import Compression, quantize
from srn_core.loading import load_model
from srn_core.metrics import mse
from srn_core.series import series_psnr
from srn_core.training import TrainConfig, fit

from rate_distortion import RATIO_TOLERANCE, _sz3, search_setting, write_json  # benchmarks/ is on sys.path
from volumes import SERIES_NAMES, load_series

RESULTS = Path(__file__).resolve().parent / "results"
PARTS = ("equal_bytes", "super_resolution", "design")
DEFAULT_STEPS_PER_BATCH = TrainConfig.steps_per_batch  # None: every step in every batch
DEFAULT_BETWEEN = TrainConfig.between_fraction


# ---- helpers ---------------------------------------------------------------------------------------------------
def overall_psnr(step_mses, value_range) -> float:
    """PSNR over a whole series from its steps' MSEs (every step has as many voxels) and the series' range."""
    lo, hi = value_range
    mean = float(np.mean(step_mses))
    return math.inf if mean == 0 else 20 * math.log10(hi - lo) - 10 * math.log10(mean)


def step_psnrs(step_mses, value_range) -> list[float]:
    lo, hi = value_range
    return [math.inf if e == 0 else 20 * math.log10(hi - lo) - 10 * math.log10(e) for e in step_mses]


def header_bytes(path) -> int:
    """Bytes of a safetensors file's header (the 8-byte length and the JSON with our metadata)."""
    with open(path, "rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


def stacked(series) -> np.ndarray:
    return np.stack([s.values for s in series.steps])


def train_config(args, seconds: float, steps: int | None = None, **extra) -> TrainConfig:
    """``seconds`` of training (at most 10^6 steps), or exactly ``steps`` optimisation steps without a time limit."""
    if steps is not None:
        return TrainConfig(steps=steps, seed=0, batch_size=args.batch_size, **extra)
    return TrainConfig(steps=10 ** 6, time_limit=max(seconds, 1e-3), seed=0, batch_size=args.batch_size, **extra)


# ---- the methods -----------------------------------------------------------------------------------------------
def time_varying_row(series, target_bytes: float, seconds: float, args, workdir: Path, key_frames=None,
                     steps_per_batch: int | None = None, keep_model: bool = False, steps: int | None = None,
                     between_fraction: float | None = None) -> dict:
    """A time-varying model whose compressed file fits ``target_bytes``, trained ``seconds`` (or exactly
    ``steps`` steps), measured from its file. ``steps_per_batch`` and ``between_fraction`` ``None``: the
    command line's (``--steps-per-batch``, ``--between-fraction``)."""
    steps_per_batch = min(steps_per_batch or args.steps_per_batch or len(series), len(series))
    between_fraction = args.between_fraction if between_fraction is None else between_fraction
    from srn_core.training import key_times_for

    key_times = key_times_for(series.times, key_frames)
    try:
        budget = compression.parameters_for_file_size("apmgsrn", target_bytes, series.geometry.shape,
                                                      args.compression, key_times=key_times)
    except ValueError as e:
        return {"reached": False, "note": str(e)}
    fixed = {} if steps is None else {"steps": steps}
    config = train_config(args, seconds, steps_per_batch=steps_per_batch, between_fraction=between_fraction, **fixed)
    result = fit(series, "apmgsrn", budget, config, key_frames=key_frames)
    path = workdir / f"{series.name}-tv.srn"
    result.model.save(path, args.compression)
    model = load_model(path)  # evaluated from the file, as a user would read it
    measured = series_psnr(model, series)
    base = result.model.field.config.base_config
    row = {"reached": True, "file_bytes": model.file_bytes, "header_bytes": header_bytes(path),
           "psnr": measured["psnr"], "psnr_per_step": measured["psnr_per_step"],
           "psnr_float32_same": result.psnr, "parameters": model.num_parameters, "budget": budget,
           "key_frames": len(key_times), "steps_per_batch": steps_per_batch, "between_fraction": between_fraction,
           "config": f"{base['n_grids']} grids x {base['n_features']} x {tuple(base['grid_shape'])} per key frame, "
                     f"decoder width {base['width']}",
           "train_seconds": result.seconds, "steps": result.steps, "stopped_because": result.stopped_because}
    if keep_model:
        row["_model"] = result.model  # float parameters, for the offline key-frame coding measurements
    path.unlink()
    return row


def per_step_row(series, target_bytes: float, seconds: float, args, workdir: Path) -> dict:
    """Independent APMGSRNs, one per step, each sized for ``target_bytes / steps`` and trained ``seconds``."""
    try:
        budget = compression.parameters_for_file_size("apmgsrn", target_bytes / len(series),
                                                      series.geometry.shape, args.compression)
    except ValueError as e:
        return {"reached": False, "note": str(e)}
    files, headers, errors, float_errors, secs, steps, params = 0, 0, [], [], 0.0, 0, 0
    for i, volume in enumerate(series.steps):
        result = fit(volume, "apmgsrn", budget, train_config(args, seconds))
        path = workdir / f"{series.name}-step{i}.srn"
        result.model.save(path, args.compression)
        model = load_model(path)
        errors.append(mse(volume.values, model.resample()))
        float_errors.append(mse(volume.values, result.model.resample()))
        files += model.file_bytes
        headers += header_bytes(path)
        secs += result.seconds
        steps += result.steps
        params += model.num_parameters
        path.unlink()
        config = result.model.field.config
    lr = series.value_range
    return {"reached": True, "file_bytes": files, "header_bytes": headers, "psnr": overall_psnr(errors, lr),
            "psnr_per_step": step_psnrs(errors, lr), "psnr_float32_same": overall_psnr(float_errors, lr),
            "parameters": params, "budget": budget,
            "config": f"{config.n_grids} grids x {config.n_features} x {tuple(config.grid_shape)} per step, "
                      f"decoder width {config.width}",
            "train_seconds": secs, "steps": steps, "stopped_because": "time_limit (each)"}


def _sz3_steps(values: np.ndarray, error_bound: float):
    """SZ3 of each step (axis 0) with one absolute error bound: ``(summed stream bytes, reconstruction)``."""
    total, recon = 0, np.empty_like(values)
    for i in range(values.shape[0]):
        nbytes, recon[i] = _sz3(np.ascontiguousarray(values[i]), error_bound)
        total += nbytes
    return total, recon


def sz3_row(series, target_bytes: float, whole: bool) -> dict:
    """SZ3 (per step, or one 4-D stream when ``whole``) with the absolute bound whose bytes fit the target."""
    values = stacked(series)
    lo, hi = series.value_range
    run = _sz3 if whole else _sz3_steps
    setting, ratio, recon, reached, tries = search_setting(run, values, values.nbytes / target_bytes,
                                                           (hi - lo) * 1e-7, hi - lo, True)
    errors = [mse(values[i], recon[i]) for i in range(len(series))]
    return {"reached": bool(reached), "file_bytes": int(round(values.nbytes / ratio)),
            "psnr": overall_psnr(errors, (lo, hi)), "psnr_per_step": step_psnrs(errors, (lo, hi)),
            "setting": f"abs error bound {setting:.4g}", "search_tries": tries}


def sz3_at_bytes(series, nbytes: int) -> dict:
    same = sz3_row(series, nbytes, whole=False)
    return {k: same[k] for k in ("file_bytes", "psnr", "reached", "setting")}


# ---- key-frame coding (offline; the file format is unchanged) ---------------------------------------------------
def _lzma_bytes(data: bytes) -> int:
    """LZMA bytes as the file's lossless stage writes them (raw LZMA2, preset 9e, dictionary sized to the data)."""
    dict_size = min(1 << 26, max(4096, 1 << max(0, len(data) - 1).bit_length()))
    return len(lzma.compress(data, format=lzma.FORMAT_RAW,
                             filters=[{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME,
                                       "dict_size": dict_size}]))


def _zstd_bytes(data: bytes) -> int:
    import zstandard
    return len(zstandard.ZstdCompressor(level=compression.ZSTD_LEVEL).compress(data))


def _frame_delta(codes: np.ndarray, bits: int) -> np.ndarray:
    """Codes ``(K, ...)`` with every frame after the first replaced by its difference to the previous one, modulo
    ``2**bits`` (so it stays one byte per code and inverts exactly)."""
    out = codes.copy()
    out[1:] = (codes[1:] - codes[:-1]) % (1 << bits)
    return out


def key_frame_coding(model, series, comp: Compression) -> dict:
    """Bytes of a time-varying model's key-frame grid codes, coded four ways, and the shared-scale PSNR.

    * ``per_frame``: as the file stores them: one offset and scale per (frame, grid, feature), codes in file order;
    * ``per_frame_delta``: those codes, each frame minus the previous one (modulo 2**bits);
    * ``shared``: one offset and scale per (grid, feature) over all frames (equal codes mean equal values);
    * ``shared_delta``: those codes differenced between neighbouring frames.

    Each is (8 bytes per channel for offset and scale) + its LZMA (the file's stage) or zstd bytes.
    """
    field = model.field
    bits = comp.bits
    out = {"bits": bits}
    for name, frames in field.frames.items():
        g = frames.detach().to("cpu", torch.float32)  # [K, M, C, D, H, W]
        k, channels = g.shape[0], int(np.prod(g.shape[1:-3]))
        per_codes, _, _ = quantize(g, bits, k * channels)
        per_codes = per_codes.numpy().reshape(k, channels, -1)
        by_channel = g.reshape(k, channels, -1).transpose(0, 1)  # [MC, K, n]: one range over all frames
        shared_codes, offset, scale = quantize(by_channel, bits, channels)
        shared_values = offset[:, None].double() + shared_codes.double() * scale[:, None].double()
        shared_grid = shared_values.reshape(channels, k, -1).transpose(0, 1).reshape(g.shape).float()
        shared_codes = shared_codes.numpy().reshape(channels, k, -1).transpose(1, 0, 2)  # back to [K, MC, n]
        forms = {"per_frame": (per_codes, k * channels), "per_frame_delta": (_frame_delta(per_codes, bits), k * channels),
                 "shared": (shared_codes, channels), "shared_delta": (_frame_delta(shared_codes, bits), channels)}
        for form, (codes, nchan) in forms.items():
            data = np.ascontiguousarray(codes).astype(np.uint8 if bits <= 8 else "<u2").tobytes()
            out[f"{form}_lzma"] = out.get(f"{form}_lzma", 0) + 8 * nchan + _lzma_bytes(data)
            out[f"{form}_zstd"] = out.get(f"{form}_zstd", 0) + 8 * nchan + _zstd_bytes(data)
        diffs = (g[1:] - g[:-1]).flatten(1).norm(dim=1) / g[1:].flatten(1).norm(dim=1).clamp_min(1e-30)
        out["neighbour_relative_difference"] = float(diffs.mean()) if k > 1 else 0.0
        # The shared form's cost: the stored model with its grids replaced by the shared-scale ones.
        stored = model.compressed(comp)
        with torch.no_grad():
            stored.field.frames[name].copy_(shared_grid)
        out["psnr_shared"] = series_psnr(stored, series)["psnr"]
    return out


# ---- temporal super-resolution -----------------------------------------------------------------------------------
def super_resolution_row(series, args, workdir: Path, between_fraction: float | None = None) -> dict:
    """Train on every other step, measure the steps in between against the raw data's interpolations."""
    trained = list(range(0, len(series), 2))
    skipped = [i for i in range(1, trained[-1]) if i % 2]
    sub = series.select(trained)
    target = sub.geometry.num_points * len(sub) * 4 / args.sr_ratio
    row = time_varying_row(sub, target, len(sub) * args.seconds, args, workdir, keep_model=True,
                           between_fraction=between_fraction)
    row.update(trained_steps=trained, skipped_steps=skipped, target_ratio=args.sr_ratio)
    if not row["reached"]:
        return row
    model = row.pop("_model").compressed(args.compression)  # what the file held (the PSNR above is from it)
    values, lr = stacked(series), series.value_range
    at = {i: model.resample(time=series.times[i]) for i in range(len(series))}
    model_err, linear_err, own_err, cubic_err = [], [], [], []
    for i in skipped:
        a, b = i - 1, i + 1
        w = (series.times[i] - series.times[a]) / (series.times[b] - series.times[a])
        model_err.append(mse(values[i], at[i]))
        linear_err.append(mse(values[i], (1 - w) * values[a] + w * values[b]))
        own_err.append(mse(values[i], (1 - w) * at[a] + w * at[b]))
        p0, p3 = values[max(a - 2, 0)], values[min(b + 2, trained[-1])]  # end intervals: the end step again
        cubic = _catmull_rom(p0, values[a], values[b], p3, w)
        cubic_err.append(mse(values[i], cubic))
    trained_err = [mse(values[i], at[i]) for i in trained]
    row.update({
        "psnr_skipped": overall_psnr(model_err, lr), "psnr_skipped_per_step": step_psnrs(model_err, lr),
        "linear_raw": overall_psnr(linear_err, lr), "linear_raw_per_step": step_psnrs(linear_err, lr),
        "linear_of_model": overall_psnr(own_err, lr), "cubic_raw": overall_psnr(cubic_err, lr),
        "cubic_raw_per_step": step_psnrs(cubic_err, lr),
        "psnr_trained_steps": overall_psnr(trained_err, lr),
        # If the model's error (as at its trained steps) and the interpolation's were independent, MSEs would add:
        "expected_if_independent": overall_psnr([e + float(np.mean(trained_err)) for e in linear_err], lr),
    })
    return row


def _catmull_rom(p0, p1, p2, p3, w: float):
    """Uniform Catmull-Rom between ``p1`` (w=0) and ``p2`` (w=1)."""
    return 0.5 * ((2 * p1) + (-p0 + p2) * w + (2 * p0 - 5 * p1 + 4 * p2 - p3) * w ** 2
                  + (-p0 + 3 * p1 - 3 * p2 + p3) * w ** 3)


# ---- tables ----------------------------------------------------------------------------------------------------
def _f(x, fmt="{:.2f}"):
    return "-" if x is None else fmt.format(x)


def equal_bytes_table(rows) -> str:
    lines = ["| series | target | method | file bytes | ratio | header bytes | PSNR dB | f32 same dB | SZ3 same bytes dB "
             "| step PSNR min/max | train s | steps | model |",
             "|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in rows:
        if not r.get("reached") and r.get("psnr") is None:
            lines.append(f"| {r['series']} | {r['target_ratio']:g}x | {r['method']} | - | - | - | - | - | - | - | - | - "
                         f"| not reachable: {r.get('note', '')[:60]} |")
            continue
        per = r.get("psnr_per_step") or []
        same = r.get("sz3_same_bytes", {}).get("psnr")
        lines.append(
            f"| {r['series']} | {r['target_ratio']:g}x | {r['method']} | {r['file_bytes']:,} | "
            f"{r['data_bytes'] / r['file_bytes']:.1f}x | {_f(r.get('header_bytes'), '{:,}')} | {r['psnr']:.2f} | "
            f"{_f(r.get('psnr_float32_same'))} | {_f(same)} | {min(per):.1f}/{max(per):.1f} | "
            f"{_f(r.get('train_seconds'), '{:.1f}')} | {r.get('steps', '-')} | {r.get('config') or r.get('setting', '')} |")
    return "\n".join(lines)


def per_step_table(rows) -> str:
    out = []
    for key in dict.fromkeys((r["series"], r["target_ratio"]) for r in rows):
        mine = [r for r in rows if (r["series"], r["target_ratio"]) == key and r.get("psnr_per_step")]
        if not mine:
            continue
        n = len(mine[0]["psnr_per_step"])
        out.append(f"\nper-step PSNR (dB, series range), {key[0]} at {key[1]:g}x:")
        out.append("| method | " + " | ".join(str(i) for i in range(n)) + " |")
        out.append("|---|" + "---:|" * n)
        for r in mine:
            out.append(f"| {r['method']} | " + " | ".join(f"{v:.1f}" for v in r["psnr_per_step"]) + " |")
    return "\n".join(out)


def super_resolution_table(rows) -> str:
    lines = ["| series | between | trained steps | skipped | file bytes | model on skipped dB | linear raw dB | cubic raw dB | "
             "linear of model dB | model on trained dB | expected if independent dB | train s |",
             "|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if not r.get("reached"):
            lines.append(f"| {r['series']} | - | - | - | - | not reachable: {r.get('note', '')[:60]} |||||||")
            continue
        lines.append(f"| {r['series']} | {r['between_fraction']:g} | {len(r['trained_steps'])} | {r['skipped_steps']} | "
                     f"{r['file_bytes']:,} | "
                     f"{r['psnr_skipped']:.2f} | {r['linear_raw']:.2f} | {r['cubic_raw']:.2f} | "
                     f"{r['linear_of_model']:.2f} | {r['psnr_trained_steps']:.2f} | {r['expected_if_independent']:.2f} | "
                     f"{r['train_seconds']:.1f} |")
        lines.append(f"|  per skipped step | | | | | {' '.join(f'{v:.1f}' for v in r['psnr_skipped_per_step'])} | "
                     f"{' '.join(f'{v:.1f}' for v in r['linear_raw_per_step'])} | "
                     f"{' '.join(f'{v:.1f}' for v in r['cubic_raw_per_step'])} | | | | |")
    return "\n".join(lines)


def design_table(rows) -> str:
    lines = ["| series | target | variant | key frames | steps/batch | between | file bytes | PSNR dB | f32 same dB | "
             "train s | steps | model |", "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if not r.get("reached"):
            lines.append(f"| {r['series']} | {r['target_ratio']:g}x | {r['variant']} | not reachable ||||||||")
            continue
        lines.append(f"| {r['series']} | {r['target_ratio']:g}x | {r['variant']} | {r['key_frames']} | "
                     f"{r['steps_per_batch']} | {r['between_fraction']:g} | {r['file_bytes']:,} | {r['psnr']:.2f} | "
                     f"{r['psnr_float32_same']:.2f} | "
                     f"{r['train_seconds']:.1f} | {r['steps']} | {r['config']} |")
    return "\n".join(lines)


def coding_table(rows) -> str:
    lines = ["| series | target | grid values | as stored (lzma / zstd) | frame deltas | shared scale | shared + deltas | "
             "neighbour rel. diff | PSNR stored / shared dB |", "|---|---:|---:|---|---|---|---|---:|---|"]
    for r in rows:
        c = r["key_frame_coding"]
        cell = lambda form: f"{c[form + '_lzma']:,} / {c[form + '_zstd']:,}"
        lines.append(f"| {r['series']} | {r['target_ratio']:g}x | {c['values']:,} | {cell('per_frame')} | "
                     f"{cell('per_frame_delta')} | {cell('shared')} | {cell('shared_delta')} | "
                     f"{c['neighbour_relative_difference']:.3f} | {r['psnr']:.2f} / {c['psnr_shared']:.2f} |")
    return "\n".join(lines)


def verdicts(report) -> list[str]:
    out = []
    rows = report["equal_bytes"]
    for name in dict.fromkeys(r["series"] for r in rows):
        mine = [r for r in rows if r["series"] == name]
        per = sorted((r["file_bytes"], r["psnr"]) for r in mine if r["method"] == "per-step" and r.get("reached"))
        for r in (r for r in mine if r["method"] == "time-varying" and r.get("reached")):
            same_target = next((p for p in mine if p["method"] == "per-step" and p["target_ratio"] == r["target_ratio"]
                                and p.get("reached")), None)
            interp = _interpolate_log(per, r["file_bytes"])
            parts = [f"{name} {r['target_ratio']:g}x: time-varying {r['psnr']:.2f} dB in {r['file_bytes']:,} bytes"]
            if same_target:
                parts.append(f"per-step {same_target['psnr']:.2f} dB in {same_target['file_bytes']:,} "
                             f"({r['psnr'] - same_target['psnr']:+.2f} dB)")
            else:
                parts.append("per-step models cannot be that small")
            if interp is not None:
                parts.append(f"per-step at the same bytes (log-interpolated) {interp:.2f} dB "
                             f"({r['psnr'] - interp:+.2f} dB; goal >= +1)")
            if r.get("sz3_same_bytes"):
                parts.append(f"SZ3 at the same bytes {r['sz3_same_bytes']['psnr']:.2f} dB "
                             f"({r['psnr'] - r['sz3_same_bytes']['psnr']:+.2f} dB)")
            out.append("; ".join(parts))
    for r in report["super_resolution"]:
        if r.get("reached"):
            out.append(f"{r['series']} skipped steps (between fraction {r['between_fraction']:g}): model {r['psnr_skipped']:.2f} dB vs linear interpolation of the "
                       f"raw steps {r['linear_raw']:.2f} dB ({r['psnr_skipped'] - r['linear_raw']:+.2f} dB; goal >= 0)")
    return out


def _interpolate_log(points, nbytes):
    """PSNR at ``nbytes`` on the (bytes, PSNR) curve ``points``, linear in log(bytes); ``None`` outside it."""
    if len(points) < 2 or not points[0][0] <= nbytes <= points[-1][0]:
        exact = [p for b, p in points if b == nbytes]
        return exact[0] if exact else None
    xs = [math.log(b) for b, _ in points]
    return float(np.interp(math.log(nbytes), xs, [p for _, p in points]))


def _git_commit() -> str | None:
    """The checkout's commit (the core measured), or ``None`` outside a git checkout."""
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# ---- main ------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", nargs="+", default=list(SERIES_NAMES), choices=SERIES_NAMES)
    ap.add_argument("--ratios", nargs="+", type=float, default=[25.0, 50.0, 100.0],
                    help="targets: the series' float32 bytes / total file bytes")
    ap.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    ap.add_argument("--seconds", type=float, default=6.0,
                    help="training seconds per per-step model; a time-varying model gets steps x this")
    ap.add_argument("--batch-size", type=int, default=1 << 14,
                    help="points per training step, every model (default 16384: a step of u_wind has 138k points)")
    ap.add_argument("--steps-per-batch", type=int, default=DEFAULT_STEPS_PER_BATCH,
                    help="time steps per training batch of the time-varying models of parts 1 and 2 (default "
                         "TrainConfig's: all)")
    ap.add_argument("--between-fraction", type=float, default=DEFAULT_BETWEEN,
                    help="fraction of each batch at random times between steps (default TrainConfig's)")
    ap.add_argument("--design-steps", type=int, default=None,
                    help="train each design variant exactly this many steps instead of for equal time")
    ap.add_argument("--sr-ratio", type=float, default=50.0, help="super-resolution model's ratio vs its trained steps")
    ap.add_argument("--design-ratio", type=float, default=50.0)
    ap.add_argument("--design-series", nargs="+", default=["u_wind"], choices=SERIES_NAMES)
    ap.add_argument("--quick", action="store_true", help="smoke run: 0.5 s per step model, one ratio (50x)")
    ap.add_argument("--output", default=None,
                    help="JSON path (default benchmarks/results/time_varying.json; time_varying_quick.json with --quick)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds, args.ratios = 0.5, [50.0]
    args.compression = Compression()
    out = Path(args.output or RESULTS / ("time_varying_quick.json" if args.quick else "time_varying.json"))

    device = "cuda " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    settings = {"seconds_per_step_model": args.seconds, "batch_size": args.batch_size, "ratios": args.ratios,
                "parts": args.parts, "sr_ratio": args.sr_ratio, "design_ratio": args.design_ratio,
                "design_series": args.design_series, "design_steps": args.design_steps, "quick": args.quick, "seed": 0,
                "steps_per_batch": args.steps_per_batch or "all", "between_fraction": args.between_fraction,
                "compression": args.compression.describe(), "steps_per_batch_trainconfig_default": DEFAULT_STEPS_PER_BATCH,
                "ratio_tolerance_sz3": RATIO_TOLERANCE}
    meta = {"machine": platform.machine(), "node": platform.node(), "cpus": os.cpu_count(), "device": device,
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "python": sys.version.split()[0],
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": " ".join([os.path.basename(sys.argv[0]), *(argv if argv is not None else sys.argv[1:])]),
            "git_commit": _git_commit()}
    report = {"meta": meta, "settings": settings, "series": {}, "equal_bytes": [], "super_resolution": [],
              "design": [], "key_frame_coding": []}
    t_start = time.perf_counter()

    def log(text):
        print(f"[{time.perf_counter() - t_start:7.1f} s] {text}", flush=True)

    with tempfile.TemporaryDirectory(prefix="time_varying-") as tmp:
        workdir = Path(tmp)
        for name in dict.fromkeys([*args.series, *(args.design_series if "design" in args.parts else [])]):
            series = load_series(name)
            data_bytes = series.geometry.num_points * len(series) * 4
            report["series"][name] = {"steps": len(series), "shape_tzyx": [len(series), *series.geometry.shape],
                                      "times": series.times, "time_unit": series.time_unit,
                                      "value_range": list(series.value_range), "float32_bytes": data_bytes}
            log(f"{name}: {report['series'][name]}")
            trained_tv = {}
            if "equal_bytes" in args.parts and name in args.series:
                for ratio in args.ratios:
                    target = data_bytes / ratio
                    base = {"series": name, "target_ratio": ratio, "target_bytes": int(target), "data_bytes": data_bytes}
                    per = {**base, "method": "per-step", **per_step_row(series, target, args.seconds, args, workdir)}
                    seconds = per["train_seconds"] if per["reached"] else len(series) * args.seconds
                    tv = {**base, "method": "time-varying",
                          **time_varying_row(series, target, seconds, args, workdir, keep_model=True)}
                    for row in (per, tv):
                        if row["reached"]:
                            row["sz3_same_bytes"] = sz3_at_bytes(series, row["file_bytes"])
                    rows = [tv, per, {**base, "method": "sz3-per-step", **sz3_row(series, target, whole=False)},
                            {**base, "method": "sz3-4d", **sz3_row(series, target, whole=True)}]
                    if tv["reached"]:
                        model = tv.pop("_model")
                        trained_tv[ratio] = (tv, model)
                        coding = key_frame_coding(model, series, args.compression)
                        coding["values"] = sum(f.numel() for f in model.field.frames.values())
                        report["key_frame_coding"].append({**base, "psnr": tv["psnr"], "key_frame_coding": coding})
                    report["equal_bytes"].extend(rows)
                    write_json(out, report)
                    for line in equal_bytes_table(rows).splitlines()[2:]:
                        log(line)
            if "super_resolution" in args.parts and name in args.series:
                # The command line's between-step fraction, and none (what it does for times between key frames)
                for between in dict.fromkeys([args.between_fraction, 0.0]):
                    row = {"series": name, **super_resolution_row(series, args, workdir, between)}
                    report["super_resolution"].append(row)
                    write_json(out, report)
                    log(super_resolution_table([row]).splitlines()[2])
            if "design" in args.parts and name in args.design_series:
                ratio = args.design_ratio
                target = data_bytes / ratio
                seconds = len(series) * args.seconds
                base = {"series": name, "target_ratio": ratio, "target_bytes": int(target), "data_bytes": data_bytes}
                n = len(series)
                half = max(2, (n + 1) // 2)
                spb = min(args.steps_per_batch or n, n)
                between = args.between_fraction
                other_between = 0.0 if between else DEFAULT_BETWEEN or 0.25
                variants = {}  # (key frames, steps per batch, between fraction) -> name; a repeat is trained once
                for key_frames, per_batch, frac in ((n, spb, between), (half, spb, between), (n, spb, other_between),
                                                    (n, 4 if spb == n else n, between)):
                    variants.setdefault((key_frames, min(per_batch, n), frac),
                                        f"key frames {'= steps' if key_frames == n else f'{key_frames} (~steps/2)'}, "
                                        f"{'all' if min(per_batch, n) == n else per_batch} steps/batch, "
                                        f"between {frac:g}")
                for (key_frames, per_batch, frac), variant in variants.items():
                    reuse = ((key_frames, per_batch, frac) == (n, spb, between) and ratio in trained_tv
                             and args.design_steps is None)
                    if reuse:
                        row = dict(trained_tv[ratio][0])  # part 1 trained exactly this one (its seconds: the sum)
                    else:
                        row = time_varying_row(series, target, seconds, args, workdir, key_frames, per_batch,
                                               steps=args.design_steps, between_fraction=frac)
                    report["design"].append({**base, "variant": variant, **row})
                    write_json(out, report)
                    log(design_table(report["design"][-1:]).splitlines()[2])

    report["meta"]["seconds"] = time.perf_counter() - t_start
    report["verdicts"] = verdicts(report)
    write_json(out, report)
    print()
    if report["equal_bytes"]:
        print("Equal bytes (time-varying trained as long as all per-step models together):")
        print(equal_bytes_table(report["equal_bytes"]))
        print(per_step_table(report["equal_bytes"]))
    if report["super_resolution"]:
        print("\nTemporal super-resolution (trained on every other step; PSNR with the whole series' range):")
        print(super_resolution_table(report["super_resolution"]))
    if report["design"]:
        print(f"\nDesign (equal bytes, {'equal time' if args.design_steps is None else f'{args.design_steps} steps each'}):")
        print(design_table(report["design"]))
    if report["key_frame_coding"]:
        print("\nKey-frame grid codes (bytes incl. 8 per channel for offset+scale; offline, file format unchanged):")
        print(coding_table(report["key_frame_coding"]))
    print("\n" + "\n".join(report["verdicts"]))
    print(f"\nwrote {out} in {report['meta']['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
