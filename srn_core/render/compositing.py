"""Compositing as small pure functions: emission-absorption with premultiplied colour, front to back.

Shapes use ``R`` rays, ``S`` samples per ray and ``N`` flat samples. Colours are premultiplied by opacity
(``c * a``) everywhere except where a docstring says *straight*; the formulas are VTK's, so images compare with
its volume mappers:

* a sample standing for ``ratio`` unit distances has opacity ``1 - (1 - a) ** ratio`` (:func:`opacity_correction`),
* samples composite front to back, ``C += (1 - A) c``, ``A += (1 - A) a`` (:func:`composite_front_to_back`),
* and blocks of samples chain with the same rule (:func:`over`).
"""

from __future__ import annotations

import torch

MAX_TABLE_OPACITY = 1 - 1e-7
"""Opacities are clamped below 1 before taking logarithms: a fully opaque entry stays finite (and still
composites to an opacity of 1 - 1e-7 per unit distance)."""


def opacity_correction(alpha: torch.Tensor, step_ratio) -> torch.Tensor:
    """Opacity of samples standing for ``step_ratio`` unit distances each: ``1 - (1 - alpha) ** step_ratio``.

    ``alpha`` ``(...)`` in [0, 1] is the opacity per unit distance (VTK's ``ScalarOpacityUnitDistance``);
    ``step_ratio`` is a number or a tensor broadcasting with it, ``>= 0``. Returns ``(...)``. Computed as
    ``-expm1(log1p(-alpha) * ratio)``, which keeps faint samples (``alpha`` near 0) exact.
    """
    return -torch.expm1(torch.log1p(-alpha.clamp(max=MAX_TABLE_OPACITY)) * step_ratio)


def premultiply(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Straight colour ``rgb`` ``(N, 3)`` and opacity ``alpha`` ``(N,)`` as premultiplied RGBA ``(N, 4)``."""
    return torch.cat([rgb * alpha[:, None], alpha[:, None]], dim=1)


def composite_front_to_back(rgb: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Composite each ray's samples, nearest first.

    ``rgb`` ``(R, S, 3)`` premultiplied, ``alpha`` ``(R, S)`` -> premultiplied colour ``(R, 3)`` and opacity ``(R,)``
    of the whole segment: ``sum_j T_j rgb_j`` and ``1 - T_S`` with ``T_j = prod_{i<j} (1 - alpha_i)``.
    """
    trans = torch.cumprod(1.0 - alpha, dim=1)
    before = torch.cat([torch.ones_like(trans[:, :1]), trans[:, :-1]], dim=1)  # transparency in front of each
    return (rgb * before[..., None]).sum(dim=1), 1.0 - trans[:, -1]


def over(front: torch.Tensor, back_rgb: torch.Tensor, back_alpha: torch.Tensor) -> torch.Tensor:
    """Premultiplied RGBA ``front`` ``(R, 4)`` over a segment behind it (``(R, 3)`` premultiplied, ``(R,)``)."""
    remaining = 1.0 - front[:, 3:4]
    return torch.cat([front[:, :3] + remaining * back_rgb, front[:, 3:4] + remaining * back_alpha[:, None]], dim=1)
