"""Importing srn_core before torch makes OpenMP's waiting threads sleep (defect 4: CPU contention).

libgomp prints its settings when ``OMP_DISPLAY_ENV=verbose``; ``GOMP_SPINCOUNT`` is 0 once waiting is passive
and 300000 (spin first) by default.
"""

from __future__ import annotations

import os
import subprocess
import sys

import paraview_env

PROBE = "import srn_core, torch; torch.ones(1 << 20).sum()"


def spin_count(code: str, **env) -> str:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("OMP_", "GOMP_"))}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, "OMP_DISPLAY_ENV": "verbose", **env},
                         cwd=str(paraview_env.REPO), capture_output=True, text=True, check=True)
    return [line.split("=")[1].strip() for line in out.stderr.splitlines() if "GOMP_SPINCOUNT" in line][-1]


def test_importing_srn_core_first_makes_waiting_passive():
    assert spin_count(PROBE) == "'0'"


def test_torch_imported_first_keeps_its_default_and_the_user_setting_wins():
    assert spin_count("import torch, srn_core; torch.ones(1 << 20).sum()") == "'300000'"
    assert spin_count(PROBE, OMP_WAIT_POLICY="ACTIVE") != "'0'"
