"""Records of the processes a lab starts, as state.json keeps them: a pid and its start
time, so a record never matches a later process that reuses the pid."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path
from typing import Any

ProcRec = dict[str, Any]  # {"pid": int, "start": int | None}


def start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def proc_rec(pid: int) -> ProcRec:
    return {"pid": pid, "start": start_time(pid)}


def alive(rec: ProcRec | None) -> bool:
    return bool(rec) and start_time(rec["pid"]) == rec.get("start")


def kill(rec: ProcRec, sig: int = signal.SIGKILL) -> bool:
    """Signal the recorded process if it is still the one recorded; False if it is gone."""
    if not alive(rec):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec["pid"], sig)
    return True


def host_argv(cmd: str | list[str] | tuple[str, ...]) -> list[str]:
    """A shell command string runs under sh -c; an argv list runs as it is."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    return list(cmd)
