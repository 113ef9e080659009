#!/usr/bin/env bash
# The main job on the default real volume (INIA19 macaque T1 MRI, 168x206x128 float32, from Debian's
# mricron-data): train an APMGSRN at 100x compression, resample it to a VTI, print PSNR and compression ratio.
# Usage: bash scripts/demo.sh [extra `srn train` options, e.g. --time-limit 600]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA=/usr/share/mricron/templates/inia19-t1-brain.nii.gz
mkdir -p out
.venv/bin/srn train "$DATA" -o out/inia19.srn --model apmgsrn --ratio 100 --steps 5000 --time-limit 150 "$@"
.venv/bin/srn resample out/inia19.srn -o out/inia19_srn.vti
.venv/bin/srn eval out/inia19.srn "$DATA"
echo "Open out/inia19_srn.vti in ParaView (File > Open), or load the plugin and apply Neural Volume Source to out/inia19.srn."
