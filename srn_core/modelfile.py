"""Our model file: one safetensors file whose JSON metadata makes it self-describing.

Loading never executes code: safetensors holds raw tensors plus a string->string header, and the header's
``neural_volume`` entry is plain JSON (format version, architecture and every hyper-parameter, array name,
value range, the training data's world geometry, training provenance). Writes are atomic.
"""

from __future__ import annotations

import json
import os
import tempfile
import secrets
import stat
from pathlib import Path
from typing import Any

import torch

FORMAT_NAME = "neural-volume"
FORMAT_VERSION = 1
METADATA_KEY = "neural_volume"


class ModelFileError(ValueError):
    """A model file that is missing, truncated, corrupt or not ours."""


def check_folder_writable(path: str | os.PathLike) -> None:
    """Refuse, before any long work, an output whose folder cannot take the file :func:`atomic_write` makes.

    Writing is the only reliable test (permissions, read-only mounts, ACLs, root squash): an empty file is
    created and removed where the temporary file will go. Raises the ``OSError`` of that attempt (its
    ``strerror`` says why); the caller names its own parameter in the message.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    os.close(fd)
    os.unlink(probe)


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call ``write(tmp_path)`` on a temporary file next to ``path``, then rename it into place.

    A crash, Ctrl-C or error leaves the previous file (or none) and no partial file. The result has the
    permissions any program's new file gets (``0o666`` less the umask, and the folder's default ACL):
    ``tempfile.mkstemp`` would create it ``0o600`` and a model written for a group, a web server or a
    pvserver running as another user could not be read.
    """
    path = Path(path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise FileNotFoundError(f"output directory {str(directory)!r} does not exist.")
    tmp = _create_temporary(directory, path.name)
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


def _create_temporary(directory: Path, name: str) -> str:
    """A new empty file ``.<name>.<random>.tmp`` in ``directory``, created with mode ``0o666``.

    The kernel applies the umask (and a default ACL) itself when it creates the file, which reading the umask
    cannot do safely: ``os.umask`` can only be read by setting it, and that races with other threads.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, flags, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {name!r} in {str(directory)!r}.")


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"))


def file_mode(path: str | os.PathLike, what: str = "model file") -> int:
    """``os.stat(path).st_mode``; a missing or unreachable ``path`` is one sentence naming ``what`` and the path.

    Only ``stat`` is used: opening a FIFO would block.
    """
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist.") from None
    except PermissionError:
        raise PermissionError(f"{what} {str(path)!r} cannot be read: permission denied.") from None


def check_readable_file(path: str | os.PathLike, what: str = "model file") -> None:
    """Refuse, before opening it, a ``path`` that is missing, not a regular file or not readable.

    Opening a FIFO blocks until a writer appears (forever, and deaf to Ctrl-C while in ``open``), and a
    device yields no file at all, so both are refused from their ``stat`` alone.
    """
    name = str(path)
    mode = file_mode(path, what)
    if stat.S_ISDIR(mode):
        raise ModelFileError(f"{what} {name!r} is a folder, not a file.")
    for is_kind, kind in _FILE_KINDS:
        if is_kind(mode):
            raise ModelFileError(f"{what} {name!r} is {kind}, not a regular file.")
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except PermissionError:
        raise PermissionError(f"{what} {name!r} cannot be read: permission denied.") from None


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> None:
    """Write tensors and JSON metadata atomically as safetensors."""
    from safetensors.torch import save

    header = {METADATA_KEY: json.dumps({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **metadata})}
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    # Serialised here and written by Python: a full disk is then an OSError with its errno (safetensors'
    # save_file reports it as a SafetensorError, which callers cannot tell from a bad tensor).
    data = save(flat, metadata=header)

    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data)

    atomic_write(path, write)


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read tensors and metadata; any problem becomes one :class:`ModelFileError` sentence naming the file.

    The metadata is checked for what every reader relies on (a JSON object of our format, a known version);
    what it describes is checked by whoever builds from it.
    """
    from safetensors import SafetensorError, safe_open

    name = str(path)
    check_readable_file(path)
    try:
        with safe_open(name, framework="pt", device=device) as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"model file {name!r} is truncated or not a safetensors file ({exc}).") from None
    if METADATA_KEY not in header:
        raise ModelFileError(f"model file {name!r} is a safetensors file without neural-volume metadata.")
    return tensors, parse_metadata(header[METADATA_KEY], name)


def parse_metadata(text: str, name: str) -> dict[str, Any]:
    """The JSON object of our metadata entry; a clear :class:`ModelFileError` for anything else."""
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"model file {name!r} has corrupt metadata ({exc}).") from None
    except RecursionError:  # json recurses once per nesting level
        raise ModelFileError(f"model file {name!r} has corrupt metadata (JSON nested too deeply).") from None
    if not isinstance(meta, dict):
        raise ModelFileError(f"model file {name!r} has metadata that is not a JSON object "
                             f"(a JSON {_json_type(meta)}).")
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"model file {name!r} is not a neural-volume model (format {meta.get('format')!r}).")
    version = meta.get("format_version")
    if type(version) is not int or version < 1:  # bool is an int subclass; JSON true is no version
        raise ModelFileError(f"model file {name!r} is damaged: format_version must be a positive integer, "
                             f"got {version!r}.")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"model file {name!r} has format version {version}, newer than this "
            f"neural-volume ({FORMAT_VERSION}); upgrade neural-volume to read it.")
    return meta


def _json_type(value: Any) -> str:
    return {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
