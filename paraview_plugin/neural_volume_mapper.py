"""NeuralVolumeMapper: draws a neural volume (or any field) into an ordinary ``vtkRenderer``.

Two render modes (:meth:`NeuralVolumeMapper.SetRenderMode`):

* ``"cache"`` (the default, for interactive work): the model is decoded into a brick cache once and VTK's own
  ray caster draws the cache every frame (``paraview_plugin/cached_volume.py``); an orbit costs what VTK costs
  on raw data. The decoded grid is trilinearly interpolated, so fine detail between voxels of the training grid
  is the grid's, not the network's.
* ``"direct"``: every frame ray marches the network itself (exact and grid-free, seconds per frame on a CPU);
  described below.

VTK volume mappers are C++ classes whose ``Render`` a Python subclass cannot override, so the direct mode is a
VTK Python *image source* feeding a ``vtkImageMapper`` on a ``vtkActor2D`` (:meth:`NeuralVolumeMapper.GetProp`).
2-D actors are drawn in the renderer's overlay pass, after its opaque geometry, translucent geometry and
volumes; the image mapper updates its input at that moment, so :meth:`RequestData` reads the depth buffer the
opaque geometry has just written, stops every ray there (converted to a distance along the ray with the
camera's clipping range) and composites the model over the frame (the image carries straight alpha, which is
what the overlay's ``SRC_ALPHA, ONE_MINUS_SRC_ALPHA`` blending expects).

Colour, opacity, ``ScalarOpacityUnitDistance`` and shading come from a ``vtkVolumeProperty`` and the view from
the renderer's active camera, read on every frame: a change of either (or of the depth buffer) re-renders, an
unchanged frame reuses the last image. While an interactor drives the window at an interactive update rate,
the mapper casts only every ``stride``-th ray in each direction (chosen to fit the frame budget from the last
full render) and interpolates the rest; the still render afterwards is exact.

Usage::

    mapper = NeuralVolumeMapper()
    mapper.SetFileName("model.srn")          # or SetModel(neural_volume) / SetRenderVolume(...)
    mapper.SetVolumeProperty(volume_property)
    mapper.AddToRenderer(renderer)           # adds the prop and follows the renderer's camera
    mapper.SetRenderModeToDirect()           # optional: ray march the network every frame

A time-varying model (:attr:`~srn_core.model.NeuralVolume.is_time_varying`) is drawn at one time at a time:
its first step until :meth:`NeuralVolumeMapper.SetTime` asks for another (any time in its range; the model
interpolates between its steps, and a time outside the range is clamped, as the source does). A plain
``vtkRenderer`` has no time of its own, so whoever drives the animation calls ``SetTime`` (in ParaView, with the
view's ``ViewTime``); each new time is a new static frame of the model, so the brick cache starts over.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
import torch
from vtkmodules.util import numpy_support
from vtkmodules.util.vtkAlgorithm import VTKPythonAlgorithmBase
from vtkmodules.vtkCommonCore import vtkFloatArray
from vtkmodules.vtkCommonDataModel import vtkImageData, vtkPiecewiseFunction
from vtkmodules.vtkCommonExecutionModel import vtkStreamingDemandDrivenPipeline
from vtkmodules.vtkRenderingCore import vtkActor2D, vtkColorTransferFunction, vtkImageMapper, vtkVolumeProperty

from srn_core.render.camera import Camera
from srn_core.render.progressive import progressive_render
from srn_core.render.raymarch import Renderer, RenderSettings, RenderStats
from srn_core.render.transfer_function import TransferFunction, TransferTable
from srn_core.render.volume import RenderVolume

from .cached_volume import CachedVolume

TABLE_SIZE = 4096
RENDER_MODES = ("cache", "direct")


# ---- conversions between VTK objects and the core's ---------------------------------------------------
def camera_from_vtk(camera) -> Camera:
    """A core :class:`Camera` equal to a ``vtkCamera`` (position, focal point, view up, angle, projection)."""
    return Camera(camera.GetPosition(), camera.GetFocalPoint(), camera.GetViewUp(), camera.GetViewAngle(),
                  bool(camera.GetParallelProjection()), camera.GetParallelScale())


def transfer_table_from_vtk(color, opacity, size: int = TABLE_SIZE) -> TransferTable:
    """Sample a ``vtkColorTransferFunction`` and a ``vtkPiecewiseFunction`` exactly as VTK evaluates them.

    The table spans both functions' ranges; each clamps to its end values outside its own range (VTK's default).
    """
    ranges = []
    if color is not None and color.GetSize() > 0:
        ranges.append(color.GetRange())
    if opacity is not None and opacity.GetSize() > 0:
        ranges.append(opacity.GetRange())
    if opacity is None or opacity.GetSize() == 0:
        return TransferTable(0.0, 1.0, np.zeros((2, 4), np.float32))  # no opacity points: nothing is visible
    lo = min(r[0] for r in ranges)
    hi = max(r[1] for r in ranges)
    if not hi > lo:
        hi = lo + 1.0
    rgba = np.zeros((size, 4), np.float32)
    # GetTable clamps to the end values outside a function's own range (VTK's default Clamping on)
    if color is not None and color.GetSize() > 0:
        c = np.zeros(3 * size)
        color.GetTable(lo, hi, size, c)
        rgba[:, :3] = c.reshape(size, 3)
    else:
        rgba[:, :3] = 1.0
    a = np.zeros(size)
    opacity.GetTable(lo, hi, size, a)
    rgba[:, 3] = a
    return TransferTable(lo, hi, rgba)


def volume_property_from_tf(tf: TransferFunction, unit_distance: float = 1.0) -> vtkVolumeProperty:
    """A ``vtkVolumeProperty`` holding ``tf`` (linear interpolation, no shading): what VTK needs to render the same."""
    ctf = vtkColorTransferFunction()
    {"RGB": ctf.SetColorSpaceToRGB, "LAB": ctf.SetColorSpaceToLab, "DIVERGING": ctf.SetColorSpaceToDiverging,
     "HSV": ctf.SetColorSpaceToHSV, "STEP": ctf.SetColorSpaceToStep}[tf.color_space]()
    for x, r, g, b in tf.color_points:
        ctf.AddRGBPoint(float(x), float(r), float(g), float(b))
    pwf = vtkPiecewiseFunction()
    for x, a, mid, sharp in tf.opacity_points:
        pwf.AddPoint(float(x), float(a), float(mid), float(sharp))
    prop = vtkVolumeProperty()
    prop.SetColor(ctf)
    prop.SetScalarOpacity(pwf)
    prop.SetScalarOpacityUnitDistance(unit_distance)
    prop.SetInterpolationTypeToLinear()
    prop.ShadeOff()
    return prop


def depth_to_distance(zbuffer: np.ndarray, camera: Camera, clipping_range, width: int, height: int) -> torch.Tensor:
    """Window depth values (``(height, width)``, row 0 at the top, 1 = nothing) as distances along each pixel's ray."""
    near, far = (float(v) for v in clipping_range)
    z = torch.as_tensor(np.ascontiguousarray(zbuffer, dtype=np.float64))
    if camera.parallel_projection:
        eye_depth = near + z * (far - near)
        dist = eye_depth
    else:
        ndc = 2.0 * z - 1.0
        eye_depth = 2.0 * near * far / ((far + near) - ndc * (far - near))
        _, dirs = camera.rays(width, height, dtype=torch.float64)
        forward = torch.tensor(camera.frame()[2], dtype=torch.float64)
        dist = eye_depth / (dirs @ forward).reshape(height, width)
    return torch.where(z >= 1.0, torch.full_like(dist, math.inf), dist).float()


_ATTACHED: dict[str, "NeuralVolumeMapper"] = {}
"""Mappers by the renderer they draw into (scripts and macros run in fresh namespaces; this module persists)."""


def _key(renderer) -> str:
    return renderer.GetAddressAsString("vtkObject")


def _rounded(values):
    """Camera numbers to 7 significant digits: VTK nudges them in the last bits between identical frames."""
    if isinstance(values, dict):
        return tuple((k, _rounded(v)) for k, v in sorted(values.items()))
    if isinstance(values, (list, tuple)):
        return tuple(_rounded(v) for v in values)
    return float(f"{values:.7g}") if isinstance(values, float) else values


# ---- the mapper ------------------------------------------------------------------------------------------
class NeuralVolumeMapper(VTKPythonAlgorithmBase):
    """Renders a field into the renderer it is added to; see the module docstring."""

    def __init__(self, model=None):
        super().__init__(nInputPorts=0, nOutputPorts=1, outputType="vtkImageData")
        self._volume: RenderVolume | None = None
        self._model = None  # a time-varying NeuralVolume, drawn at self._time; None for anything static
        self._time: float | None = None
        self._core: Renderer | None = None
        self._settings = RenderSettings()
        self._property: vtkVolumeProperty | None = None
        self._renderer = None
        self._observer = None
        self._signature = None
        self._depth: np.ndarray | None = None
        self._image: np.ndarray | None = None  # last straight-alpha RGBA uint8, VTK row order
        self._size = (1, 1)
        self._full_seconds = None
        self._interactive_rate = 1.0
        self.last_stats: RenderStats | None = None
        self.last_stride = 1
        self.render_count = 0
        self._image_mapper = vtkImageMapper()
        self._image_mapper.SetInputConnection(self.GetOutputPort())
        self._image_mapper.SetColorWindow(255.0)
        self._image_mapper.SetColorLevel(127.5)
        self._actor = vtkActor2D()
        self._actor.SetMapper(self._image_mapper)
        self._mode = "cache"
        self._device = "auto"
        self._cached = CachedVolume()
        self._progressive = False
        self._table_key = None
        self._table: TransferTable | None = None
        self._refine_timer = None
        if model is not None:
            self.SetModel(model)

    # ---- what to render ------------------------------------------------------------------------
    def SetModel(self, model) -> None:
        """A :class:`~srn_core.model.NeuralVolume`, a model file path (loaded on :meth:`SetDevice`'s device), or a
        :class:`RenderVolume`. The network runs where the model is: decoding the cache, or every direct frame."""
        if isinstance(model, str):
            from srn_core.loading import load_model
            model = load_model(model, self._device)
        if isinstance(model, RenderVolume) or not model.is_time_varying:
            self.SetRenderVolume(model if isinstance(model, RenderVolume) else RenderVolume.from_model(model))
            return
        self._show_time(model, model.clamped_time(self._time))  # an animation keeps its time

    def _show_time(self, model, time: float) -> None:
        """Draw the time-varying ``model`` at ``time`` (a static frame of it: its own render volume and cache)."""
        self._set_render_volume(RenderVolume.from_model(model.at_time(time)))
        self._model, self._time = model, time

    def SetTime(self, time: float) -> None:
        """Draw a time-varying model at ``time`` (clamped to its time range); nothing to do for a static one,
        which looks the same at every time. Only a change of time decodes anything."""
        if self._model is None:
            return
        time = self._model.clamped_time(time)
        if time != self._time:
            self._show_time(self._model, time)

    def GetTime(self) -> float | None:
        """The time a time-varying model is drawn at; ``None`` for anything static."""
        return self._time if self._model is not None else None

    def GetTimeSteps(self) -> tuple:
        """A time-varying model's time steps (what an animation would visit); ``()`` for anything static."""
        return tuple(self._model.time_steps) if self._model is not None else ()

    def SetDevice(self, device: str) -> None:
        """Torch device for models loaded from a file name: ``auto`` (CUDA when torch sees a GPU; the default),
        ``cpu``, ``cuda`` or ``cuda:N``. Applies to the next :meth:`SetFileName`."""
        from srn_core.devices import resolve_device

        resolve_device(device)  # refuses an unknown device, or CUDA on a machine without it, naming the value
        self._device = str(device)

    def GetDevice(self) -> str:
        return self._device

    def SetFileName(self, path: str) -> None:
        self.SetModel(str(path))

    def SetRenderVolume(self, volume: RenderVolume) -> None:
        """What to render; refused (``ValueError``) when the sample distance would need too many samples per ray."""
        self._set_render_volume(volume)
        self._model, self._time = None, None

    def _set_render_volume(self, volume: RenderVolume) -> None:
        if volume is not self._volume:
            self._settings.check_samples_per_ray(volume, "SampleDistance")
            self._volume = volume
            self._core, self._signature = None, None
            self._cached.set_volume(volume)
            self.Modified()

    def GetRenderVolume(self) -> RenderVolume | None:
        return self._volume

    def SetVolumeProperty(self, prop: vtkVolumeProperty) -> None:
        """Colour (``GetRGBTransferFunction``), opacity (``GetScalarOpacity``), unit distance and shading."""
        if prop is not self._property:
            self._property = prop
            self._cached.set_property(prop)
            self.Modified()

    def GetVolumeProperty(self) -> vtkVolumeProperty | None:
        return self._property

    # ---- sampling options (VTK-style setters over RenderSettings) -------------------------------
    def _set(self, name, value):
        if getattr(self._settings, name) != value:
            dataclasses.replace(self._settings, **{name: value})  # validates: a refused value changes nothing
            setattr(self._settings, name, value)
            self._core, self._signature = None, None
            self.Modified()

    def SetSampleDistance(self, voxels: float) -> None:
        """Distance between samples along a ray, in voxels of the model's training grid (default 1).

        Refused with one ``ValueError`` if it is not positive, or if a ray through the volume set would need more
        than ``RenderSettings.max_samples_per_ray`` samples (checked here so a frame never starts an endless march).
        """
        voxels = float(voxels)
        if not voxels > 0:
            raise ValueError(f"SampleDistance must be a positive number of voxels, got {voxels!r}.")
        if self._volume is not None:
            dataclasses.replace(self._settings, step=voxels).check_samples_per_ray(self._volume, "SampleDistance")
        self._set("step", voxels)

    def GetSampleDistance(self) -> float:
        return self._settings.step

    def SetEarlyTermination(self, opacity: float) -> None:
        """Accumulated opacity at which a ray stops (1 disables early termination; default 0.99)."""
        self._set("early_termination", float(opacity))

    def SetUseMacroCells(self, on: bool) -> None:
        """Skip transparent macro-cells (default on)."""
        self._set("macrocells", bool(on))

    def SetInteractiveUpdateRate(self, rate: float) -> None:
        """A window whose desired update rate is at least this is interacting: cast fewer rays (default 1 fps)."""
        self._interactive_rate = float(rate)

    # ---- render mode and the brick cache ---------------------------------------------------------
    def SetRenderMode(self, mode: str) -> None:
        """``"cache"`` (default: VTK's ray caster draws the decoded brick cache) or ``"direct"`` (ray march the
        network every frame). Switching while attached swaps the prop in the renderer."""
        mode = str(mode).lower()
        if mode not in RENDER_MODES:
            raise ValueError(f"RenderMode must be one of {', '.join(RENDER_MODES)}, got {mode!r}.")
        if mode != self._mode:
            renderer = self._renderer
            self.RemoveFromRenderer()
            self._mode = mode
            if renderer is not None:
                self.AddToRenderer(renderer)
            self.Modified()

    def SetRenderModeToCache(self) -> None:
        self.SetRenderMode("cache")

    def SetRenderModeToDirect(self) -> None:
        self.SetRenderMode("direct")

    def GetRenderMode(self) -> str:
        return self._mode

    def _set_cache(self, **changes) -> None:
        settings = dataclasses.replace(self._cached.settings, **changes)  # validates: a refused value changes nothing
        self._cached.set_settings(settings)

    def SetCacheMemory(self, megabytes: float) -> None:
        """Bound on the decoded brick cache in MiB (default 1024); a view that needs more is drawn coarser."""
        megabytes = float(megabytes)
        if not megabytes > 0:
            raise ValueError(f"CacheMemory must be a positive number of MiB, got {megabytes!r}.")
        self._set_cache(memory_bytes=int(megabytes * (1 << 20)))

    def GetCacheMemory(self) -> float:
        return self._cached.settings.memory_bytes / (1 << 20)

    def SetBrickSize(self, voxels: int) -> None:
        """Voxels per brick edge (default 32): the unit the cache decodes and skips."""
        self._set_cache(brick_size=voxels)

    def SetMacroCellSize(self, voxels: int) -> None:
        """Voxels per macro-cell edge (default 16): the resolution at which transparent space is known, for the
        direct marcher's skipping and the cache's choice of bricks alike."""
        self._set_cache(cell_size=voxels)
        self._set("cell_size", int(voxels))

    def SetCacheSampler(self, sampler: str) -> None:
        """What draws the cache: ``"fixed-point"`` (``vtkFixedPointVolumeRayCastMapper``, the CPU default) or
        ``"gpu"`` (``vtkOpenGLGPUVolumeRayCastMapper``: faster with a real GPU)."""
        if sampler != self._cached.sampler:
            cached = CachedVolume(sampler, self._cached.settings)
            renderer = self._renderer
            self.RemoveFromRenderer()
            self._cached = cached
            cached.set_volume(self._volume)
            cached.set_property(self._property)
            if renderer is not None:
                self.AddToRenderer(renderer)

    def SetProgressive(self, on: bool) -> None:
        """Draw a coarse preview when the cache lacks the level a still frame needs, and let a one-shot timer of
        the window's interactor render the refined frame right after (default off). Only for applications whose
        event loop runs the interactor's timers (a VTK app after ``interactor.Start()``, the ParaView GUI): a
        script that renders once and saves the image (pvpython, pvbatch) would save the preview."""
        self._progressive = bool(on)

    def GetProgressive(self) -> bool:
        return self._progressive

    def GetCache(self):
        """The :class:`~srn_core.render.brick_cache.BrickCache` of the cache mode (its counters), or ``None``."""
        return self._cached.cache

    @property
    def last_cache_frame(self):
        """What the last cache-mode frame drew (:class:`~paraview_plugin.cached_volume.CacheFrame`)."""
        return self._cached.last_frame

    # ---- scene -----------------------------------------------------------------------------------
    def GetProp(self):
        """The prop that draws the model (what :meth:`AddToRenderer` adds): the cache's ``vtkVolume`` in cache
        mode, the image's ``vtkActor2D`` in direct mode."""
        return self._cached.prop if self._mode == "cache" else self._actor

    def AddToRenderer(self, renderer) -> None:
        """Draw into ``renderer`` with its active camera, re-rendering whenever the view or the property changes.

        One mapper per renderer: another one already attached there is removed first.
        """
        other = NeuralVolumeMapper.FindInRenderer(renderer)
        if other is not None and other is not self:
            other.RemoveFromRenderer()
        self.RemoveFromRenderer()
        self._renderer = renderer
        renderer.AddViewProp(self.GetProp())
        if self._mode == "cache":
            # Before the renderer draws its props: choose and fill the level the view needs.
            self._observer = renderer.AddObserver("StartEvent", lambda *args: self._prepare_cache_frame())
        else:
            # Every frame asks for an update; RequestData compares a signature and reuses the image when it can.
            self._observer = renderer.AddObserver("StartEvent", lambda *args: self.Modified())
        _ATTACHED[_key(renderer)] = self

    def RemoveFromRenderer(self) -> None:
        if self._renderer is not None:
            self._renderer.RemoveViewProp(self._actor)
            self._renderer.RemoveViewProp(self._cached.prop)
            if self._observer is not None:
                self._renderer.RemoveObserver(self._observer)
            if _ATTACHED.get(_key(self._renderer)) is self:
                del _ATTACHED[_key(self._renderer)]
        self._renderer, self._observer = None, None

    @staticmethod
    def FindInRenderer(renderer) -> "NeuralVolumeMapper | None":
        """The mapper drawing into ``renderer``, if any (how a ParaView macro finds the one it attached earlier)."""
        return _ATTACHED.get(_key(renderer))

    # ---- pipeline --------------------------------------------------------------------------------
    def _viewport(self):
        ren = self._renderer
        if ren is None or ren.GetRenderWindow() is None:
            return (0, 0), (1, 1)
        w, h = ren.GetSize()
        return tuple(ren.GetOrigin()), (max(1, w), max(1, h))

    def RequestInformation(self, request, inInfo, outInfo):
        _, (w, h) = self._viewport()
        outInfo.GetInformationObject(0).Set(vtkStreamingDemandDrivenPipeline.WHOLE_EXTENT(), 0, w - 1, 0, h - 1, 0, 0)
        return 1

    def RequestData(self, request, inInfo, outInfo):
        (x0, y0), (w, h) = self._viewport()
        out = vtkImageData.GetData(outInfo)
        out.SetExtent(0, w - 1, 0, h - 1, 0, 0)
        image = self._render(x0, y0, w, h)
        arr = numpy_support.numpy_to_vtk(image.reshape(-1, 4), deep=1)
        arr.SetName("NeuralVolumeRGBA")
        out.GetPointData().SetScalars(arr)
        return 1

    def _render(self, x0, y0, w, h) -> np.ndarray:
        empty = np.zeros((h, w, 4), np.uint8)
        if self._volume is None or self._property is None or self._renderer is None:
            return empty
        vcam = self._renderer.GetActiveCamera()
        camera = camera_from_vtk(vcam)
        prop = self._property
        color, opacity = prop.GetRGBTransferFunction(0), prop.GetScalarOpacity(0)
        window = self._renderer.GetRenderWindow()
        zbuf = vtkFloatArray()
        window.GetZbufferData(x0, y0, x0 + w - 1, y0 + h - 1, zbuf)
        z = numpy_support.vtk_to_numpy(zbuf).reshape(h, w)[::-1]  # row 0 at the top
        interactive = window.GetDesiredUpdateRate() >= self._interactive_rate
        stride = self._stride(window.GetDesiredUpdateRate()) if interactive else 1
        signature = (_rounded(camera.to_dict()), _rounded(vcam.GetClippingRange()), w, h, id(self._volume), color.GetMTime(), opacity.GetMTime(),
                     prop.GetMTime(), stride)
        # Depth values of unchanged geometry can differ in the last bit from frame to frame (llvmpipe), so the
        # depth buffer is compared with a tolerance rather than hashed.
        same_depth = self._depth is not None and self._depth.shape == z.shape and \
            float(np.abs(self._depth - z).max(initial=0.0)) <= 1e-5
        if signature == self._signature and same_depth and self._image is not None:
            return self._image
        self._sync_settings(prop)
        table = transfer_table_from_vtk(color, opacity)
        depth = depth_to_distance(z, camera, vcam.GetClippingRange(), w, h) if (z < 1).any() else None
        start = time.perf_counter()
        frame = next(progressive_render(self._core, camera, table, w, h, start_stride=stride, depth=depth))
        if stride == 1:
            self._full_seconds = time.perf_counter() - start
        self.last_stats, self.last_stride = frame.stats, stride
        self.render_count += 1
        rgba = frame.image.numpy()
        alpha = rgba[..., 3:4]
        straight = np.where(alpha > 0, rgba[..., :3] / np.maximum(alpha, 1e-12), 0.0)  # the blend multiplies by alpha
        img = np.concatenate([straight, alpha], axis=2)
        self._image = np.ascontiguousarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)[::-1])
        self._signature, self._depth = signature, np.array(z)
        return self._image

    def _prepare_cache_frame(self) -> None:
        """The cache mode's work for one frame (at the renderer's ``StartEvent``)."""
        ren, prop = self._renderer, self._property
        if self._volume is None or prop is None or ren is None or ren.GetRenderWindow() is None:
            return
        window = ren.GetRenderWindow()
        _, (w, h) = self._viewport()
        interactive = window.GetDesiredUpdateRate() >= self._interactive_rate
        interactor = window.GetInteractor()
        can_refine = self._progressive and interactor is not None and bool(interactor.GetInitialized())
        # One preview per refinement: a frame asked for before the timer fired (a script rendering in a loop, a
        # screenshot) gets the full detail instead of another preview.
        preview_first = can_refine and self._refine_timer is None
        frame = self._cached.prepare_frame(camera_from_vtk(ren.GetActiveCamera()), w, h, self._cache_table(prop),
                                           self._settings.step, interactive, preview_first=preview_first)
        self.render_count += 1
        if frame is not None and frame.preview and can_refine and not interactive:
            self._schedule_refinement(interactor, window)

    def _cache_table(self, prop) -> TransferTable:
        """The live functions' table (rebuilt only when they change): it decides which bricks are visible."""
        color, opacity = prop.GetRGBTransferFunction(0), prop.GetScalarOpacity(0)
        key = (id(color), color.GetMTime(), id(opacity), opacity.GetMTime())
        if key != self._table_key:
            self._table, self._table_key = transfer_table_from_vtk(color, opacity), key
        return self._table

    def _schedule_refinement(self, interactor, window) -> None:
        """Ask for a still frame right after a preview: a one-shot timer on the window's interactor."""
        if self._refine_timer is not None:
            return

        def refine(*_):
            interactor.RemoveObserver(tag)
            self._refine_timer = None
            self._refine_now(window)

        tag = interactor.AddObserver("TimerEvent", refine)
        self._refine_timer = interactor.CreateOneShotTimer(1)

    def _refine_now(self, window) -> None:
        """Render the still frame: the full level is decoded (``preview_first`` off for this frame)."""
        progressive, self._progressive = self._progressive, False
        try:
            window.Render()
        finally:
            self._progressive = progressive

    def _sync_settings(self, prop) -> None:
        s = self._settings
        wanted = dict(opacity_unit_distance=float(prop.GetScalarOpacityUnitDistance(0)), shade=bool(prop.GetShade(0)),
                      ambient=float(prop.GetAmbient(0)), diffuse=float(prop.GetDiffuse(0)),
                      specular=float(prop.GetSpecular(0)), specular_power=float(prop.GetSpecularPower(0)))
        for name, value in wanted.items():
            if getattr(s, name) != value:
                setattr(s, name, value)
        if self._core is None or self._core.volume is not self._volume:
            self._core = Renderer(self._volume, s)
        self._core.settings = s

    def _stride(self, rate: float) -> int:
        """Coarsest-needed ray spacing for the frame budget ``1 / rate``, from the last full render's time."""
        if not self._full_seconds or rate <= 0:
            return 4
        stride = 1
        while self._full_seconds / (stride * stride) > 1.0 / rate and stride < 16:
            stride *= 2
        return stride
