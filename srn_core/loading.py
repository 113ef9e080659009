"""Loading any model path: our model file, or a peer's checkpoint folder (APMGSRN models and ensembles, AMGSRN++).

This is the one place that decides what a path holds. :mod:`srn_core.model` builds a model from our file's
tensors and :mod:`srn_core.peers` from a peer's folder; neither imports the other. Whatever was loaded is
checked the same way before anyone evaluates it: a NaN or Inf weight or value range would otherwise turn every
output into NaN without a word.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import torch

from .devices import resolve_device
from .fields.ensemble import EnsembleField, cells_meeting_extent
from .geometry import check_extent
from .model import NeuralVolume, check_value_range
from .modelfile import (METADATA_KEY, ModelFileError, check_readable_file, file_mode, load_tensors,
                        parse_metadata)
from .peers import CHECKPOINT_NAME, OPTIONS_NAME, load_peer_checkpoint
from .peers_amgsrnpp import MODEL_FILES as AMGSRNPP_FILES, is_amgsrnpp_folder, load_amgsrnpp_checkpoint


def model_path(path: str | os.PathLike) -> Path:
    """The path to load for ``path``: our model file, or an APMGSRN or AMGSRN++ folder.

    Picking ``options.json``, ``model.ckpt.tar`` (APMGSRN) or ``model.ckpt`` / ``compressed_model.zip``
    (AMGSRN++) inside such a folder (what a file dialog allows) means the folder. Only ``stat`` is used here:
    opening a FIFO would block.
    """
    path = Path(path).expanduser()
    if (stat.S_ISREG(file_mode(path)) and path.name in (OPTIONS_NAME, CHECKPOINT_NAME, *AMGSRNPP_FILES)
            and (path.parent / OPTIONS_NAME).is_file()):
        return path.parent
    return path


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu", extent=None) -> NeuralVolume:
    """The model at ``path`` (our model file, an APMGSRN or AMGSRN++ folder) on ``device`` (``auto``: CUDA if any).

    ``extent``: a VTK extent ``(x0, x1, y0, y1, z0, z1)`` of the model's training grid (what one piece of a
    parallel pipeline shows). An ensemble in our file then loads only the bricks whose routing cells meet it:
    the others are neither read nor allocated, and a point routed to one of them is a clear error. Any other
    model (and a peer's folder) is one piece and loads whole.

    Never executes code from the file. Any problem is one sentence naming the path: :class:`ModelFileError`
    (a ``ValueError``) for a damaged or foreign file, ``OSError`` for a missing or unreadable one, ``MemoryError``
    for a model that cannot fit.
    """
    path = model_path(path)
    device = resolve_device(device)
    if path.is_dir():
        loader = load_amgsrnpp_checkpoint if is_amgsrnpp_folder(path) else load_peer_checkpoint
        model = loader(path, device=device)
        where = f"peer checkpoint {str(path)!r}"
    elif extent is not None:
        model = _load_for_extent(path, extent, device)
        where = f"model file {str(path)!r}"
    else:
        tensors, meta = load_tensors(path)
        model = NeuralVolume.from_tensors(tensors, meta, str(path), device)
        where = f"model file {str(path)!r}"
    check_finite(model, where)
    model.file_bytes = _bytes_on_disk(path)
    return model


def _load_for_extent(path: Path, extent, device) -> NeuralVolume:
    """Our model file with, for an ensemble, only the bricks meeting ``extent`` read (safetensors reads tensors
    one by one, so the others never leave the disk)."""
    from safetensors import SafetensorError, safe_open

    name = str(path)
    check_readable_file(path)
    try:
        with safe_open(name, framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if METADATA_KEY not in header:
                raise ModelFileError(f"model file {name!r} is a safetensors file without neural-volume metadata.")
            meta = parse_metadata(header[METADATA_KEY], name)
            bricks = _bricks_for_extent(meta, extent, name)
            wanted = None if bricks is None else (
                "field.value_range", *(f"field.bricks.{k}." for k in bricks))
            tensors = {k: f.get_tensor(k) for k in f.keys()
                       if wanted is None or k == wanted[0] or k.startswith(wanted[1:])}
    except (SafetensorError, OSError, RuntimeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"model file {name!r} is truncated or not a safetensors file ({exc}).") from None
    return NeuralVolume.from_tensors(tensors, meta, name, device, bricks=bricks)


def _bricks_for_extent(meta, extent, name: str) -> list[int] | None:
    """The ensemble bricks a model file's metadata places in ``extent``; ``None`` for any other model."""
    if meta.get("architecture") != EnsembleField.architecture:
        return None
    config, g = meta.get("config"), meta.get("geometry")
    try:
        grid = [int(v) for v in config["grid"]]
        dims = [int(v) for v in g["dims"]]
        # The brick count must match the configs listed (which bounds what the routing below enumerates).
        if len(grid) != 3 or len(dims) != 3 or min(grid) < 1 or grid[0] * grid[1] * grid[2] != len(
                config["brick_configs"]):
            raise ValueError
    except (KeyError, TypeError, ValueError):
        raise ModelFileError(f"model file {name!r} is damaged: an ensemble needs its grid, one config per "
                             f"brick and the training grid's dims.") from None
    try:
        extent = check_extent(extent)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extent {extent!r} is not a VTK extent ({exc}).") from None
    return cells_meeting_extent(grid, dims, extent)


def _bytes_on_disk(path: Path) -> int:
    """A file's size, or the total size of the files in a peer's folder (what a user would copy)."""
    if not path.is_dir():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_finite(model: NeuralVolume, where: str) -> None:
    """Refuse a model whose value range or weights hold NaN or Inf, naming the first such tensor."""
    check_value_range(*model.value_range, where)
    for name, t in model.field.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            values = "1 value that is" if bad == 1 else f"{bad:,} values that are"
            raise ModelFileError(f"{where} has {values} not finite (NaN or Inf) in field.{name}; the file is "
                                 f"damaged or its training diverged.")
