#!/usr/bin/env bash
# The main job on the default real volume (INIA19 macaque T1 MRI, 168x206x128 float32, from Debian's
# mricron-data): train an APMGSRN at 100x compression, resample it to a VTI, print PSNR and compression ratio,
# and write two pictures to look at: original / reconstruction / error on the three mid slices, and a volume
# rendering of the network itself.
# Usage: bash scripts/demo.sh [extra `srn train` options, e.g. --time-limit 600]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=/usr/share/mricron/templates/inia19-t1-brain.nii.gz
mkdir -p out
.venv/bin/srn train "$DATA" -o out/inia19.srn --model apmgsrn --ratio 100 --steps 5000 --time-limit 150 "$@"
.venv/bin/srn resample out/inia19.srn -o out/inia19_srn.vti
.venv/bin/srn eval out/inia19.srn "$DATA" --figure out/inia19_compare.png
.venv/bin/srn render out/inia19.srn -o out/inia19_render.png --preset Tissue --zoom 1.3
echo
echo "Results in out/:"
echo "  out/inia19.srn          the model (srn info out/inia19.srn describes it)"
echo "  out/inia19_srn.vti      the model resampled on the data's grid: open it in ParaView (File > Open)"
echo "  out/inia19_compare.png  original, reconstruction and error on the mid slices across z, y and x"
echo "  out/inia19_render.png   a volume rendering of the network itself (srn render), no grid in between"
echo "Or load the plugin in ParaView and apply Neural Volume Source to out/inia19.srn."
