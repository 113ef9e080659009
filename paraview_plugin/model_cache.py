"""Loaded models, cached by (path, file state, device), so an unchanged pipeline never reloads a model.

A file that is rewritten (new inode, mtime, ctime or size) is loaded afresh; the cache keeps the few most recent models.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from srn_core import loading
from srn_core.devices import resolve_device
from srn_core.model import NeuralVolume

MAX_MODELS = 4
_cache: "OrderedDict[tuple, NeuralVolume]" = OrderedDict()


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
    """The cache key of the model ``file_name`` on ``device`` as it is on disk now."""
    path = model_path(file_name)
    return (str(path.resolve()), file_state(path), str(resolve_device(device)))


def load_cached(file_name: str, device: str = "auto") -> tuple[NeuralVolume, tuple]:
    """The model in ``file_name`` on ``device`` and its cache key; loads only when the file changed."""
    key = model_key(file_name, device)
    model = _cache.get(key)
    if model is None:
        model = loading.load_model(key[0], device=key[2])
        _cache[key] = model
        while len(_cache) > MAX_MODELS:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return model, key


def clear() -> None:
    """Forget every cached model."""
    _cache.clear()


__all__ = ["model_path", "model_key", "load_cached", "clear"]
