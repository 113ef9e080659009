#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite: core, CLI, VTK-wheel tests, and the ParaView tests that
# launch real pvpython / pvbatch / mpirun -np 2 headless under Xvfb.
# Usage: bash scripts/test.sh [pytest options, e.g. -m "not slow" or -k paraview]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@"
