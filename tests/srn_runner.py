"""Running the ``srn`` command as a user runs it, shared by the CLI tests."""

from __future__ import annotations

import subprocess
import sys


def run_srn(*args, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """``srn ARGS`` in a subprocess of this interpreter, its output captured as text (``kwargs``: ``env``,
    ``cwd``, ... of :func:`subprocess.run`)."""
    return subprocess.run([sys.executable, "-m", "srn.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, **kwargs)
