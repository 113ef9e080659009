"""Interactive neural volume rendering against VTK's volume rendering of the raw data, side by side in one run.

inia19 (Debian mricron-data, 168 x 206 x 128, 0.5 mm), 512 x 512 pixels, one sample per voxel (0.5 world units),
the same cameras and transfer function for every renderer:

* VTK's CPU ray cast of the raw grid (``vtkFixedPointVolumeRayCastMapper``; also the OpenGL mapper, which runs on
  Mesa's llvmpipe here): the baseline every ratio is against;
* the brick cache path of ``NeuralVolumeMapper`` (the default render mode): the cold first frame (macro-cells,
  decoding the visible bricks, VTK's render), the first progressive image (a preview level), an orbit of 36
  frames 10 degrees apart with the cache warm (median frame time, and each frame's PSNR against VTK's render of
  the raw data from the same view, which is also timed: VTK's own orbit median);
* the other sampler of the cache: our PyTorch marcher on the decoded grid;
* direct neural rendering (the network ray marched every frame; macro-cells + early termination);
* field throughput on random points: the fused kernel (``srn_core.kernels``) against the reference PyTorch path;
* a profile of the cold frame (macro-cells, decoding, VTK).

Timings are medians of ``--repeats`` frames after a warm-up (the orbit: of its 36 frames). The load average is
recorded: other processes on a 2-core machine slow multi-threaded torch far more than VTK.

Usage: .venv/bin/python benchmarks/render.py [--model PATH] [--train-seconds 420] [--size 512] [--preset Tissue]
                                             [--repeats 5] [--profile] [--device cpu|cuda]
Writes benchmarks/results/render.json (keys vtk_cpu_ms, cold_frame_ms, orbit_median_ms, first_image_ms,
orbit_psnr_db, field_points_per_s, field_points_per_s_reference, ...) and caches the trained model as
benchmarks/results/inia19_render.srn.
"""

from __future__ import annotations

import argparse
import json
import math
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
from srn_core.geometry import ImageGeometry  # noqa: E402
from srn_core.render import Camera, Renderer, RenderSettings, RenderVolume, TransferFunction  # noqa: E402
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


# ---- VTK scenes ------------------------------------------------------------------------------------------
def vtk_window(size: int):
    import vtkmodules.vtkRenderingOpenGL2  # noqa: F401  (registers the OpenGL factories)
    import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401
    from vtkmodules.vtkRenderingCore import vtkRenderer, vtkRenderWindow

    ren = vtkRenderer()
    win = vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.AddRenderer(ren)
    win.SetSize(size, size)
    return ren, win


def set_camera(ren, camera: Camera) -> None:
    cam = ren.GetActiveCamera()
    cam.SetPosition(*camera.position)
    cam.SetFocalPoint(*camera.focal_point)
    cam.SetViewUp(*camera.view_up)
    cam.SetViewAngle(camera.view_angle)
    ren.ResetCameraClippingRange()


def grab(win, size: int) -> np.ndarray:
    """The window's RGB pixels, row 0 at the top."""
    from vtkmodules.util import numpy_support
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    w2i = vtkWindowToImageFilter()
    w2i.SetInput(win)
    w2i.SetInputBufferTypeToRGB()
    w2i.ReadFrontBufferOff()
    w2i.Update()
    px = numpy_support.vtk_to_numpy(w2i.GetOutput().GetPointData().GetScalars()).reshape(size, size, 3)[::-1]
    return np.ascontiguousarray(px)


def timed_render(win) -> float:
    t = time.perf_counter()
    win.Render()
    return 1000 * (time.perf_counter() - t)


class RawScene:
    """VTK's own volume rendering of the raw data (the baseline)."""

    def __init__(self, volume, tf, size, step_world, kind, unit):
        from vtkmodules.vtkRenderingCore import vtkVolume
        from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper
        from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkOpenGLGPUVolumeRayCastMapper

        from paraview_plugin.neural_volume_mapper import volume_property_from_tf
        from paraview_plugin.vtk_image import image_from_array

        self.size = size
        self.ren, self.win = vtk_window(size)
        mapper = vtkFixedPointVolumeRayCastMapper() if kind == "cpu" else vtkOpenGLGPUVolumeRayCastMapper()
        mapper.SetInputData(image_from_array(volume.values, volume.geometry, "values"))
        mapper.SetAutoAdjustSampleDistances(0)
        mapper.SetSampleDistance(step_world)  # world units: the default 1.0 would be two voxels here
        if kind == "cpu":
            mapper.SetInteractiveSampleDistance(step_world)
            mapper.SetImageSampleDistance(1.0)
        vol = vtkVolume()
        vol.SetMapper(mapper)
        vol.SetProperty(volume_property_from_tf(tf, unit))
        self.ren.AddVolume(vol)

    def render(self, camera: Camera, repeats: int = 1):
        """Median milliseconds of ``repeats`` frames of ``camera`` (after one warm-up frame), and the image."""
        set_camera(self.ren, camera)
        self.win.Render()
        times = []
        for _ in range(repeats):
            self.ren.Modified()
            times.append(timed_render(self.win))
        return statistics.median(times) if times else None, grab(self.win, self.size)


class CacheScene:
    """A NeuralVolumeMapper in its default cache mode, in a window of its own (with an interactor when
    ``progressive``: the first frame is then a preview and the interactor's timer asks for the refined one)."""

    def __init__(self, model, tf, size, unit, progressive=False):
        from paraview_plugin.neural_volume_mapper import NeuralVolumeMapper, volume_property_from_tf

        self.size = size
        self.ren, self.win = vtk_window(size)
        self.mapper = NeuralVolumeMapper()
        self.mapper.SetModel(model)
        self.mapper.SetVolumeProperty(volume_property_from_tf(tf, unit))
        self.mapper.SetSampleDistance(1.0)
        self.iren = None
        if progressive:
            from vtkmodules.vtkRenderingUI import vtkGenericRenderWindowInteractor

            self.iren = vtkGenericRenderWindowInteractor()
            self.iren.SetRenderWindow(self.win)
            self.iren.Initialize()
            self.mapper.SetProgressive(True)
        self.win.Render()  # the window's OpenGL context: created once per window, not part of a cold cache
        self.mapper.AddToRenderer(self.ren)

    def render(self, camera: Camera) -> float:
        set_camera(self.ren, camera)
        return timed_render(self.win)

    def fire_timer(self) -> float:
        """What an event loop does when the refinement timer fires: milliseconds of the refined frame."""
        t = time.perf_counter()
        self.iren.TimerEvent()
        return 1000 * (time.perf_counter() - t)


def ours(volume, settings: RenderSettings, tf, camera, size, repeats):
    """Median milliseconds and the last frame of our marcher (after a warm-up frame)."""
    renderer = Renderer(volume, settings)
    result = renderer.render(camera, tf, size, size)
    times = []
    for _ in range(repeats):
        result = renderer.render(camera, tf, size, size)
        times.append(result.stats.seconds)
    return 1000 * statistics.median(times), result


def field_rates(field, n_points: int):
    """Points per second of the fused kernel and of the reference PyTorch path on random points."""
    pts = torch.rand(n_points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    rates = {}
    for name, fused in (("fused", True), ("reference", False)):
        evaluate(field, pts[:4096], fused=fused)  # warm-up (the kernel compiles or loads from its cache once)
        best = math.inf
        for _ in range(3):
            t = time.perf_counter()
            evaluate(field, pts, fused=fused)
            best = min(best, time.perf_counter() - t)
        rates[name] = n_points / best
    return rates


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, help="model file (default: train one on inia19 and cache it)")
    ap.add_argument("--train-seconds", type=float, default=420.0)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--preset", default="Tissue", help="transfer function preset (default Tissue)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--orbit", type=int, default=36, help="frames of the orbit, 360/N degrees apart (default 36)")
    ap.add_argument("--profile", action="store_true", help="print cProfile's top functions of a cold frame")
    ap.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="where the model runs: cpu or cuda (default cpu)")
    ap.add_argument("--output", type=Path, default=RESULTS / "render.json")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    volume = read_nifti(INIA19, name="inia19")
    model, model_path = trained_model(args.model, args.train_seconds, volume)

    def fresh_model():
        """A newly loaded model: nothing cached for it (macro-cells, kernel weights, bricks)."""
        return load_model(model_path, args.device)

    tf = TransferFunction.from_preset(args.preset, volume.value_range)
    camera = Camera.reset(volume.geometry.bounds).azimuth(30).elevation(20).zoom(1.5)
    step_world = min(volume.geometry.spacing)
    size, n = args.size, args.repeats
    unit = 1.0  # VTK's default ScalarOpacityUnitDistance, used by every renderer here
    rows = []
    report = {}

    raw_cpu = RawScene(volume, tf, size, step_world, "cpu", unit)
    vtk_cpu_ms, cpu_img = raw_cpu.render(camera, n)
    rows.append(dict(name="VTK CPU ray cast, raw grid (vtkFixedPointVolumeRayCastMapper)", ms=vtk_cpu_ms))
    gpu_ms, gpu_img = RawScene(volume, tf, size, step_world, "gpu", unit).render(camera, n)
    rows.append(dict(name="VTK OpenGL ray cast, raw grid (llvmpipe)", ms=gpu_ms,
                     psnr_vs_vtk_cpu=image_psnr(gpu_img, cpu_img)))

    # Warm the fused kernel's compilation (once per process, from numba's on-disk cache after the first run).
    evaluate(fresh_model().field, torch.zeros(8, 3))

    # ---- the cache path: cold frame (a fresh model each time: nothing cached) ----
    cold, cold_frames = [], []
    profile_text = None
    for r in range(max(1, min(n, 3))):
        scene = CacheScene(fresh_model(), tf, size, unit)
        if args.profile and r == 0:
            import cProfile
            import io
            import pstats

            prof = cProfile.Profile()
            prof.enable()
            cold.append(scene.render(camera))
            prof.disable()
            buf = io.StringIO()
            pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(18)
            profile_text = buf.getvalue()
        else:
            cold.append(scene.render(camera))
        cold_frames.append(scene.mapper.last_cache_frame)
    cold_ms = statistics.median(cold)
    cache_img = grab(scene.win, size)
    frame = cold_frames[-1]
    cache = scene.mapper.GetCache()
    level0 = cache.level(frame.lod)
    from srn_core.render.macrocells import macrocells_for

    macro_s = macrocells_for(scene.mapper.GetRenderVolume()).seconds  # built during the cold frame
    rows.append(dict(name="cache: cold frame (macro-cells, decode visible bricks, VTK render)", ms=cold_ms,
                     points_decoded=frame.points_decoded, lod=frame.lod,
                     decode_ms=1000 * frame.prepare_seconds, macrocell_ms=1000 * macro_s,
                     psnr_vs_vtk_cpu=image_psnr(cache_img, cpu_img)))
    report["cold_profile"] = dict(total_ms=cold_ms, macrocells_ms=1000 * macro_s,
                                  decode_and_prepare_ms=1000 * frame.prepare_seconds,
                                  vtk_ms=cold_ms - 1000 * frame.prepare_seconds,
                                  points_decoded=frame.points_decoded,
                                  level_points=int(level0.values.size), bricks=cache_counters(cache))

    # ---- second frame of the same view: from the cache ----
    second = scene.render(camera)
    rows.append(dict(name="cache: same view again (no decoding)", ms=second,
                     points_decoded=scene.mapper.last_cache_frame.points_decoded))

    # ---- orbit with the cache warm, against VTK on the raw data from each view ----
    orbit_ms, vtk_orbit_ms, psnrs, decoded = [], [], [], 0
    for k in range(args.orbit):
        view = camera.azimuth(k * 360.0 / args.orbit)
        orbit_ms.append(scene.render(view))
        decoded += scene.mapper.last_cache_frame.points_decoded
        mine = grab(scene.win, size)
        ms, ref = raw_cpu.render(view, 1)
        vtk_orbit_ms.append(ms)
        psnrs.append(image_psnr(mine, ref))
    orbit_median = statistics.median(orbit_ms)
    vtk_orbit_median = statistics.median(vtk_orbit_ms)
    rows.append(dict(name=f"cache: orbit, {args.orbit} frames (median)", ms=orbit_median, points_decoded=decoded,
                     psnr_vs_vtk_cpu=min(psnrs)))
    rows.append(dict(name=f"VTK CPU ray cast, raw grid, same orbit (median)", ms=vtk_orbit_median))

    # ---- progressive: the first image of a cold cache is a preview level; the timer refines it ----
    firsts, refines, first_psnr = [], [], None
    for _ in range(max(1, min(n, 3))):
        pscene = CacheScene(fresh_model(), tf, size, unit, progressive=True)
        firsts.append(pscene.render(camera))
        preview = pscene.mapper.last_cache_frame
        first_psnr = image_psnr(grab(pscene.win, size), cpu_img)
        refines.append(pscene.fire_timer())
    first_ms = statistics.median(firsts)
    rows.append(dict(name=f"cache: progressive, first image (level {preview.lod})", ms=first_ms,
                     points_decoded=preview.points_decoded, psnr_vs_vtk_cpu=first_psnr))
    rows.append(dict(name="cache: progressive, refined frame (timer)", ms=statistics.median(refines),
                     psnr_vs_vtk_cpu=image_psnr(grab(pscene.win, size), cpu_img)))

    # ---- the other sampler of the cache: our marcher on the decoded grid ----
    geometry = ImageGeometry(level0.dims, level0.origin, level0.spacing)
    ms, res = ours(RenderVolume.from_grid(level0.values, geometry), RenderSettings(step=1.0, opacity_unit_distance=unit),
                   tf, camera, size, max(1, n // 2))
    rows.append(dict(name="our marcher on the cached grid (the other sampler)", ms=ms, samples=res.stats.samples,
                     psnr_vs_vtk_cpu=image_psnr(to_uint8(over_background(res.image)), cpu_img)))

    # ---- direct neural rendering (every frame marches the network) ----
    neural = RenderVolume.from_model(model)
    ms, res = ours(neural, RenderSettings(step=1.0, opacity_unit_distance=unit), tf, camera, size, max(1, n // 2))
    direct_img = to_uint8(over_background(res.image))
    rows.append(dict(name="direct: neural, macro-cells + early termination", ms=ms, samples=res.stats.samples,
                     field_ms=1000 * res.stats.field_seconds, psnr_vs_vtk_cpu=image_psnr(direct_img, cpu_img)))
    direct_field_share = res.stats.field_seconds / max(res.stats.seconds, 1e-9)

    rates = field_rates(model.field, 1 << 20)

    for r in rows:
        r["ratio_vs_vtk_cpu"] = r["ms"] / vtk_cpu_ms
    RESULTS.mkdir(parents=True, exist_ok=True)
    write_png(RESULTS / "render_vtk_cpu.png", cpu_img)
    write_png(RESULTS / "render_cache.png", cache_img)
    write_png(RESULTS / "render_direct_neural.png", direct_img)

    print(f"\ninia19 {volume.geometry.dims}, {size}x{size}, step 1 voxel ({step_world} world), preset {args.preset!r}, "
          f"model {model.num_parameters:,} parameters ({model.compression_ratio:.0f}x, "
          f"{model.training.get('psnr', float('nan')):.1f} dB), torch threads {torch.get_num_threads()}, "
          f"load {load_before[0]:.1f}")
    print(f"{'renderer':<68}{'ms':>9}{'x VTK':>8}{'decoded':>11}{'PSNR dB':>9}")
    for r in rows:
        decoded_s = f"{r['points_decoded']:,}" if "points_decoded" in r else ""
        psnr = f"{r['psnr_vs_vtk_cpu']:.1f}" if "psnr_vs_vtk_cpu" in r else ""
        print(f"{r['name']:<68}{r['ms']:>9.1f}{r['ratio_vs_vtk_cpu']:>8.2f}{decoded_s:>11}{psnr:>9}")
    p = report["cold_profile"]
    print(f"cold frame: {p['macrocells_ms']:.0f} ms macro-cells (inside) {p['decode_and_prepare_ms']:.0f} ms "
          f"choosing + decoding {p['points_decoded']:,} of {p['level_points']:,} points, {p['vtk_ms']:.0f} ms VTK")
    print(f"orbit: {orbit_median:.1f} ms median vs VTK raw {vtk_orbit_median:.1f} ms "
          f"({orbit_median / vtk_orbit_median:.2f}x); PSNR vs VTK raw min {min(psnrs):.1f}, "
          f"median {statistics.median(psnrs):.1f} dB")
    print(f"field: fused {rates['fused'] / 1e6:.1f} M points/s, reference {rates['reference'] / 1e6:.2f} M points/s "
          f"({rates['fused'] / rates['reference']:.1f}x); direct neural frame {100 * direct_field_share:.0f}% in the field")
    if profile_text:
        print(profile_text)

    report.update(
        volume="inia19", dims=volume.geometry.dims, size=size, step_voxels=1.0, preset=args.preset,
        opacity_unit_distance=unit, camera=camera.to_dict(), model=model_path, device=args.device,
        model_parameters=model.num_parameters, model_psnr=model.training.get("psnr"),
        vtk_cpu_ms=vtk_cpu_ms, cold_frame_ms=cold_ms, orbit_median_ms=orbit_median,
        vtk_cpu_orbit_median_ms=vtk_orbit_median, orbit_frames=args.orbit, orbit_points_decoded=decoded,
        first_image_ms=first_ms, first_image_lod=preview.lod, orbit_psnr_db=min(psnrs),
        orbit_psnr_median_db=statistics.median(psnrs), orbit_psnr_per_frame_db=psnrs,
        field_points_per_s=rates["fused"], field_points_per_s_reference=rates["reference"],
        goals=dict(orbit_within_1_5x_vtk=orbit_median <= 1.5 * vtk_orbit_median,
                   cold_within_5x_vtk=cold_ms <= 5 * vtk_cpu_ms, first_image_under_200ms=first_ms < 200,
                   orbit_psnr_at_least_35=min(psnrs) >= 35,
                   fused_at_least_10x=rates["fused"] >= 10 * rates["reference"]),
        rows=rows, direct_field_share=direct_field_share,
        environment=dict(cpus=os.cpu_count(), torch_threads=torch.get_num_threads(), torch=torch.__version__,
                         python=platform.python_version(), load_before=load_before, load_after=os.getloadavg()))
    args.output.write_text(json.dumps(report, indent=1, default=float) + "\n")
    print(f"wrote {args.output}")
    return 0


def cache_counters(cache) -> dict:
    return {name: getattr(cache, name) for name in ("points_decoded", "bricks_decoded", "bricks_reused",
                                                     "bricks_filled", "evictions") if hasattr(cache, name)}


if __name__ == "__main__":
    sys.exit(main())
