"""The one interface every scene representation network (a *field*) implements.

A field maps points ``(N, 3)`` float32 in the model cube ``[-1, 1]^3`` to values ``(N,)`` in data units.
Internally a decoder learns values normalised to ``[0, 1]``; the stored ``value_range`` rescales them, so
training works on normalised targets and every consumer (resampler, renderer, VTK source) sees data units.
Those values are clamped to the value range unless ``clamp_output`` is off: the data never left it, so a
decoder's overshoot (ringing around sharp edges, a background answering below the data's minimum) is error.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import torch
from torch import nn


class Field(nn.Module):
    """Base class: subclasses set ``architecture`` and ``Config`` and implement :meth:`normalized`."""

    architecture: ClassVar[str]
    Config: ClassVar[type]
    default_lr: ClassVar[float] = 0.01
    """The Adam learning rate the architecture trains well with (grid models: the APMGSRN paper's 0.01)."""
    grid_tensors: ClassVar[tuple[str, ...]] = ()
    """State-dict names of the feature grids / hash tables: what a compressed file quantizes per channel to its
    grid bits (:mod:`srn_core.compression`); every other floating tensor counts as a decoder weight."""
    exact_tensors: ClassVar[tuple[str, ...]] = ()
    """State-dict names that compressed files keep float32 (besides ``value_range``): few values whose error
    would move everything, such as APMGSRN's grid transforms."""
    clamp_output: bool = True
    """Clamp :meth:`forward` to ``value_range``. Every true value lies in the range, so clamping can only bring a
    prediction closer to it; turn it off to see the decoder's raw output. A run-time switch, not part of the
    model file (set ``field.clamp_output``)."""

    def __init__(self, config, value_range: tuple[float, float] = (0.0, 1.0)):
        super().__init__()
        self.config = config
        lo, hi = float(value_range[0]), float(value_range[1])
        if not (hi >= lo):
            raise ValueError(f"value_range must be (min, max) with min <= max, got {value_range}.")
        # A persistent buffer: the range travels with the weights in the model file.
        self.register_buffer("value_range", torch.tensor([lo, hi], dtype=torch.float32))

    # ---- the interface -------------------------------------------------------------------------
    def normalized(self, points: torch.Tensor) -> torch.Tensor:
        """Decoder output ``(N,)`` for points ``(N, 3)`` in ``[-1, 1]^3``; learns the data scaled to ``[0, 1]``."""
        raise NotImplementedError

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        """Values ``(N,)`` in data units at points ``(N, 3)`` in the model cube ``[-1, 1]^3`` (clamped to
        ``value_range`` while :attr:`clamp_output` is on). Training uses :meth:`normalized`, never this."""
        return to_data_units(self.normalized(points), self.value_range, self.clamp_output)

    def num_parameters(self) -> int:
        """Trainable values stored in the model file (what a parameter budget counts): every ``nn.Parameter``,
        so weights, biases, feature grids and transforms; never buffers such as ``value_range``."""
        return sum(p.numel() for p in self.parameters())

    # ---- training hooks (defaults suit a plain network; APMGSRN overrides them) ----------------
    def parameter_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimizer parameter groups; a group with ``"name": "transforms"`` is stepped only on the auxiliary loss."""
        return [{"name": "model", "params": list(self.parameters()), "lr": lr}]

    def auxiliary_loss(self, points: torch.Tensor, per_point_error: torch.Tensor) -> torch.Tensor | None:
        """An extra loss for the ``transforms`` group (APMGSRN's feature-density loss); ``None`` if there is none."""
        return None

    # ---- description ---------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return dataclasses.asdict(self.config)

    def extra_repr(self) -> str:
        return f"{self.architecture}: {self.num_parameters():,} parameters, {self.config}"


def to_data_units(normalized: torch.Tensor, value_range: torch.Tensor, clamp: bool) -> torch.Tensor:
    """Decoder output in ``[0, 1]`` scaled to ``value_range = (min, max)``, clamped to it when ``clamp``."""
    lo, hi = value_range[0], value_range[1]
    values = normalized.float() * (hi - lo) + lo
    return values.clamp_(lo, hi) if clamp else values


MIN_BUDGET = 1000
"""The smallest parameter budget any architecture is sized for."""


def checked_budget(num_params) -> int:
    """``num_params`` as an int, or a clear error when it is below :data:`MIN_BUDGET`."""
    if num_params < MIN_BUDGET:
        raise ValueError(f"parameter budget must be at least {MIN_BUDGET}, got {num_params}.")
    return int(num_params)


def require_at_least_one(config, names, label: str) -> None:
    """Refuse a config whose integer settings ``names`` are below 1, naming the architecture ``label``."""
    for name in names:
        if int(getattr(config, name)) < 1:
            raise ValueError(f"{label} {name} must be at least 1, got {getattr(config, name)}.")


def checked_grid_shape(shape, label: str) -> tuple[int, int, int]:
    """A feature grid shape ``(D, H, W)`` as ints, or a clear error unless it is three sizes of at least 2."""
    shape = tuple(int(v) for v in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"{label} grid_shape must be three sizes of at least 2, got {shape}.")
    return shape


def config_from_dict(config_cls: type, values: dict) -> Any:
    """Build a config dataclass from a JSON dict, refusing unknown keys (a clear error beats silent defaults)."""
    names = {f.name: f for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown {config_cls.__name__} setting(s) {unknown}; known: {sorted(names)}.")
    kwargs = {}
    for key, value in values.items():
        # JSON has no tuples: restore them where the dataclass default is a tuple.
        default = names[key].default
        kwargs[key] = tuple(value) if isinstance(value, list) and isinstance(default, tuple) else value
    return config_cls(**kwargs)
