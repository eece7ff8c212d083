"""Where labs live and what they leave: the run directory /run/vswitch/labs/LAB/, its
state.json, and the lock its owner holds.

The owner (`Ownership`) holds an flock on owner.lock for the lab's life and records in
state.json every namespace and process before it creates it, so `sweep()` (`vswitch lab down
NAME`) removes everything even after the owner died."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vswitch.config import default_control_path
from vswitch.lab.errors import LabError
from vswitch.lab.loader import load_lab
from vswitch.lab.procs import ProcRec, alive, kill, proc_rec
from vswitch.netsys.netns import delete_netns, netns_pids

__all__ = [
    "CONTROL",
    "LOCK",
    "STATE",
    "Ownership",
    "find_lab",
    "labs_root",
    "list_labs",
    "owner_alive",
    "read_state",
    "sweep",
]

STATE = "state.json"
LOCK = "owner.lock"
CONTROL = "lab.sock"


def labs_root() -> Path:
    """/run/vswitch/labs for root (next to the default control socket)."""
    return default_control_path().parent / "labs"


def read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return None


def owner_alive(run_dir: Path) -> bool:
    """The owner holds an flock on owner.lock for the lab's life."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


class Ownership:
    """The run directory of a lab this process owns: the lock and the state record."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.record: dict[str, Any] = {}
        self.owned = False  # the run directory is ours (the owner may sweep it)
        self._lock_fd = -1

    def claim(self, record: dict[str, Any], status: str) -> None:
        """Create the run directory (FileExistsError if it is there), take the lock and
        write the record (with a "procs" mapping): from here on, sweep() knows what to
        remove."""
        self.run_dir.mkdir(mode=0o700)
        self.owned = True
        self._lock_fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self.record = record
        self.write(status)

    def add_proc(self, what: str, pid: int, status: str) -> None:
        self.record["procs"][what] = proc_rec(pid)
        self.write(status)

    def drop_proc(self, what: str) -> None:
        self.record["procs"].pop(what, None)

    def write(self, status: str) -> None:
        if not self.run_dir.exists():
            return
        self.record["status"] = status
        tmp = self.run_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(self.record, indent=2))
        tmp.replace(self.run_dir / STATE)

    def release(self) -> None:
        """Drop the lock (after sweep() removed the directory)."""
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1


def list_labs(root: Path | None = None) -> list[str]:
    root = root or labs_root()
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir())
    except FileNotFoundError:
        return []


def find_lab(ref: str | None, root: Path | None = None) -> str:
    """A lab name from NAME, a lab file, or nothing (the only lab there is)."""
    root = root or labs_root()
    labs = list_labs(root)
    if ref is None:
        if len(labs) == 1:
            return labs[0]
        if not labs:
            raise LabError("no lab is up (start one with `vswitch lab up LAB.yaml`)")
        raise LabError(
            f"{len(labs)} labs are up: {', '.join(labs)} (say which, e.g. --lab {labs[0]})"
        )
    if ref in labs:
        return ref
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        name = load_lab(ref).name
        if name in labs:
            return name
        raise LabError(f"lab {name} (from {ref}) is not up")
    raise LabError(f"no lab {ref!r} is up (up: {', '.join(labs) or 'none'})")


def sweep(
    name: str, root: Path | None = None, say: Callable[[str], None] | None = None
) -> list[str]:
    """Remove whatever a lab left: its processes, the processes in its namespaces, its
    namespaces and its run directory.  Returns what it removed, one line each."""
    root = root or labs_root()
    run_dir = root / name
    state = read_state(run_dir) or {}
    done: list[str] = []

    def note(line: str) -> None:
        done.append(line)
        if say:
            say(line)

    procs: dict[str, ProcRec] = state.get("procs", {})
    for what, rec in procs.items():
        if kill(rec, signal.SIGTERM):
            note(f"stopped {what} (pid {rec['pid']})")
    deadline = time.monotonic() + 5
    while any(alive(r) for r in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for what, rec in procs.items():
        if kill(rec):
            note(f"killed {what} (pid {rec['pid']})")
    for ns in state.get("netns", []):
        for pid in netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                note(f"killed pid {pid} in namespace {ns}")
        if delete_netns(ns):
            note(f"removed namespace {ns}")
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        note(f"removed {run_dir}")
    return done
