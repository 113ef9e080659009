"""Scene representation networks behind one interface (:class:`Field`), looked up by architecture name."""

from .base import Field, checked_budget, config_from_dict
from .apmgsrn import APMGSRN, APMGSRNConfig
from .ensemble import EnsembleField
from .fvsrn import FVSRN
from .ngp import NGP
from .siren import SIREN
from .time_varying import TimeVaryingField

# Each architecture lives in its own module; this table is the one place that maps names to them.
FIELDS: dict[str, type[Field]] = {cls.architecture: cls for cls in (APMGSRN, EnsembleField, FVSRN, NGP, SIREN, TimeVaryingField)}


def field_class(architecture: str) -> type[Field]:
    try:
        return FIELDS[architecture.lower()]
    except KeyError:
        raise ValueError(f"unknown model architecture {architecture!r}; choose one of {sorted(FIELDS)}.") from None


def build_field(architecture: str, config: dict | None = None, value_range=(0.0, 1.0)) -> Field:
    cls = field_class(architecture)
    cfg = config_from_dict(cls.Config, config or {})
    return cls(cfg, value_range)


def field_for_budget(architecture: str, num_params: int, data_shape_zyx, value_range=(0.0, 1.0)) -> Field:
    """A field of ``architecture`` whose configuration is derived from a parameter budget and the data's shape."""
    cls = field_class(architecture)
    return cls(cls.config_for_budget(checked_budget(num_params), data_shape_zyx), value_range)


__all__ = ["Field", "FIELDS", "APMGSRN", "APMGSRNConfig", "field_class", "build_field", "field_for_budget", "TimeVaryingField"]
