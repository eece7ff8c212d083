"""The C library calls Python has no wrapper for (setns, unshare, mount, prctl).

Resolved once at import: never look a symbol up between fork() and exec()."""

from __future__ import annotations

import ctypes
import os
import signal

libc = ctypes.CDLL(None, use_errno=True)

PR_SET_PDEATHSIG = 1
_prctl = libc.prctl  # looked up now: after fork() only async-signal-safe calls


def check(rc: int, what: str) -> None:
    """Raise OSError (with errno and `what`) for a libc call that returned non-zero."""
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def die_with_parent() -> None:
    """In a child between fork and exec: die with us, never linger as an orphan."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
