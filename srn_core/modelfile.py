"""Our model file: one safetensors file whose JSON metadata makes it self-describing.

Loading never executes code: safetensors holds raw tensors plus a string->string header, and the header's
``neural_volume`` entry is plain JSON (format version, architecture and every hyper-parameter, array name,
value range, the training data's world geometry, time steps, training provenance). Writes are atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "neural-volume"
FORMAT_VERSION = 1
METADATA_KEY = "neural_volume"


class ModelFileError(ValueError):
    """A model file that is missing, truncated, corrupt or not ours."""


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place.

    A crash, Ctrl-C or error leaves the previous file (or none) and no partial file.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory {str(directory)!r} does not exist.")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors and JSON metadata atomically as safetensors."""
    from safetensors.torch import save_file

    header = {METADATA_KEY: json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata})}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=header))


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata; any problem becomes one :class:`ModelFileError` sentence naming the file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file {str(path)!r} does not exist.")
    if path.is_dir():
        raise ModelFileError(f"model file {str(path)!r} is a folder without a peer checkpoint in it.")
    try:
        with safe_open(str(path), framework="pt", device=device) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"model file {str(path)!r} is truncated or not a safetensors file ({exc}).") from None
    if METADATA_KEY not in header:
        raise ModelFileError(f"model file {str(path)!r} is a safetensors file without neural-volume metadata.")
    try:
        meta = json.loads(header[METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"model file {str(path)!r} has corrupt metadata ({exc}).") from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"model file {str(path)!r} is not a neural-volume model (format {meta.get('format')!r}).")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(
            f"model file {str(path)!r} has format version {meta['format_version']}, newer than this "
            f"neural-volume ({FORMAT_VERSION}); upgrade neural-volume to read it.")
    return tensors, meta
