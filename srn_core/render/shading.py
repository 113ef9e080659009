"""Shading as pure functions: central-difference gradients of a field and headlight Phong lighting.

The marcher evaluates the six probes :func:`gradient_probes` returns (so it can time and chunk the field calls);
the rest only does arithmetic. Shapes: ``N`` samples.
"""

from __future__ import annotations

import torch


def gradient_probes(points: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """The six points ``p + h_a e_a`` then ``p - h_a e_a`` (a = x, y, z) around ``points`` ``(N, 3)``: ``(6N, 3)``.

    ``h`` ``(3,)`` is the offset per axis (one voxel in model units); probes are clamped to the model cube.
    """
    offsets = torch.diag(h)
    probes = torch.cat([points + offsets[a] for a in range(3)] + [points - offsets[a] for a in range(3)])
    return probes.clamp(-1.0, 1.0)


def central_differences(values: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """World-space gradient ``(N, 3)`` from the field's values ``(6N,)`` at :func:`gradient_probes`' points.

    ``spacing`` ``(3,)`` is the world distance the probes' offsets stand for (one voxel per axis).
    """
    v = values.reshape(6, -1)
    return ((v[:3] - v[3:]) / (2 * spacing[:, None])).t()


def unit_normals(gradient: torch.Tensor) -> torch.Tensor:
    """Gradients ``(N, 3)`` normalised to unit length; zero where the gradient vanishes (flat regions)."""
    norm = gradient.norm(dim=1, keepdim=True)
    return torch.where(norm > 1e-12, gradient / norm.clamp(min=1e-30), torch.zeros_like(gradient))


def headlight_phong(rgba: torch.Tensor, normal: torch.Tensor, view_dir: torch.Tensor, ambient: float, diffuse: float,
                    specular: float, specular_power: float) -> torch.Tensor:
    """Lit premultiplied RGBA ``(N, 4)`` of samples ``rgba`` ``(N, 4)`` (premultiplied; opacity kept).

    The light sits at the eye (VTK's headlight), so the half vector is the light direction and
    ``n . l = |normal . view_dir|`` (two-sided: a volume's "surfaces" face both ways). ``normal`` and
    ``view_dir`` are ``(N, 3)`` unit vectors; colour = ``c (ambient + diffuse n.l) + specular (n.l)^power``,
    clamped to [0, 1].
    """
    ndotl = (normal * view_dir).sum(dim=1).abs()
    spec = ndotl.pow(specular_power)
    alpha = rgba[:, 3:4]
    rgb = torch.where(alpha > 0, rgba[:, :3] / alpha.clamp(min=1e-30), torch.zeros_like(rgba[:, :3]))
    lit = rgb * (ambient + diffuse * ndotl[:, None]) + specular * spec[:, None]
    return torch.cat([lit.clamp(0, 1) * alpha, alpha], dim=1)
