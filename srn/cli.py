"""The ``srn`` command: train, resample, render, evaluate and describe neural volumes without ParaView."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

from . import mpi

mpi.limit_threads()  # under mpirun one torch thread per rank: before anything below imports torch

from srn_core.memory import format_bytes, parse_bytes  # noqa: E402

from . import compress_command, io, render_command  # noqa: E402
from .arguments import non_negative_float, number, positive_float, positive_int  # noqa: E402
from .compression_options import (add_compression_options, compression_of, describe_file,  # noqa: E402
                                  describe_ratio, save_measured)
from .progress import progress_bar  # noqa: E402

ARCHITECTURES = ("apmgsrn", "fvsrn", "ngp", "siren")

finite_float = number(float, math.isfinite, "a finite number")
non_negative_int = number(int, lambda v: v >= 0, "a whole number, 0 or more")


def time_list(text: str) -> list[float]:
    """``"0,0.5,2"`` -> ``[0.0, 0.5, 2.0]`` (``--times``)."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) for v in values):
        raise argparse.ArgumentTypeError(f"must be finite numbers separated by commas, e.g. 0,0.5,2, got {text!r}.")
    return values


def parse_size(text: str) -> int:
    """``"1MB"`` -> bytes (decimal units; KiB/MiB/GiB binary)."""
    try:
        return parse_bytes(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must look like 500KB, 1MB or 2.5GiB, got {text!r}.") from None


def positive_size(text: str) -> int:
    """:func:`parse_size` of a size that must hold something (``--data-memory``)."""
    size = parse_size(text)
    if size < 1:
        raise argparse.ArgumentTypeError(f"must be a positive size like 500KB, 1MB or 2.5GiB, got {text!r}.")
    return size


def _add_input_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("input volume")
    g.add_argument("--array", help="array (VTI), variable (NetCDF) or dataset (HDF5) to use; default: the "
                                   "only/active one")
    g.add_argument("--spacing", nargs=3, type=float, metavar=("SX", "SY", "SZ"), help="override the voxel spacing")
    g.add_argument("--origin", nargs=3, type=float, metavar=("OX", "OY", "OZ"), help="override the origin")
    g.add_argument("--axis-order", help="world axis of each array axis for npy/raw/NetCDF (default zyx)")
    g.add_argument("--raw-shape", nargs=3, type=positive_int, metavar=("A0", "A1", "A2"), help="shape of a .raw file")
    g.add_argument("--raw-dtype", help="dtype of a .raw file, e.g. <f4, uint8, >i2")
    g.add_argument("--mask-nonfinite", action="store_true",
                   help="exclude NaN/Inf voxels from training and metrics instead of refusing the input")
    g = p.add_argument_group("time series input")
    g.add_argument("--time", metavar="SEL",
                   help="time steps of a series input to use: all (default), an index I, a list I,J,K or a slice "
                        "A:B[:S] (end exclusive); one step is a single volume")
    g.add_argument("--times", type=time_list, metavar="T0,T1,...",
                   help="time value of each step of the input, comma separated, one per step before --time "
                        "(default: the file's time coordinate, else 0, 1, 2, ... for a list of files)")


def _read_input(args, paths, keep_series: bool = False):
    """The input volume or time series of ``paths`` (files, globs or one series file)."""
    return io.read_input(paths, args.array, args.mask_nonfinite, args.spacing, args.origin, args.axis_order,
                         args.raw_shape, args.raw_dtype, time_selection=args.time, times=args.times,
                         keep_series=keep_series)


def _describe_times(series) -> str:
    """``"3 (hours since 2000-01-01): 0, 6, 12"``: a series' steps, unit and time values."""
    unit = f" ({series.time_unit})" if series.time_unit else ""
    shown = series.times if len(series) <= 12 else [*series.times[:6], "...", *series.times[-5:]]
    return f"{len(series)}{unit}: " + ", ".join(t if isinstance(t, str) else f"{t:g}" for t in shown)


# ---- srn train ---------------------------------------------------------------------------------

def cmd_train(args) -> int:
    ranks = mpi.world()
    if args.ensemble is not None:
        return _train_ensemble(args, ranks)
    if ranks is not None:
        raise mpi.FailedOnEveryRank(f"srn train was started on {ranks.size} MPI ranks, which share out the bricks of "
                                    f"an ensemble; add --ensemble NX NY NZ, or train a single model without mpirun.")
    if args.ghost is not None:
        raise ValueError(f"--ghost {args.ghost} needs --ensemble NX NY NZ: ghost voxels widen an ensemble's bricks.")
    return _train_single(args)


def _train_single(args) -> int:
    from srn_core.series import TimeSeries
    from srn_core.series_readers import expand_inputs
    from srn_core.training import TrainingInterrupted, check_training_memory, fit

    out = Path(args.output)
    checkpoint = Path(str(out) + ".checkpoint")
    # Everything that could make a finished training unwritable is checked before hours of training.
    inputs = expand_inputs(args.input)
    io.check_model_output(out, inputs)
    if checkpoint.exists() and not args.resume:
        raise ValueError(f"checkpoint {str(checkpoint)!r} of an interrupted run exists; add --resume to continue it, "
                         f"or delete it to start afresh.")
    if args.resume and not checkpoint.exists():
        parts = _parts_folder(out)
        hint = (f" ({str(parts)!r} holds an interrupted ensemble run: resume it with its --ensemble NX NY NZ)"
                if parts.exists() else "")
        raise FileNotFoundError(f"checkpoint {str(checkpoint)!r} does not exist; nothing to resume{hint}.")
    config = _train_config(args)
    compression = compression_of(args)
    volume = _checked_input(_open_input(args, inputs), config)
    series = isinstance(volume, TimeSeries)
    if args.key_frames is not None and not series:
        raise ValueError(f"--key-frames {args.key_frames} needs a time series input; {_sources(inputs)} is one "
                         f"volume.")
    budget, target, asked = _budget(args, volume, compression)
    check_training_memory(budget, asked)
    stored = compression.describe() if compression else "float32 parameters"
    what = f"{len(volume)} time steps of " if series else ""
    print(f"training {args.model} on {what}{volume.name!r} {volume.geometry.dims} from {_sources(inputs)}: "
          f"{asked}; the file will hold {stored}", file=sys.stderr)
    streaming = _streaming(getattr(volume, "nbytes", 0), volume, config)
    if streaming:
        print(f"srn train: {streaming}", file=sys.stderr)
    bar = progress_bar(config.steps, "step", "train", quiet=args.quiet, interval=args.progress_interval)

    def report(p):
        bar.set_postfix_str(f"PSNR ~{p.psnr:.2f} dB, loss {p.loss:.2e}, lr {p.lr:.0e}", refresh=False)
        bar.update(p.step - bar.n)

    try:
        result = fit(volume, args.model, budget, config, checkpoint=checkpoint, resume=args.resume, callback=report,
                     key_frames=args.key_frames)
    except TrainingInterrupted as exc:
        bar.close()
        name = "SIGTERM" if exc.signal == signal.SIGTERM else "Ctrl-C"
        print(f"srn train: interrupted ({name}) at step {exc.step}; state saved to {exc.checkpoint}. "
              f"Run the same command with --resume to continue.", file=sys.stderr)
        return 128 + int(exc.signal or signal.SIGINT)
    bar.close()
    result.model.training["source"] = inputs[0] if len(inputs) == 1 else inputs
    try:
        m = save_measured(result.model, out, compression, volume)
    except OSError as exc:
        kept = (f"; the training state is kept in {str(checkpoint)!r}: fix that and run the same command with "
                f"--resume to write the model without training again") if checkpoint.exists() else ""
        raise OSError(f"could not write the model {str(out)!r} ({exc.strerror or exc}){kept}.") from None
    checkpoint.unlink(missing_ok=True)  # only now: the model file supersedes it
    measured = not math.isnan(result.psnr)
    _print_trained(out, m, result, volume, target)
    if measured and series and "psnr_per_step" in m.training:
        # The file's model (quantized where compressed): NeuralVolume.save measured it per step.
        print("per step  " + ", ".join(f"{p:.2f}" for p in m.training["psnr_per_step"]) + " dB")
    if not measured:
        print(f"srn train: interrupted during the final evaluation; the model is saved to {str(out)!r}, "
              f"its PSNR was not measured (srn eval measures it).", file=sys.stderr)
        return 130
    return 0


def _print_trained(out, m, result, volume, target, bricks: str = "") -> None:
    """The summary of a written model on standard output (and a missed file size as a warning)."""
    from srn_core.compression import warn_if_missed
    from srn_core.series import TimeSeries

    series = isinstance(volume, TimeSeries)
    n = volume.geometry.num_points
    measured = not math.isnan(result.psnr)
    psnr = f"{m.training['psnr']:.2f} dB" if measured else ""
    if "psnr_before_quantization" in m.training:
        psnr += f" ({m.training['psnr_before_quantization']:.2f} dB before quantization)"
    print(f"model     {out}: {describe_file(m)}")
    print(f"steps     {result.steps}{bricks} in {result.seconds:.1f} s ({result.stopped_because})")
    if series:
        print(f"time      {_describe_times(volume)}")
    every = f"{n:,} voxels x {len(volume)} time steps" if series else f"{n:,} voxels"
    print(f"PSNR      {psnr} over all {every}" if measured else
          "PSNR      not measured (interrupted during the final evaluation)")
    print(f"ratio     {describe_ratio(m)}")
    if target is not None:
        warn_if_missed(m.file_bytes, target, f"the model file {str(out)!r}")


def _train_config(args):
    from srn_core.training import TrainConfig

    return TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed, device=args.device,
                       time_limit=args.time_limit, checkpoint_every_steps=args.checkpoint_every,
                       data_memory=args.data_memory)


def _open_input(args, paths):
    """The training input: a source read box by box where the format allows, else the volume or series read
    whole (:func:`srn.io.open_input`)."""
    return io.open_input(paths, args.array, args.mask_nonfinite, args.spacing, args.origin, args.axis_order,
                         args.raw_shape, args.raw_dtype, time_selection=args.time, times=args.times,
                         data_memory=_data_memory(_train_config(args)))


def _checked_input(data, config):
    """A source that fits ``--data-memory`` read whole now (as training would read it), so that what
    :class:`~srn_core.data.Volume` refuses (non-finite values, a range beyond float32) is refused before the
    model is sized, as for any volume; a larger one is checked by its one streaming pass of statistics (kept for
    training). A volume or series read whole is returned as it is."""
    from srn_core.volume_source import VolumeSource

    if not isinstance(data, VolumeSource):
        return data
    if data.nbytes <= _data_memory(config):
        return data.load()
    data.statistics()
    return data


def _data_memory(config) -> int:
    """The resident bound on training data of ``config`` (``--data-memory``, or the training's default)."""
    from srn_core.training import data_memory_bytes

    return data_memory_bytes(config)


def _streaming(nbytes: int, data, config, what: str = "") -> str | None:
    """The message that training streams ``data`` (``nbytes`` of float32 in one training's box) from disk and
    with what bound, or ``None`` when it is held in memory (read whole, or small enough to load)."""
    from srn_core.volume_source import VolumeSource

    bound = _data_memory(config)
    if not isinstance(data, VolumeSource) or nbytes <= bound:
        return None
    limit = (f"--data-memory {format_bytes(bound)}" if config.data_memory is not None else
             f"the default data memory {format_bytes(bound)} (a quarter of the memory available; --data-memory "
             f"sets it)")
    return (f"streaming {what}{data.name!r} from disk ({format_bytes(nbytes)} of float32, more than {limit}): at "
            f"most {format_bytes(bound)} of it is in memory at a time")


def _parts_folder(out: Path) -> Path:
    """Where an ensemble run keeps its finished bricks and checkpoints until the model file is written."""
    return Path(str(out) + ".parts")


def _check_parts(parts: Path, resume: bool) -> None:
    """``--resume`` rules for an ensemble's parts folder (those of the single model's checkpoint)."""
    if parts.exists() and not parts.is_dir():
        raise ValueError(f"parts folder {str(parts)!r} exists but is not a folder; move it away or choose "
                         f"another output.")
    if parts.exists() and not resume:
        raise ValueError(f"parts folder {str(parts)!r} of an interrupted ensemble run exists; add --resume to "
                         f"continue it, or delete it to start afresh.")
    if resume and not parts.exists():
        raise FileNotFoundError(f"parts folder {str(parts)!r} does not exist; nothing to resume.")


def _train_ensemble(args, ranks) -> int:
    """``srn train --ensemble NX NY NZ``: one model per brick, trained here or over the ranks of ``mpirun``,
    assembled into one model file by rank 0 (see :mod:`srn.mpi` for how the ranks agree, wait and report)."""
    from srn_core.ensemble_training import DEFAULT_GHOST, EnsembleTrainingFailed, plan_bricks, train_ensemble
    from srn_core.series import TimeSeries
    from srn_core.series_readers import expand_inputs
    from srn_core.training import TrainingInterrupted, check_training_memory
    from srn_core.volume_source import VolumeSource, box_shape

    root = ranks is None or ranks.rank == 0

    def agree(check, root_only=False):
        """``check()`` here (serial), or with its outcome shared by every rank (:meth:`srn.mpi.Ranks.agree`)."""
        return check() if ranks is None else ranks.agree(check, root_only=root_only)

    out, parts = Path(args.output), _parts_folder(Path(args.output))
    inputs = agree(lambda: expand_inputs(args.input))

    def check_outputs():  # rank 0 alone looks at the disk, so that every rank fails alike
        io.check_model_output(out, inputs)
        _check_parts(parts, args.resume)

    agree(check_outputs, root_only=True)

    def prepare():  # every rank opens its own input (a memory map or file handle: nothing is read yet)
        if args.key_frames is not None:
            raise ValueError(f"--key-frames {args.key_frames} needs a time series; --ensemble trains one volume.")
        config = _train_config(args)
        data = _open_input(args, inputs)
        if isinstance(data, TimeSeries):
            raise ValueError(f"--ensemble trains one static volume, but the input ({_sources(inputs)}) is a time "
                             f"series of {len(data)} steps; pick one step with --time I.")
        ghost = DEFAULT_GHOST if args.ghost is None else args.ghost
        try:
            plan = plan_bricks(data.geometry, tuple(args.ensemble), ghost)
        except ValueError as exc:
            raise ValueError(f"--ensemble {' '.join(map(str, args.ensemble))}: {exc}") from None
        compression = compression_of(args)
        budget, target, asked = _ensemble_budget(args, data, plan, compression)
        check_training_memory(budget // len(plan), asked)
        return config, data, plan, compression, budget, target, asked

    config, data, plan, compression, budget, target, asked = agree(prepare)

    def check_values():  # one streaming pass on rank 0, kept for the checksum it computes next
        if isinstance(data, VolumeSource):
            data.statistics()

    agree(check_values, root_only=True)
    count = len(plan)
    largest = max(4 * math.prod(box_shape(plan.box(k), plan.geometry.shape)) for k in range(count))
    if root:
        stored = compression.describe() if compression else "float32 parameters"
        where = f" on {ranks.size} MPI ranks" if ranks is not None else ""
        print(f"training an ensemble of {' x '.join(map(str, plan.grid))} {args.model} bricks (ghost {plan.ghost}) "
              f"on {data.name!r} {data.geometry.dims} from {_sources(inputs)}{where}: {asked}; the file will hold "
              f"{stored}", file=sys.stderr)
        streaming = _streaming(largest, data, config, "each brick of ")
        if streaming:
            print(f"srn train: {streaming}", file=sys.stderr)
    # Steps done per brick: bricks a resumed run finished before count in full from the start.
    before = {k: config.steps for k in (_finished_bricks(parts, count) if root and args.resume else [])}
    bar = progress_bar(count * config.steps, "step", "train", quiet=args.quiet or not root,
                       interval=args.progress_interval, initial=sum(before.values()))

    def on_change(reported, k, psnr):
        steps = {**before, **reported}
        finished = sum(1 for v in steps.values() if v >= config.steps)
        bar.set_postfix_str(f"{finished}/{count} bricks done, PSNR ~{psnr:.2f} dB (brick {k})", refresh=False)
        bar.update(sum(steps.values()) - bar.n)

    relay = mpi.ProgressRelay(ranks, on_change)

    def report(k, p):
        relay.report(k, p.step, p.psnr)

    comm = ranks.sleeping(on_wait=relay.drain) if ranks is not None else None
    result, failure = None, None
    try:
        result = train_ensemble(data, plan.grid, args.model, budget, config, ghost=plan.ghost, work_dir=parts,
                                resume=args.resume, comm=comm, callback=report, compression=compression)
    except TrainingInterrupted as exc:  # serial runs only: over MPI every rank raises EnsembleTrainingFailed
        bar.close()
        name = "SIGTERM" if exc.signal == signal.SIGTERM else "Ctrl-C"
        print(f"srn train: interrupted ({name}); the finished bricks and checkpoints are kept in {str(parts)!r}. "
              f"Run the same command with --resume to continue.", file=sys.stderr)
        return 128 + int(exc.signal or signal.SIGINT)
    except Exception as exc:  # noqa: BLE001 - over MPI every rank must learn every rank's outcome (below)
        if ranks is None:
            if isinstance(exc, EnsembleTrainingFailed):
                raise RuntimeError(str(exc)) from None
            raise
        failure = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    finally:
        relay.finish()
    if ranks is not None:
        # EnsembleTrainingFailed comes alike on every rank, but rank 0 may also fail alone after the others
        # returned (assembling, measuring): one more agreement, so that no rank waits for one that gave up.
        def check():
            if failure is not None:
                raise RuntimeError(failure)

        agree(check)
    if root and bar.n < count * config.steps:
        bar.update(count * config.steps - bar.n)  # bricks that stopped early (converged, time limit) are done too
    bar.close()

    def write():
        result.model.training["source"] = inputs[0] if len(inputs) == 1 else inputs
        try:
            return save_measured(result.model, out, compression, data)
        except OSError as exc:
            raise OSError(f"could not write the model {str(out)!r} ({exc.strerror or exc}); the trained bricks are "
                          f"kept in {str(parts)!r}: fix that and run the same command with --resume to write the "
                          f"model without training again.") from None

    m = agree(write, root_only=True)
    if not root:
        return 0
    import shutil

    shutil.rmtree(parts, ignore_errors=True)  # only now: the model file supersedes the parts
    _print_trained(out, m, result, data, target, bricks=f" over {count} bricks")
    return 0


def _finished_bricks(parts: Path, count: int) -> list[int]:
    """Bricks whose model is in ``parts`` already (a resumed run skips them)."""
    from srn_core.ensemble_training import brick_file

    return [k for k in range(count) if brick_file(parts, k).is_file()]


def _ensemble_budget(args, data, plan, compression):
    """:func:`_budget` for an ensemble: ``--params``, ``--ratio`` and ``--size`` are the whole ensemble's (its
    one file), shared equally by the bricks; each brick's file is sized for its own box."""
    from srn_core.compression import parameters_for_file_size
    from srn_core.volume_source import box_shape

    count = len(plan)
    if args.params:
        if args.params < count:
            raise ValueError(f"--params {args.params} leaves less than one parameter to each of the {count} bricks.")
        return args.params, None, f"--params {args.params} ({args.params // count:,} per brick)"
    if args.size:
        target, asked, file = args.size, f"--size {format_bytes(args.size)}", ""
    else:
        target = data.geometry.num_points * 4 / args.ratio
        asked, file = f"--ratio {args.ratio:g}", f"a file of {format_bytes(target)}, "
    shape = max((box_shape(plan.box(k), plan.geometry.shape) for k in range(count)), key=math.prod)
    try:
        per_brick = parameters_for_file_size(args.model, target / count, shape, compression)
    except ValueError as exc:
        raise ValueError(f"{asked} over {count} bricks: {exc}") from None
    asked += f" ({file}{count} bricks of {per_brick:,} parameters)"
    return per_brick * count, target, asked


def _sources(inputs) -> str:
    return inputs[0] if len(inputs) == 1 else f"{len(inputs)} files ({inputs[0]} ... {inputs[-1]})"


def _budget(args, volume, compression):
    """``(parameters, target file bytes or None, what the user asked)``: ``--ratio`` and ``--size`` are the size of
    the file written (data float32 bytes / ratio; a series' data are all its steps), so the budget is the largest
    model whose file fits it (for a series, the time-varying model with its key frames)."""
    from srn_core.compression import parameters_for_file_size
    from srn_core.series import TimeSeries
    from srn_core.training import key_times_for

    series = isinstance(volume, TimeSeries)
    try:
        key_times = key_times_for(volume.times, args.key_frames) if series else None
    except ValueError as exc:
        raise ValueError(f"--key-frames {args.key_frames}: {exc}") from None
    if args.params:
        return args.params, None, f"--params {args.params}"
    geometry = volume.geometry
    if args.size:
        target, asked, file = args.size, f"--size {format_bytes(args.size)}", ""
    else:
        target = geometry.num_points * (len(volume) if series else 1) * 4 / args.ratio
        asked, file = f"--ratio {args.ratio:g}", f"a file of {format_bytes(target)}, "
    try:
        budget = parameters_for_file_size(args.model, target, geometry.shape, compression, key_times=key_times)
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

    if args.all_steps:
        if args.time is not None:
            raise ValueError("--time and --all-steps exclude each other: one time, or every time step.")
        io.check_series_output(args.output)
    else:
        io.check_output_suffix(args.output)
    model = load_model(args.model, resolve_device(args.device))
    model.field.clamp_output = not args.no_clamp
    times = _resample_times(args, model)
    dims = tuple(args.dims) if args.dims else model.geometry.dims
    bounds = tuple(args.bounds) if args.bounds else model.bounds
    geometry = ImageGeometry.from_bounds(bounds, dims)
    asked = "--dims {} {} {}".format(*dims) if args.dims else "the grid {} x {} x {}".format(*dims)
    t0 = time.perf_counter()
    bar = progress_bar(geometry.num_points * len(times), "point", "resample", quiet=args.quiet)

    def pieces(t):
        # Stored as they come (.npy) or into VTK's one array (.vti): never a second output-sized copy.
        for values in image_chunks(model.at_time(t).field, geometry, model.bounds, chunk_size=args.chunk_size,
                                   outside=args.outside, fill_value=args.fill_value):
            yield values
            bar.update(values.shape[0])

    if args.all_steps:
        written = io.stream_series(args.output, geometry, model.array_name, ((t, pieces(t)) for t in times),
                                   len(times), asked)
    else:
        io.stream_volume(args.output, geometry, model.array_name, pieces(times[0]), asked)
        written = args.output
    bar.close()
    seconds = time.perf_counter() - t0
    at = ""
    if model.is_time_varying:
        unit = f" {model.time_unit}" if model.time_unit else ""
        at = (f" at {len(times)} time steps ({times[0]:g} to {times[-1]:g}{unit})" if args.all_steps
              else f" at time {times[0]:g}{unit}")
    print(f"wrote {written}: {geometry.dims[0]} x {geometry.dims[1]} x {geometry.dims[2]} points of "
          f"{model.array_name!r}{at}, bounds {tuple(round(b, 6) for b in geometry.bounds)}, "
          f"{geometry.num_points * len(times) / seconds / 1e6:.2f} M points/s")
    return 0


def _resample_times(args, model) -> list:
    """The times ``srn resample`` evaluates: ``[--time]``, the model's steps (``--all-steps``), or ``[None]``
    for a static model; anything else one clear error."""
    name = args.model
    if not model.is_time_varying:
        if args.time is not None or args.all_steps:
            option = "--time" if args.time is not None else "--all-steps"
            raise ValueError(f"{option}: model {name!r} is static, it has no time; resample it without {option}.")
        return [None]
    lo, hi = model.time_range
    if args.all_steps:
        return list(model.time_steps)
    if args.time is None:
        raise ValueError(f"model {name!r} is time-varying ({len(model.time_steps)} steps from {lo:g} to {hi:g}); "
                         f"give --time T (any time in that range) or --all-steps -o OUT.pvd.")
    return [model.check_time(args.time, "--time")]


# ---- srn eval ----------------------------------------------------------------------------------

def cmd_eval(args) -> int:
    from srn_core import metrics
    from srn_core.devices import resolve_device
    from srn_core.loading import load_model
    from srn_core.series import TimeSeries

    from .figures import check_figure_path, write_comparison_figure

    if args.figure:
        check_figure_path(args.figure)  # before the work, not after it
    model = load_model(args.model, resolve_device(args.device))
    model.field.clamp_output = not args.no_clamp
    reference = _read_input(args, args.reference, keep_series=True)
    label = args.reference[0] if len(args.reference) == 1 else f"{len(args.reference)} inputs"
    if isinstance(reference, TimeSeries) and not model.is_time_varying:
        if len(reference) > 1:
            raise ValueError(f"model {args.model!r} is static but the reference is a time series of {len(reference)} "
                             f"steps; compare one step (--time I).")
        reference = reference.steps[0]
    if isinstance(reference, TimeSeries):
        return _eval_series(args, model, reference, label)
    if model.is_time_varying:
        lo, hi = model.time_range
        raise ValueError(f"model {args.model!r} is time-varying (time {lo:g} to {hi:g}) but reference {label!r} has "
                         f"no time; give its time with --times T, or a series (several files, a .pvd, a NetCDF "
                         f"variable with time, a 4-D NIfTI) to compare every step.")
    _check_reference_geometry(reference.geometry, model.geometry, label)
    recon = model.resample(reference.geometry, chunk_size=args.chunk_size)
    mask = reference.finite_mask
    psnr = metrics.psnr(reference.values, recon, mask=mask)
    print(f"reference     {label} ({reference.name!r}, {reference.geometry.dims})")
    print(f"PSNR          {psnr:.3f} dB")
    print(f"max abs error {metrics.max_abs_error(reference.values, recon, mask=mask):.6g}")
    print(f"SSIM          {metrics.ssim(reference.values, recon, mask=mask):.5f}")
    print(f"ratio         {describe_ratio(model)}")
    if args.figure:
        write_comparison_figure(args.figure, reference.values, recon, reference.geometry,
                                title=f"{reference.name}: PSNR {psnr:.2f} dB")
        print(f"figure        {args.figure}")
    return 0


def _eval_series(args, model, reference, label) -> int:
    """``srn eval`` of a time-varying model against a series: each step compared at its time; PSNR per step and
    over the series (:func:`srn_core.series.series_psnr`, with the series' one value range), the largest error
    over all steps, SSIM per step and their mean. The figure shows the step of lowest PSNR."""
    from srn_core import metrics
    from srn_core.series import series_psnr

    from .figures import write_comparison_figure

    for i, t in enumerate(reference.times):
        model.check_time(t, f"reference time step {i} at time")
    _check_reference_geometry(reference.geometry, model.geometry, label)
    lo, hi = reference.value_range
    steps = dict(zip(reference.times, reference.steps))
    max_errors, ssims, worst = [], [], None

    class AtReferenceGrid:
        """What :func:`series_psnr` resamples: the model on the reference's grid, each step measured in the same
        pass (one step's reconstruction in memory at a time)."""

        def resample(self, time=None, chunk_size=args.chunk_size):
            nonlocal worst
            step = steps[time]
            recon = model.resample(reference.geometry, chunk_size=chunk_size, time=time)
            mask = step.finite_mask
            max_errors.append(metrics.max_abs_error(step.values, recon, mask=mask))
            ssims.append(metrics.ssim(step.values, recon, data_range=hi - lo, mask=mask))
            if args.figure:
                err = metrics.mse(step.values, recon, mask=mask)
                if worst is None or err > worst[0]:
                    worst = (err, time, step, recon)
            return recon

    measured = series_psnr(AtReferenceGrid(), reference, args.chunk_size)
    count = f"{len(reference)} time step" + ("s" if len(reference) > 1 else "")
    print(f"reference     {label} ({reference.name!r}, {reference.geometry.dims}, {count})")
    for t, p, e, s in zip(reference.times, measured["psnr_per_step"], max_errors, ssims):
        print(f"{'t=' + format(t, 'g'):<14}PSNR {p:.3f} dB, max abs error {e:.6g}, SSIM {s:.5f}")
    print(f"PSNR          {measured['psnr']:.3f} dB over {'all ' if len(reference) > 1 else ''}{count}")
    print(f"max abs error {max(max_errors):.6g}")
    print(f"SSIM          {sum(ssims) / len(ssims):.5f} (mean over the steps)")
    print(f"ratio         {describe_ratio(model)}")
    if args.figure:
        _, t, step, recon = worst
        write_comparison_figure(args.figure, step.values, recon, reference.geometry,
                                title=f"{reference.name} at t={t:g} (lowest PSNR): "
                                      f"{measured['psnr_per_step'][reference.times.index(t)]:.2f} dB")
        print(f"figure        {args.figure} (time {t:g}, the step of lowest PSNR)")
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

    p = sub.add_parser("train", help="train a model on a volume or a time series and write the model file")
    p.add_argument("input", nargs="+",
                   help="volume file (.vti, .nii/.nii.gz, .nc, .h5, .npy, .raw; raw, npy, NetCDF, HDF5 and "
                        "uncompressed VTI are read box by box when larger than --data-memory); or a time series: "
                        "one file with time "
                        "(a NetCDF variable with a time dimension, a 4-D NIfTI, a ParaView .pvd), several files "
                        "or a quoted glob pattern ('step_*.vti', natural order), one step per file")
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
    p.add_argument("--key-frames", type=positive_int, metavar="K",
                   help="time series only: K key frames spread evenly over the time range (default: one per time "
                        "step); fewer key frames give each a larger grid")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--progress-interval", type=non_negative_float, default=10.0, metavar="SECONDS",
                   help="seconds between progress lines when standard error is not a terminal (default 10)")
    p.add_argument("--data-memory", type=positive_size, metavar="SIZE",
                   help="most memory the training data may hold, e.g. 512MB, 2GiB: a larger input (raw, npy, "
                        "NetCDF, HDF5, uncompressed VTI) is streamed from disk brick by brick instead of read "
                        "whole (default: the training's own bound)")
    g = p.add_argument_group("ensembles (also under mpirun -np N, which shares the bricks out over N ranks)")
    g.add_argument("--ensemble", nargs=3, type=positive_int, metavar=("NX", "NY", "NZ"),
                   help="train one model per brick of an NX x NY x NZ grid and write them as one model file; "
                        "--size, --ratio and --params are the whole file's, --steps and --time-limit each brick's. "
                        "Finished bricks and checkpoints are kept in OUTPUT.parts until the file is written "
                        "(--resume continues from there)")
    g.add_argument("--ghost", type=non_negative_int, metavar="G",
                   help="voxels each brick trains on beyond its own cell, on every side (default: "
                        "srn_core.ensemble_training.DEFAULT_GHOST, chosen by measuring the seams)")
    add_compression_options(p, float32_option=True)
    _add_input_options(p)
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("resample", help="evaluate a model on a grid and write a .vti (or .npy), or every time step "
                                        "of a time-varying model as a .pvd collection")
    p.add_argument("model", help="model file (or an APMGSRN checkpoint folder)")
    p.add_argument("-o", "--output", required=True, help="output .vti or .npy (.pvd with --all-steps)")
    p.add_argument("--time", type=finite_float, metavar="T",
                   help="time-varying model: the time to evaluate, any value in the model's time range")
    p.add_argument("--all-steps", action="store_true",
                   help="time-varying model: evaluate every training time step and write OUTPUT.pvd with one "
                        "OUTPUT_<step>.vti per step beside it")
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
    p.add_argument("reference", nargs="+",
                   help="reference volume file, on the model's training grid (same dims); for a time-varying model "
                        "a time series (as srn train reads it) or one file with --times T")
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
    rank = mpi.launch_rank()
    if rank == 0:
        args = build_parser().parse_args(argv)
    else:  # under mpirun every rank parses the same line: rank 0 alone says what is wrong with it
        with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):
            args = build_parser().parse_args(argv)
    who = f"srn {args.command}" if rank == 0 else f"srn {args.command} (rank {rank})"

    def show_warning(message, category, filename, lineno, file=None, line=None):
        # One line a user can read, like the errors: the core's warnings.warn names no source line worth showing.
        print(f"{who}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("srn: interrupted.", file=sys.stderr)
        return 130
    except (OSError, ValueError, ImportError, RuntimeError, MemoryError) as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if getattr(exc, "on_every_rank", False):
            # Every rank raised it alike (srn.mpi.Ranks.agree): said once, and every rank exits 1.
            if rank == 0:
                print(f"srn {args.command}: error: {message}", file=sys.stderr)
            return 1
        print(f"{who}: error: {message}", file=sys.stderr)
        if mpi.initialized():
            sys.stderr.flush()
            mpi.abort(1)  # the other ranks cannot know of this error: end the job rather than leave them waiting
        return 1


if __name__ == "__main__":
    sys.exit(main())
