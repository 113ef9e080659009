"""Direct rendering of neural volumes (and raw grids) by ray marching a field callable; no grid is materialised.

One job per module: :mod:`.camera` (VTK-convention cameras and rays), :mod:`.transfer_function` (ParaView presets
and point lists to lookup tables), :mod:`.volume` (what is rendered: a field, its box, its resolution, whether it
is a raw grid), :mod:`.macrocells` (per-cell value ranges), :mod:`.skipping` (leaping over transparent cells),
:mod:`.compositing` (opacity correction and front-to-back compositing, pure functions), :mod:`.shading`
(gradients and Phong lighting), :mod:`.raymarch` (the marcher that wires them: sample lattice, wavefront
batching, the cap on samples per ray), :mod:`.progressive` (coarse-to-fine images), :mod:`.image` (PNG output
and image comparison), :mod:`.brick_cache` (the model decoded lazily onto voxel grids per level of detail, only
where the transfer function makes it visible, for grid renderers).
"""

from .brick_cache import BrickCache, BrickCacheSettings, CachedLevel
from .camera import Camera
from .macrocells import MacroCells, build_macrocells, macrocells_for
from .progressive import ProgressiveFrame, progressive_render
from .raymarch import Renderer, RenderResult, RenderSettings, RenderStats, render
from .transfer_function import TransferFunction, TransferTable, find_preset, preset_names
from .volume import RenderVolume, grid_field

__all__ = ["BrickCache", "BrickCacheSettings", "CachedLevel", "Camera", "MacroCells",
           "build_macrocells", "macrocells_for", "Renderer", "RenderResult", "RenderSettings", "RenderStats", "render",
           "ProgressiveFrame", "progressive_render", "TransferFunction", "TransferTable", "find_preset", "preset_names",
           "RenderVolume", "grid_field"]
