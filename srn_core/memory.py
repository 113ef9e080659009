"""Checking a large allocation against the memory this process can use, before making it.

A request that cannot fit (a model file declaring 1000^3 grids, ``--size 20GB``, ``--dims 100000 100000 100000``)
must end in one clear error naming the parameter and the value, not in the kernel's OOM killer taking the process
(and with pvpython, the ParaView GUI) down. The budget is the memory the kernel reports as available
(``MemAvailable``), capped by the address-space limit (``ulimit -v``) and by ``SRN_MEMORY_LIMIT`` (bytes, or with
a unit: ``4GB``, ``512MiB``) when set.
"""

from __future__ import annotations

import os
import re

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12,
          "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}


def parse_bytes(text: str, parameter: str = "size") -> int:
    """``"1MB"`` -> 1000000 (decimal kB/MB/GB/TB, binary KiB/MiB/GiB/TiB); a clear error names ``parameter``."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"{parameter} must look like 500KB, 1MB or 2.5GiB, got {text!r}.")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def format_bytes(n: float) -> str:
    """Bytes as a short decimal figure: ``1.5 GB``, ``320 MB``, ``12 kB``."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def available_bytes() -> int:
    """The memory a new allocation can use now: ``MemAvailable``, capped by ``ulimit -v`` and ``SRN_MEMORY_LIMIT``."""
    budget = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    budget = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if budget is None:
        try:
            budget = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            budget = 1 << 62  # unknown platform: nothing to check against
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_AS)
        if soft not in (resource.RLIM_INFINITY, -1) and soft > 0:
            budget = min(budget, soft)
    except (ImportError, OSError, ValueError):
        pass
    limit = os.environ.get("SRN_MEMORY_LIMIT")
    if limit:
        budget = min(budget, parse_bytes(limit, "SRN_MEMORY_LIMIT"))
    return int(budget)


def check_allocation(nbytes: float, what: str) -> None:
    """Refuse an allocation of ``nbytes`` that cannot fit, with one sentence naming ``what`` asked for it.

    ``what`` names the parameter and its value, e.g. ``"--dims 100000 100000 100000"`` or
    ``"model file 'x.srn' (feature grids of 1000x1000x1000x4)"``.
    """
    budget = available_bytes()
    if nbytes > budget:
        raise MemoryError(f"{what} needs {format_bytes(nbytes)} of memory but only {format_bytes(budget)} "
                          f"is available; ask for less.")
