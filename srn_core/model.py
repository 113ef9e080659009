"""A trained neural volume: a field plus everything needed to place it in the world and trust it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from typing import Any

import torch

from .evaluate import DEFAULT_CHUNK_SIZE, evaluate_image
from .fields import Field, build_field
from .geometry import ImageGeometry, world_to_model
from .modelfile import ModelFileError, load_tensors, save_tensors


@dataclass
class NeuralVolume:
    """A :class:`Field` with the geometry of the data it was trained on.

    ``geometry`` is the training data's image (dims, origin, spacing); its ``bounds`` map to the model cube
    ``[-1, 1]^3``. ``training`` holds provenance (steps, seconds, PSNR, data checksum, ...).
    """

    field: Field
    geometry: ImageGeometry
    array_name: str = "values"
    training: dict[str, Any] = dataclass_field(default_factory=dict)
    time_steps: list[float] | None = None
    source: str = ""
    """Where it was loaded from (a path; peers' checkpoints are named by their folder)."""

    @property
    def bounds(self):
        return self.geometry.bounds

    @property
    def value_range(self) -> tuple[float, float]:
        lo, hi = self.field.value_range.tolist()
        return lo, hi

    @property
    def num_parameters(self) -> int:
        return self.field.num_parameters()

    @property
    def compression_ratio(self) -> float:
        """float32 bytes of the training data / float32 bytes of the parameters."""
        return self.geometry.num_points / max(1, self.num_parameters)

    def to_model(self, world_points: torch.Tensor) -> torch.Tensor:
        return world_to_model(world_points, self.bounds)

    def resample(self, geometry: ImageGeometry | None = None, extent=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 outside: str = "clamp", fill_value: float = 0.0):
        """The model sampled on ``geometry`` (default: the training data's grid) as float32 ``(nz, ny, nx)``."""
        return evaluate_image(self.field, geometry or self.geometry, self.bounds, extent, chunk_size, outside,
                              fill_value)

    def metadata(self) -> dict[str, Any]:
        return {
            "architecture": self.field.architecture,
            "config": self.field.config_dict(),
            "num_parameters": self.num_parameters,
            "array_name": self.array_name,
            "value_range": list(self.value_range),
            "geometry": self.geometry.to_dict(),
            "time_steps": self.time_steps,
            "training": self.training,
        }

    # ---- files ---------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike, extra_tensors: dict[str, torch.Tensor] | None = None,
             extra_metadata: dict[str, Any] | None = None) -> None:
        """Write the model file atomically (safetensors + JSON metadata)."""
        tensors = {f"field.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update(extra_tensors or {})
        save_tensors(path, tensors, {**self.metadata(), **(extra_metadata or {})})

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> "NeuralVolume":
        """Load our model file, or a peer's checkpoint folder (APMGSRN ``options.json`` + ``model.ckpt.tar``)."""
        path = Path(path)
        if path.is_dir():
            from .peers import load_peer_checkpoint
            return load_peer_checkpoint(path, device=device)
        tensors, meta = load_tensors(path)
        return cls.from_tensors(tensors, meta, str(path), device)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str = "",
                     device: str | torch.device = "cpu") -> "NeuralVolume":
        try:
            field = build_field(meta["architecture"], meta.get("config", {}), meta.get("value_range", (0.0, 1.0)))
            state = {k[len("field."):]: v for k, v in tensors.items() if k.startswith("field.")}
            field.load_state_dict(state, strict=True)
            g = meta["geometry"]
            geometry = ImageGeometry(g["dims"], g["origin"], g["spacing"])
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ModelFileError(f"model file {source!r} does not describe a valid model ({msg}).") from None
        field.to(device).eval()
        return cls(field, geometry, meta.get("array_name", "values"), meta.get("training", {}),
                   meta.get("time_steps"), source)

    def describe(self) -> str:
        """A human-readable summary (what ``srn info`` prints)."""
        g = self.geometry
        lo, hi = self.value_range
        lines = [
            f"model         {self.source}",
            f"architecture  {self.field.architecture}",
            f"parameters    {self.num_parameters:,} ({self.num_parameters * 4 / 1e6:.3f} MB as float32)",
            f"array         {self.array_name}  range [{lo:.6g}, {hi:.6g}]",
            f"data dims     {g.dims[0]} x {g.dims[1]} x {g.dims[2]} points "
            f"({g.num_points:,}; compression {self.compression_ratio:.1f}x vs float32)",
            f"origin        {tuple(round(v, 6) for v in g.origin)}",
            f"spacing       {tuple(round(v, 6) for v in g.spacing)}",
            f"bounds        {tuple(round(v, 6) for v in g.bounds)}",
            "config        " + ", ".join(f"{k}={v}" for k, v in self.field.config_dict().items()),
        ]
        if self.time_steps:
            lines.append(f"time steps    {self.time_steps}")
        width = max((len(k) for k in self.training), default=0) + 2  # keys such as stopped_because stay apart
        for k, v in self.training.items():
            lines.append(f"training.{k:<{width}}{v}")
        return "\n".join(lines)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> NeuralVolume:
    return NeuralVolume.load(path, device)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it is a clear error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was requested but this machine has no CUDA device; use 'cpu' or 'auto'.")
    return dev

