"""srn_core.render.progressive: coarse levels first, the exact image last, each ray cast once."""

from __future__ import annotations

import torch

from srn_core.geometry import ImageGeometry
from srn_core.render import Camera, Renderer, RenderVolume, progressive_render
from srn_core.render.image import image_psnr, over_background, to_uint8
from scenes import blob_values, tissue_tf


def test_progressive_refinement_ends_with_the_full_image():
    geometry = ImageGeometry((40, 40, 40))
    vol = RenderVolume.from_grid(blob_values(geometry), geometry)
    cam = Camera.reset(geometry.bounds).azimuth(40).zoom(1.4)
    renderer = Renderer(vol)
    full = renderer.render(cam, tissue_tf(), 64, 48)
    frames = list(progressive_render(renderer, cam, tissue_tf(), 64, 48, start_stride=8))
    assert [f.stride for f in frames] == [8, 4, 2, 1]
    assert frames[0].stats.rays == 8 * 6  # every 8th pixel of every 8th row
    assert frames[-1].stats.rays == 64 * 48  # each pixel cast exactly once over all levels
    assert torch.equal(frames[-1].image, full.image)
    psnrs = [image_psnr(to_uint8(over_background(f.image)), to_uint8(over_background(full.image))) for f in frames[:-1]]
    assert psnrs == sorted(psnrs) and psnrs[0] > 15  # each level is closer to the final image
