"""The ``srn`` command: train, resample, render, evaluate and describe neural volumes without ParaView."""

from __future__ import annotations

import argparse
import math
import signal
import sys
import time
import warnings
from pathlib import Path

from srn_core.memory import format_bytes, parse_bytes

from . import compress_command, io, render_command
from .arguments import non_negative_float, positive_float, positive_int
from .compression_options import add_compression_options, compression_of, describe_file, describe_ratio, save_measured
from .progress import progress_bar

ARCHITECTURES = ("apmgsrn", "fvsrn", "ngp", "siren")


def parse_size(text: str) -> int:
    """``"1MB"`` -> bytes (decimal units; KiB/MiB/GiB binary)."""
    try:
        return parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 500KB, 1MB or 2.5GiB, got {text!r}.") from None


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
    from srn_core.compression import warn_if_missed
    from srn_core.training import TrainConfig, TrainingInterrupted, check_training_memory, fit

    out = Path(args.output)
    checkpoint = Path(str(out) + ".checkpoint")
    # Everything that could make a finished training unwritable is checked before hours of training.
    io.check_model_output(out, args.input)
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"checkpoint {str(checkpoint)!r} of an interrupted run exists; add --resume to continue it, "
                         f"or delete it to start afresh.")
    if args.resume and not checkpoint.exists():
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist; nothing to resume.")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         device=args.device, time_limit=args.time_limit, checkpoint_every_steps=args.checkpoint_every)
    compression = compression_of(args)
    volume = _read_input(args, args.input)
    n = volume.geometry.num_points
    budget, target, asked = _budget(args, volume.geometry, compression)
    check_training_memory(budget, asked)
    stored = compression.describe() if compression else "float32 parameters"
    print(f"training {args.model} on {volume.name!r} {volume.geometry.dims} from {args.input}: {asked}; "
          f"the file will hold {stored}", file=sys.stderr)
    bar = progress_bar(config.steps, "step", "train", quiet=args.quiet, interval=args.progress_interval)

    def report(p):
        bar.set_postfix_str(f"PSNR ~{p.psnr:.2f} dB, loss {p.loss:.2e}, lr {p.lr:.0e}", refresh=False)
        bar.update(p.step - bar.n)

    try:
        result = fit(volume, args.model, budget, config, checkpoint=checkpoint, resume=args.resume, callback=report)
    except TrainingInterrupted as exc:
        bar.close()
        name = "SIGTERM" if exc.signal == signal.SIGTERM else "Ctrl-C"
        print(f"srn train: interrupted ({name}) at step {exc.step}; state saved to {exc.checkpoint}. "
              f"Run the same command with --resume to continue.", file=sys.stderr)
        return 128 + int(exc.signal or signal.SIGINT)
    bar.close()
    result.model.training["source"] = str(args.input)
    try:
        m = save_measured(result.model, out, compression, volume)
    except OSError as exc:
        kept = (f"; the training state is kept in {str(checkpoint)!r}: fix that and run the same command with "
                f"--resume to write the model without training again") if checkpoint.exists() else ""
        raise OSError(f"could not write the model {str(out)!r} ({exc.strerror or exc}){kept}.") from None
    checkpoint.unlink(missing_ok=True)  # only now: the model file supersedes it
    measured = not math.isnan(result.psnr)
    psnr = f"{m.training['psnr']:.2f} dB" if measured else ""
    if "psnr_before_quantization" in m.training:
        psnr += f" ({m.training['psnr_before_quantization']:.2f} dB before quantization)"
    print(f"model     {out}: {describe_file(m)}")
    print(f"steps     {result.steps} in {result.seconds:.1f} s ({result.stopped_because})")
    print(f"PSNR      {psnr} over all {n:,} voxels" if measured else
          "PSNR      not measured (interrupted during the final evaluation)")
    print(f"ratio     {describe_ratio(m)}")
    if target is not None:
        warn_if_missed(m.file_bytes, target, f"the model file {str(out)!r}")
    if not measured:
        print(f"srn train: interrupted during the final evaluation; the model is saved to {str(out)!r}, "
              f"its PSNR was not measured (srn eval measures it).", file=sys.stderr)
        return 130
    return 0


def _budget(args, geometry, compression):
    """``(parameters, target file bytes or None, what the user asked)``: ``--ratio`` and ``--size`` are the size of
    the file written (data float32 bytes / ratio), so the budget is the largest model whose file fits it."""
    from srn_core.compression import parameters_for_file_size

    if args.params:
        return args.params, None, f"--params {args.params}"
    if args.size:
        target, asked, file = args.size, f"--size {format_bytes(args.size)}", ""
    else:
        target = geometry.num_points * 4 / args.ratio
        asked, file = f"--ratio {args.ratio:g}", f"a file of {format_bytes(target)}, "
    try:
        budget = parameters_for_file_size(args.model, target, geometry.shape, compression)
    except ValueError as exc:
        raise ValueError(f"{asked}: {exc}") from None
    asked += f" ({file}{budget:,} parameters)"
    return budget, target, asked


# ---- srn resample ------------------------------------------------------------------------------

def cmd_resample(args) -> int:
    from srn_core.devices import resolve_device
    from srn_core.evaluate import image_chunks
    from srn_core.geometry import ImageGeometry
    from srn_core.loading import load_model

    io.check_output_suffix(args.output)
    model = load_model(args.model, resolve_device(args.device))
    model.field.clamp_output = not args.no_clamp
    dims = tuple(args.dims) if args.dims else model.geometry.dims
    bounds = tuple(args.bounds) if args.bounds else model.bounds
    geometry = ImageGeometry.from_bounds(bounds, dims)
    asked = "--dims {} {} {}".format(*dims) if args.dims else "the grid {} x {} x {}".format(*dims)
    t0 = time.perf_counter()

    def pieces():
        # Stored as they come (.npy) or into VTK's one array (.vti): never a second output-sized copy.
        bar = progress_bar(geometry.num_points, "point", "resample", quiet=args.quiet)
        for values in image_chunks(model.field, geometry, model.bounds, chunk_size=args.chunk_size,
                                   outside=args.outside, fill_value=args.fill_value):
            yield values
            bar.update(values.shape[0])
        bar.close()

    io.stream_volume(args.output, geometry, model.array_name, pieces(), asked)
    seconds = time.perf_counter() - t0
    print(f"wrote {args.output}: {geometry.dims[0]} x {geometry.dims[1]} x {geometry.dims[2]} points of "
          f"{model.array_name!r}, bounds {tuple(round(b, 6) for b in geometry.bounds)}, "
          f"{geometry.num_points / seconds / 1e6:.2f} M points/s")
    return 0


# ---- srn eval ----------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    from srn_core import metrics
    from srn_core.devices import resolve_device
    from srn_core.loading import load_model

    from .figures import check_figure_path, write_comparison_figure

    if args.figure:
        check_figure_path(args.figure)  # before the work, not after it
    model = load_model(args.model, resolve_device(args.device))
    model.field.clamp_output = not args.no_clamp
    reference = _read_input(args, args.reference)
    _check_reference_geometry(reference.geometry, model.geometry, args.reference)
    recon = model.resample(reference.geometry, chunk_size=args.chunk_size)
    mask = reference.finite_mask
    psnr = metrics.psnr(reference.values, recon, mask=mask)
    print(f"reference     {args.reference} ({reference.name!r}, {reference.geometry.dims})")
    print(f"PSNR          {psnr:.3f} dB")
    print(f"max abs error {metrics.max_abs_error(reference.values, recon, mask=mask):.6g}")
    print(f"SSIM          {metrics.ssim(reference.values, recon, mask=mask):.5f}")
    print(f"ratio         {describe_ratio(model)}")
    if args.figure:
        write_comparison_figure(args.figure, reference.values, recon, reference.geometry,
                                title=f"{reference.name}: PSNR {psnr:.2f} dB")
        print(f"figure        {args.figure}")
    return 0


def _check_reference_geometry(reference, trained, path) -> None:
    """A reference on another grid than the training data's is a different volume (a transposed or cropped
    file): refuse other dims; other bounds are compared in world coordinates, with a warning."""
    if reference.dims != trained.dims:
        raise ValueError(f"reference {str(path)!r} has dims {' x '.join(map(str, reference.dims))} but the model was "
                         f"trained on dims {' x '.join(map(str, trained.dims))}; evaluate against the training grid "
                         f"(or resample the model with srn resample).")
    size = max(b - a for a, b in zip(trained.bounds[::2], trained.bounds[1::2]))
    if any(abs(a - b) > 1e-6 * max(size, 1e-30) for a, b in zip(reference.bounds, trained.bounds)):
        def show(bounds):
            return "(" + ", ".join(f"{v:g}" for v in bounds) + ")"

        warnings.warn(f"reference bounds {show(reference.bounds)} differ from the model's training bounds "
                      f"{show(trained.bounds)}; comparing at the reference's world points (outside the model's "
                      f"box the border values).", stacklevel=2)


# ---- srn info ----------------------------------------------------------------------------------

def cmd_info(args) -> int:
    from srn_core.loading import load_model

    print(load_model(args.model).describe())  # its "file" line: bytes, storage and the ratio they give
    return 0


# ---- parser ------------------------------------------------------------------------------------

NO_CLAMP_HELP = ("do not clamp the model's values to its training value range (clamping is the default: every true "
                 "value lies in that range, so it can only reduce the error)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a volume and write the model file")
    p.add_argument("input", help="volume file: .vti, .nii/.nii.gz, .nc, .npy, .raw")
    p.add_argument("-o", "--output", required=True, help="model file to write (e.g. model.srn)")
    p.add_argument("--model", choices=ARCHITECTURES, default="apmgsrn", help="architecture (default apmgsrn)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--size", type=parse_size,
                        help="size of the model file to write, e.g. 200KB, 1MB: the largest model whose file fits")
    budget.add_argument("--params", type=positive_int, help="parameter count of the model")
    budget.add_argument("--ratio", type=positive_float, default=100.0,
                        help="the float32 data's bytes over the model file's bytes (default 100): the largest "
                             "model whose file is that many times smaller than the data")
    p.add_argument("--steps", type=positive_int, default=10_000, help="maximum steps (default 10000)")
    p.add_argument("--batch-size", type=positive_int, default=1 << 16, help="points per step (default 65536)")
    p.add_argument("--lr", type=positive_float,
                   help="learning rate (default: the architecture's, 0.01 for grid models)")
    p.add_argument("--time-limit", type=positive_float, help="stop after this many seconds of training")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run (Ctrl-C, SIGTERM, a kill) from OUTPUT.checkpoint, exactly")
    p.add_argument("--checkpoint-every", type=positive_int, default=500, metavar="STEPS",
                   help="write OUTPUT.checkpoint every STEPS steps as well as every 60 s (default 500)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress-interval", type=non_negative_float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines when standard error is not a terminal (default 10)")
    add_compression_options(p, float32_option=True)
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
    p.add_argument("--no-clamp", action="store_true", help=NO_CLAMP_HELP)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(run=cmd_resample)

    p = sub.add_parser("eval", help="compare a model with a reference volume: PSNR, max error, SSIM")
    p.add_argument("model")
    p.add_argument("reference", help="reference volume file, on the model's training grid (same dims)")
    p.add_argument("--figure", metavar="OUT.png",
                   help="also write a PNG: original, reconstruction and error on the three mid slices")
    p.add_argument("--chunk-size", type=positive_int, default=1 << 16)
    p.add_argument("--device", default="auto")
    p.add_argument("--no-clamp", action="store_true", help=NO_CLAMP_HELP)
    _add_input_options(p)
    p.set_defaults(run=cmd_eval)

    p = sub.add_parser("info", help="print what a model file holds")
    p.add_argument("model")
    p.set_defaults(run=cmd_info)

    p = sub.add_parser("compress", help="re-encode a model (ours or a peer's) as a compressed model file and "
                                        "measure what it costs")
    compress_command.add_arguments(p)
    p.set_defaults(run=compress_command.run)

    p = sub.add_parser("render", help="ray-march a model into a PNG image")
    render_command.add_arguments(p)
    p.set_defaults(run=render_command.run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # One line a user can read, like the errors: the core's warnings.warn names no source line worth showing.
        print(f"srn {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
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
