"""Loaded models, cached by (path, file state, device), so an unchanged pipeline never reloads a model.

A file that is rewritten (new inode, mtime, ctime or size) is loaded afresh; the cache keeps the few most recent models.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from srn_core.model import NeuralVolume, resolve_device
from srn_core.peers import CHECKPOINT_NAME, OPTIONS_NAME

MAX_MODELS = 4
_cache: "OrderedDict[tuple, NeuralVolume]" = OrderedDict()


def model_path(file_name: str) -> Path:
    """The path to load for ``file_name``: our model file, or an APMGSRN folder.

    Picking ``options.json`` or ``model.ckpt.tar`` inside an APMGSRN folder (what a file dialog allows) means
    the folder.
    """
    if not file_name:
        raise ValueError("no model file is set (FileName is empty); choose a neural-volume model file.")
    path = Path(file_name).expanduser()
    if path.is_file() and path.name in (OPTIONS_NAME, CHECKPOINT_NAME) and (path.parent / OPTIONS_NAME).is_file():
        return path.parent
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    return path


def _stat_state(path: Path) -> tuple:
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
        model = NeuralVolume.load(key[0], device=key[2])
        _cache[key] = model
        while len(_cache) > MAX_MODELS:
            _cache.popitem(last=False)
    else:
        _cache.move_to_end(key)
    return model, key


def clear() -> None:
    """Forget every cached model."""
    _cache.clear()


def cached_keys() -> list[tuple]:
    return list(_cache)


__all__ = ["model_path", "model_key", "load_cached", "clear", "cached_keys"]
