"""Reading peers' checkpoints: APMGSRN / AMGSRN model folders (skywolf829/APMGSRN) and their ensembles.

An APMGSRN folder holds ``options.json`` (every hyper-parameter plus ``data_min``, ``data_max`` and
``full_shape``) and ``model.ckpt.tar`` (a plain ``torch.save`` file of ``{'state_dict': ...}``). The state dict
has ``encoder.transformation_matrices`` ``[G, 4, 4]``, ``encoder.feature_grids`` ``[G, F, D, H, W]`` and a
decoder either in PyTorch layout (``decoder.{i}.linear.weight``, ``decoder.{n_layers}.weight``) or, when it was
trained with tiny-cuda-nn, as one flat vector ``decoder.params``. Both map onto our :class:`APMGSRN` exactly.

The checkpoint is read with ``torch.load(weights_only=True)`` only: a file that would need to run code to
load is refused, never unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pickle
import types
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from .fields.apmgsrn import APMGSRN, APMGSRNConfig, peer_grid_initialization
from .fields.ensemble import EnsembleConfig, EnsembleField
from .geometry import ImageGeometry
from .model import NeuralVolume
from .modelfile import ModelFileError

CHECKPOINT_NAME = "model.ckpt.tar"
OPTIONS_NAME = "options.json"
APMGSRN_NAMES = ("APMGSRN", "AMGSRN", "AMRSRN")
"""Model names APMGSRN writes for this architecture ("AMRSRN" is the old default name of the same model)."""
UNSUPPORTED_NAMES = ("fVSRN", "fVSRN_NGP", "NGP", "NGP_TCNN", "APMGSRN_NGP")

# APMGSRN's loader overlays options.json on these defaults (Code/Models/options.py), so we do the same.
_DEFAULTS = {"n_dims": 3, "n_outputs": 1, "n_layers": 2, "nodes_per_layer": 64, "use_bias": False,
             "requires_padded_feats": False, "ensemble": False, "model": "AMRSRN"}
_TCNN_ALIGNMENT = 16  # FullyFusedMLP pads its input and output widths to multiples of 16
_BOOLEAN_OPTIONS = ("use_bias", "requires_padded_feats", "ensemble")
_INTEGER_OPTIONS = ("n_dims", "n_outputs", "n_layers", "nodes_per_layer")  # each at least 1


def load_peer_checkpoint(folder: str | os.PathLike, device: str | torch.device = "cpu") -> NeuralVolume:
    """Load an APMGSRN/AMGSRN checkpoint folder (or an ensemble of them) as a :class:`NeuralVolume`.

    Geometry: APMGSRN stores no world geometry, only ``full_shape`` = the data's array shape in file axis
    order ``[D0, D1, D2]``, with model x along the last (fastest) axis. The result therefore has dims
    ``(nx, ny, nz) = (D2, D1, D0)``, origin 0 and spacing 1 (voxel index units); resampling it on its own
    geometry gives an array shaped like the original file array. The value range is ``(data_min, data_max)``
    from ``options.json``; the array name is the stem of the ``data`` option.

    Decoders trained with tiny-cuda-nn ran in half precision; evaluating their float32 master weights here
    differs from the original by about 1e-3 relative. Any problem with the folder (missing or unsafe file,
    truncated checkpoint, unsupported model) raises one :class:`ModelFileError` naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"peer checkpoint folder {str(folder)!r} does not exist.")
    options = read_options(folder)
    if options["ensemble"]:
        return _load_ensemble(folder, options, device)
    field = _load_apmgsrn_field(folder, options)
    field.to(device).eval()
    return NeuralVolume(field, _geometry(options, folder), _array_name(options), _provenance(options, folder),
                        source=str(folder))


def read_options(folder: Path) -> dict[str, Any]:
    """``options.json`` of a peer folder overlaid on APMGSRN's defaults for the keys we read."""
    path = folder / OPTIONS_NAME
    if not path.is_file():
        others = [n for n in ("model.ckpt", "compressed_model.zip", "thenet.pth") if (folder / n).exists()]
        hint = f" (it holds {others[0]}, a format not supported yet)" if others else ""
        raise ModelFileError(f"folder {str(folder)!r} is not an APMGSRN checkpoint: it has no {OPTIONS_NAME}{hint}.")
    try:
        options = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"options file {str(path)!r} is not readable JSON ({exc}).") from None
    if not isinstance(options, dict):
        raise ModelFileError(f"options file {str(path)!r} must hold a JSON object, got {type(options).__name__}.")
    options = {**_DEFAULTS, **options}
    for key in _BOOLEAN_OPTIONS:
        options[key] = _boolean_option(options[key], key, path)
    for key in _INTEGER_OPTIONS:
        options[key] = _integer_option(options[key], key, path)
    return options


def _boolean_option(value: Any, key: str, path: Path) -> bool:
    """``true``/``false`` as JSON booleans, 0/1, or those words as strings; anything else is refused.

    ``bool("false")`` is true, so reading a hand-edited or converted options file leniently would silently
    load the wrong model.
    """
    if isinstance(value, bool):
        return value
    if type(value) is int and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "0", "1"):
        return value.strip().lower() in ("true", "1")
    raise ModelFileError(f"options file {str(path)!r} has {key}={value!r}; expected true or false.")


def _integer_option(value: Any, key: str, path: Path) -> int:
    """A whole number of at least 1, also as a string ("2") or a float (2.0); anything else is refused."""
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str) and value.strip().lstrip("+").isdigit():
        number = int(value)
    if number is None or number < 1:
        raise ModelFileError(f"options file {str(path)!r} has {key}={value!r}; expected a whole number of at least 1.")
    return number


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a ``torch.save`` checkpoint, read without executing any code from the file.

    ``torch.load(weights_only=True)`` is tried first. It cannot parse pickle protocol 3+ (pytorch/pytorch#118092),
    and APMGSRN saves with ``pickle_protocol=4``, so such files are re-read by :func:`_tensors_only_load`, which
    enforces the same rule (only tensor-rebuilding globals may be imported) with Python's full unpickler.
    """
    if not path.is_file():
        raise ModelFileError(f"checkpoint {str(path)!r} does not exist.")
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the "protocol 4 detected" warning: handled below
                obj = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            if "Unsupported operand" not in str(exc):
                raise _ForbiddenGlobal(_weights_only_reason(str(exc))) from None
            if _is_torchscript(path):  # torch.load would hand those to torch.jit.load, which runs their code
                raise _ForbiddenGlobal("TorchScript code") from None
            obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TENSORS_ONLY_PICKLE)
    except _ForbiddenGlobal as exc:
        raise ModelFileError(f"checkpoint {str(path)!r} was refused: it would import {exc}, and loading it could "
                             f"run code from the file (only tensors are accepted).") from None
    except Exception as exc:  # noqa: BLE001 - any failure to decode untrusted bytes means a bad file
        text = str(exc)
        detail = text.splitlines()[0] if text else type(exc).__name__
        raise ModelFileError(f"checkpoint {str(path)!r} is truncated or not a PyTorch checkpoint ({detail}).") from None
    state = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelFileError(f"checkpoint {str(path)!r} does not hold a state dict of tensors.")
    return state


class _ForbiddenGlobal(pickle.UnpicklingError):
    """A pickle asked to import something other than what rebuilding tensors needs."""


# What a state dict of plain tensors imports (torch resolves ``torch.*Storage`` names itself, before this).
_SAFE_GLOBALS = frozenset({("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"),
                           ("torch._utils", "_rebuild_tensor")})


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Python's unpickler restricted to :data:`_SAFE_GLOBALS`: every callable a pickle can run comes from here."""

    def find_class(self, module, name):
        if (module, name) in _SAFE_GLOBALS:
            return super().find_class(module, name)
        raise _ForbiddenGlobal(f"{module}.{name}")


def _tensors_only_load(file, **kwargs):
    return _TensorsOnlyUnpickler(file, **kwargs).load()


# torch.load takes a pickle *module*; this one only knows the restricted unpickler.
_TENSORS_ONLY_PICKLE = types.ModuleType("srn_core_tensors_only_pickle")
_TENSORS_ONLY_PICKLE.Unpickler = _TensorsOnlyUnpickler
_TENSORS_ONLY_PICKLE.load = _tensors_only_load


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _weights_only_reason(text: str) -> str:
    """The global torch's weights-only unpickler refused, e.g. ``posix.system``."""
    for line in text.splitlines():
        if "GLOBAL " in line:
            return line.split("GLOBAL ", 1)[1].split()[0]
    return "a Python object that is not a tensor"


# ---- a single APMGSRN model ---------------------------------------------------------------------
def _load_apmgsrn_field(folder: Path, options: dict[str, Any]) -> APMGSRN:
    name = str(options.get("model"))
    if name in UNSUPPORTED_NAMES:
        raise ModelFileError(f"folder {str(folder)!r} holds a {name!r} model; loading {name} checkpoints is not "
                             f"supported yet (supported: APMGSRN/AMGSRN).")
    if name not in APMGSRN_NAMES:
        raise ModelFileError(f"folder {str(folder)!r} holds an unknown model {name!r}; supported: APMGSRN/AMGSRN.")
    ckpt = folder / CHECKPOINT_NAME
    if not ckpt.exists():
        if (folder / "model.ckpt").exists() or (folder / "compressed_model.zip").exists():
            raise ModelFileError(f"folder {str(folder)!r} is an AMGSRN++ (skywolf829/AMGSRN) checkpoint, which "
                                 f"srn_core.loading.load_model reads (srn_core.peers_amgsrnpp), not the APMGSRN reader.")
        raise ModelFileError(f"folder {str(folder)!r} has {OPTIONS_NAME} but no {CHECKPOINT_NAME}.")
    state = read_state_dict(ckpt)
    if "encoder._scales" in state:
        raise ModelFileError(f"checkpoint {str(ckpt)!r} is an AMGSRN++ model (scales/rotations encoder); "
                             f"srn_core.loading.load_model reads those (srn_core.peers_amgsrnpp), not the APMGSRN reader.")
    try:
        return _apmgsrn_from_state(options, state)
    except ModelFileError as exc:
        raise ModelFileError(f"APMGSRN folder {str(folder)!r}: {exc}.") from None
    except (KeyError, ValueError, RuntimeError, TypeError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelFileError(f"checkpoint {str(ckpt)!r} does not match its {OPTIONS_NAME} ({msg}).") from None


def _apmgsrn_from_state(options: dict[str, Any], state: dict[str, torch.Tensor]) -> APMGSRN:
    missing = [k for k in ("encoder.transformation_matrices", "encoder.feature_grids") if k not in state]
    if missing:
        raise ModelFileError(f"the state dict lacks {missing}")
    if options["n_dims"] != 3:
        raise ModelFileError(f"n_dims={options['n_dims']} is not supported (only 3-D volumes)")
    if options["n_outputs"] != 1:
        raise ModelFileError(f"n_outputs={options['n_outputs']} is not supported (only scalar fields)")
    transforms = state["encoder.transformation_matrices"].float()
    grids = state["encoder.feature_grids"].float()
    if grids.dim() != 5 or transforms.shape != (grids.shape[0], 4, 4):
        raise ModelFileError(f"feature grids {tuple(grids.shape)} and transforms {tuple(transforms.shape)} "
                             f"are not [G, F, D, H, W] and [G, 4, 4]")
    n_grids, n_features = int(grids.shape[0]), int(grids.shape[1])
    n_in = n_grids * n_features
    n_layers, width = options["n_layers"], options["nodes_per_layer"]

    if "decoder.params" in state:
        weights = tcnn_decoder_weights(state["decoder.params"], n_in, width, n_layers)
        biases = None
    else:
        weights, biases = _torch_decoder_weights(state, n_layers, options["use_bias"])
        padding = _padded(n_in) - n_in if options["requires_padded_feats"] else 0
        if weights[0].shape[1] != n_in + padding:
            raise ModelFileError(f"decoder.0.linear.weight has {weights[0].shape[1]} inputs but "
                                 f"{n_grids} grids x {n_features} features + {padding} padding = {n_in + padding}")
    padding = int(weights[0].shape[1]) - n_in
    width = int(weights[0].shape[0])
    config = APMGSRNConfig(n_grids=n_grids, n_features=n_features, grid_shape=tuple(grids.shape[2:]), width=width,
                           n_hidden_layers=n_layers, input_padding=padding, use_bias=biases is not None,
                           grid_initialization=peer_grid_initialization(options.get("grid_initialization")))
    field = APMGSRN(config, value_range=_value_range(options))
    ours = {"value_range": field.value_range, "transforms": transforms, "feature_grids": grids}
    for linear_name, w, b in zip(_linear_names(field), weights, biases or [None] * len(weights)):
        ours[linear_name] = w
        if b is not None:
            ours[linear_name.removesuffix("weight") + "bias"] = b
    field.load_state_dict(ours, strict=True)
    return field


def _padded(n: int) -> int:
    """tiny-cuda-nn's padded width: the next multiple of 16, and at least 16."""
    return _TCNN_ALIGNMENT * int(math.ceil(max(1, n / _TCNN_ALIGNMENT)))


def tcnn_decoder_weights(params: torch.Tensor, n_in: int, width: int, n_layers: int) -> list[torch.Tensor]:
    """Split a tiny-cuda-nn FullyFusedMLP's flat ``params`` into ``[out, in]`` weight matrices.

    Layout: ``[W, pad16(n_in)]``, ``(n_layers - 1) x [W, W]``, ``[pad16(1), W]``, each row-major, back to back.
    The padded input columns are kept (tiny-cuda-nn feeds those inputs 1.0, so they act as a bias); of the
    padded output rows only row 0 is the model's output.
    """
    flat = params.detach().float().reshape(-1)
    # Counted before the layer list is built: options declaring a billion layers must not build one.
    expected = width * _padded(n_in) + (n_layers - 1) * width * width + _padded(1) * width
    if flat.numel() != expected:
        raise ModelFileError(f"decoder.params has {flat.numel()} values but a FullyFusedMLP with {n_in} inputs, "
                             f"{n_layers} hidden layers of {width} neurons needs {expected}")
    shapes = [(width, _padded(n_in))] + [(width, width)] * (n_layers - 1) + [(_padded(1), width)]
    weights, start = [], 0
    for rows, cols in shapes:
        weights.append(flat[start:start + rows * cols].reshape(rows, cols).clone())
        start += rows * cols
    weights[-1] = weights[-1][:1]
    return weights


def _torch_decoder_weights(state, n_layers: int, use_bias: bool):
    if f"decoder.{n_layers}.weight" not in state:  # checked first: n_layers may be huge
        raise ModelFileError(f"n_layers is {n_layers} but the state dict has no output layer decoder.{n_layers}.weight")
    names = [f"decoder.{i}.linear" for i in range(n_layers)] + [f"decoder.{n_layers}"]
    missing = [n + ".weight" for n in names if n + ".weight" not in state]
    if missing:
        raise ModelFileError(f"the state dict has neither decoder.params nor the decoder weights {missing}")
    weights = [state[n + ".weight"].float() for n in names]
    has_bias = [n + ".bias" in state for n in names]
    if any(has_bias) and not all(has_bias):
        raise ModelFileError("the decoder has biases on some layers only")
    if use_bias and not all(has_bias):
        raise ModelFileError("use_bias is true in the options but the decoder has no biases")
    biases = [state[n + ".bias"].float() for n in names] if all(has_bias) else None
    weights[-1] = weights[-1][:1]
    if biases is not None:
        biases[-1] = biases[-1][:1]
    return weights, biases


def _linear_names(field: APMGSRN) -> list[str]:
    return [f"decoder.{name}.weight" for name, m in field.decoder.named_children() if isinstance(m, torch.nn.Linear)]


# ---- options -> geometry, range, provenance -------------------------------------------------------
def _full_shape(options: dict[str, Any], folder: Path) -> tuple[int, int, int]:
    shape = options.get("full_shape")
    try:
        dims = tuple(int(v) for v in shape)
        if len(dims) != 3 or min(dims) < 1 or any(int(v) != v for v in shape):
            raise ValueError
    except (TypeError, ValueError):
        raise ModelFileError(f"{OPTIONS_NAME} in {str(folder)!r} has full_shape {shape!r}; expected three "
                             f"positive sizes [D0, D1, D2].") from None
    return dims  # type: ignore[return-value]


def _geometry(options: dict[str, Any], folder: Path) -> ImageGeometry:
    d0, d1, d2 = _full_shape(options, folder)
    return ImageGeometry((d2, d1, d0))  # model x runs along the file's last axis


def _value_range(options: dict[str, Any]) -> tuple[float, float]:
    try:
        if any(isinstance(options.get(k), bool) for k in ("data_min", "data_max")):
            raise TypeError  # float(True) would be 1.0
        lo, hi = float(options["data_min"]), float(options["data_max"])
    except KeyError as exc:
        raise ModelFileError(f"the options have no {exc.args[0]} (the value range is stored only there)") from None
    except (TypeError, ValueError):
        raise ModelFileError(f"data_min/data_max must be numbers, got {options.get('data_min')!r}, "
                             f"{options.get('data_max')!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi >= lo):
        raise ModelFileError(f"data_min={lo}, data_max={hi} is not a valid value range")
    return lo, hi


def _array_name(options: dict[str, Any]) -> str:
    data = options.get("data")
    stem = Path(str(data)).stem if isinstance(data, str) and data else ""
    return stem or "values"


def _provenance(options: dict[str, Any], folder: Path) -> dict[str, Any]:
    info: dict[str, Any] = {"peer_format": "APMGSRN", "peer_model": options.get("model"),
                            "peer_folder": str(folder)}
    for ours, theirs in (("steps", "iterations"), ("points_per_step", "points_per_iteration"), ("lr", "lr"),
                         ("data", "data"), ("save_name", "save_name"), ("grid_initialization", "grid_initialization")):
        if theirs in options and isinstance(options[theirs], (int, float, str)):
            info[ours] = options[theirs]
    return info


# ---- ensembles --------------------------------------------------------------------------------------
def _triple(text: Any, what: str, folder: Path) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or min(values) < 0:
        raise ModelFileError(f"{OPTIONS_NAME} in {str(folder)!r} has {what} {text!r}; expected 'a,b,c'.")
    return values


def _load_ensemble(folder: Path, options: dict[str, Any], device) -> NeuralVolume:
    """An APMGSRN ensemble: sub-folders ``"x0,x1,y0,y1,z0,z1"`` (file-axis voxel ranges) hold one model each."""
    full = _full_shape(options, folder)
    if min(full) < 2:
        raise ModelFileError(f"ensemble {str(folder)!r} has full_shape {list(full)}; every axis needs 2+ points.")
    g_file = _triple(options.get("ensemble_grid"), "ensemble_grid", folder)
    if min(g_file) < 1:
        raise ModelFileError(f"ensemble {str(folder)!r} has ensemble_grid {options.get('ensemble_grid')!r}.")
    n_bricks = g_file[0] * g_file[1] * g_file[2]
    bricks: dict[int, tuple[APMGSRN, list[float]]] = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and (p / OPTIONS_NAME).is_file()):
        sub_options = read_options(sub)
        i, j, k = _triple(sub_options.get("grid_index"), "grid_index", sub)
        if i >= g_file[0] or j >= g_file[1] or k >= g_file[2]:
            raise ModelFileError(f"brick {str(sub)!r} has grid_index {i},{j},{k} outside ensemble_grid "
                                 f"{options.get('ensemble_grid')}.")
        extents = sub_options.get("extents") or sub.name
        try:
            e = [int(v) for v in str(extents).split(",")]
            if len(e) != 6:
                raise ValueError
        except ValueError:
            raise ModelFileError(f"brick {str(sub)!r} has extents {extents!r}; expected 'x0,x1,y0,y1,z0,z1'.") from None
        # Voxel range [start, end) of file axis a -> the ensemble's model cube (corner aligned);
        # file axes (0, 1, 2) are model (z, y, x).
        box_file = [(2 * e[2 * a] / (full[a] - 1) - 1, 2 * (e[2 * a + 1] - 1) / (full[a] - 1) - 1) for a in range(3)]
        bounds = [v for a in (2, 1, 0) for v in box_file[a]]
        if any(not (bounds[2 * a + 1] > bounds[2 * a]) for a in range(3)):
            raise ModelFileError(f"brick {str(sub)!r} has extents {extents!r} with fewer than 2 points on an axis.")
        index = k + j * g_file[2] + i * g_file[2] * g_file[1]
        if index in bricks:
            raise ModelFileError(f"ensemble {str(folder)!r} has two bricks with grid_index {i},{j},{k}.")
        bricks[index] = (_load_apmgsrn_field(sub, sub_options), bounds)
    missing = sorted(set(range(n_bricks)) - set(bricks))
    if missing:
        raise ModelFileError(f"ensemble {str(folder)!r} with ensemble_grid {options.get('ensemble_grid')} lacks "
                             f"{len(missing)} of its {n_bricks} brick folders (brick indices {missing[:8]}).")
    fields = [bricks[n][0] for n in range(n_bricks)]
    config = EnsembleConfig(grid=(g_file[2], g_file[1], g_file[0]), brick_architecture=APMGSRN.architecture,
                            brick_configs=[dataclasses.asdict(f.config) for f in fields],
                            brick_bounds=[bricks[n][1] for n in range(n_bricks)])
    field = EnsembleField(config, bricks=fields)
    field.to(device).eval()
    training = _provenance(options, folder)
    training.update(peer_ensemble_grid=options.get("ensemble_grid"),
                    peer_ghost_cells=options.get("ensemble_ghost_cells", 0))
    return NeuralVolume(field, _geometry(options, folder), _array_name(options), training, source=str(folder))
