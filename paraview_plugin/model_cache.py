"""Loaded models, cached by (path, file state, device, bricks), so an unchanged pipeline never reloads a model.

A file that is rewritten (new inode, mtime, ctime or size) is loaded afresh; the cache keeps the few most recent
models. An ensemble can be loaded in part (:func:`load_cached` with an ``extent``: only the bricks that extent
touches, :func:`srn_core.loading.load_model`), so each piece of a parallel pipeline holds only its own bricks; a
part and the whole are cached apart (their keys name the bricks held), and two extents touching the same bricks
share one entry. :func:`load_description` gives what a pipeline's information pass needs (geometry, bounds,
time steps, array name, file size) without loading any brick of an ensemble.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from srn_core import loading
from srn_core.devices import resolve_device
from srn_core.fields.ensemble import EnsembleField, cells_meeting_extent
from srn_core.model import NeuralVolume

MAX_MODELS = 4
_cache: "OrderedDict[tuple, NeuralVolume]" = OrderedDict()
WHOLE = ("whole",)
"""The last part of the key of a model loaded whole (any model that is not a partial ensemble)."""


def model_path(file_name: str) -> Path:
    """The path to load for ``file_name`` (:func:`srn_core.loading.model_path`); an empty name is an error."""
    if not file_name:
        raise ValueError("no model file is set (FileName is empty); choose a neural-volume model file.")
    return loading.model_path(file_name)


def _stat_state(path: Path) -> tuple:
    # Only stat, never open: a FIFO named as the model must reach the loader's clear refusal, not block here.
    # The inode matters as much as the times: our writers replace files atomically (a new inode), and on
    # coarse-timestamp file systems two saves within one tick keep the same mtime and, often, the same size.
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)


def file_state(path: Path) -> tuple:
    """What identifies a version of ``path``: its inode, times and size, and for a folder those of each file."""
    if path.is_dir():
        return tuple(sorted((p.name, *_stat_state(p)) for p in path.iterdir() if p.is_file()))
    return _stat_state(path)


def model_key(file_name: str, device: str = "auto") -> tuple:
    """The cache key of the model ``file_name`` on ``device`` as it is on disk now (loaded whole)."""
    path = model_path(file_name)
    return (str(path.resolve()), file_state(path), str(resolve_device(device)))


def _remember(key: tuple, load) -> NeuralVolume:
    model = _cache.get(key)
    if model is None:
        model = load()
        _cache[key] = model
        while len(_cache) > MAX_MODELS:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return model


def load_cached(file_name: str, device: str = "auto", extent=None) -> tuple[NeuralVolume, tuple]:
    """The model in ``file_name`` on ``device`` and its cache key; loads only when the file changed.

    ``extent``: a VTK extent of the model's training grid; an ensemble then holds only the bricks whose routing
    cells meet it (any other model, or an extent touching every brick, is the whole model, shared with loads
    without an extent).
    """
    base = model_key(file_name, device)
    bricks = None
    if extent is not None:
        shell = load_description(file_name, device)[0]
        if isinstance(shell.field, EnsembleField):
            touched = cells_meeting_extent(shell.field.config.grid, shell.geometry.dims, extent)
            bricks = None if len(touched) == len(shell.field.bricks) else tuple(touched)
    if bricks is None:
        key = base + WHOLE
        return _remember(key, lambda: loading.load_model(base[0], device=base[2])), key
    key = base + ("bricks", bricks)
    return _remember(key, lambda: loading.load_model(base[0], device=base[2], extent=extent)), key


def load_description(file_name: str, device: str = "auto") -> tuple[NeuralVolume, tuple]:
    """A model that describes ``file_name`` (geometry, bounds, time steps, array name, value range, file bytes)
    and its key: the whole model, except for an ensemble in our file, which comes without any brick (a partial
    ensemble of none; evaluating it is an error), so that describing it reads no brick's tensors."""
    base = model_key(file_name, device)
    if base + WHOLE in _cache:  # loaded whole already: it describes itself
        return _remember(base + WHOLE, lambda: None), base + WHOLE
    path = Path(base[0])
    meta = None if path.is_dir() else _metadata(path)
    if meta is None or meta.get("architecture") != EnsembleField.architecture:
        key = base + WHOLE
        return _remember(key, lambda: loading.load_model(base[0], device=base[2])), key
    key = base + ("bricks", ())
    return _remember(key, lambda: _ensemble_shell(path, meta, base[2])), key


def _metadata(path: Path) -> dict | None:
    """Our file's metadata (``None`` when it is not our file: the loader then gives its own clear error)."""
    from safetensors import safe_open

    from srn_core.modelfile import METADATA_KEY, parse_metadata

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
    except Exception:  # noqa: BLE001 - any unreadable file is left to the loader's one clear error
        return None
    if METADATA_KEY not in header:
        return None
    try:
        return parse_metadata(header[METADATA_KEY], str(path))
    except ValueError:
        return None


def _ensemble_shell(path: Path, meta: dict, device) -> NeuralVolume:
    """The ensemble in ``path`` with none of its bricks (only its value range is read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        tensors = {"field.value_range": f.get_tensor("field.value_range")}
    model = NeuralVolume.from_tensors(tensors, meta, str(path), device, bricks=[])
    model.file_bytes = path.stat().st_size
    return model


def clear() -> None:
    """Forget every cached model."""
    _cache.clear()


__all__ = ["model_path", "model_key", "load_cached", "load_description", "clear"]
