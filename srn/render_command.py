"""``srn render MODEL -o image.png``: ray-march a trained model directly (no grid is materialised) into a PNG."""

from __future__ import annotations

import argparse
import sys

from .arguments import number


def _positive(kind):
    return number(kind, lambda v: v > 0, "a positive number")


_unit = number(float, lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``srn render``."""
    p.add_argument("model", help="model file (or an APMGSRN checkpoint folder)")
    p.add_argument("-o", "--output", required=True, help="output .png")
    p.add_argument("--size", nargs=2, type=_positive(int), default=(512, 512), metavar=("W", "H"),
                   help="image size in pixels (default 512 512)")
    tf = p.add_mutually_exclusive_group()
    tf.add_argument("--preset", default=None,
                    help="shipped transfer function: 'Cool to Warm' (default), Grayscale, Viridis, "
                         "'Black-Body Radiation', Tissue")
    tf.add_argument("--tf", metavar="FILE.json", help="ParaView preset JSON (exported from Choose Preset)")
    p.add_argument("--range", nargs=2, type=float, metavar=("MIN", "MAX"),
                   help="data range the preset spans (default: the model's value range)")
    p.add_argument("--absolute", action="store_true", help="take the preset's points as data values (no rescaling)")
    cam = p.add_argument_group("camera (VTK's: reset to the model's bounds looking down -z, then moved)")
    cam.add_argument("--azimuth", type=float, default=0.0, help="degrees about the view up (default 0)")
    cam.add_argument("--elevation", type=float, default=0.0, help="degrees about the right axis (default 0)")
    cam.add_argument("--zoom", type=_positive(float), default=1.0, help="zoom factor (default 1)")
    cam.add_argument("--view-angle", type=_positive(float), default=30.0, help="vertical view angle (default 30)")
    cam.add_argument("--parallel", action="store_true", help="parallel (orthographic) projection")
    r = p.add_argument_group("sampling")
    r.add_argument("--step", type=_positive(float), default=1.0, help="sample distance in voxels (default 1)")
    r.add_argument("--opacity-unit-distance", type=_positive(float),
                   help="world distance over which the transfer function's opacity applies (VTK's "
                        "ScalarOpacityUnitDistance; default one voxel)")
    r.add_argument("--early-termination", type=_unit, default=0.99,
                   help="stop a ray at this accumulated opacity (default 0.99; 1 disables)")
    r.add_argument("--no-macrocells", action="store_true", help="do not skip empty space")
    r.add_argument("--shade", action="store_true", help="Phong shading from the field's gradient (7x the samples)")
    r.add_argument("--chunk-size", type=_positive(int), default=1 << 16, help="points per field evaluation")
    p.add_argument("--background", nargs=3, type=_unit, default=(0.0, 0.0, 0.0), metavar=("R", "G", "B"),
                   help="background colour in [0, 1] (default black)")
    p.add_argument("--transparent", action="store_true", help="write RGBA with a transparent background")
    p.add_argument("--time", type=float, help="time to render a time-varying model at (any time in its range)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="print nothing on success (no progress either)")


def run(args) -> int:
    """Render ``args.model`` to ``args.output``; returns the exit status."""
    from pathlib import Path

    import numpy as np

    from srn.progress import progress_bar
    from srn_core.devices import resolve_device
    from srn_core.loading import load_model
    from srn_core.render import Camera, Renderer, RenderSettings, RenderVolume, TransferFunction
    from srn_core.render.image import over_background, to_uint8, write_png

    out = Path(args.output)
    if out.suffix.lower() != ".png":
        raise ValueError(f"output {str(out)!r} must be a .png file.")
    if out.is_dir() or not out.parent.resolve().is_dir():
        raise ValueError(f"output {str(out)!r} must be a file path in an existing folder.")
    preset = args.tf or args.preset or "Cool to Warm"
    TransferFunction.from_preset(preset)  # a bad transfer function fails before a (slow) model load
    model = load_model(args.model, resolve_device(args.device))
    if model.is_time_varying:
        if args.time is None:
            lo, hi = model.time_range
            raise ValueError(f"model {args.model!r} is time-varying ({len(model.time_steps)} steps from {lo:g} to "
                             f"{hi:g}); give --time T.")
        model = model.at_time(model.check_time(args.time, "--time"))
    elif args.time is not None:
        raise ValueError(f"--time {args.time:g}: model {args.model!r} is static; it has no time.")
    value_range = None if args.absolute else (tuple(args.range) if args.range else model.value_range)
    tf = TransferFunction.from_preset(preset, value_range)
    spacing = min(model.geometry.spacing)
    settings = RenderSettings(step=args.step, opacity_unit_distance=args.opacity_unit_distance or spacing,
                              early_termination=args.early_termination, macrocells=not args.no_macrocells,
                              shade=args.shade, chunk_size=args.chunk_size)
    volume = RenderVolume.from_model(model)
    settings.check_samples_per_ray(volume, "--step")
    camera = Camera.reset(model.bounds, view_angle=args.view_angle, parallel_projection=args.parallel)
    camera = camera.azimuth(args.azimuth).elevation(args.elevation).zoom(args.zoom)
    width, height = args.size
    with progress_bar(width * height, "ray", "render", quiet=args.quiet) as bar:
        result = Renderer(volume, settings).render(camera, tf, width, height, progress=bar.update)
    if args.transparent:
        rgba = result.image.numpy()
        alpha = rgba[..., 3:4]
        straight = np.where(alpha > 0, rgba[..., :3] / np.maximum(alpha, 1e-12), 0.0)  # PNG alpha is not premultiplied
        pixels = to_uint8(np.concatenate([straight, alpha], axis=2))
    else:
        pixels = to_uint8(over_background(result.image, args.background))
    write_png(out, pixels)
    if not args.quiet:
        s = result.stats
        print(f"rendered {width}x{height} in {s.seconds:.2f} s ({s.samples:,} samples evaluated, "
              f"{s.samples_skipped:,} skipped; macro-cells {s.macrocell_seconds:.2f} s) -> {out}", file=sys.stderr)
    return 0
