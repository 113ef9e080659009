"""``srn compress MODEL -o OUT.srn``: re-encode any model (our float32 or compressed file, an APMGSRN or AMGSRN++
folder) as a compressed model file, and measure on the model's own samples what the re-encoding cost."""

from __future__ import annotations

import argparse
import math

from .arguments import positive_float, positive_int
from .compression_options import add_compression_options, compression_of, describe_file, describe_ratio
from .progress import progress_bar


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``srn compress``."""
    p.add_argument("model", help="model file, APMGSRN checkpoint folder or AMGSRN++ folder")
    p.add_argument("-o", "--output", required=True,
                   help="compressed model file to write (e.g. small.srn; written atomically, never over MODEL)")
    add_compression_options(p, float32_option=False)
    p.add_argument("--max-loss", type=positive_float, metavar="DB",
                   help="pick the fewest grid bits (or, with --codec sz3, the loosest error bound) whose estimated "
                        "PSNR loss against the training data is at most DB (e.g. 0.1; needs the training PSNR "
                        "recorded in the model)")
    p.add_argument("--chunk-size", type=positive_int, default=1 << 16, help="points per evaluation batch")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run(args) -> int:
    from srn_core.compression_search import expected_psnr, model_difference, recorded_psnr
    from srn_core.devices import resolve_device
    from srn_core.loading import load_model, model_path

    from . import io

    source = model_path(args.model)
    out = io.check_model_output(args.output, source, what="the model", consequence="destroy the model it re-encodes")
    compression = compression_of(args)
    device = resolve_device(args.device)
    original = load_model(source, device)
    before = describe_file(original), describe_ratio(original)
    if args.max_loss is not None:
        from srn_core.compression_search import loosest_setting

        if args.bits is not None and compression.codec != "sz3":
            raise ValueError("--max-loss chooses --bits itself; give one or the other.")
        compression, loss = loosest_setting(original, compression, args.max_loss, args.chunk_size)
        print(f"setting        {compression.describe()}: the loosest with an estimated loss of at most "
              f"{args.max_loss:g} dB ({loss:.3f} dB)")

    # Provenance for the new file; its own PSNR against the data is unknown here (no data), so the source
    # model's moves to a key that does not claim to describe this file.
    training = dict(original.training, compressed_from=str(source))
    if "psnr" in training:
        training["source_model_psnr"] = training.pop("psnr")
    original.training, kept = training, original.training
    original.save(out, compression)  # (its field is unchanged; only its file attributes now describe OUT)
    original.training = kept
    compressed = load_model(out, device)  # what a user will load from now on, read back from the file itself

    g = original.geometry
    bar = progress_bar(g.num_points, "point", "measure", quiet=args.quiet)
    sums = model_difference(original, compressed, args.chunk_size, on_chunk=bar.update)
    bar.close()
    print(f"model          {source}: {before[0]}")
    print(f"               ratio {before[1]}")
    print(f"wrote          {out}: {describe_file(compressed)}")
    print(f"               ratio {describe_ratio(compressed)}")
    print(f"PSNR           {_db(sums.psnr)} original -> compressed, over the {g.dims[0]} x {g.dims[1]} x {g.dims[2]} "
          f"training grid ({g.num_points:,} points)")
    lo, hi = original.value_range
    print(f"max abs error  {sums.max_abs:.6g} ({100 * sums.max_abs / max(hi - lo, 1e-30):.3g} % of the value range)")
    trained, now = recorded_psnr(original), expected_psnr(original, sums.mse)
    if now is not None:
        print(f"PSNR vs data   {trained:.3f} dB when trained -> about {now:.3f} dB ({now - trained:+.3f} dB; "
              f"estimated: the two errors taken as independent)")
    return 0


def _db(psnr: float) -> str:
    return "inf dB (identical values)" if math.isinf(psnr) else f"{psnr:.2f} dB"
