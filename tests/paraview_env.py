"""Running Debian's pvpython / pvbatch / mpirun with torch and this repository importable (tests, benchmarks).

ParaView's Python is Debian's interpreter with numpy 1.24; torch comes from the ``.pvvenv`` venv (built from
that interpreter with system site packages), added through ``PYTHONPATH`` together with the repository root
and ``paraview_plugin/pvfix`` (the ``sitecustomize`` shim ParaView 5.11 needs on Python 3.11).
``LD_PRELOAD`` of torch's ``libtorch_cpu.so`` stops ParaView's OpenBLAS from hijacking torch's matrix products
(3-27x slower otherwise), and ``OMP_WAIT_POLICY=PASSIVE`` keeps evaluation fast beside a busy process (20x slower
otherwise). Debian's ParaView renders only through X, so rendering runs under one ``Xvfb`` started with
``-noreset`` (without it, about 1 run in 3 aborts with "bad X server connection").

Usable as a script too: ``python tests/paraview_env.py pvbatch examples/resample_to_vti.py ...`` runs a
command in that environment (with a private Xvfb).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHIM_DIR = REPO / "paraview_plugin" / "pvfix"
XML_DIR = REPO / "xml"
PLUGIN_FILE = REPO / "paraview_plugin" / "plugin" / "NeuralVolume.py"


def pvvenv_site_packages() -> Path | None:
    """``site-packages`` of the ParaView-side venv (``$SRN_PVVENV`` or ``.pvvenv``), if it exists."""
    root = Path(os.environ.get("SRN_PVVENV", REPO / ".pvvenv"))
    found = sorted(glob.glob(str(root / "lib" / "python3*" / "site-packages")))
    return Path(found[-1]) if found else None


def find(program: str) -> str | None:
    """Absolute path of ``program`` (``pvpython``, ``pvbatch``, ``mpirun``, ``Xvfb``) or ``None``."""
    return shutil.which(program)


def missing_reason() -> str | None:
    """Why ParaView tests cannot run here, or ``None`` when they can."""
    if find("pvpython") is None or find("pvbatch") is None:
        return "ParaView (pvpython/pvbatch) is not installed: apt-get install paraview python3-paraview"
    site = pvvenv_site_packages()
    if site is None or not (site / "torch").is_dir():
        return "the ParaView venv with torch is missing: /usr/bin/python3 -m venv --system-site-packages .pvvenv " \
               "&& .pvvenv/bin/pip install torch==2.13.0 safetensors"
    return None


def environment(display: str | None = None, base: dict | None = None) -> dict:
    """The environment for pvpython/pvbatch: repository + shim + ParaView venv on PYTHONPATH, torch preloaded."""
    env = dict(os.environ if base is None else base)
    for var in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONSTARTUP"):
        env.pop(var, None)
    paths = [str(REPO), str(SHIM_DIR)]
    site = pvvenv_site_packages()
    if site is not None:
        paths.append(str(site))
        torch_cpu = site / "torch" / "lib" / "libtorch_cpu.so"
        if torch_cpu.is_file():
            env["LD_PRELOAD"] = str(torch_cpu)
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("PYTHONDONTWRITEBYTECODE", "1")
    # ParaView starts OpenMP before Python runs, so only the launch environment can make its threads wait
    # passively (docs/performance.md: 20x slower under CPU contention otherwise).
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if display is not None:
        env["DISPLAY"] = display
    return env


def mpirun_command(n: int, program: str = "pvbatch", env: dict | None = None) -> list[str]:
    """``mpirun`` forwarding the environment ``env`` to ``n`` ranks of ``program`` (as root it needs two flags)."""
    env = os.environ if env is None else env
    cmd = [find("mpirun") or "mpirun"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    cmd += ["--oversubscribe"]
    for var in ("PYTHONPATH", "LD_PRELOAD", "DISPLAY", "PYTHONDONTWRITEBYTECODE", "PV_PLUGIN_PATH",
                "OMP_WAIT_POLICY"):
        if var in env:
            cmd += ["-x", var]
    return cmd + ["-np", str(n), find(program) or program]


def run(cmd: list[str], env: dict, timeout: float = 120, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``, capturing text output (a hung ParaView is killed after ``timeout`` seconds)."""
    return subprocess.run(cmd, env=env, cwd=str(cwd or REPO), capture_output=True, text=True, timeout=timeout)


class Xvfb:
    """One private X server (``Xvfb :N -noreset``) for headless ParaView rendering; stop() ends it."""

    def __init__(self, screen: str = "1280x1024x24"):
        self.screen = screen
        self.process: subprocess.Popen | None = None
        self.display: str | None = None

    def start(self, timeout: float = 10.0) -> str:
        xvfb = find("Xvfb")
        if xvfb is None:
            raise RuntimeError("Xvfb is not installed: apt-get install xvfb")
        for number in range(91, 191):
            if os.path.exists(f"/tmp/.X11-unix/X{number}") or os.path.exists(f"/tmp/.X{number}-lock"):
                continue
            self.process = subprocess.Popen(
                [xvfb, f":{number}", "-screen", "0", self.screen, "-nolisten", "tcp", "-noreset"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if os.path.exists(f"/tmp/.X11-unix/X{number}"):
                    self.display = f":{number}"
                    return self.display
                if self.process.poll() is not None:
                    break  # lost a race for this number: try the next
                time.sleep(0.05)
            self.stop()
        raise RuntimeError("could not start Xvfb on any display :91-:190.")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process = None


__all__ = ["REPO", "SHIM_DIR", "XML_DIR", "PLUGIN_FILE", "pvvenv_site_packages", "find", "missing_reason",
           "environment", "mpirun_command", "run", "Xvfb"]


def main(argv: list[str]) -> int:
    """``python tests/paraview_env.py CMD ARGS...``: run CMD with the ParaView environment and an Xvfb."""
    if not argv:
        print(__doc__)
        return 2
    reason = missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    x = Xvfb()
    display = x.start()
    try:
        env = environment(display)
        cmd = list(argv)
        if cmd[0] == "mpirun":  # mpirun -np N pvbatch ...: forward the environment
            n = int(cmd[cmd.index("-np") + 1])
            rest = cmd[cmd.index("-np") + 2:]
            cmd = mpirun_command(n, rest[0], env) + rest[1:]
        return subprocess.call(cmd, env=env)
    finally:
        x.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
