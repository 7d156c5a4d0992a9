"""Child processes (training jobs, data-prep workers) that never outlive the process that started them."""

from __future__ import annotations

import contextlib
import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies, so a killed service leaves no orphan
    working on (or racing a restarted service for) the same data. Elsewhere (no libc.so.6) it does
    nothing: the parent's own shutdown still stops its children."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
