"""The ``srn`` command: train, resample, render, evaluate and describe neural volumes without ParaView."""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from . import io

ARCHITECTURES = ("apmgsrn", "fvsrn", "ngp", "siren")
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


def parse_size(text: str) -> int:
    """``"1MB"`` -> bytes (decimal units; KiB/MiB/GiB binary)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise argparse.ArgumentTypeError(f"--size must look like 500KB, 1MB or 2.5MiB, got {text!r}.")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}.")
    return v


def _add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input volume")
    g.add_argument("--array", help="array (VTI) or variable (NetCDF) to use; default: the only/active one")
    g.add_argument("--spacing", nargs=3, type=float, metavar=("SX", "SY", "SZ"), help="override the voxel spacing")
    g.add_argument("--origin", nargs=3, type=float, metavar=("OX", "OY", "OZ"), help="override the origin")
    g.add_argument("--axis-order", help="world axis of each array axis for npy/raw/NetCDF (default zyx)")
    g.add_argument("--raw-shape", nargs=3, type=positive_int, metavar=("A0", "A1", "A2"), help="shape of a .raw file")
    g.add_argument("--raw-dtype", help="dtype of a .raw file, e.g. <f4, uint8, >i2")
    g.add_argument("--mask-nonfinite", action="store_true",
                   help="exclude NaN/Inf voxels from training and metrics instead of refusing the input")


def _read_input(args, path) -> "io.data.Volume":
    return io.read_volume(path, args.array, args.mask_nonfinite, args.spacing, args.origin, args.axis_order,
                          args.raw_shape, args.raw_dtype)


# ---- srn train ---------------------------------------------------------------------------------

def cmd_train(args) -> int:
    import torch
    from srn_core.fields import field_for_budget
    from srn_core.training import TrainConfig, TrainingInterrupted, train

    out = Path(args.output)
    if out.is_dir() or not out.parent.resolve().is_dir():
        raise ValueError(f"output {str(out)!r} must be a file path in an existing folder.")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.device, time_limit=args.time_limit)
    volume = _read_input(args, args.input)
    n = volume.geometry.num_points
    if args.params:
        budget = args.params
    elif args.size:
        budget = args.size // 4
    else:
        budget = int(n / args.ratio)
    torch.manual_seed(args.seed)
    field = field_for_budget(args.model, budget, volume.geometry.shape)
    checkpoint = str(out) + ".checkpoint"
    print(f"training {args.model} ({field.num_parameters():,} parameters, {n / field.num_parameters():.1f}x "
          f"compression) on {volume.name!r} {volume.geometry.dims} from {args.input}", file=sys.stderr)
    bar = _progress_bar(config.steps, args.quiet)

    def report(p):
        if bar is not None:
            bar.update(p.step - bar.n)
            bar.set_postfix_str(f"loss {p.loss:.2e}  PSNR {p.psnr:5.2f} dB  lr {p.lr:.0e}", refresh=False)

    try:
        result = train(volume, field, config, checkpoint=checkpoint, resume=args.resume, callback=report)
    except TrainingInterrupted as exc:
        if bar is not None:
            bar.close()
        print(f"srn train: interrupted at step {exc.step}; state saved to {exc.checkpoint}. "
              f"Run the same command with --resume to continue.", file=sys.stderr)
        return 130
    if bar is not None:
        bar.close()
    result.model.training["source"] = str(args.input)
    result.model.save(out)
    m = result.model
    print(f"model     {out} ({out.stat().st_size / 1e6:.3f} MB)")
    print(f"steps     {result.steps} in {result.seconds:.1f} s ({result.stopped_because})")
    print(f"PSNR      {result.psnr:.2f} dB over all {n:,} voxels")
    print(f"ratio     {m.compression_ratio:.1f}x vs float32 ({m.num_parameters:,} parameters)")
    return 0


def _progress_bar(total: int, quiet: bool):
    if quiet:
        return None
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True, mininterval=0.5)


# ---- srn resample ------------------------------------------------------------------------------

def cmd_resample(args) -> int:
    from srn_core.geometry import ImageGeometry
    from srn_core.model import load_model, resolve_device

    model = load_model(args.model, resolve_device(args.device))
    dims = tuple(args.dims) if args.dims else model.geometry.dims
    bounds = tuple(args.bounds) if args.bounds else model.bounds
    geometry = ImageGeometry.from_bounds(bounds, dims)
    t0 = time.perf_counter()
    values = model.resample(geometry, chunk_size=args.chunk_size, outside=args.outside, fill_value=args.fill_value)
    seconds = time.perf_counter() - t0
    io.write_volume(args.output, values, geometry, model.array_name)
    print(f"wrote {args.output}: {geometry.dims[0]} x {geometry.dims[1]} x {geometry.dims[2]} points of "
          f"{model.array_name!r}, bounds {tuple(round(b, 6) for b in geometry.bounds)}, "
          f"{geometry.num_points / seconds / 1e6:.2f} M points/s")
    return 0


# ---- srn eval ----------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    from srn_core import metrics
    from srn_core.model import load_model, resolve_device

    model = load_model(args.model, resolve_device(args.device))
    reference = _read_input(args, args.reference)
    recon = model.resample(reference.geometry, chunk_size=args.chunk_size)
    mask = reference.finite_mask
    print(f"reference     {args.reference} ({reference.name!r}, {reference.geometry.dims})")
    print(f"PSNR          {metrics.psnr(reference.values, recon, mask=mask):.3f} dB")
    print(f"max abs error {metrics.max_abs_error(reference.values, recon, mask=mask):.6g}")
    print(f"SSIM          {metrics.ssim(reference.values, recon, mask=mask):.5f}")
    print(f"ratio         {reference.geometry.num_points / model.num_parameters:.1f}x vs float32")
    return 0


# ---- srn info ----------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from srn_core.model import load_model

    print(load_model(args.model).describe())
    return 0


# ---- parser ------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a volume and write the model file")
    p.add_argument("input", help="volume file: .vti, .nii/.nii.gz, .nc, .npy, .raw")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.srn)")
    p.add_argument("--model", choices=ARCHITECTURES, default="apmgsrn", help="architecture (default apmgsrn)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--size", type=parse_size, help="target model size, e.g. 200KB, 1MB")
    budget.add_argument("--params", type=positive_int, help="target parameter count")
    budget.add_argument("--ratio", type=float, default=100.0, help="target compression vs float32 (default 100)")
    p.add_argument("--steps", type=positive_int, default=10_000, help="maximum steps (default 10000)")
    p.add_argument("--batch-size", type=positive_int, default=1 << 16, help="points per step (default 65536)")
    p.add_argument("--lr", type=float, help="learning rate (default: the architecture's, 0.01 for grid models)")
    p.add_argument("--time-limit", type=float, help="stop after this many seconds of training")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from OUTPUT.checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_input_options(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("resample", help="evaluate a model on a grid and write a .vti (or .npy)")
    p.add_argument("model", help="model file (or an APMGSRN checkpoint folder)")
    p.add_argument("-o", "--output", required=True, help="output .vti or .npy")
    p.add_argument("--dims", nargs=3, type=positive_int, metavar=("X", "Y", "Z"), help="points per axis (default: the data's)")
    p.add_argument("--bounds", nargs=6, type=float, metavar=("X0", "X1", "Y0", "Y1", "Z0", "Z1"),
                   help="world region (default: the data's bounds)")
    p.add_argument("--outside", choices=("clamp", "nan", "fill"), default="clamp",
                   help="points outside the model's bounds: clamp to the boundary (default), NaN, or --fill-value")
    p.add_argument("--fill-value", type=float, default=0.0)
    p.add_argument("--chunk-size", type=positive_int, default=1 << 16, help="points per evaluation batch")
    p.add_argument("--device", default="auto")
    p.set_defaults(run=cmd_resample)

    p = sub.add_parser("eval", help="compare a model with a reference volume: PSNR, max error, SSIM")
    p.add_argument("model")
    p.add_argument("reference", help="reference volume file")
    p.add_argument("--chunk-size", type=positive_int, default=1 << 16)
    p.add_argument("--device", default="auto")
    _add_input_options(p)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("info", help="print what a model file holds")
    p.add_argument("model")
    p.set_defaults(run=cmd_info)

    try:
        from . import render_command
    except ImportError:  # pragma: no cover - the renderer is optional while being built
        render_command = None
    if render_command is not None:
        p = sub.add_parser("render", help="ray-march a model into a PNG image")
        render_command.add_arguments(p)
        p.set_defaults(run=render_command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("srn: interrupted.", file=sys.stderr)
        return 130
    except (OSError, ValueError, ImportError, RuntimeError, MemoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"srn {args.command}: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
