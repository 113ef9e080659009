"""Loading any model path: our model file, or a peer's checkpoint folder (APMGSRN models and ensembles, AMGSRN++).

This is the one place that decides what a path holds. :mod:`srn_core.model` builds a model from our file's
tensors and :mod:`srn_core.peers` from a peer's folder; neither imports the other. Whatever was loaded is
checked the same way before anyone evaluates it: a NaN or Inf weight or value range would otherwise turn every
output into NaN without a word.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import torch

from .devices import resolve_device
from .model import NeuralVolume, check_value_range
from .modelfile import ModelFileError, file_mode, load_tensors
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


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> NeuralVolume:
    """The model at ``path`` (our model file, an APMGSRN or AMGSRN++ folder) on ``device`` (``auto``: CUDA if any).

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
    else:
        tensors, meta = load_tensors(path)
        model = NeuralVolume.from_tensors(tensors, meta, str(path), device)
        where = f"model file {str(path)!r}"
    check_finite(model, where)
    model.file_bytes = _bytes_on_disk(path)
    return model


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
