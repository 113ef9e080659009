"""A trained neural volume: a field plus everything needed to place it in the world and trust it."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field as dataclass_field
from typing import Any

import torch

from .evaluate import DEFAULT_CHUNK_SIZE, evaluate_image
from .fields import Field, build_field
from .geometry import ImageGeometry
from .memory import check_allocation, format_bytes
from .compression import Compression, decode_state, describe_storage, encode_state
from .modelfile import ModelFileError, save_tensors


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
    source: str = ""
    """Where it was loaded from (a path; peers' checkpoints are named by their folder)."""
    file_bytes: int | None = None
    """Bytes on disk of the file (or peer folder) it was last loaded from or saved to; ``None`` for a model
    that has never been in a file."""
    storage: dict[str, Any] | None = None
    """How that file stores each tensor (:mod:`srn_core.compression`); ``None`` for float32."""
    time_steps: list[float] | None = None
    """A time-varying model's training time steps (the values ParaView's animation offers), increasing;
    ``None`` for a static model. The model answers any time between the first and the last."""
    time_unit: str = ""
    """What a time value means (the data's time coordinate units, e.g. ``hours since 1970-01-01``); may be empty."""

    # ---- time ------------------------------------------------------------------------------------
    @property
    def is_time_varying(self) -> bool:
        return self.time_steps is not None

    @property
    def time_range(self) -> tuple[float, float] | None:
        return (self.time_steps[0], self.time_steps[-1]) if self.time_steps else None

    def check_time(self, t: float, what: str = "time") -> float:
        """``t`` as a float, or one clear error when it lies outside the model's time range."""
        t = float(t)
        lo, hi = self.time_range
        span = max(abs(lo), abs(hi), hi - lo, 1.0) * 1e-9  # a step written as text and read back still counts
        if not (lo - span <= t <= hi + span):
            raise ValueError(f"{what} {t:g} is outside the model's time range [{lo:g}, {hi:g}].")
        return self.clamped_time(t)

    def clamped_time(self, t: float | None) -> float:
        """The time a time-varying model answers a request for ``t`` with: ``t`` clamped to its time range (as
        VTK readers answer a time outside theirs), its first step for ``None`` (a request naming no time)."""
        lo, hi = self.time_range
        return lo if t is None else min(max(float(t), lo), hi)

    def at_time(self, t: float | None) -> "NeuralVolume":
        """The static model at time ``t`` (clamped to the time range, as VTK readers answer a time outside
        theirs); a static model returns itself whatever ``t`` is. ``t=None`` on a time-varying model is an error."""
        if not self.is_time_varying:
            return self
        if t is None:
            raise ValueError(f"model {self.source or 'in memory'} is time-varying ({len(self.time_steps)} steps "
                             f"from {self.time_steps[0]:g} to {self.time_steps[-1]:g}); give a time.")
        return NeuralVolume(self.field.frame(self.clamped_time(t)), self.geometry, self.array_name, self.training, self.source,
                            self.file_bytes, self.storage)

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
    def data_points(self) -> int:
        """Values in the training data: the grid's points, times the time steps of a time-varying model."""
        return self.geometry.num_points * (len(self.time_steps) if self.time_steps else 1)

    @property
    def parameter_ratio(self) -> float:
        """float32 bytes of the training data / float32 bytes of the parameters."""
        return self.data_points / max(1, self.num_parameters)

    @property
    def file_ratio(self) -> float | None:
        """float32 bytes of the training data / bytes of the model's file; ``None`` without a file."""
        return self.data_points * 4 / self.file_bytes if self.file_bytes else None

    @property
    def compression_ratio(self) -> float:
        """The ratio a user compares with other compressors: data bytes over the file's bytes when the model
        is in a file (header and all), else over its float32 parameters."""
        return self.file_ratio or self.parameter_ratio

    def resample(self, geometry: ImageGeometry | None = None, extent=None, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 outside: str = "clamp", fill_value: float = 0.0, time: float | None = None):
        """The model sampled on ``geometry`` (default: the training data's grid) as float32 ``(nz, ny, nx)``,
        at ``time`` for a time-varying model (required there, ignored by a static one)."""
        return evaluate_image(self.at_time(time).field, geometry or self.geometry, self.bounds, extent, chunk_size,
                              outside, fill_value)

    def metadata(self) -> dict[str, Any]:
        return {
            "architecture": self.field.architecture,
            "config": self.field.config_dict(),
            "num_parameters": self.num_parameters,
            "array_name": self.array_name,
            "value_range": list(self.value_range),
            "geometry": self.geometry.to_dict(),
            "training": self.training,
            **({"time_steps": list(self.time_steps), "time_unit": self.time_unit} if self.is_time_varying else {}),
        }

    # ---- files (loading any model path is srn_core.loading.load_model) ------------------------------
    def save(self, path: str | os.PathLike, compression: Compression | None = None, reference=None,
             chunk_size: int = DEFAULT_CHUNK_SIZE) -> None:
        """Write the model file atomically (safetensors + JSON metadata): float32 tensors, or with
        ``compression`` quantized and entropy-coded ones (:mod:`srn_core.compression`).

        With ``compression`` and a ``reference`` :class:`~srn_core.data.Volume` (the training data), the model
        the file will hold (the quantized one) is measured against it first and its PSNR recorded as
        ``training.psnr``, the float model's kept as ``training.psnr_before_quantization``: what ``srn info``
        shows is then what ``srn eval`` measures. Afterwards :attr:`file_bytes` and :attr:`storage` describe
        the written file.
        """
        if compression is not None and reference is not None:
            from .series import series_psnr

            measured = series_psnr(self.compressed(compression), reference, chunk_size)
            if "psnr" in self.training:
                self.training.setdefault("psnr_before_quantization", self.training["psnr"])
            self.training["psnr"] = measured["psnr"]
            if "psnr_per_step" in measured:  # a series: per step too, as stored
                if "psnr_per_step" in self.training:
                    self.training.setdefault("psnr_per_step_before_quantization", self.training["psnr_per_step"])
                self.training["psnr_per_step"] = [round(v, 4) for v in measured["psnr_per_step"]]
        self._check_whole()
        meta = self.metadata()
        if compression is None:
            tensors, storage = self.field.state_dict(), None
        else:
            tensors, storage = encode_state(self.field, compression)
            meta["storage"] = {f"field.{k}": v for k, v in storage.items()}
        save_tensors(path, {f"field.{k}": v for k, v in tensors.items()}, meta)
        self.file_bytes = os.path.getsize(path)
        self.storage = meta.get("storage")

    def _check_whole(self) -> None:
        """Refuse to write a partial ensemble (loaded for an extent): its file would lack the other bricks."""
        if getattr(self.field, "is_partial", False):
            raise ValueError(f"model {self.source or 'in memory'} was loaded for an extent (ensemble bricks "
                             f"{self.field.present} of {len(self.field.bricks)}); load it whole to save it.")

    @property
    def storage_description(self) -> str:
        """How the model's file stores it: ours (float32 or compressed), or a peer's folder (all its files)."""
        if self.source and os.path.isdir(self.source):
            return "a peer's checkpoint folder, all its files counted"
        return describe_storage(self.storage)

    def compressed(self, compression: Compression) -> "NeuralVolume":
        """The model as a file written with ``compression`` holds it: encoded and decoded in memory."""
        self._check_whole()
        tensors, storage = encode_state(self.field, compression)
        meta = {**self.metadata(), "storage": {f"field.{k}": v for k, v in storage.items()}}
        device = next(iter(self.field.state_dict().values())).device
        return NeuralVolume.from_tensors({f"field.{k}": v for k, v in tensors.items()}, meta, self.source, device)

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], source: str = "",
                     device: str | torch.device = "cpu", bricks: list[int] | None = None) -> "NeuralVolume":
        """The model a file's tensors and metadata describe; one :class:`ModelFileError` if they do not.

        Nothing is allocated on the metadata's word: the field its config describes is first built on torch's
        ``meta`` device (shapes without memory), so a small file declaring huge grids is refused by comparing
        those shapes with the tensors actually present, and a consistent but huge model by the memory check.

        ``bricks``: for an ensemble, build only these bricks (a partial ensemble; ``tensors`` need hold only
        theirs and the ensemble's ``value_range``); the others are never allocated.
        """
        where = f"model file {source!r}"
        architecture, config, value_range, geometry, array_name, training = _checked_metadata(meta, where)
        time_steps, time_unit = _checked_time(meta, where, architecture)
        if bricks is not None and architecture != "ensemble":
            bricks = None  # a single model is one brick: all of it is needed anywhere
        state = {k[len("field."):]: v for k, v in tensors.items() if k.startswith("field.")}
        try:
            with torch.device("meta"):
                shell = build_field(architecture, config, value_range)
        except (KeyError, ValueError, RuntimeError, TypeError, AttributeError, OverflowError, IndexError) as exc:
            raise ModelFileError(f"{where} does not describe a valid model ({_first_line(exc)}).") from None
        if bricks is not None:
            try:
                with torch.device("meta"):
                    shell = type(shell)(shell.config, value_range, present=bricks)
            except ValueError as exc:
                raise ModelFileError(f"{where}: {_first_line(exc)}") from None
            wanted = set(shell.state_dict())
            state = {k: v for k, v in state.items() if k in wanted}
            tensors = {k: v for k, v in tensors.items() if k[len("field."):] in wanted}
        storage = meta.get("storage")
        if storage is not None:
            if bricks is not None and isinstance(storage, dict):
                storage = {k: v for k, v in storage.items() if k in tensors}
            declared = {f"field.{k}": tuple(v.shape) for k, v in shell.state_dict().items()}
            tensors = decode_state(tensors, storage, declared, where)
            state = {k[len("field."):]: v for k, v in tensors.items() if k.startswith("field.")}
        _check_state_shapes(shell, state, where)
        nbytes = sum(t.numel() * t.element_size() for t in (*shell.parameters(), *shell.buffers()))
        check_allocation(nbytes, f"{where} ({architecture}, {shell.num_parameters():,} parameters)")
        try:
            if bricks is None:
                field = build_field(architecture, config, value_range)
            else:
                field = type(shell)(shell.config, value_range, present=bricks)
            field.load_state_dict(state, strict=True)
        except (KeyError, ValueError, RuntimeError, TypeError) as exc:
            raise ModelFileError(f"{where} does not describe a valid model ({_first_line(exc)}).") from None
        field.to(device).eval()
        return cls(field, geometry, array_name, training, source, storage=storage, time_steps=time_steps,
                   time_unit=time_unit)

    def describe(self) -> str:
        """A human-readable summary (what ``srn info`` prints)."""
        g = self.geometry
        lo, hi = self.value_range
        lines = [
            f"model         {self.source}",
            f"architecture  {self.field.architecture}",
            f"parameters    {self.num_parameters:,} ({self.num_parameters * 4 / 1e6:.3f} MB as float32; "
            f"{self.parameter_ratio:.1f}x vs the float32 data)",
            f"array         {self.array_name}  range [{lo:.6g}, {hi:.6g}]",
            f"data dims     {g.dims[0]} x {g.dims[1]} x {g.dims[2]} points ({g.num_points:,}"
            + (f" x {len(self.time_steps)} steps" if self.time_steps else "")
            + f"; {format_bytes(self.data_points * 4)} as float32)",
            *([f"file          {self.file_bytes:,} bytes ({self.storage_description}); "
               f"ratio {self.file_ratio:.1f}x vs the float32 data"] if self.file_bytes else []),
            f"origin        {tuple(round(v, 6) for v in g.origin)}",
            f"spacing       {tuple(round(v, 6) for v in g.spacing)}",
            f"bounds        {tuple(round(v, 6) for v in g.bounds)}",
            "config        " + ", ".join(f"{k}={v}" for k, v in self.field.config_dict().items()),
        ]
        if self.is_time_varying:
            unit = f" ({self.time_unit})" if self.time_unit else ""
            lines.insert(4, f"time steps    {len(self.time_steps)}{unit}: " + ", ".join(f"{t:g}" for t in self.time_steps))
            lines.insert(5, f"key frames    {len(self.field.config.key_times)}: "
                            + ", ".join(f"{t:g}" for t in self.field.config.key_times))
        width = max((len(k) for k in self.training), default=0) + 2  # keys such as stopped_because stay apart
        for k, v in self.training.items():
            lines.append(f"training.{k:<{width}}{v}")
        return "\n".join(lines)


def check_value_range(lo: float, hi: float, where: str) -> None:
    """Refuse a value range that would rescale every output to NaN, Inf or upside down."""
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise ModelFileError(f"{where} has value range [{lo:g}, {hi:g}]; a value range is two finite numbers "
                             f"min <= max (the file is damaged).")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _checked_metadata(meta: dict[str, Any], where: str):
    """``(architecture, config, value_range, geometry, array_name, training)`` of valid metadata."""
    def typed(key, kind, default, what):
        value = meta.get(key, default)
        if not isinstance(value, kind):
            raise ModelFileError(f"{where} is damaged: {key} must be {what}, got {value!r}.")
        return value

    architecture = typed("architecture", str, None, "a string")
    config = typed("config", dict, {}, "a JSON object")
    array_name = typed("array_name", str, "values", "a string")
    training = typed("training", dict, {}, "a JSON object")
    value_range = typed("value_range", list, [0.0, 1.0], "[min, max]")
    if len(value_range) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value_range):
        raise ModelFileError(f"{where} is damaged: value_range must be [min, max], got {value_range!r}.")
    check_value_range(float(value_range[0]), float(value_range[1]), where)
    g = meta.get("geometry")
    if not isinstance(g, dict):
        raise ModelFileError(f"{where} has no geometry (the training data's dims, origin and spacing).")
    try:
        geometry = ImageGeometry(g["dims"], g["origin"], g["spacing"])
    except (KeyError, ValueError, TypeError) as exc:
        raise ModelFileError(f"{where} has an invalid geometry ({_first_line(exc)}).") from None
    return architecture, config, tuple(value_range), geometry, array_name, training


def _checked_time(meta: dict[str, Any], where: str, architecture) -> tuple[list[float] | None, str]:
    """``(time_steps, time_unit)`` of valid metadata: increasing finite numbers, present exactly for a
    time-varying model."""
    steps = meta.get("time_steps")
    if architecture != "time_varying":
        if steps is not None:
            raise ModelFileError(f"{where} is damaged: a static {architecture} model declares time steps.")
        return None, ""
    if (not isinstance(steps, list) or not steps
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in steps)
            or any(not (b > a) for a, b in zip(steps, steps[1:]))):
        raise ModelFileError(f"{where} is damaged: time_steps must be increasing numbers, got {steps!r}.")
    unit = meta.get("time_unit", "")
    return [float(v) for v in steps], unit if isinstance(unit, str) else ""


def _check_state_shapes(shell: Field, state: dict[str, torch.Tensor], where: str) -> None:
    """The tensors the config declares (``shell``'s state dict) against those in the file, by name and shape."""
    declared = shell.state_dict()
    missing = sorted(set(declared) - set(state))
    unexpected = sorted(set(state) - set(declared))
    if missing or unexpected:
        parts = ([f"lacks {', '.join('field.' + k for k in missing[:4])}"] if missing else []) + \
                ([f"holds undeclared {', '.join('field.' + k for k in unexpected[:4])}"] if unexpected else [])
        raise ModelFileError(f"{where} does not match its config: it {' and '.join(parts)}.")
    for key, t in declared.items():
        if tuple(state[key].shape) != tuple(t.shape):
            raise ModelFileError(f"{where} declares field.{key} of shape {list(t.shape)} but holds "
                                 f"{list(state[key].shape)} (a damaged file; "
                                 f"the declared tensor alone would need {format_bytes(t.numel() * t.element_size())}).")
