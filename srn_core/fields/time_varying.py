"""A time-varying field: one model for a whole time series, answering any time in its range.

Design (chosen by measurement, see ``docs/time-varying.md``): a *base* grid field (APMGSRN) whose decoder and
grid transforms are shared by every time, and one copy of its feature grids per *key frame*. At time ``t``
the grids are the linear interpolation of the two key frames around ``t``; the decoder then reads them as
a static model would. So

* a stored step costs only its grids: the decoder and the transforms are paid once for the whole series,
  which is what puts it above independent per-step models at equal bytes;
* any ``t`` between two key frames is answered (temporal super-resolution), continuously in ``t``;
* :meth:`TimeVaryingField.frame` hands out a plain static field for one time, so everything written for static
  models (chunked evaluation, the fused kernel, the brick cache, the renderers) works unchanged.

Key frames sit at the training data's time steps by default; fewer key frames than steps (uniform in time)
trade temporal detail for grid resolution. Every key frame starts from the same initial grids, so neighbouring
frames stay alike, which is what a compressed file's entropy coder profits from.
"""

from __future__ import annotations

import bisect
import copy
from dataclasses import dataclass, field as dataclass_field

import torch
from torch import nn

from .base import Field, checked_budget


@dataclass
class TimeVaryingConfig:
    base_architecture: str = "apmgsrn"
    """Architecture of the shared model whose grids are kept per key frame (a grid architecture)."""
    base_config: dict = dataclass_field(default_factory=dict)
    """That architecture's config (as a JSON object)."""
    key_times: list = dataclass_field(default_factory=lambda: [0.0])
    """The key frames' times, strictly increasing, in the data's time unit."""

    def __post_init__(self):
        times = [float(t) for t in self.key_times]
        if not times:
            raise ValueError("a time-varying model needs at least one key frame time, got none.")
        if any(not (b > a) for a, b in zip(times, times[1:])):
            raise ValueError(f"time-varying key_times must be strictly increasing, got {times}.")
        self.key_times = times
        if not isinstance(self.base_config, dict):
            raise ValueError(f"time-varying base_config must be a JSON object, got {self.base_config!r}.")


def _key(name: str) -> str:
    """A state-dict name usable as a ParameterDict key (no dots)."""
    return name.replace(".", "__")


class _Normalized(nn.Module):
    """Calls the wrapped field's ``normalized``, so ``functional_call`` can swap its grids for blended ones."""

    def __init__(self, field: Field):
        super().__init__()
        self.field = field

    def forward(self, points):
        return self.field.normalized(points)


class TimeVaryingField(Field):
    """Shared base field + per-key-frame grids, linearly interpolated in time.

    State: ``base.*`` (the shared tensors: decoder, transforms) and ``frames.<grid>`` ``[K, ...]`` (grid
    ``<grid>`` of every key frame). The base keeps an empty placeholder where its grids were.
    """

    architecture = "time_varying"
    Config = TimeVaryingConfig

    def __init__(self, config: TimeVaryingConfig = TimeVaryingConfig(), value_range=(0.0, 1.0)):
        super().__init__(config, value_range)
        from . import build_field, field_class

        base_cls = field_class(config.base_architecture)
        if not base_cls.grid_tensors or base_cls.architecture == self.architecture:
            raise ValueError(f"a time-varying model needs a grid architecture as its base (apmgsrn, fvsrn, ngp), "
                             f"got {config.base_architecture!r}.")
        base = build_field(config.base_architecture, config.base_config, value_range)
        k = len(config.key_times)
        self.grid_names = tuple(base_cls.grid_tensors)
        self.frames = nn.ParameterDict()
        for name in self.grid_names:
            grid = base.get_parameter(name).detach()
            self.frames[_key(name)] = nn.Parameter(grid.unsqueeze(0).repeat(k, *([1] * grid.dim())).clone())
            owner, _, leaf = name.rpartition(".")
            module = base.get_submodule(owner) if owner else base
            del module._parameters[leaf]
            module.register_buffer(leaf, torch.empty(0), persistent=False)  # filled per time by frame()
        self.base = base
        self.grid_tensors = tuple(f"frames.{_key(n)}" for n in self.grid_names)
        self.exact_tensors = ()
        self.register_buffer("key_times", torch.tensor(config.key_times, dtype=torch.float64), persistent=False)

    # ---- time ----------------------------------------------------------------------------------
    @property
    def time_range(self) -> tuple[float, float]:
        return self.config.key_times[0], self.config.key_times[-1]

    def blend(self, t: float) -> tuple[int, int, float]:
        """``(k0, k1, w)``: time ``t`` is ``(1 - w)`` key frame ``k0`` plus ``w`` key frame ``k1`` (clamped to
        the key frames' range)."""
        times = self.config.key_times
        t = float(t)
        if t <= times[0] or len(times) == 1:
            return 0, 0, 0.0
        if t >= times[-1]:
            return len(times) - 1, len(times) - 1, 0.0
        k1 = bisect.bisect_right(times, t)
        k0 = k1 - 1
        return k0, k1, (t - times[k0]) / (times[k1] - times[k0])

    def grids_at(self, t: float) -> dict[str, torch.Tensor]:
        """The base's grids at time ``t`` (differentiable in the key frames)."""
        k0, k1, w = self.blend(t)
        out = {}
        for name in self.grid_names:
            frames = self.frames[_key(name)]
            out[name] = frames[k0] if w == 0.0 else torch.lerp(frames[k0], frames[k1], w)
        return out

    def normalized_at(self, points: torch.Tensor, t: float) -> torch.Tensor:
        """Decoder output ``(N,)`` in ``[0, 1]`` at ``points`` ``(N, 3)`` and time ``t`` (what training fits)."""
        grids = {f"field.{name}": g for name, g in self.grids_at(t).items()}
        return torch.func.functional_call(_Normalized(self.base), grids, (points,), strict=False)

    def normalized_times(self, points: torch.Tensor, times) -> torch.Tensor:
        """Decoder output ``(S, n)`` for ``S`` sets of points ``(S, n, 3)``, set ``s`` at time ``times[s]``:
        every time of a training batch in one pass where the base can (APMGSRN's ``normalized_with_grids``)."""
        blends = [self.blend(t) for t in times]
        if len(self.grid_names) == 1 and hasattr(self.base, "normalized_with_grids"):
            frames = self.frames[_key(self.grid_names[0])]
            k0 = torch.tensor([b[0] for b in blends], device=frames.device)
            k1 = torch.tensor([b[1] for b in blends], device=frames.device)
            w = torch.tensor([b[2] for b in blends], dtype=frames.dtype, device=frames.device)
            w = w.view(-1, *([1] * (frames.dim() - 1)))
            grids = torch.lerp(frames[k0], frames[k1], w)  # (S, M, C, D, H, W); exactly frames[k0] where w = 0
            return self.base.normalized_with_grids(points, grids)
        return torch.stack([self.normalized_at(p, t) for p, t in zip(points, times)])

    def frame(self, t: float) -> Field:
        """A static field (the base architecture) equal to this model at time ``t``; its grids are copies, so
        it stays valid while this model trains on."""
        with torch.no_grad():
            grids = {name: g.detach().clone() for name, g in self.grids_at(t).items()}
        static = copy.deepcopy(self.base)
        for name, grid in grids.items():
            owner, _, leaf = name.rpartition(".")
            module = static.get_submodule(owner) if owner else static
            del module._buffers[leaf]
            module.register_parameter(leaf, nn.Parameter(grid, requires_grad=False))
        with torch.no_grad():
            static.value_range.copy_(self.value_range)
        static.clamp_output = self.clamp_output
        return static.eval().requires_grad_(False)

    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        raise TypeError("a time-varying field needs a time: use normalized_at(points, t) or frame(t).")

    # ---- training hooks --------------------------------------------------------------------------
    def parameter_groups(self, lr: float):
        groups = self.base.parameter_groups(lr)
        for g in groups:  # the base's grids are placeholders now: keep only real parameters
            g["params"] = [p for p in g["params"] if isinstance(p, nn.Parameter)]
        model = next(g for g in groups if g.get("name") != "transforms")
        model["params"] = [*self.frames.values(), *model["params"]]
        return [g for g in groups if g["params"]]

    def auxiliary_loss(self, points, per_point_error):
        return self.base.auxiliary_loss(points, per_point_error)  # the transforms are shared by every time

    # ---- budgets -------------------------------------------------------------------------------
    @classmethod
    def config_for(cls, base_architecture: str, num_params: int, data_shape_zyx, key_times) -> TimeVaryingConfig:
        """A config of about ``num_params`` parameters in all: the base architecture's decoder for the whole
        budget, and what is left split evenly over the key frames' grids."""
        from . import field_class

        base_cls = field_class(base_architecture)
        frames = len(key_times)
        sizer = getattr(base_cls, "config_for_frames", None)
        if sizer is None:
            raise ValueError(f"time-varying models can be sized for apmgsrn; {base_architecture!r} has no "
                             f"per-frame sizing.")
        base_config = sizer(checked_budget(num_params), data_shape_zyx, frames)
        import dataclasses

        return TimeVaryingConfig(base_architecture=base_cls.architecture,
                                 base_config=dataclasses.asdict(base_config), key_times=list(key_times))
