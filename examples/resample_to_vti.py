"""Resample a neural-volume model to a VTK image file with ParaView, serially or on MPI ranks.

Run it with ParaView's Python (the environment of docs/paraview.md: repository, ``paraview_plugin/pvfix`` and
the torch venv on ``PYTHONPATH``, torch's ``libtorch_cpu.so`` in ``LD_PRELOAD``)::

    pvpython examples/resample_to_vti.py model.srn brain.vti --dims 256 256 256
    mpirun -np 2 pvbatch examples/resample_to_vti.py model.srn brain.pvti --dims 256 256 256
    pvpython examples/resample_to_vti.py model.srn crop.vti --dims 64 64 64 --bounds 10 40 10 40 0 30

Under MPI each rank evaluates only its own piece and the writer stores one piece per rank (``.pvti`` plus a
folder of ``.vti`` pieces), which reads back identical to the serial ``.vti``. The last line printed is a
JSON summary (points, seconds evaluating, points per second, ranks).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PLUGIN = os.path.join(os.path.dirname(HERE), "paraview_plugin", "plugin", "NeuralVolume.py")


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="model file (.srn) or APMGSRN checkpoint folder")
    p.add_argument("output", help="output image: .vti (serial) or .pvti (any number of ranks)")
    p.add_argument("--dims", type=int, nargs=3, default=None, metavar=("NX", "NY", "NZ"),
                   help="points per axis (default: the training data's dimensions)")
    p.add_argument("--bounds", type=float, nargs=6, default=None,
                   metavar=("XMIN", "XMAX", "YMIN", "YMAX", "ZMIN", "ZMAX"),
                   help="world box to sample (default: the model's own bounds)")
    p.add_argument("--device", default="auto", help="torch device: auto, cpu, cuda, cuda:N")
    p.add_argument("--chunk-size", type=int, default=65536, help="points evaluated per batch")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from paraview import servermanager
    from paraview.simple import LoadPlugin, SaveData

    ranks = servermanager.ActiveConnection.GetNumberOfDataPartitions()
    if ranks > 1 and args.output.lower().endswith(".vti"):
        print(f"error: {ranks} ranks write pieces; name the output .pvti, not {args.output!r}.", file=sys.stderr)
        return 2
    namespace = {"__name__": "plugin"}  # LoadPlugin fills a non-empty namespace with the new constructors
    LoadPlugin(PLUGIN, ns=namespace)
    dims = args.dims
    if dims is None:  # the training data's dimensions, read from the model file's metadata
        sys.path.insert(0, os.path.dirname(HERE))
        from srn_core.loading import load_model
        dims = list(load_model(args.model, device="cpu").geometry.dims)
    source = namespace["NeuralVolumeSource"](FileName=args.model, SamplingDimensions=dims, Device=args.device,
                                             ChunkSize=args.chunk_size)
    if args.bounds is not None:
        source.UseModelBounds = 0
        source.SamplingBounds = args.bounds
    start = time.perf_counter()
    source.UpdatePipeline()
    evaluate_s = time.perf_counter() - start
    points = source.GetDataInformation().GetNumberOfPoints()
    if points == 0:
        print("error: the Neural Volume Source produced no data (see the error above).", file=sys.stderr)
        return 1
    start = time.perf_counter()
    SaveData(args.output, proxy=source)
    write_s = time.perf_counter() - start
    import torch  # already loaded by the plugin; reported because MPI ranks may get fewer threads

    summary = {"points": int(points), "ranks": int(ranks), "torch_threads": torch.get_num_threads(),
               "evaluate_s": round(evaluate_s, 4),
               "points_per_s": round(points / evaluate_s, 1), "write_s": round(write_s, 4), "output": args.output}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    # No sys.exit on success: under MPI pvbatch must leave the script normally so every rank finalizes.
    status = main()
    if status:
        sys.exit(status)
