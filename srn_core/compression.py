"""Compressed model files: feature grids and decoder weights stored as quantized codes, then entropy coded.

Every floating tensor of a field has a *role*:

* ``grid`` (feature grids, hash tables: almost all of a grid model's bytes): uniform quantization per channel
  (one float32 offset and scale per grid channel) to ``bits`` bits, or SZ3 with an absolute error bound;
* ``weights`` (decoder layers): uniform quantization per output row to ``decoder_bits`` bits;
* ``exact`` (value range, APMGSRN's grid transforms: a few hundred values whose error moves whole grids):
  float32, as in an uncompressed file.

Quantized codes are bit-packed and then compressed losslessly: trained grids' codes are far from uniform.
Measured on the 8-bit codes of an INIA19 APMGSRN (42,432 values): LZMA 30,920 bytes (5.8 bits each), Zstandard
level 19 or 22 36,004, bzip2 34,977, delta coding along x first makes both worse (the grids are not smooth); at
6 and 5 bits LZMA stays 8 % ahead of zstd. LZMA (Python's own ``lzma``, so loading needs no extra package) is
the default; ``zstd`` is kept for speed on large models. The file is
still one safetensors file: each encoded tensor is a ``uint8`` payload under its own name, and the metadata's
``storage`` entry says, per tensor, how it is stored (shape, bits, channels, codec, payload bytes). Loading
checks that description before it allocates anything and turns every inconsistency into one
:class:`~srn_core.modelfile.ModelFileError` sentence.

Payload layout of a quantized tensor: ``channels`` float32 offsets, ``channels`` float32 scales, then the codes
of channel 0, 1, ...: one per byte (two bytes, little-endian, above 8 bits) before a lossless stage, or without
one packed little-endian, ``bits`` bits each (value ``i`` occupies stream bits ``i*bits .. i*bits+bits-1``). An SZ3 tensor's payload is its channels' SZ3 streams, one
after another, with their lengths in the metadata.
"""

from __future__ import annotations

import lzma
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .memory import check_allocation
from .modelfile import ModelFileError

CODECS = ("lzma", "zstd", "none", "sz3")
MIN_BITS, MAX_BITS = 4, 16
"""Bit widths a :class:`Compression` may ask for; files may hold 1..16 (what the decoder can unpack)."""
ZSTD_LEVEL = 19
"""Zstandard level: the payloads are small (kilobytes to megabytes), so the slowest levels cost milliseconds."""
LZMA_MAX_DICT = 1 << 26
"""Largest LZMA dictionary written or accepted (64 MiB, preset 9's): the decoder allocates what a file declares."""
PACK_BLOCK = 1 << 20
"""Values packed or unpacked per step: bounds the temporary bit arrays to ``PACK_BLOCK * bits`` bytes."""


@dataclass(frozen=True)
class Compression:
    """How a model file stores its tensors (``None`` anywhere a ``Compression`` is taken: float32)."""

    bits: int = 8
    """Bits per feature-grid (or hash-table) value, 4..16: uniform quantization per grid channel. 8 bits cost
    0.006 dB on INIA19; 6 bits 0.2 dB."""
    decoder_bits: int = 12
    """Bits per decoder weight, 4..16, quantized per output row. On INIA19 (44k parameters, 8-bit grids) a 16-bit
    decoder gave 39.513 dB, 12 bits 39.509 and 8 bits 39.507, against 39.519 in float32; 12 bits is the
    measured-lossless choice that still saves a quarter of the decoder's bytes in kilobyte files."""
    codec: str = "lzma"
    """Stage after quantization: ``lzma`` (lossless, default), ``zstd`` (lossless, faster, 8-14 % larger), both
    kept per tensor only where they make the payload smaller; ``none``; or ``sz3``: the grids are stored by SZ3
    (``pysz``) with an absolute error bound instead of uniform codes (the decoder is still quantized)."""
    error_bound: float | None = None
    """SZ3 only: the absolute error bound as a fraction of each grid channel's value range. ``None``: half a
    quantization step of ``bits`` bits (the same worst-case error as uniform codes), unless a search picks one."""

    def __post_init__(self):
        for name in ("bits", "decoder_bits"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not MIN_BITS <= value <= MAX_BITS:
                raise ValueError(f"{name} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}.")
        if self.codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, got {self.codec!r}.")
        if self.error_bound is not None:
            if self.codec != "sz3":
                raise ValueError(f"error_bound applies to the sz3 codec only, got codec {self.codec!r}.")
            if not (isinstance(self.error_bound, (int, float)) and 0 < self.error_bound < 1):
                raise ValueError(f"error_bound must be a fraction of the value range in (0, 1), got {self.error_bound!r}.")

    @property
    def relative_error_bound(self) -> float:
        """SZ3's bound per channel range: the given one, or half a ``bits``-bit quantization step."""
        return self.error_bound if self.error_bound is not None else 0.5 / (2 ** self.bits - 1)

    def describe(self) -> str:
        grids = (f"SZ3 grids (error bound {self.relative_error_bound:.3g} of each channel's range)"
                 if self.codec == "sz3" else f"{self.bits}-bit grids")
        stage = {"lzma": " + lzma", "zstd": " + zstd", "none": "", "sz3": ""}[self.codec]
        return f"{grids}, {self.decoder_bits}-bit decoder{stage}"


# ---- roles ---------------------------------------------------------------------------------------------
def tensor_roles(field) -> dict[str, str]:
    """``{state-dict name: "grid" | "weights" | "exact"}`` for every tensor of ``field`` (nested fields too).

    Each :class:`~srn_core.fields.base.Field` names its grids (``grid_tensors``) and the tensors that must stay
    float32 (``exact_tensors``); every other floating tensor is a decoder weight.
    """
    from .fields.base import Field

    roles: dict[str, str] = {}
    for prefix, module in field.named_modules():
        if isinstance(module, Field):
            dot = f"{prefix}." if prefix else ""
            for name in module.grid_tensors:
                roles[dot + name] = "grid"
            for name in ("value_range", *module.exact_tensors):
                roles[dot + name] = "exact"
    state = field.state_dict()
    return {name: roles.get(name, "weights" if t.is_floating_point() else "exact") for name, t in state.items()}


def channel_count(shape, role: str) -> int:
    """Channels with their own offset and scale: a grid ``[..., D, H, W]`` has one per leading index (``M*C``: per
    grid and feature; per key frame too in a time-varying model),
    a 1-D grid (a hash table) one; a weight matrix one per output row, a bias one."""
    shape = tuple(shape)
    if role == "grid":  # [M, C, D, H, W], or [K, M, C, D, H, W] for a time-varying model's key frames
        return int(np.prod(shape[:-3])) if len(shape) >= 4 else 1
    return int(shape[0]) if len(shape) >= 2 else 1


# ---- quantization --------------------------------------------------------------------------------------
def quantize(x: torch.Tensor, bits: int, channels: int):
    """Uniform codes of ``x`` viewed as ``(channels, -1)``: ``(codes int64, offset, scale)``, both ``(channels,)``.

    ``x ~ offset + code * scale`` with ``code`` in ``0 .. 2**bits - 1``; the error is at most ``scale / 2``
    (plus float32 rounding). A constant channel has scale 0 and is exact.
    """
    flat = x.detach().to("cpu", torch.float64).reshape(channels, -1)
    lo = flat.min(dim=1).values
    hi = flat.max(dim=1).values
    scale = (hi - lo) / (2 ** bits - 1)
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round((flat - lo[:, None]) / safe[:, None]).clamp_(0, 2 ** bits - 1).to(torch.int64)
    return codes, lo.to(torch.float32), scale.to(torch.float32)


def dequantize(codes: torch.Tensor, offset: torch.Tensor, scale: torch.Tensor, shape) -> torch.Tensor:
    """float32 values ``offset + code * scale`` of ``codes (channels, n)``, reshaped to ``shape``."""
    values = offset[:, None].double() + codes.double() * scale[:, None].double()
    return values.to(torch.float32).reshape(tuple(shape))


def fake_quantize(x: torch.Tensor, bits: int, channel_dims: int = 1) -> torch.Tensor:
    """``x`` rounded to its ``bits``-bit per-channel grid in the forward pass, gradient passed straight through.

    The channels are the first ``channel_dims`` axes (2 for a ``[M, C, D, H, W]`` grid, 1 for a weight matrix,
    0 for one channel), so training sees exactly the values :func:`quantize` will store.
    """
    channels = int(np.prod(x.shape[:channel_dims])) if channel_dims else 1
    flat = x.reshape(channels, -1)
    lo = flat.detach().min(dim=1, keepdim=True).values
    hi = flat.detach().max(dim=1, keepdim=True).values
    scale = ((hi - lo) / (2 ** bits - 1)).clamp_min(torch.finfo(x.dtype).tiny)
    q = torch.round((flat - lo) / scale) * scale + lo
    return (flat + (q - flat).detach()).reshape(x.shape)


def pack_codes(codes: np.ndarray, bits: int) -> bytes:
    """Codes (non-negative, below ``2**bits``) packed little-endian, ``bits`` bits each."""
    codes = np.ascontiguousarray(codes, dtype=np.uint32).ravel()
    if bits == 8:
        return codes.astype(np.uint8).tobytes()
    if bits == 16:
        return codes.astype("<u2").tobytes()
    shifts = np.arange(bits, dtype=np.uint32)
    parts = []
    # Blocks of a multiple of 8 values end on a byte boundary, so the packed blocks simply concatenate.
    for start in range(0, codes.size, PACK_BLOCK):
        block = codes[start:start + PACK_BLOCK]
        bitplanes = ((block[:, None] >> shifts) & 1).astype(np.uint8)
        parts.append(np.packbits(bitplanes.ravel(), bitorder="little").tobytes())
    return b"".join(parts)


def unpack_codes(data: bytes | np.ndarray, bits: int, count: int) -> np.ndarray:
    """The ``count`` codes of :func:`pack_codes`' output, as int64."""
    buf = np.frombuffer(data, dtype=np.uint8)
    if bits == 8:
        return buf[:count].astype(np.int64)
    if bits == 16:
        return buf[:2 * count].view("<u2").astype(np.int64)
    weights = (1 << np.arange(bits, dtype=np.int64))
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, PACK_BLOCK):
        n = min(PACK_BLOCK, count - start)
        first = start * bits // 8  # start is a multiple of 8
        bitplanes = np.unpackbits(buf[first:first + (n * bits + 7) // 8], bitorder="little", count=n * bits)
        out[start:start + n] = bitplanes.reshape(n, bits).astype(np.int64) @ weights
    return out


def packed_size(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def aligned_codes(codes: np.ndarray, bits: int) -> bytes:
    """Codes one per byte (``bits <= 8``) or two bytes little-endian: the input of a lossless stage."""
    return codes.astype(np.uint8 if bits <= 8 else "<u2").tobytes()


def aligned_size(count: int, bits: int) -> int:
    return count * (1 if bits <= 8 else 2)


def unaligned_codes(data: bytes, bits: int, count: int) -> np.ndarray:
    codes = np.frombuffer(data, dtype=np.uint8 if bits <= 8 else "<u2", count=count).astype(np.int64)
    if codes.size and int(codes.max()) >= 1 << bits:
        raise ValueError(f"a code exceeds {bits} bits")
    return codes


# ---- encoding a field ----------------------------------------------------------------------------------
def encode_state(field, compression: Compression) -> tuple[dict[str, torch.Tensor], dict[str, dict]]:
    """``(tensors, storage)`` for a model file: uint8 payloads (or float32 exact tensors) and their description."""
    roles = tensor_roles(field)
    tensors: dict[str, torch.Tensor] = {}
    storage: dict[str, dict] = {}
    for name, t in field.state_dict().items():
        t = t.detach().to("cpu")
        role = roles[name]
        if role == "exact" or not t.is_floating_point() or t.numel() == 0:
            tensors[name] = t.contiguous()
            continue
        entry: dict[str, Any] = {"role": role, "shape": list(t.shape), "channels": channel_count(t.shape, role)}
        if role == "grid" and compression.codec == "sz3":
            payload = _encode_sz3(t, entry, compression.relative_error_bound)
        else:
            bits = compression.bits if role == "grid" else compression.decoder_bits
            codes, offset, scale = quantize(t, bits, entry["channels"])
            head = offset.numpy().tobytes() + scale.numpy().tobytes()
            payload = head + pack_codes(codes.numpy(), bits)
            entry.update(encoding="quantized", bits=bits)
            if compression.codec in ("lzma", "zstd"):
                # The lossless stage gets one code per byte (or two): bit-packed 6-bit codes straddle bytes and
                # hide their statistics from a byte-oriented coder (LZMA: 21.0 kB one per byte vs 26 kB packed).
                aligned = head + aligned_codes(codes.numpy(), bits)
                packed, settings = _LOSSLESS[compression.codec][0](aligned)
                if len(packed) < len(payload):  # small, near-uniform tensors (decoder rows) gain nothing
                    entry.update(raw_bytes=len(aligned), codec=compression.codec, **settings)
                    payload = packed
        entry["bytes"] = len(payload)
        storage[name] = entry
        tensors[name] = torch.frombuffer(bytearray(payload), dtype=torch.uint8) if payload else \
            torch.zeros(0, dtype=torch.uint8)
    return tensors, storage


def _encode_sz3(t: torch.Tensor, entry: dict, relative_bound: float) -> bytes:
    sz, szConfig, szErrorBoundMode = _pysz("write an sz3 model file")
    values = t.numpy().astype(np.float32).reshape(entry["channels"], *_channel_shape(t.shape, entry["channels"]))
    streams, bounds = [], []
    for channel in values:
        channel = np.ascontiguousarray(channel)
        span = float(channel.max() - channel.min())
        bound = max(relative_bound * span, np.finfo(np.float32).tiny)
        cfg = szConfig()
        cfg.errorBoundMode = szErrorBoundMode.ABS
        cfg.absErrorBound = bound
        stream, _ = sz.compress(channel, cfg)
        streams.append(np.asarray(stream, dtype=np.uint8).tobytes())
        bounds.append(bound)
    entry.update(encoding="sz3", stream_bytes=[len(s) for s in streams], error_bounds=bounds)
    return b"".join(streams)


def _channel_shape(shape, channels: int) -> tuple[int, ...]:
    """Shape of one channel: the trailing ``(D, H, W)`` of a grid, else the flattened rest."""
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 4 and channels == int(np.prod(shape[:-3])):
        return shape[-3:]
    return (int(np.prod(shape)) // channels,)


def _pysz(why: str):
    try:
        from pysz import sz, szConfig, szErrorBoundMode
    except ImportError:
        raise ImportError(f"the SZ3 codec needs pysz to {why}: pip install pysz.") from None
    return sz, szConfig, szErrorBoundMode


# ---- decoding ------------------------------------------------------------------------------------------
def decode_state(tensors: dict[str, torch.Tensor], storage: Any, declared: dict[str, tuple], where: str,
                 prefix: str = "field.") -> dict[str, torch.Tensor]:
    """``tensors`` with every payload described by ``storage`` replaced by its float32 values.

    ``declared`` holds the shapes the model's config implies (``prefix`` + state-dict name -> shape): a
    payload's description must match them before anything is decompressed, so no allocation is driven by the
    file's word alone.
    """
    if not isinstance(storage, dict):
        raise ModelFileError(f"{where} is damaged: storage must be a JSON object, got {_short(storage)}.")
    out = dict(tensors)
    for name, entry in storage.items():
        label = f"{where}, tensor {name}"
        if name not in tensors:
            raise ModelFileError(f"{label}: the storage entry has no payload in the file.")
        if not isinstance(entry, dict):
            raise ModelFileError(f"{label}: storage entry must be a JSON object, got {_short(entry)}.")
        shape = _entry_shape(entry, label)
        expected = declared.get(name)
        if expected is not None and tuple(expected) != shape:
            raise ModelFileError(f"{label}: stored with shape {list(shape)}, but the config declares "
                                 f"{list(expected)}.")
        payload = tensors[name]
        if payload.dtype != torch.uint8 or payload.dim() != 1:
            raise ModelFileError(f"{label}: the payload must be a 1-D uint8 tensor, got {payload.dtype} "
                                 f"{list(payload.shape)}.")
        count = int(np.prod(shape))
        check_allocation(count * 8, f"{label} ({count:,} values)")
        out[name] = _decode_entry(payload.numpy().tobytes(), entry, shape, count, label)
    return out


def _decode_entry(data: bytes, entry: dict, shape: tuple, count: int, label: str) -> torch.Tensor:
    declared_bytes = _int_field(entry, "bytes", label, minimum=0)
    if len(data) != declared_bytes:
        raise ModelFileError(f"{label}: the payload holds {len(data):,} bytes but the file declares "
                             f"{declared_bytes:,} (a truncated or damaged file).")
    channels = _int_field(entry, "channels", label, minimum=1)
    if count % channels:
        raise ModelFileError(f"{label}: {channels} channels do not divide its {count:,} values.")
    encoding = entry.get("encoding")
    if encoding == "sz3":
        return _decode_sz3(data, entry, shape, channels, label)
    if encoding != "quantized":
        raise ModelFileError(f"{label}: unknown encoding {_short(encoding)} (expected 'quantized' or 'sz3').")
    bits = entry.get("bits")
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= MAX_BITS:
        raise ModelFileError(f"{label}: bits must be an integer from 1 to {MAX_BITS}, got {_short(bits)}.")
    codec = entry.get("codec", "none")
    lossless = codec in _LOSSLESS
    raw_bytes = 8 * channels + (aligned_size(count, bits) if lossless else packed_size(count, bits))
    if lossless:
        if _int_field(entry, "raw_bytes", label, minimum=0) != raw_bytes:
            raise ModelFileError(f"{label}: raw_bytes {entry['raw_bytes']} does not match {count:,} values of "
                                 f"{bits} bits in {channels} channels ({raw_bytes:,} bytes).")
        data = _LOSSLESS[codec][1](data, raw_bytes, entry, label)
    elif codec != "none":
        raise ModelFileError(f"{label}: unknown codec {_short(codec)} (expected 'lzma', 'zstd' or 'none').")
    if len(data) != raw_bytes:
        raise ModelFileError(f"{label}: the payload decodes to {len(data):,} bytes, but {count:,} values of "
                             f"{bits} bits in {channels} channels need {raw_bytes:,}.")
    offset = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=channels).copy())
    scale = torch.from_numpy(np.frombuffer(data, dtype="<f4", count=channels, offset=4 * channels).copy())
    if not (torch.isfinite(offset).all() and torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise ModelFileError(f"{label}: its quantization offsets and scales must be finite with scales >= 0 "
                             f"(found NaN, Inf or a negative scale).")
    if lossless:
        try:
            codes = unaligned_codes(data[8 * channels:], bits, count)
        except ValueError as exc:
            raise ModelFileError(f"{label}: {exc} (a damaged file).") from None
    else:
        codes = unpack_codes(data[8 * channels:], bits, count)
    codes = torch.from_numpy(codes).reshape(channels, -1)
    return dequantize(codes, offset, scale, shape)


def _decode_sz3(data: bytes, entry: dict, shape: tuple, channels: int, label: str) -> torch.Tensor:
    lengths = entry.get("stream_bytes")
    if (not isinstance(lengths, list) or len(lengths) != channels
            or not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in lengths)):
        raise ModelFileError(f"{label}: stream_bytes must list {channels} positive stream lengths, got "
                             f"{_short(lengths)}.")
    if sum(lengths) != len(data):
        raise ModelFileError(f"{label}: its SZ3 streams declare {sum(lengths):,} bytes but the payload holds "
                             f"{len(data):,}.")
    sz = _pysz(f"read {label}")[0]
    channel_shape = _channel_shape(shape, channels)
    out = np.empty((channels, *channel_shape), dtype=np.float32)
    start = 0
    for c, n in enumerate(lengths):
        stream = np.frombuffer(data, dtype=np.uint8, count=n, offset=start)
        start += n
        try:
            values, _ = sz.decompress(stream, np.float32, channel_shape)
            values = np.asarray(values, dtype=np.float32).reshape(channel_shape)
        except Exception as exc:  # pysz raises bare RuntimeErrors (or worse) for a corrupt stream
            raise ModelFileError(f"{label}: SZ3 stream {c} does not decode ({type(exc).__name__}: {exc}).") from None
        if not np.isfinite(values).all():
            raise ModelFileError(f"{label}: SZ3 stream {c} decodes to values that are not finite (a damaged stream).")
        out[c] = values
    return torch.from_numpy(out).reshape(shape)


# ---- lossless stages: (compress(payload) -> (bytes, settings for the entry), decompress) -----------------
def _lzma_filters(dict_size: int) -> list[dict]:
    return [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": dict_size}]


def _lzma_compress(payload: bytes) -> tuple[bytes, dict]:
    # Raw LZMA2 (no .xz container: 60 bytes less per tensor, which counts in kilobyte files); the dictionary
    # only as large as the payload, so decoding allocates no more than that.
    dict_size = min(LZMA_MAX_DICT, max(4096, 1 << max(0, len(payload) - 1).bit_length()))
    return lzma.compress(payload, format=lzma.FORMAT_RAW, filters=_lzma_filters(dict_size)), {"dict_size": dict_size}


def _lzma_decompress(data: bytes, size: int, entry: dict, label: str) -> bytes:
    dict_size = _int_field(entry, "dict_size", label, minimum=4096)
    if dict_size > LZMA_MAX_DICT:
        raise ModelFileError(f"{label}: dict_size {dict_size:,} is larger than LZMA's {LZMA_MAX_DICT:,}.")
    decoder = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_lzma_filters(dict_size))
    try:
        out = decoder.decompress(data, max_length=size)  # a forged stream cannot make it produce more
    except lzma.LZMAError as exc:
        raise ModelFileError(f"{label}: its lzma stream does not decode ({exc}).") from None
    return out


def _zstd_compress(payload: bytes) -> tuple[bytes, dict]:
    import zstandard

    return zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(payload), {}


def _zstd_decompress(data: bytes, size: int, entry: dict, label: str) -> bytes:
    try:
        import zstandard
    except ImportError:
        raise ImportError(f"{label} is compressed with zstd, which needs zstandard: pip install zstandard.") from None
    try:
        # max_output_size bounds the work a forged frame can ask for; a frame that says more is an error.
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=size)
    except zstandard.ZstdError as exc:
        raise ModelFileError(f"{label}: its zstd stream does not decode ({exc}).") from None


_LOSSLESS = {"lzma": (_lzma_compress, _lzma_decompress), "zstd": (_zstd_compress, _zstd_decompress)}


def _entry_shape(entry: dict, label: str) -> tuple[int, ...]:
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                              for s in shape):
        raise ModelFileError(f"{label}: shape must be a list of sizes, got {_short(shape)}.")
    return tuple(shape)


def _int_field(entry: dict, key: str, label: str, minimum: int) -> int:
    value = entry.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ModelFileError(f"{label}: {key} must be an integer of at least {minimum}, got {_short(value)}.")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def describe_storage(storage: dict | None) -> str:
    """One line for ``srn info``: how the file stores its tensors (``float32`` for an uncompressed file)."""
    if not storage:
        return "float32"
    parts = []
    for role in ("grid", "weights"):
        entries = [e for e in storage.values() if e.get("role") == role]
        if not entries:
            continue
        what = "grids" if role == "grid" else "decoder"
        kinds = sorted({"SZ3" if e.get("encoding") == "sz3" else f"{e.get('bits')}-bit" for e in entries})
        codecs = sorted({e.get("codec", "none") for e in entries if e.get("encoding") == "quantized"} - {"none"})
        parts.append(f"{what} {'/'.join(kinds)}" + (f" + {'/'.join(codecs)}" if codecs else ""))
    return ", ".join(parts) or "float32"


# ---- sizes ---------------------------------------------------------------------------------------------
HEADER_BYTES = 1100
"""Bytes of a model file's header besides its per-tensor entries: our metadata (config, geometry, training
provenance) as measured on APMGSRN files (1,456 bytes with six tensors)."""
HEADER_BYTES_PER_TENSOR = 160
"""safetensors' offsets entry plus our storage entry, per tensor."""
KEY_FRAME_SAVING_SHARE = 0.53
"""The share of :data:`LOSSLESS_SAVING_BITS` a time-varying model's key-frame grids (``[K, M, C, D, H, W]``) get:
LZMA saved 0.9 bits per 8-bit code on them (u-wind and colpex series, ``benchmarks/time_varying.py``), not 1.7,
so budgets that assumed 1.7 gave files 10-15 % over their target."""
LOSSLESS_SAVING_BITS = {"lzma": 1.7, "zstd": 1.0, "none": 0.0, "sz3": 1.0}
"""Bits per grid value (of at most 8 bits) the lossless stage saves, as budgets assume it. Measured on INIA19
APMGSRNs trained for 60 s: LZMA took 8/6/5/4-bit codes of a 44k-parameter model to 5.9/4.1/3.2/2.3 bits, and
8/6-bit codes of 103k/148k-parameter models (200x files) to 5.8/3.7; zstd 8-bit codes to 6.8; 12-bit codes saved
1.2 bits with LZMA (above 8 bits one bit is assumed). Assuming 2.0 made 8-bit 200x files 4 % too large and small,
briefly trained ones (near-uniform codes) 11 %; 1.7 keeps files at or a little under their target, and the
writers say when one misses it by more than 10 % (:func:`warn_if_missed`)."""


def estimated_file_bytes(field, compression: Compression | None) -> int:
    """The size a model file of ``field`` will have (an estimate for compressed files; entropy coding varies)."""
    roles = tensor_roles(field)
    total = HEADER_BYTES
    for name, t in field.state_dict().items():
        total += HEADER_BYTES_PER_TENSOR
        role = roles[name]
        if compression is None or role == "exact" or not t.is_floating_point():
            total += t.numel() * t.element_size()
            continue
        channels = channel_count(t.shape, role)
        bits = compression.bits if role == "grid" else compression.decoder_bits
        if role == "grid":
            saving = LOSSLESS_SAVING_BITS[compression.codec] * (KEY_FRAME_SAVING_SHARE if t.dim() > 5 else 1.0)
            bits = max(1.0, bits - min(1.0 if bits > 8 else 2.0, saving))
        total += 8 * channels + math.ceil(t.numel() * bits / 8)
    return int(total)


def parameters_for_file_size(architecture: str, nbytes: float, data_shape_zyx,
                             compression: Compression | None, key_times=None) -> int:
    """The largest parameter budget whose model file (``architecture`` sized for the data) fits ``nbytes``.

    Budgets map to configurations in steps (grid shapes, widths), so the search is a bisection on the budget
    with each candidate's file size estimated from a shell built on torch's ``meta`` device (no memory).
    With ``key_times`` the model is a time-varying one of ``architecture`` with those key frames
    (:class:`~srn_core.fields.TimeVaryingField`, what :func:`~srn_core.training.fit` builds for a series).
    """
    from .fields import TimeVaryingField, field_for_budget
    from .fields.base import MIN_BUDGET

    def size(budget: int) -> int:
        with torch.device("meta"):
            if key_times is None:
                shell = field_for_budget(architecture, budget, data_shape_zyx)
            else:
                shell = TimeVaryingField(TimeVaryingField.config_for(architecture, budget, data_shape_zyx,
                                                                     list(key_times)))
        return estimated_file_bytes(shell, compression)

    smallest = MIN_BUDGET
    while True:  # some architectures (NGP's hash levels) cannot be built for the smallest budgets
        try:
            smallest_bytes = size(smallest)
            break
        except ValueError:
            if smallest > nbytes * 8:  # a file holds at most 2 parameters per byte (4-bit codes)
                raise
            smallest *= 2
    if smallest_bytes > nbytes:
        raise ValueError(f"a {architecture} model file cannot be as small as {int(nbytes):,} bytes (the smallest "
                         f"is about {smallest_bytes:,} bytes); ask for a lower ratio or a larger size.")
    lo, hi = smallest, smallest
    while size(hi) <= nbytes:  # a file holds at most 2 parameters per byte (4-bit codes), so this ends quickly
        lo, hi = hi, hi * 2
    while hi - lo > max(1, lo // 1000):
        mid = (lo + hi) // 2
        if size(mid) <= nbytes:
            lo = mid
        else:
            hi = mid
    return lo


def warn_if_missed(actual_bytes: int, target_bytes: float, what: str) -> None:
    """Say once when a written file misses its size target by more than 10 %."""
    if abs(actual_bytes / target_bytes - 1) > 0.10:
        warnings.warn(f"{what} is {actual_bytes:,} bytes, {actual_bytes / target_bytes - 1:+.0%} off the "
                      f"{int(target_bytes):,}-byte target (entropy coding depends on the trained values).",
                      stacklevel=2)
