"""Direct neural volume rendering against VTK's volume rendering of the raw data, side by side in one run.

inia19 (Debian mricron-data, 168 x 206 x 128, 0.5 mm), 512 x 512 pixels, one sample per voxel (0.5 world units),
the same camera and transfer function for every renderer:

* VTK's CPU ray cast of the raw grid (``vtkFixedPointVolumeRayCastMapper``; also the OpenGL GPU mapper, which
  runs on Mesa's llvmpipe here),
* our renderer on the raw grid (trilinear ``grid_sample`` field),
* our renderer on a trained model (APMGSRN, about 44k parameters, 100x smaller than the data): every lattice
  sample, then with macro-cells and early termination (and adaptive steps, for reference),
* time to the first image of a progressive render (stride 8) and to its final image,
* the image PSNR of each against VTK's CPU image, and a profile of the neural frame (field vs bookkeeping).

Each timing is the median of ``--repeats`` frames after a warm-up frame (macro-cells are built in the warm-up
and reported separately: once per model). The machine's load average is recorded: other processes on a
2-core machine slow multi-threaded torch far more than VTK.

Usage: .venv/bin/python benchmarks/render.py [--model PATH] [--train-seconds 240] [--size 512] [--preset Tissue]
                                             [--repeats 5] [--profile]
Writes benchmarks/results/render.json (and caches the trained model as benchmarks/results/inia19_render.srn).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
# Idle OpenMP threads sleep instead of spinning: with other processes on a 2-core machine, spinning threads make
# multi-threaded torch 5-50x slower (measured here); on an idle machine this costs nothing.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from srn_core.data import read_nifti  # noqa: E402
from srn_core.evaluate import evaluate  # noqa: E402
from srn_core.loading import load_model  # noqa: E402
from srn_core.render import (Camera, Renderer, RenderSettings, RenderVolume, TransferFunction,  # noqa: E402
                             progressive_render)
from srn_core.render.image import image_psnr, over_background, to_uint8, write_png  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
INIA19 = "/usr/share/mricron/templates/inia19-t1-brain.nii.gz"


def trained_model(path: Path | None, seconds: float, volume):
    """The model to render: ``path``, else one trained here (cached next to the results)."""
    if path is not None:
        return load_model(path), str(path)
    cache = RESULTS / "inia19_render.srn"
    if cache.is_file():
        return load_model(cache), str(cache)
    from srn_core.fields import field_for_budget
    from srn_core.training import TrainConfig, train

    print(f"training an APMGSRN on inia19 for {seconds:.0f} s (cached as {cache}) ...", file=sys.stderr)
    torch.manual_seed(0)
    field = field_for_budget("apmgsrn", volume.geometry.num_points // 100, volume.geometry.shape, volume.value_range)
    result = train(volume, field, TrainConfig(steps=1_000_000, batch_size=1 << 14, time_limit=seconds, seed=0))
    RESULTS.mkdir(parents=True, exist_ok=True)
    result.model.save(cache)
    return result.model, str(cache)


def vtk_frames(volume, tf, camera: Camera, size: int, step_world: float, mapper_kind: str, repeats: int):
    """Median milliseconds of VTK's own render of the raw data, and its RGB image (row 0 at the top)."""
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401
    import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow, vtkVolume, vtkWindowToImageFilter
    from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper
    from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkOpenGLGPUVolumeRayCastMapper

    from paraview_plugin.neural_volume_mapper import volume_property_from_tf
    from paraview_plugin.vtk_image import image_from_array

    ren = vtkRenderer()
    win = vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.AddRenderer(ren)
    win.SetSize(size, size)
    mapper = vtkFixedPointVolumeRayCastMapper() if mapper_kind == "cpu" else vtkOpenGLGPUVolumeRayCastMapper()
    mapper.SetInputData(image_from_array(volume.values, volume.geometry, "values"))
    mapper.SetAutoAdjustSampleDistances(0)
    mapper.SetSampleDistance(step_world)  # world units: the default 1.0 would be two voxels here
    if mapper_kind == "cpu":
        mapper.SetInteractiveSampleDistance(step_world)
        mapper.SetImageSampleDistance(1.0)
    vol = vtkVolume()
    vol.SetMapper(mapper)
    vol.SetProperty(volume_property_from_tf(tf))
    ren.AddVolume(vol)
    cam = ren.GetActiveCamera()
    cam.SetPosition(*camera.position)
    cam.SetFocalPoint(*camera.focal_point)
    cam.SetViewUp(*camera.view_up)
    cam.SetViewAngle(camera.view_angle)
    ren.ResetCameraClippingRange()
    win.Render()  # warm-up: uploads, gradient tables
    times = []
    for _ in range(repeats):
        ren.Modified()
        t = time.perf_counter()
        win.Render()
        times.append(time.perf_counter() - t)
    w2i = vtkWindowToImageFilter()
    w2i.SetInput(win)
    w2i.SetInputBufferTypeToRGB()
    w2i.ReadFrontBufferOff()
    w2i.Update()
    px = numpy_support.vtk_to_numpy(w2i.GetOutput().GetPointData().GetScalars()).reshape(size, size, 3)[::-1]
    return 1000 * statistics.median(times), np.ascontiguousarray(px)


def ours(volume, settings: RenderSettings, tf, camera, size, repeats):
    """Median milliseconds, stats of the last frame, image, and the warm-up's macro-cell build seconds."""
    renderer = Renderer(volume, settings)
    warm = renderer.render(camera, tf, size, size)
    times, result = [], warm
    for _ in range(repeats):
        result = renderer.render(camera, tf, size, size)
        times.append(result.stats.seconds)
    return 1000 * statistics.median(times), result, warm.stats.macrocell_seconds, renderer


def progressive(renderer, tf, camera, size, repeats):
    firsts, finals = [], []
    for _ in range(repeats):
        frames = progressive_render(renderer, camera, tf, size, size, start_stride=8)
        first = next(frames)
        firsts.append(first.seconds)
        last = first
        for last in frames:
            pass
        finals.append(last.seconds)
    return 1000 * statistics.median(firsts), 1000 * statistics.median(finals), first


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model file (default: train one on inia19 and cache it)")
    ap.add_argument("--train-seconds", type=float, default=240.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--preset", default="Tissue", help="transfer function preset (default Tissue)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print torch's operator profile of one neural frame")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--output", type=Path, default=RESULTS / "render.json")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    volume = read_nifti(INIA19, name="inia19")
    model, model_path = trained_model(args.model, args.train_seconds, volume)
    tf = TransferFunction.from_preset(args.preset, volume.value_range)
    camera = Camera.reset(volume.geometry.bounds).azimuth(30).elevation(20).zoom(1.5)
    step_world = min(volume.geometry.spacing)
    size, n = args.size, args.repeats
    unit = 1.0  # VTK's default ScalarOpacityUnitDistance, used by every renderer here
    rows = []

    cpu_ms, cpu_img = vtk_frames(volume, tf, camera, size, step_world, "cpu", n)
    rows.append(dict(name="VTK CPU ray cast, raw grid (vtkFixedPointVolumeRayCastMapper)", ms=cpu_ms))
    gpu_ms, gpu_img = vtk_frames(volume, tf, camera, size, step_world, "gpu", n)
    rows.append(dict(name="VTK OpenGL ray cast, raw grid (llvmpipe)", ms=gpu_ms,
                     psnr_vs_vtk_cpu=image_psnr(gpu_img, cpu_img)))

    def add(name, ms, result, extra=None):
        img = to_uint8(over_background(result.image))
        rows.append(dict(name=name, ms=ms, samples=result.stats.samples, rays_hit=result.stats.rays_hit,
                         field_ms=1000 * result.stats.field_seconds, iterations=result.stats.iterations,
                         psnr_vs_vtk_cpu=image_psnr(img, cpu_img), **(extra or {})))
        return img

    raw = RenderVolume.from_grid(volume.values, volume.geometry)
    ms, res, built, _ = ours(raw, RenderSettings(step=1.0, opacity_unit_distance=unit), tf, camera, size, n)
    raw_img = add("ours, raw grid (macro-cells + early termination)", ms, res, {"macrocell_build_s": built})

    neural = RenderVolume.from_model(model)
    plain = RenderSettings(step=1.0, opacity_unit_distance=unit, macrocells=False, early_termination=1.0)
    ms, res, _, _ = ours(neural, plain, tf, camera, size, max(1, n // 2))
    add("ours, neural: every sample (no macro-cells, no early termination)", ms, res)
    fast = RenderSettings(step=1.0, opacity_unit_distance=unit)
    ms, res, built, renderer = ours(neural, fast, tf, camera, size, n)
    neural_img = add("ours, neural: macro-cells + early termination", ms, res, {"macrocell_build_s": built})
    fast_stats, neural_build = res.stats, built
    ms, res, _, _ = ours(neural, RenderSettings(step=1.0, opacity_unit_distance=unit, adaptive_step=True), tf, camera,
                         size, n)
    add("ours, neural: + adaptive step", ms, res)
    first_ms, final_ms, first = progressive(renderer, tf, camera, size, n)
    rows.append(dict(name="ours, neural: progressive, first image (stride 8)", ms=first_ms,
                     samples=first.stats.samples))
    rows.append(dict(name="ours, neural: progressive, final image", ms=final_ms))

    # Field throughput on random points at the renderer's chunk size: what bounds a neural frame.
    pts = torch.rand(1 << 18, 3) * 2 - 1
    evaluate(model.field, pts[:4096], fast.chunk_size)
    t = time.perf_counter()
    evaluate(model.field, pts, fast.chunk_size)
    field_rate = pts.shape[0] / (time.perf_counter() - t)

    for r in rows:
        r["ratio_vs_vtk_cpu"] = r["ms"] / cpu_ms
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_png(RESULTS / "render_vtk_cpu.png", cpu_img)
    write_png(RESULTS / "render_ours_raw.png", raw_img)
    write_png(RESULTS / "render_ours_neural.png", neural_img)

    print(f"\ninia19 {volume.geometry.dims}, {size}x{size}, step 1 voxel ({step_world} world), preset {args.preset!r}, "
          f"model {model.num_parameters:,} parameters ({model.compression_ratio:.0f}x), "
          f"torch threads {torch.get_num_threads()}, load {load_before[0]:.1f}")
    print(f"{'renderer':<68}{'ms':>9}{'x VTK':>8}{'samples':>12}{'PSNR dB':>9}")
    for r in rows:
        samples = f"{r['samples']:,}" if "samples" in r else ""
        psnr = f"{r['psnr_vs_vtk_cpu']:.1f}" if "psnr_vs_vtk_cpu" in r else ""
        print(f"{r['name']:<68}{r['ms']:>9.1f}{r['ratio_vs_vtk_cpu']:>8.2f}{samples:>12}{psnr:>9}")
    field_share = fast_stats.field_seconds / max(fast_stats.seconds, 1e-9)
    print(f"profile of the neural frame: {100 * field_share:.0f}% in the field ({field_rate / 1e6:.2f} M points/s on "
          f"random points), {100 * (1 - field_share):.0f}% ray setup, skipping, compositing; macro-cells built once "
          f"in {neural_build:.2f} s")

    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            renderer.render(camera, tf, size, size)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    report = dict(volume="inia19", dims=volume.geometry.dims, size=size, step_voxels=1.0, preset=args.preset,
                  opacity_unit_distance=unit, camera=camera.to_dict(), model=model_path,
                  model_parameters=model.num_parameters, model_psnr=model.training.get("psnr"),
                  rows=rows, field_points_per_second=field_rate, neural_field_share=field_share,
                  environment=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                                   python=platform.python_version(), load_before=load_before,
                                   load_after=os.getloadavg()))
    args.output.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
