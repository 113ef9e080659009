"""The model-file options ``srn train`` and ``srn compress`` share (``--bits``, ``--decoder-bits``, ``--codec``),
and the one-line description of a model file both print."""

from __future__ import annotations

import argparse

from srn_core.compression import CODECS, MAX_BITS, MIN_BITS, Compression
from srn_core.memory import format_bytes

from .arguments import number

bit_width = number(int, lambda v: MIN_BITS <= v <= MAX_BITS, f"an integer from {MIN_BITS} to {MAX_BITS}")


def add_compression_options(p: argparse.ArgumentParser, float32_option: bool) -> None:
    """``--bits``, ``--decoder-bits``, ``--codec``; with ``float32_option`` also ``--float32`` (``srn train``)."""
    default = Compression()
    g = p.add_argument_group("model file (compression)")
    g.add_argument("--bits", type=bit_width, metavar="B",
                   help=f"bits per feature-grid value, {MIN_BITS}-{MAX_BITS} (default {default.bits}; 8 bits cost "
                        f"about 0.01 dB, 6 bits about 0.2 dB)")
    g.add_argument("--decoder-bits", type=bit_width, metavar="D",
                   help=f"bits per decoder weight, {MIN_BITS}-{MAX_BITS} (default {default.decoder_bits})")
    g.add_argument("--codec", choices=CODECS,
                   help="lossless stage after quantization: lzma (default, smallest), zstd (faster), none; or sz3: "
                        "grids stored by SZ3 within half a --bits step (needs pysz)")
    if float32_option:
        g.add_argument("--float32", action="store_true",
                       help="write float32 parameters, uncompressed (the file format before compression; "
                            "4 bytes per parameter)")


def compression_of(args) -> Compression | None:
    """The :class:`Compression` the options ask for (defaults filled in), or ``None`` for ``--float32``."""
    given = {k: getattr(args, k) for k in ("bits", "decoder_bits", "codec") if getattr(args, k) is not None}
    if getattr(args, "float32", False):
        if given:
            names = ", ".join("--" + k.replace("_", "-") for k in given)
            raise ValueError(f"--float32 writes uncompressed parameters; it cannot be combined with {names}.")
        return None
    compression = Compression(**given)
    _check_codec_available(compression.codec)
    return compression


def _check_codec_available(codec: str) -> None:
    """Refuse a codec whose package is missing now, not after training."""
    package = {"sz3": "pysz", "zstd": "zstandard"}.get(codec)
    if package is None:
        return
    try:
        __import__(package)
    except ImportError:
        raise ImportError(f"--codec {codec} needs the {package} package: pip install {package}.") from None


def describe_file(model) -> str:
    """``"37,912 bytes (grids 8-bit + lzma, decoder 12-bit)"``: a model's file and how it stores its tensors."""
    if not model.file_bytes:
        return "not in a file"
    return f"{model.file_bytes:,} bytes ({model.storage_description})"


def describe_ratio(model) -> str:
    """``"467.9x vs float32 (data 17.7 MB / file 37,912 bytes, ...; 44,000 parameters)"``: the ratio a user compares
    with other compressors, from the file's actual size, and the parameter count beside it."""
    data = format_bytes(model.data_points * 4)  # every time step of a time-varying model
    if not model.file_bytes:
        return (f"{model.parameter_ratio:.1f}x vs float32 (data {data} / float32 parameters, not in a file; "
                f"{model.num_parameters:,} parameters)")
    return (f"{model.file_ratio:.1f}x vs float32 (data {data} / file {model.file_bytes:,} bytes: "
            f"{model.storage_description}; {model.num_parameters:,} parameters)")


def save_measured(model, path, compression, volume, chunk_size: int = 1 << 16):
    """Write ``model`` to ``path`` with ``compression``, its recorded PSNR that of the file's own (quantized)
    model against ``volume`` (:meth:`NeuralVolume.save`); return the model as the file holds it."""
    from srn_core.loading import load_model

    reference = volume if "psnr" in model.training else None
    model.save(path, compression, reference=reference, chunk_size=chunk_size)
    return model if compression is None else load_model(path)
