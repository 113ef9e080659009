"""The cache render path: VTK's own ray caster draws the model's decoded brick cache, frame after frame.

A neural sample costs 16 trilinear lookups and an MLP where VTK's costs one lookup, so a ParaView user
rotating a directly rendered model waits seconds per frame. Instead, :class:`CachedVolume` decodes the model
into a :class:`~srn_core.render.brick_cache.BrickCache` (a voxel grid per level of detail, filled brick by brick
where the transfer function can see anything) and hands the level a view needs to a plain VTK volume mapper as a
``vtkImageData`` that wraps the cache's own buffer (no copy). Frames after the first sample the cache, not the
network: an orbit costs what VTK costs on raw data.

Which sampler draws the cache was chosen by measurement (``benchmarks/render.py``, inia19, 512 x 512, one sample
per voxel): VTK's ``vtkFixedPointVolumeRayCastMapper`` on the CPU, about 8x faster than our PyTorch marcher on
the same grid and 2.6x faster than VTK's OpenGL mapper on Mesa's llvmpipe. With a real GPU,
``SetSampler("gpu")`` uses ``vtkOpenGLGPUVolumeRayCastMapper``.

Frame by frame (:meth:`CachedVolume.prepare_frame`, called at the renderer's ``StartEvent``):

* the level of detail follows the screen footprint of a voxel (a voxel smaller than a pixel is not needed) and
  the cache's memory bound;
* a still frame decodes every brick of that level the transfer function makes visible (a transfer-function
  edit decodes only bricks that became visible);
* an interactive frame (the window's desired update rate at least the interactive rate, as VTK's interactor
  sets it while the mouse moves) never waits for the network: it draws the finest level that is already
  complete, or a coarse preview level (1/64 of the points) when none is; the still frame that VTK's interactor
  renders when the motion ends refines it. With an interactor, the very first frame is such a preview too and a
  one-shot timer asks for the refined frame right after (progressive rendering).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from vtkmodules.util import numpy_support
from vtkmodules.vtkCommonDataModel import vtkImageData
from vtkmodules.vtkRenderingCore import vtkVolume

from srn_core.render.brick_cache import BrickCache, BrickCacheSettings, CachedLevel
from srn_core.render.volume import RenderVolume

SAMPLERS = ("fixed-point", "gpu")
PREVIEW_LEVELS = 2
"""A preview is this many levels coarser than the view needs: 1/64 of the points, decoded in milliseconds."""


@dataclass
class CacheFrame:
    """What one frame of the cache path drew."""

    lod: int
    """The level of detail drawn (0 = the model's training grid)."""
    wanted_lod: int
    """The level the view needs; larger ``lod`` means a preview was drawn while that one is incomplete."""
    points_decoded: int
    """Field evaluations this frame cost (0 when the cache already held everything)."""
    complete: bool
    """Whether the drawn level holds every brick the transfer function makes visible."""
    prepare_seconds: float
    """Time spent choosing, decoding and handing over the level (the VTK render itself not included)."""

    @property
    def preview(self) -> bool:
        """True when the frame shows less than the view needs (a coarser or incomplete level): refine it."""
        return self.lod != self.wanted_lod or not self.complete


def _new_mapper(sampler: str):
    if sampler == "fixed-point":
        from vtkmodules.vtkRenderingVolume import vtkFixedPointVolumeRayCastMapper

        mapper = vtkFixedPointVolumeRayCastMapper()
        mapper.SetImageSampleDistance(1.0)  # one ray per pixel, as the direct path
        mapper.SetMinimumImageSampleDistance(1.0)
    else:
        import vtkmodules.vtkRenderingVolumeOpenGL2  # noqa: F401  (registers the OpenGL volume mapper)
        from vtkmodules.vtkRenderingVolumeOpenGL2 import vtkOpenGLGPUVolumeRayCastMapper

        mapper = vtkOpenGLGPUVolumeRayCastMapper()
    mapper.SetAutoAdjustSampleDistances(0)  # the sample distance follows the level (see _show)
    return mapper


def _bounds_placeholder(volume: RenderVolume) -> vtkImageData:
    """A 2 x 2 x 2 image spanning the volume's box. Renderers and views compute the camera's clipping range from
    their props' bounds *before* a frame starts, so the volume needs its true bounds before its first level
    exists (else the first frame is clipped by a range computed without it). It shows nothing: its values are
    the bottom of the value range."""
    b = volume.bounds
    image = vtkImageData()
    image.SetDimensions(2, 2, 2)
    image.SetOrigin(b[0], b[2], b[4])
    image.SetSpacing(b[1] - b[0], b[3] - b[2], b[5] - b[4])
    lo = volume.value_range[0] if volume.value_range is not None else 0.0
    array = numpy_support.numpy_to_vtk(np.full(8, lo, np.float32), deep=1)
    array.SetName("values")
    image.GetPointData().SetScalars(array)
    return image


class CachedVolume:
    """A ``vtkVolume`` (:attr:`prop`) whose input is the brick cache level the current view needs."""

    def __init__(self, sampler: str = "fixed-point", settings: BrickCacheSettings | None = None):
        if sampler not in SAMPLERS:
            raise ValueError(f"cache sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}.")
        self.sampler = sampler
        self.settings = settings or BrickCacheSettings()
        self.cache: BrickCache | None = None
        self._volume: RenderVolume | None = None
        self._images: dict[int, tuple[vtkImageData, object, int]] = {}  # lod -> (image, vtk array, version)
        self._mapper = _new_mapper(sampler)
        self.prop = vtkVolume()
        self.prop.SetMapper(self._mapper)
        self.last_frame: CacheFrame | None = None
        self.frames = 0

    # ---- configuration -------------------------------------------------------------------------
    def set_volume(self, volume: RenderVolume | None) -> None:
        """Render ``volume``; a new volume gets a new cache (the old levels are dropped)."""
        if volume is not self._volume:
            self._volume = volume
            self.cache = BrickCache(volume, self.settings) if volume is not None else None
            self._drop_images()

    def set_settings(self, settings: BrickCacheSettings) -> None:
        """New cache settings (brick size, memory bound, chunk size): the cache starts over."""
        if settings != self.settings:
            self.settings = settings
            self.cache = BrickCache(self._volume, settings) if self._volume is not None else None
            self._drop_images()

    def set_property(self, prop) -> None:
        if prop is not None and self.prop.GetProperty() is not prop:
            self.prop.SetProperty(prop)

    def _drop_images(self) -> None:
        self._images.clear()
        self._mapper.RemoveAllInputs()
        if self._volume is not None:
            self._mapper.SetInputData(_bounds_placeholder(self._volume))

    # ---- one frame -----------------------------------------------------------------------------
    def prepare_frame(self, camera, width: int, height: int, table, step: float, interacting: bool,
                      preview_first: bool = False) -> CacheFrame | None:
        """Choose and fill the level for this view and hand it to the VTK mapper.

        ``camera`` is a core :class:`~srn_core.render.camera.Camera`, ``table`` the transfer table of the live
        VTK functions (its opacity decides which bricks are visible), ``step`` the sample distance in voxels of
        the drawn level. ``interacting`` frames and ``preview_first`` frames never decode the full level.
        """
        if self.cache is None:
            return None
        start = time.perf_counter()
        cache = self.cache
        before = cache.points_decoded
        wanted = cache.lod_for_view(camera, width, height, step)
        if interacting or preview_first:
            level = cache.level(wanted)
            if level is not None:
                level = cache.request(wanted, table, max_points=0)  # complete for this table? decodes nothing
            if level is None or not level.complete:
                # The whole preview level (no table): 1/64 of the points, and no macro-cells needed yet.
                level = cache.finest_complete_level(table, at_least=wanted + 1) or \
                    cache.request(min(cache.max_lod, wanted + PREVIEW_LEVELS))
        else:
            level = cache.request(wanted, table)
        self._show(level, step)
        self.frames += 1
        self.last_frame = CacheFrame(level.lod, wanted, cache.points_decoded - before, level.complete,
                                     time.perf_counter() - start)
        return self.last_frame

    def _show(self, level: CachedLevel, step: float) -> None:
        """Point the VTK mapper at ``level`` (wrapping its buffer once; marking it modified when it changed)."""
        entry = self._images.get(level.lod)
        if entry is None or entry[1] is not level.values:  # new, or evicted and allocated again: a new buffer
            image = vtkImageData()
            image.SetDimensions(*level.dims)
            image.SetOrigin(*level.origin)
            image.SetSpacing(*level.spacing)
            # deep=0: VTK reads the cache's own buffer, which never moves while the level exists (the cache keeps
            # the array alive; we keep a reference too, so VTK never outlives its memory).
            array = numpy_support.numpy_to_vtk(level.values.reshape(-1), deep=0)
            array.SetName("values")
            image.GetPointData().SetScalars(array)
            entry = (image, level.values, level.version)
            self._images[level.lod] = entry
        image, values, version = entry
        if version != level.version:
            image.GetPointData().GetScalars().Modified()
            image.Modified()
            self._images[level.lod] = (image, values, level.version)
        for lod in [k for k in self._images if k != level.lod and (self.cache.level(k) is None or
                                                                   self.cache.level(k).values is not self._images[k][1])]:
            del self._images[lod]  # evicted from the cache: let its buffer go
        if self._mapper.GetInput() is not image:
            self._mapper.SetInputData(image)
        distance = float(step) * min(level.spacing)
        if self._mapper.GetSampleDistance() != distance:
            self._mapper.SetSampleDistance(distance)
            if self.sampler == "fixed-point":
                self._mapper.SetInteractiveSampleDistance(distance)

    @property
    def nbytes(self) -> int:
        """Bytes the cache holds (its bound is ``settings.memory_bytes``)."""
        return 0 if self.cache is None else self.cache.nbytes

