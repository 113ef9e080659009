"""Making root honour file permissions in a child process (the tests run as root in CI)."""

from __future__ import annotations

import ctypes


def without_root_override() -> None:
    """Drop CAP_DAC_OVERRIDE from the bounding set, so that even root honours a read-only folder after exec.

    Meant as ``subprocess.run(..., preexec_fn=without_root_override)``.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(24, 1, 0, 0, 0) != 0:  # PR_CAPBSET_DROP, CAP_DAC_OVERRIDE
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) failed")
