"""Reading AMGSRN++ checkpoints (skywolf829/AMGSRN, the successor of APMGSRN) as an :class:`APMGSRN` field.

An AMGSRN++ folder holds ``options.json`` and either ``model.ckpt`` (``torch.save({'state_dict': ...})``) or, by
default, ``compressed_model.zip``: one ``<key>.npy`` per state-dict entry except the feature grids, which are
stored as ``feature_grid_<c>.sz``, one SZ3 stream per feature channel ``c`` holding ``feature_grids[:, c]``.
The state dict has no ``encoder.`` prefix:

- ``_scales [G, 3]`` log-scales, ``_rotations [G, 4]`` quaternions ``(x, y, z, w)`` (normalised before use),
  ``translations [G, 3]``, ``feature_grids [G, F, D, H, W]``;
- a decoder as in APMGSRN: ``decoder.{i}.linear.weight`` (``i < n_layers``, ReLU) and ``decoder.{n_layers}.weight``
  (linear), with ``.bias`` entries when trained with ``use_bias``; or tiny-cuda-nn's flat ``decoder.params``.

A grid's local coordinates are ``R(q) diag(exp(s)) x + t``, read trilinearly with corners aligned and zero
outside (AMG_Encoder's CUDA kernel and its PyTorch reference agree with ``grid_sample(align_corners=True,
padding_mode="zeros")``), features concatenated grid-major. That is exactly our :class:`APMGSRN` with the
4x4 transform built once here. The peer's forward never pads the features (``requires_padded_feats`` only widens
the first layer, which then cannot run), so a first layer wider than ``G x F`` is refused; a tiny-cuda-nn decoder
pads inside the library with ones, which our ``input_padding`` reproduces. The output is ``y (max - min) + min``,
or ``y max(|min|, |max|)`` for an ``error_volume`` model, which is folded into the last layer here.

SZ3 layout (AMGSRN/Models/models.py ``save_model``): each channel ``feature_grids[:, c]`` is a C-order
``[G, D, H, W]`` array written raw and compressed by the ``sz3`` CLI with ``-4 W H D G`` (fastest axis first),
so the stream's own header holds dims ``(G, D, H, W)``, slowest first, the same as :mod:`pysz` writes for that
array. Its loader passes ``-4 G D H W`` when decompressing, but SZ3 takes the dims from the stream header and
the loader reshapes the raw output to ``[G, D, H, W]``; only the element count matters, so any stream with
``G D H W`` values is read in memory order, as the peer does.

Folders whose ``model`` is one of the peer's old-layout names (``AMGSRN_old``, ``*_pytorch``) hold APMGSRN's own
state dict and are read by :mod:`srn_core.peers`; a time-varying ``TVAMGSRN`` loads its timestep 0 only.

Nothing here executes code from the folder: ``torch.load(weights_only=True)`` (via
:func:`srn_core.peers.read_state_dict`) and ``np.load(allow_pickle=False)`` after checking each ``.npy`` header.
"""

from __future__ import annotations

import io
import math
import os
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .fields.apmgsrn import APMGSRN, APMGSRNConfig, peer_grid_initialization
from .memory import check_allocation
from .model import NeuralVolume
from .modelfile import ModelFileError
from .peers import (CHECKPOINT_NAME as APMGSRN_CHECKPOINT_NAME, OPTIONS_NAME, _apmgsrn_from_state, _array_name,
                    _boolean_option, _full_shape, _geometry, _integer_option, _provenance, _torch_decoder_weights, _value_range,
                    read_options, read_state_dict, tcnn_decoder_weights)

CHECKPOINT_NAME = "model.ckpt"
ZIP_NAME = "compressed_model.zip"
TIME_VARYING_ZIP_NAME = "compressed_models.zip"
MODEL_FILES = (CHECKPOINT_NAME, ZIP_NAME, TIME_VARYING_ZIP_NAME)
"""The files that make a folder an AMGSRN++ checkpoint (an APMGSRN folder has ``model.ckpt.tar`` instead)."""
MODEL_NAMES = ("AMGSRN", "APMGSRN", "AMGSRN_cuda", "APMGSRN_cuda", "AMRSRN")
"""``model`` values the peer builds its ``AMGSRN`` class for ("AMRSRN" is what a file without the key reads as)."""
OLD_LAYOUT_NAMES = ("AMGSRN_old", "APMGSRN_old", "AMGSRN_pytorch", "APMGSRN_pytorch")
"""``model`` values of the peer's ``AMGSRN_old`` class: APMGSRN's own layout (``encoder.transformation_matrices``,
``encoder.feature_grids``) and forward pass, read by :mod:`srn_core.peers`."""
TIME_VARYING_NAME = "TVAMGSRN"
_ENCODER_KEYS = ("_scales", "_rotations", "translations")


def is_amgsrnpp_folder(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds an AMGSRN++ model file rather than an APMGSRN ``model.ckpt.tar``."""
    folder = Path(folder)
    return (folder.is_dir() and not (folder / APMGSRN_CHECKPOINT_NAME).exists()
            and any((folder / name).is_file() for name in MODEL_FILES))


def load_amgsrnpp_checkpoint(folder: str | os.PathLike, device: str | torch.device = "cpu") -> NeuralVolume:
    """Load an AMGSRN++ folder as a :class:`NeuralVolume` with an :class:`APMGSRN` field.

    Geometry, value range and array name come from ``options.json`` as for APMGSRN folders (dims
    ``(D2, D1, D0)`` from ``full_shape``, origin 0, spacing 1). A time-varying ``TVAMGSRN`` model loads its
    timestep 0 only, with a warning. Any problem with the folder raises one :class:`ModelFileError` naming it;
    SZ3-compressed grids need :mod:`pysz` (an ``ImportError`` saying so when it is missing).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"AMGSRN++ folder {str(folder)!r} does not exist.")
    if not (folder / OPTIONS_NAME).is_file():
        raise ModelFileError(f"AMGSRN++ folder {str(folder)!r} has no {OPTIONS_NAME} (it holds the model's "
                             f"hyper-parameters and value range).")
    options = read_options(folder)
    name = str(options.get("model"))
    if options["ensemble"]:
        raise ModelFileError(f"AMGSRN++ folder {str(folder)!r} is an ensemble; loading AMGSRN++ ensembles is not "
                             f"supported yet.")
    if name not in MODEL_NAMES + OLD_LAYOUT_NAMES + (TIME_VARYING_NAME,):
        raise ModelFileError(f"AMGSRN++ folder {str(folder)!r} holds a {name!r} model; supported: "
                             f"{', '.join(MODEL_NAMES[:2] + OLD_LAYOUT_NAMES[:2])} and {TIME_VARYING_NAME} "
                             f"(its first timestep).")
    path = _model_file(folder, options, name == TIME_VARYING_NAME)
    try:
        if path.name == CHECKPOINT_NAME:
            state = read_state_dict(path)
        else:
            state = _read_zip_state(path, options)
        if name == TIME_VARYING_NAME:
            state = _first_timestep(state, options, path)
        if name in OLD_LAYOUT_NAMES:
            field = _apmgsrn_from_state(options, state)
        else:
            field = _field_from_state(options, state, folder / OPTIONS_NAME)
        geometry = _geometry(options, folder)
    except ModelFileError as exc:
        text = str(exc)
        if str(folder) in text:  # already names the folder (its checkpoint or options file)
            raise ModelFileError(text if text.endswith(".") else text + ".") from None
        raise ModelFileError(f"AMGSRN++ folder {str(folder)!r}: {text.rstrip('.')}.") from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:  # e.g. old-layout weights that do not chain
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"AMGSRN++ folder {str(folder)!r}: {path.name} does not match its {OPTIONS_NAME} "
                             f"({msg}).") from None
    field.to(device).eval()
    training = _provenance(options, folder)
    training.update(peer_format="AMGSRN++", peer_file=path.name)
    # How the grids were compressed matters only for what was read from the zip form.
    keys = ("error_volume",) if path.name == CHECKPOINT_NAME else ("compressor_used", "save_with_compression_level",
                                                                    "error_volume")
    for key in keys:
        if isinstance(options.get(key), (int, float, str)):
            training[f"peer_{key}"] = options[key]
    return NeuralVolume(field, geometry, _array_name(options), training, source=str(folder))


def _model_file(folder: Path, options: dict[str, Any], time_varying: bool) -> Path:
    """The model file to read: the one present, or, when both are, the one ``save_with_compression`` names
    (what the peer's own loader reads)."""
    compressed = folder / (TIME_VARYING_ZIP_NAME if time_varying else ZIP_NAME)
    plain = folder / CHECKPOINT_NAME
    if compressed.is_file() and plain.is_file():
        use_zip = _boolean_option(options.get("save_with_compression", True), "save_with_compression",
                                  folder / OPTIONS_NAME)
        return compressed if use_zip else plain
    if compressed.is_file() or plain.is_file():
        return compressed if compressed.is_file() else plain
    raise ModelFileError(f"AMGSRN++ folder {str(folder)!r} holds a {options.get('model')!r} model but neither "
                         f"{CHECKPOINT_NAME} nor {compressed.name}.")


def _first_timestep(state: dict[str, torch.Tensor], options: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    prefix = "models.0."
    first = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if not first and path.name != CHECKPOINT_NAME:
        first = state  # compressed_models.zip: _read_zip_state already read compressed_model_0.zip
    if not first:
        raise ModelFileError(f"the time-varying checkpoint {path.name} has no {prefix}* entries")
    warnings.warn(f"{path.parent} is a time-varying AMGSRN++ model with {options.get('n_timesteps', '?')} "
                  f"timesteps; only timestep 0 is loaded (time-varying models are not supported yet).",
                  stacklevel=3)
    return first


# ---- state dict -> APMGSRN -------------------------------------------------------------------------
def transforms_from_parameters(log_scales: torch.Tensor, quaternions: torch.Tensor,
                               translations: torch.Tensor) -> torch.Tensor:
    """``[G, 4, 4]`` homogeneous transforms ``[[R(q) diag(exp(s)), t], [0, 1]]`` (computed in float64).

    ``q = (x, y, z, w)`` is normalised first, as the peer's ``rotations`` property does (a zero quaternion
    stays zero there and gives the identity rotation).
    """
    s = log_scales.double().exp()
    q = torch.nn.functional.normalize(quaternions.double(), p=2, dim=-1)
    x, y, z, w = q.unbind(-1)
    rotation = torch.stack([
        torch.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        torch.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        torch.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)
    out = torch.zeros(s.shape[0], 4, 4, dtype=torch.float64)
    out[:, :3, :3] = rotation * s[:, None, :]  # column j scaled by s_j: R @ diag(s)
    out[:, :3, 3] = translations.double()
    out[:, 3, 3] = 1.0
    return out.float()


def _field_from_state(options: dict[str, Any], state: dict[str, torch.Tensor], options_path: Path) -> APMGSRN:
    missing = [k for k in _ENCODER_KEYS + ("feature_grids",) if k not in state]
    if missing:
        raise ModelFileError(f"the state dict lacks {missing}")
    if options["n_dims"] != 3 or options["n_outputs"] != 1:
        raise ModelFileError(f"n_dims={options['n_dims']}, n_outputs={options['n_outputs']} is not supported "
                             f"(only scalar 3-D volumes)")
    grids = state["feature_grids"].float()
    if grids.dim() != 5 or min(grids.shape) < 1:
        raise ModelFileError(f"feature_grids has shape {tuple(grids.shape)}, not [G, F, D, H, W]")
    n_grids, n_features = int(grids.shape[0]), int(grids.shape[1])
    for key, width in zip(_ENCODER_KEYS, (3, 4, 3)):
        if tuple(state[key].shape) != (n_grids, width):
            raise ModelFileError(f"{key} has shape {tuple(state[key].shape)} but {n_grids} grids need "
                                 f"({n_grids}, {width})")
    transforms = transforms_from_parameters(state["_scales"], state["_rotations"], state["translations"])
    n_in, n_layers = n_grids * n_features, options["n_layers"]
    if "decoder.params" in state:
        weights = tcnn_decoder_weights(state["decoder.params"], n_in, options["nodes_per_layer"], n_layers)
        biases = None
    else:
        weights, biases = _torch_decoder_weights(state, n_layers, options["use_bias"])
        if weights[0].shape[1] != n_in:
            raise ModelFileError(f"decoder.0.linear.weight has {weights[0].shape[1]} inputs but {n_grids} grids x "
                                 f"{n_features} features give {n_in} (AMGSRN++ does not pad its features)")
    lo, hi = _value_range(options)
    if _boolean_option(options.get("error_volume", False), "error_volume", options_path):
        weights, biases = _fold_error_volume_scale(weights, biases, lo, hi)
    config = APMGSRNConfig(n_grids=n_grids, n_features=n_features, grid_shape=tuple(grids.shape[2:]),
                           width=int(weights[0].shape[0]), n_hidden_layers=n_layers,
                           input_padding=int(weights[0].shape[1]) - n_in, use_bias=biases is not None,
                           grid_initialization=peer_grid_initialization(options.get("grid_initialization")))
    # The field allocates (and initialises) its own grids before the stored ones are copied in.
    check_allocation(4 * (grids.numel() + sum(w.numel() for w in weights)),
                     f"an AMGSRN++ model with feature grids of {'x'.join(map(str, grids.shape))}")
    field = APMGSRN(config, value_range=(lo, hi))
    ours = {"value_range": field.value_range, "transforms": transforms, "feature_grids": grids}
    linear_names = [f"decoder.{n}.weight" for n, m in field.decoder.named_children() if isinstance(m, torch.nn.Linear)]
    for name, w, b in zip(linear_names, weights, biases or [None] * len(weights)):
        ours[name] = w
        if b is not None:
            ours[name.removesuffix("weight") + "bias"] = b
    try:
        field.load_state_dict(ours, strict=True)
    except RuntimeError as exc:  # layer shapes that do not chain
        raise ModelFileError(f"the decoder weights do not fit together ({str(exc).splitlines()[-1].strip()})") from None
    return field


def _fold_error_volume_scale(weights, biases, lo: float, hi: float):
    """Rewrite the last layer so that ``lo + y' (hi - lo)`` equals the peer's ``y max(|lo|, |hi|)``.

    Our fields scale a ``[0, 1]`` output to ``(min, max)`` and clamp to it; an error volume's values do lie in
    ``(data_min, data_max)``, so keeping that range and folding the different scale into the last (linear) layer
    gives the same values and the right clamp. It needs a bias on the last layer, so every layer gets one (zero
    where the peer had none).
    """
    if not hi > lo:
        raise ModelFileError(f"error_volume is true but data_min = data_max = {lo}; the output scale is undefined")
    magnitude = max(abs(lo), abs(hi))
    if biases is None:
        biases = [torch.zeros(w.shape[0]) for w in weights]
    weights, biases = list(weights), list(biases)
    weights[-1] = weights[-1].double() * (magnitude / (hi - lo))
    biases[-1] = (biases[-1].double() * magnitude - lo) / (hi - lo)
    return [w.float() for w in weights], [b.float() for b in biases]


# ---- compressed_model.zip ----------------------------------------------------------------------------
def _read_zip_state(path: Path, options: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The state dict stored in ``compressed_model.zip`` (or timestep 0 of ``compressed_models.zip``)."""
    try:
        with zipfile.ZipFile(path) as outer:
            if path.name == TIME_VARYING_ZIP_NAME:
                inner = _member_bytes(outer, "compressed_model_0.zip", path.name)
                with zipfile.ZipFile(io.BytesIO(inner)) as zf:
                    return _zip_members_state(zf, options, f"{path.name}/compressed_model_0.zip", path.parent)
            return _zip_members_state(outer, options, path.name, path.parent)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError) as exc:
        raise ModelFileError(f"{path.name} is not a readable zip file ({exc})") from None


def _member_bytes(zf: zipfile.ZipFile, name: str, where) -> bytes:
    try:
        info = zf.getinfo(name)
    except KeyError:
        raise ModelFileError(f"{where} has no {name}") from None
    check_allocation(info.file_size, f"{name} in {where} ({info.file_size:,} bytes unpacked)")
    with zf.open(info) as f:  # reads stop at the declared size, and a bad CRC raises BadZipFile
        return f.read()


def _zip_members_state(zf: zipfile.ZipFile, options: dict[str, Any], where: str,
                       folder: Path) -> dict[str, torch.Tensor]:
    names = [i.filename for i in zf.infolist() if not i.is_dir()]
    check_allocation(sum(i.file_size for i in zf.infolist()), f"{where} ({len(names)} files unpacked)")
    state: dict[str, torch.Tensor] = {}
    for name in names:
        if name.endswith(".npy"):
            state[name[:-4]] = torch.from_numpy(_npy_array(_member_bytes(zf, name, where), f"{where}/{name}"))
    sz_names = [n for n in names if n.endswith(".sz")]
    if sz_names:
        if "feature_grids" in state:
            raise ModelFileError(f"{where} holds both feature_grids.npy and SZ3 grids {sz_names[:2]}")
        state["feature_grids"] = _sz_feature_grids(zf, sz_names, options, where, folder / OPTIONS_NAME)
    if "feature_grids" not in state and "encoder.feature_grids" not in state:  # the latter: AMGSRN_old
        raise ModelFileError(f"{where} holds neither feature_grid_<c>.sz streams nor feature_grids.npy")
    return state


def _npy_array(data: bytes, label: str) -> np.ndarray:
    """A plain float array from ``.npy`` bytes; the header's shape is checked against the bytes before loading."""
    buf = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buf)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(buf)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(buf)
        else:
            raise ValueError(f"format version {version} is not used for plain arrays")
    except ValueError as exc:
        raise ModelFileError(f"{label} is not a NumPy array file ({exc})") from None
    if dtype.kind != "f" or dtype.itemsize not in (2, 4, 8):
        raise ModelFileError(f"{label} holds {dtype} values, not floats")
    count = math.prod(shape)
    if count * dtype.itemsize != len(data) - buf.tell():
        raise ModelFileError(f"{label} declares shape {tuple(shape)} ({count * dtype.itemsize:,} bytes) but holds "
                             f"{len(data) - buf.tell():,} bytes")
    array = np.load(io.BytesIO(data), allow_pickle=False)
    return np.ascontiguousarray(array, dtype=np.float32)


def _grid_dims(options: dict[str, Any], where: str, options_path: Path) -> tuple[int, int, int, int, int]:
    """``(G, F, D, H, W)`` from ``n_grids``, ``n_features`` and ``feature_grid_shape`` ("D,H,W")."""
    g = _integer_option(options.get("n_grids"), "n_grids", options_path)
    f = _integer_option(options.get("n_features"), "n_features", options_path)
    shape = options.get("feature_grid_shape")
    parts = shape.split(",") if isinstance(shape, str) else shape
    try:
        dhw = tuple(_integer_option(p, "feature_grid_shape", options_path) for p in parts)
    except (TypeError, ModelFileError):
        dhw = ()
    if len(dhw) != 3:
        raise ModelFileError(f"options file {str(options_path)!r} has feature_grid_shape {shape!r}; expected "
                             f"'D,H,W' with three positive sizes (needed to decode the SZ3 grids in {where})")
    if options.get("match_aspect_ratio") is True:
        # The peer writes the final shape back with this flag off; a file that still has it on holds the
        # requested shape, which the peer's constructor turns into the data's proportions the same way.
        full = _full_shape(options, options_path.parent)
        ratio = (math.prod(dhw) / math.prod(full)) ** (1 / 3)
        dhw = tuple(int(math.ceil(n * ratio)) for n in full)
    return (g, f) + dhw  # type: ignore[return-value]


def _sz_feature_grids(zf: zipfile.ZipFile, sz_names: list[str], options: dict[str, Any], where: str,
                      options_path: Path) -> torch.Tensor:
    g, f, d, h, w = _grid_dims(options, where, options_path)
    channels: dict[int, str] = {}
    for name in sz_names:
        stem = name[:-3]
        index = stem[len("feature_grid_"):]
        if not stem.startswith("feature_grid_") or not index.isdigit() or int(index) >= f:
            raise ModelFileError(f"{where} holds {name}; expected feature_grid_0.sz .. feature_grid_{f - 1}.sz "
                                 f"(n_features = {f})")
        channels[int(index)] = name
    if len(channels) != f:
        absent = [f"feature_grid_{c}.sz" for c in range(f) if c not in channels]
        raise ModelFileError(f"{where} lacks {absent} (n_features = {f})")
    check_allocation(4 * g * f * d * h * w * 2, f"the feature grids of {where} ({g}x{f}x{d}x{h}x{w})")
    try:
        from pysz import sz
    except ImportError:
        raise ImportError(f"{where} stores its feature grids with SZ3; reading them needs pysz: "
                          f"pip install pysz.") from None
    grids = np.empty((g, f, d, h, w), dtype=np.float32)
    for c, name in sorted(channels.items()):
        stream = np.frombuffer(_member_bytes(zf, name, where), dtype=np.uint8)
        try:
            values, _ = sz.decompress(stream, np.float32, (g, d, h, w))
            values = np.asarray(values, dtype=np.float32).reshape(g, d, h, w)
        except Exception as exc:  # noqa: BLE001 - pysz raises bare errors for corrupt or mismatched streams
            raise ModelFileError(f"{where}/{name} is not an SZ3 stream of {g}x{d}x{h}x{w} float32 values "
                                 f"({type(exc).__name__}: {exc})") from None
        if not np.isfinite(values).all():
            raise ModelFileError(f"{where}/{name} decodes to values that are not finite (a damaged stream)")
        grids[:, c] = values
    return torch.from_numpy(grids)
