"""Child processes, short commands and waiting (Children, run, wait_until),
and CPU time (cpu_seconds, cpu_busy, MachineMeter, CpuMeter)."""

# A harness, not the daemon: small blocking file reads in coroutines are fine
# here (as in tests/).
# ruff: noqa: ASYNC230, ASYNC240

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from .config import CLK_TCK, NICE


class BenchError(RuntimeError):
    pass


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


try:
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    _prctl = None


def _child_setup() -> None:
    """Between fork and exec: die with the bench (PR_SET_PDEATHSIG), never linger."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)


# --------------------------------------------------------------------------- processes


class Children:
    """Every process the bench starts, so that every one is stopped on exit."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.procs: list[tuple[str, asyncio.subprocess.Process]] = []

    async def spawn(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        pipe: bool = False,
        nice: bool = False,
    ) -> asyncio.subprocess.Process:
        """Start argv; its output goes to WORK/name.log (or a pipe with pipe=True).
        In its own session, so a Ctrl-C reaches only the bench, which then stops
        everything in order.  nice: a switch or the generator, run at --nice."""
        if nice and NICE[0]:
            argv = ["nice", "-n", str(NICE[0]), *argv]
        logf = open(self.work / f"{name}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if pipe else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE if pipe else logf,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                preexec_fn=_child_setup,
                start_new_session=True,
            )
        finally:
            logf.close()
        self.procs.append((name, proc))
        if nice and NICE[0]:
            # With autogroup scheduling a new session is a group of its own, and
            # groups share the CPU by the group's niceness, not the task's.
            with contextlib.suppress(OSError):
                Path(f"/proc/{proc.pid}/autogroup").write_text(str(NICE[0]))
        return proc

    async def stop(
        self, proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM, timeout: float = 10
    ) -> None:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(sig)
            try:
                await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await asyncio.wait_for(proc.wait(), 10)
        self.procs = [(n, p) for n, p in self.procs if p is not proc]

    async def stop_all(self) -> None:
        for _, proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                await self.stop(proc, timeout=5)

    def kill_all_now(self) -> None:
        """The last resort (atexit): SIGKILL whatever is left."""
        for _, proc in self.procs:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)

    def tail(self, name: str, n: int = 25) -> str:
        try:
            lines = (self.work / f"{name}.log").read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-n:])


async def run(argv: list[str], timeout: float = 60, env: dict[str, str] | None = None) -> str:
    """A short command; raises BenchError with its output when it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **(env or {})},
        preexec_fn=_child_setup,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise BenchError(f"{' '.join(argv)}: timed out after {timeout}s") from None
    text = out.decode(errors="replace")
    if proc.returncode:
        raise BenchError(f"{' '.join(argv)}: exit {proc.returncode}: {text.strip()}")
    return text


async def wait_until(
    cond: Callable[[], Awaitable[bool] | bool], timeout: float, what: str, step: float = 0.1
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = cond()
        if not isinstance(r, bool):
            r = await r
        if r:
            return
        if loop.time() > deadline:
            raise BenchError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(step)


# --------------------------------------------------------------------------- CPU time


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(utime+stime from /proc/PID/stat, on-CPU time summed over the threads'
    schedstat) in seconds.  The first is what the brief asks for (10 ms ticks);
    the second has nanosecond resolution."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)
    ns = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                    ns += int(f.read().split()[0])
    except OSError:
        pass
    return ticks / CLK_TCK, ns / 1e9


def cpu_busy() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]  # idle, iowait
    return sum(v) - idle, sum(v)


class MachineMeter:
    """How busy both cores were over an interval, in % of one core (0..200 here):
    with the switch's and the generator's share known, the rest is other work
    on this shared machine."""

    def __init__(self) -> None:
        self.b0, self.t0 = cpu_busy()

    def percent(self) -> float:
        b1, t1 = cpu_busy()
        return round(100 * (os.cpu_count() or 1) * (b1 - self.b0) / max(t1 - self.t0, 1), 1)


class CpuMeter:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.t0 = time.monotonic()
        self.c0 = cpu_seconds(pid)

    def percent(self) -> dict[str, float]:
        dt = time.monotonic() - self.t0
        c1 = cpu_seconds(self.pid)
        return {
            "stat": round(100 * (c1[0] - self.c0[0]) / dt, 2),
            "schedstat": round(100 * (c1[1] - self.c0[1]) / dt, 3),
            "seconds": round(dt, 2),
        }


def sh(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
