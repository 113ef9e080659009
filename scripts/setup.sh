#!/usr/bin/env bash
# One-time set-up of a fresh Debian 12 machine (idempotent; re-running skips what is done).
#   1. Debian packages: ParaView 5.11 (pvpython, pvbatch, MPI), paraview-dev (CMake build), Xvfb (headless
#      rendering) and mricron-data (the real volumes the demo, tests and benchmarks use).
#   2. .venv   : the project venv (torch==2.13.0 CPU, the PyPI vtk wheel, readers, test and benchmark tools,
#                mpi4py for `mpirun -np N srn train --ensemble ...` on Debian's Open MPI).
#   3. .pvvenv : a venv of Debian's python3 with system site packages, so pvpython/pvbatch can import torch next
#                to Debian's own numpy and VTK (never pip-install numpy, vtk or pyvista into it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
log() { printf '[setup] %s\n' "$*" >&2; }

APT_PACKAGES="paraview python3-paraview paraview-dev xvfb xauth mricron-data cmake g++"
missing=$(for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || echo "$p"; done)
if [ -n "$missing" ]; then
  log "installing Debian packages: $missing"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
fi

# torch is installed first and pinned: a bare `torch` requirement would pull gigabytes of CUDA packages.
PY=${PYTHON:-python3}
if [ ! -f .venv/.neural-volume-ready ]; then
  log "creating .venv (torch==2.13.0 CPU, vtk, readers, test tools)"
  "$PY" -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
  touch .venv/.neural-volume-ready
fi
# The project's own requirements are re-installed whenever pyproject.toml changes (a new dependency reaches
# an existing checkout too, not only a fresh one).
REQS=$(sha256sum pyproject.toml | cut -c1-16)
if [ "$(cat .venv/.neural-volume-reqs 2>/dev/null)" != "$REQS" ]; then
  log "installing neural-volume and its requirements into .venv"
  .venv/bin/pip install -q --disable-pip-version-check -e ".[io,eval,test,bench,compress,fast,mpi]"
  # mayavi only for its bundled disk_out_ref.ex2 (benchmarks/volumes.py); its own requirements are a GUI stack.
  .venv/bin/pip install -q --disable-pip-version-check --no-deps mayavi
  echo "$REQS" > .venv/.neural-volume-reqs
fi

if [ ! -f .pvvenv/.neural-volume-ready ]; then
  log "creating .pvvenv for pvpython/pvbatch (torch==2.13.0 next to Debian's numpy and ParaView)"
  /usr/bin/python3 -m venv --system-site-packages .pvvenv
  .pvvenv/bin/pip install -q --disable-pip-version-check torch==2.13.0 safetensors
  touch .pvvenv/.neural-volume-ready
fi
if [ ! -f .pvvenv/.neural-volume-skimage ]; then
  log "adding scikit-image to .pvvenv (SSIM in Neural Volume Error)"
  # --no-deps: its dependencies would replace Debian's numpy and pillow, which ParaView's own modules import.
  .pvvenv/bin/pip install -q --disable-pip-version-check --no-deps scikit-image==0.26.0 scipy==1.15.3 lazy-loader==0.6
  touch .pvvenv/.neural-volume-skimage
fi
if [ ! -f .pvvenv/.neural-volume-codecs ]; then
  log "adding zstandard and pysz to .pvvenv (the zstd and sz3 codecs of compressed model files)"
  # --no-deps: pysz requires numpy, which would replace Debian's; its wheel works with Debian's numpy 1.24.
  .pvvenv/bin/pip install -q --disable-pip-version-check --no-deps zstandard==0.25.0 pysz==1.1.0
  touch .pvvenv/.neural-volume-codecs
fi
if [ ! -f .pvvenv/.neural-volume-numba ]; then
  log "adding numba to .pvvenv (the fused APMGSRN kernel, srn_core.kernels)"
  # --no-deps: numba requires numpy, which would replace Debian's; numba 0.68 supports Debian's numpy 1.24.
  .pvvenv/bin/pip install -q --disable-pip-version-check --no-deps numba==0.68.0 llvmlite==0.50.0
  touch .pvvenv/.neural-volume-numba
fi
log "ready: .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)')), .pvvenv, ParaView $(pvpython --version 2>/dev/null | awk '{print $NF}')"
