"""The PVP benchmark of issue 5: vswitch against DPDK testpmd and OVS-DPDK.

Run through scripts/bench (as root), which installs what is missing first.

The loop (PVP, "physical-virtual-physical" with virtio-user standing in for
the NICs): DPDK testpmd, the generator, has two virtio-user ports attached to
the switch under test and forwards in `mac` mode with each port addressed to
the other, so frames go round virtio0 -> switch -> virtio1 -> testpmd ->
virtio0 ...; `start tx_first 32` puts 32 bursts per port into the loop, and
the aggregate RX rate at testpmd is the switch's forwarding rate.  Each
switch gets one core (core 1), the generator's forwarding lcore the other
(core 0); its main lcore sleeps on core 1.

Systems: vswitch (`vswitch run`, `datapath: thread`), testpmd as the switch
(two net_vhost ports, io forwarding: DPDK's vhost library and no switching),
OVS-DPDK (bridge datapath_type=netdev, two dpdkvhostuser ports, NORMAL), and
two vswitch scale points (100k learned MACs; 64 ports of which 62 idle).
Rounds are interleaved (round 1: every system, round 2: every system, ...;
the order rotates each round) because this machine's speed swings about 2x
over minutes: compare ratios within a run, not numbers across runs.

Everything it starts (processes, OVS run dir and database, sockets, hugepage
files, a hugetlbfs mount, extra hugepages) is undone on exit, Ctrl-C included.
"""

# A harness, not the daemon: small blocking file reads in coroutines are fine
# here (as in tests/), and the report's en dashes and multiplication signs are meant.
# ruff: noqa: ASYNC230, ASYNC240, RUF001

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # vswitch; the test-side front end, testpmd

from testpmd import PROMPT, TestpmdConsole  # noqa: E402

GEN_CORE = 0  # the generator's forwarding lcore
SUT_CORE = 1  # the switch under test (whole process), and the generator's main lcore
MAC = ("02:00:00:00:00:01", "02:00:00:00:00:02")
QUEUE_SIZE = 1024
TX_FIRST = 32
SYSTEMS = ("vswitch", "testpmd", "ovs", "vswitch-100kmac", "vswitch-64port")
SCALE = ("vswitch-100kmac", "vswitch-64port")
LABEL = {
    "vswitch": "vswitch",
    "testpmd": "testpmd io-fwd",
    "ovs": "OVS-DPDK",
    "vswitch-100kmac": "vswitch, 100k learned MACs",
    "vswitch-64port": "vswitch, 64 ports (62 idle)",
}
LEARN_MACS = 100_000
IDLE_PORTS = 62
OVS_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NICE = [0]  # --nice: the switches' and the generator's niceness


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


# --------------------------------------------------------------------------- testpmd

class TestPmd(TestpmdConsole):
    """dpdk-testpmd as one of the bench's children: stdout line-buffered
    (stdbuf -oL), stdin kept open for commands (tests/testpmd.py), in its own
    session, at --nice, optionally pinned."""

    error = BenchError

    def __init__(self, kids: Children, name: str, eal: list[str], app: list[str],
                 cpus: str | None = None) -> None:  # fmt: skip
        super().__init__(name, kids.work / f"{name}.log")
        self.kids = kids
        self.argv = ["stdbuf", "-oL"]
        if cpus is not None:
            self.argv += ["taskset", "-c", cpus]
        self.argv += ["dpdk-testpmd", *eal, "--", "-i", *app]

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def start(self, timeout: float = 60) -> None:
        self.log.write_text(" ".join(self.argv) + "\n")
        self.attach(await self.kids.spawn(self.name, self.argv, pipe=True, nice=True))
        await self.wait_for(PROMPT, timeout)

    async def stats(self) -> tuple[float, dict[int, dict[str, int]]]:
        stats = await self.port_stats()
        return time.monotonic(), stats

    async def stop(self) -> None:
        if self.proc is None:
            return
        await self.quit(20)
        await self.kids.stop(self.proc, signal.SIGKILL, 10)
        await self.reader_done()


def eal_common(prefix: str, mem_mb: int = 512) -> list[str]:
    # design.md: virtio-user needs --in-memory --single-file-segments here, or
    # it fails with "Too many memory regions".
    return ["--in-memory", "--single-file-segments", "-m", str(mem_mb), "--no-pci",
            f"--file-prefix={prefix}"]  # fmt: skip


class Generator(TestPmd):
    """The traffic source and sink: two virtio-user ports, mac forwarding with
    each port addressed to the other."""

    def __init__(self, kids: Children, socks: list[str], size: int, prefix: str) -> None:
        eal = ["-l", f"{GEN_CORE},{SUT_CORE}", "--main-lcore", str(SUT_CORE), *eal_common(prefix)]
        for i, s in enumerate(socks):
            eal += ["--vdev", f"net_virtio_user{i},path={s},queue_size={QUEUE_SIZE},mac={MAC[i]}"]
        app = [
            "--forward-mode=mac",
            f"--eth-peer=0,{MAC[1]}",
            f"--eth-peer=1,{MAC[0]}",
            "--nb-cores=1",
            f"--rxd={QUEUE_SIZE}",
            f"--txd={QUEUE_SIZE}",
            # Frame size without the 4-byte FCS, which virtio does not carry.
            f"--txpkts={size - 4}",
        ]
        super().__init__(kids, "generator", eal, app)
        self.size = size

    async def kickoff(self, attempts: int = 4) -> int:
        """`start tx_first 32` until frames go round (it sometimes moves nothing)."""
        for attempt in range(1, attempts + 1):
            await self.cmd(f"start tx_first {TX_FIRST}")
            _, s0 = await self.stats()
            await asyncio.sleep(1.0)
            _, s1 = await self.stats()
            moved = sum(s1[p]["rx_packets"] - s0[p]["rx_packets"] for p in s1 if p in s0)
            if moved > 10_000:
                return attempt
            log(f"  tx_first moved {moved} frames in 1 s; stop and send it again")
            await self.cmd("stop")
            await asyncio.sleep(0.5)
        raise BenchError(f"no frames go round after {attempts} x start tx_first:\n{self.tail()}")


# --------------------------------------------------------------------------- systems


class System:
    """A switch under test: start() it, then socks are the two ports the
    generator attaches to, pid is the process whose CPU time is counted."""

    name = ""
    socks: list[str]
    pid: int

    def __init__(self, bench: Bench) -> None:
        self.bench = bench
        self.kids = bench.kids
        self.dir = bench.work / self.name
        self.info: dict[str, Any] = {}
        self.frontends: list[IdleFrontend] = []

    async def start(self) -> None:
        raise NotImplementedError

    def mark(self) -> None:
        """Called just before a generator attaches."""

    async def wait_ready(self, gen: Generator) -> None:
        """Both ports are up with the generator attached."""
        await asyncio.sleep(1.0)

    async def snapshot(self) -> dict[str, Any]:
        """The switch's own counters, where it has any worth keeping."""
        return {}

    async def stop(self) -> None:
        raise NotImplementedError


class Vswitch(System):
    name = "vswitch"
    port_names = ("a", "b")
    extra: ClassVar[dict[str, Any]] = {}

    async def start(self) -> None:
        import yaml

        self.dir.mkdir(exist_ok=True)
        self.control = self.dir / "ctl.sock"
        self.socks = [str(self.dir / f"{n}.sock") for n in self.port_names[:2]]
        ports = [
            {"name": n, "type": "vhost-user", "path": str(self.dir / f"{n}.sock"),
             **self.port_options(n)}
            for n in self.port_names
        ]  # fmt: skip
        switch = {"datapath": "thread", **self.extra}
        cfg = {"control": str(self.control), "switch": switch, "ports": ports}
        (self.dir / "vswitch.yaml").write_text(yaml.safe_dump(cfg))
        self.proc = await self.kids.spawn(
            f"{self.name}-switch",
            ["taskset", "-c", str(SUT_CORE), sys.executable, "-m", "vswitch", "run",
             str(self.dir / "vswitch.yaml")],
            nice=True,
            env={"PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])},
        )  # fmt: skip
        self.pid = self.proc.pid

        async def answers() -> bool:
            if self.proc.returncode is not None:
                raise BenchError(f"vswitch exited:\n{self.kids.tail(f'{self.name}-switch')}")
            try:
                await self.request("version")
                return True
            except (OSError, Exception):
                return False

        await wait_until(answers, 30, "vswitch's control socket")

    def port_options(self, name: str) -> dict[str, Any]:
        return {}

    async def request(self, cmd: str, **args: Any) -> Any:
        from vswitch.control import request

        return await asyncio.wait_for(request(self.control, cmd, **args), 30)

    async def wait_ready(self, gen: Generator) -> None:
        async def up() -> bool:
            ports = {p["name"]: p["state"] for p in await self.request("ports")}
            return all(ports.get(n) == "up" for n in self.port_names[:2])

        await wait_until(up, 30, "vswitch ports a and b up", 0.2)

    async def snapshot(self) -> dict[str, Any]:
        st = await self.request("stats")
        return {"switch": st["switch"], "ports": {n: st["ports"][n] for n in self.port_names[:2]}}

    async def stop(self) -> None:
        if hasattr(self, "proc"):
            await self.kids.stop(self.proc, signal.SIGTERM, 15)
        for fe in self.frontends:
            fe.close()
        self.frontends = []


class VswitchManyMacs(Vswitch):
    """100k MACs learned by the fast path itself, before the generator starts:
    a third port, driven by the test-side front end (tests/vhost_frontend.py,
    tests/virtio_driver.py), sends one frame from each of 100k source MACs
    (to itself, so nothing floods).  They stay in the table as dynamic
    entries (mac_age 300 s, so the 1 Hz aging scan walks all of them during
    the measurement) while the generator's two MACs carry the traffic."""

    name = "vswitch-100kmac"
    port_names = ("a", "b", "learn")
    extra: ClassVar[dict[str, Any]] = {"fdb_size": 262144}

    def port_options(self, name: str) -> dict[str, Any]:
        return {"mac_limit": 0} if name == "learn" else {}

    async def start(self) -> None:
        await super().start()
        fe = IdleFrontend(str(self.dir / "learn.sock"))
        self.frontends.append(fe)
        await fe.start(rx_buffers=0)
        t0 = time.monotonic()
        await fe.send_sources(LEARN_MACS)
        n = 0

        async def learned() -> bool:
            nonlocal n
            n = (await self.request("stats"))["switch"]["fdb_entries"]
            return n >= LEARN_MACS

        await wait_until(learned, 30, f"{LEARN_MACS} MACs in vswitch's table")
        self.info = {"fdb_entries": n, "learn_seconds": round(time.monotonic() - t0, 2)}
        log(f"  {n} MACs learned through port 'learn' in {self.info['learn_seconds']} s")


class VswitchManyPorts(Vswitch):
    """64 ports: the generator's two and 62 more, each connected by the
    test-side front end with both rings set up and 64 receive buffers posted
    (a connected, silent guest), so the poll thread has 62 idle rings to
    watch besides the two busy ones."""

    name = "vswitch-64port"
    port_names = ("a", "b", *(f"idle{i:02d}" for i in range(IDLE_PORTS)))

    async def start(self) -> None:
        await super().start()
        self.frontends += [IdleFrontend(str(self.dir / f"{n}.sock")) for n in self.port_names[2:]]
        await asyncio.gather(*(fe.start(rx_buffers=64) for fe in self.frontends))

        async def all_up() -> bool:
            ports = {p["name"]: p["state"] for p in await self.request("ports")}
            return sum(ports.get(n) == "up" for n in self.port_names[2:]) == IDLE_PORTS

        await wait_until(all_up, 30, f"{IDLE_PORTS} idle ports up", 0.2)
        self.info = {"idle_ports_up": IDLE_PORTS}


class IdleFrontend:
    """One port's front end without a VM: guest memory in a memfd, split rings,
    eventfds, QEMU's message order (tests/vhost_frontend.py, tests/virtio_driver.py)."""

    def __init__(self, path: str, mem_size: int = 2 << 20, ring: int = 256) -> None:
        from vhost_frontend import Frontend, eventfd
        from virtio_driver import GuestMemory, SplitRing

        self.fe = Frontend(path)
        self.mem = GuestMemory.single(size=mem_size)
        self.rx = SplitRing(self.mem, ring)
        self.tx = SplitRing(self.mem, ring)
        self.kick = [eventfd(), eventfd()]
        self.call = [eventfd(), eventfd()]

    async def start(self, rx_buffers: int) -> None:
        await self.fe.connect(timeout=10)
        await self.fe.negotiate()
        if await self.fe.set_mem_table(self.mem.table()) != 0:
            raise BenchError(f"{self.fe.path}: SET_MEM_TABLE refused")
        for q, r in enumerate((self.rx, self.tx)):
            await self.fe.setup_vring(
                q, r.num, r.desc_ua, r.used_ua, r.avail_ua, self.kick[q], self.call[q]
            )
        if rx_buffers:
            self.rx.add_rx(2048, rx_buffers)
            os.eventfd_write(self.kick[0], 1)

    async def send_sources(self, n: int, timeout: float = 120) -> None:
        """n frames, frame i from source MAC 02:10:00:00:00:00 + i to itself."""
        from virtio_driver import net_hdr

        hdr = net_hdr(12)  # VERSION_1 + MRG_RXBUF: the 12-byte header
        pad = bytes(46)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        sent = 0
        while sent < n:
            self.tx.reclaim()
            k = min(len(self.tx.free_ids), n - sent, 128)
            if k == 0:
                os.eventfd_write(self.kick[1], 1)
                if loop.time() > deadline:
                    raise BenchError(f"the switch stopped taking frames after {sent}")
                await asyncio.sleep(0.0005)
                continue
            heads = []
            for i in range(sent, sent + k):
                m = (0x021000000000 + i).to_bytes(6, "big")
                frame = m + m + b"\x88\xb5" + pad
                heads.append(self.tx.add_tx(frame, hdr, publish=False))
            self.tx.publish(*heads)
            os.eventfd_write(self.kick[1], 1)
            sent += k
            await asyncio.sleep(0)
        await wait_until(lambda: self.tx.reclaim() is not None and not self.tx.chains, 30,
                         "the switch to take the last frames", 0.01)  # fmt: skip

    def close(self) -> None:
        self.fe.close()
        for fd in self.kick + self.call:
            with contextlib.suppress(OSError):
                os.close(fd)
        self.kick = self.call = []
        self.mem.close()


class TestpmdSwitch(System):
    """DPDK's own vhost library with no switching: two net_vhost ports in io
    forwarding (port 0 -> 1, 1 -> 0), one forwarding lcore; both lcores
    (the main one sleeps) on the switch core."""

    name = "testpmd"

    async def start(self) -> None:
        self.dir.mkdir(exist_ok=True)
        self.socks = [str(self.dir / f"vhost{i}.sock") for i in range(2)]
        eal = ["--lcores", f"0@{SUT_CORE},1@{SUT_CORE}", "--main-lcore", "0",
               *eal_common(self.bench.prefix("tp"))]  # fmt: skip
        for i, s in enumerate(self.socks):
            eal += ["--vdev", f"net_vhost{i},iface={s},queues=1"]
        app = ["--forward-mode=io", "--nb-cores=1", f"--rxd={QUEUE_SIZE}", f"--txd={QUEUE_SIZE}"]
        self.tp = TestPmd(self.kids, "testpmd-switch", eal, app, cpus=str(SUT_CORE))
        await self.tp.start()
        self.pid = self.tp.pid
        await self.tp.cmd("start")
        await wait_until(
            lambda: all(os.path.exists(s) for s in self.socks), 20, "net_vhost sockets"
        )

    def mark(self) -> None:
        self.seen = len(self.tp.out)

    async def wait_ready(self, gen: Generator) -> None:
        # The vhost library logs this per port once the front end's rings are live.
        await wait_until(lambda: self.tp.out.count(b"is now ready for processing", self.seen) >= 2,
                         30, "testpmd's vhost ports ready", 0.1)  # fmt: skip

    async def stop(self) -> None:
        await self.tp.stop()


class Ovs(System):
    """OVS-DPDK as design.md describes it: the DPDK build of ovs-vswitchd run
    directly, with a private run dir and database and its own ovsdb-server."""

    name = "ovs"

    def env(self) -> dict[str, str]:
        d = str(self.dir)
        return {"OVS_RUNDIR": d, "OVS_DBDIR": d, "OVS_LOGDIR": d, "OVS_SYSCONFDIR": d}

    async def vsctl(self, *args: str, timeout: float = 30) -> str:
        return await run(["ovs-vsctl", f"--db=unix:{self.dir}/db.sock", "--no-wait",
                          f"--timeout={int(timeout)}", *args], timeout + 5, self.env())  # fmt: skip

    async def start(self) -> None:
        if not os.path.exists(OVS_VSWITCHD):
            raise BenchError(f"{OVS_VSWITCHD} is missing (Debian openvswitch-switch-dpdk)")
        d = self.dir
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        env = self.env()
        await run(["ovsdb-tool", "create", f"{d}/conf.db", OVS_SCHEMA], 30, env)
        self.db = await self.kids.spawn("ovsdb-server", [
            "ovsdb-server", f"{d}/conf.db", f"--remote=punix:{d}/db.sock",
            f"--unixctl={d}/ovsdb-server.ctl", f"--pidfile={d}/ovsdb-server.pid",
            f"--log-file={d}/ovsdb-server.log",
        ], env=env)  # fmt: skip
        await wait_until(lambda: os.path.exists(d / "db.sock"), 20, "ovsdb-server's socket")
        await self.vsctl("init")
        extra = (
            f"--no-pci --in-memory --single-file-segments --file-prefix={self.bench.prefix('ovs')}"
        )
        await self.vsctl(
            "set", "Open_vSwitch", ".",
            "other_config:dpdk-init=true",
            "other_config:dpdk-socket-mem=256",
            "other_config:dpdk-socket-limit=300",
            f"other_config:pmd-cpu-mask={1 << SUT_CORE:#x}",
            f'other_config:dpdk-extra="{extra}"',
        )  # fmt: skip
        self.vswitchd = await self.kids.spawn("ovs-vswitchd", [
            "taskset", "-c", str(SUT_CORE), OVS_VSWITCHD, f"unix:{d}/db.sock",
            f"--unixctl={d}/ovs-vswitchd.ctl", f"--pidfile={d}/ovs-vswitchd.pid",
            f"--log-file={d}/ovs-vswitchd.log", "-vconsole:off",
        ], env=env, nice=True)  # fmt: skip
        self.pid = self.vswitchd.pid
        await self.vsctl("add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev")
        for i in range(2):
            await self.vsctl("add-port", "br0", f"vhu{i}", "--",
                             "set", "Interface", f"vhu{i}", "type=dpdkvhostuser")  # fmt: skip
        self.socks = [str(d / f"vhu{i}") for i in range(2)]

        def sockets() -> bool:
            if self.vswitchd.returncode is not None:
                raise BenchError(f"ovs-vswitchd exited:\n{self.log_tail()}")
            return all(os.path.exists(s) for s in self.socks)

        await wait_until(sockets, 60, "OVS's dpdkvhostuser sockets")
        self.info = {"version": (await run([OVS_VSWITCHD, "--version"])).splitlines()[0]}

    def log_tail(self, n: int = 25) -> str:
        try:
            return "\n".join((self.dir / "ovs-vswitchd.log").read_text().splitlines()[-n:])
        except OSError:
            return self.kids.tail("ovs-vswitchd", n)

    async def wait_ready(self, gen: Generator) -> None:
        async def up() -> bool:
            states = [(await self.vsctl("get", "Interface", f"vhu{i}", "link_state")).strip()
                      for i in range(2)]  # fmt: skip
            return states == ["up", "up"]

        await wait_until(up, 30, "OVS's vhu0 and vhu1 link_state up", 0.3)

    async def snapshot(self) -> dict[str, Any]:
        with contextlib.suppress(BenchError):
            out = await run(["ovs-appctl", "-t", f"{self.dir}/ovs-vswitchd.ctl",
                             "dpif-netdev/pmd-stats-show"], 20, self.env())  # fmt: skip
            return {"pmd_stats": out.strip()}
        return {}

    async def stop(self) -> None:
        for proc in (getattr(self, "vswitchd", None), getattr(self, "db", None)):
            if proc is not None:
                await self.kids.stop(proc, signal.SIGTERM, 20)
        shutil.rmtree(self.dir, ignore_errors=True)


SYSTEM_CLASSES: dict[str, type[System]] = {
    "vswitch": Vswitch,
    "testpmd": TestpmdSwitch,
    "ovs": Ovs,
    "vswitch-100kmac": VswitchManyMacs,
    "vswitch-64port": VswitchManyPorts,
}


# --------------------------------------------------------------------------- the bench


@dataclass
class Options:
    rounds: int
    seconds: float
    warmup: float
    idle: float
    sizes: list[int]
    systems: list[str]
    quick: bool
    out: Path
    keep: bool
    ping: bool
    nice: int
    flood: bool = True
    render: str | None = None


@dataclass
class Bench:
    opts: Options
    work: Path
    kids: Children = field(init=False)
    results: list[dict[str, Any]] = field(default_factory=list)
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kids = Children(self.work)

    def prefix(self, what: str) -> str:
        return f"vsbench-{what}-{os.getpid()}"

    async def measure(self, sut: System, size: int, rnd: int, with_idle: bool) -> dict[str, Any]:
        o = self.opts
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        rec: dict[str, Any] = {"round": rnd, "system": sut.name, "size": size, "loadavg": loadavg}
        gen = Generator(self.kids, sut.socks, size, self.prefix("gen"))
        try:
            sut.mark()
            await gen.start()
            await sut.wait_ready(gen)
            if with_idle:
                await asyncio.sleep(1.0)
                before = await sut.snapshot()
                m = CpuMeter(sut.pid)
                await asyncio.sleep(o.idle)
                rec["idle_cpu"] = m.percent()
                rec["idle_switch"] = _switch_delta(before, await sut.snapshot())
            rec["tx_first_attempts"] = await gen.kickoff()
            await asyncio.sleep(o.warmup)
            snap0 = await sut.snapshot()
            m, mg, mm = CpuMeter(sut.pid), CpuMeter(gen.pid), MachineMeter()
            t0, s0 = await gen.stats()
            await asyncio.sleep(o.seconds)
            t1, s1 = await gen.stats()
            rec["load_cpu"] = m.percent()
            rec["generator_cpu"] = mg.percent()
            rec["machine_cpu"] = mm.percent()
            snap1 = await sut.snapshot()
            await gen.cmd("stop")
            dt = t1 - t0
            rx = {p: s1[p]["rx_packets"] - s0[p]["rx_packets"] for p in s1}
            rxb = {p: s1[p]["rx_bytes"] - s0[p]["rx_bytes"] for p in s1}
            rec["seconds"] = round(dt, 3)
            rec["pps"] = round(sum(rx.values()) / dt)
            rec["pps_per_port"] = {p: round(v / dt) for p, v in rx.items()}
            rec["frame_bytes_at_generator"] = round(sum(rxb.values()) / max(sum(rx.values()), 1), 1)
            rec["generator_stats"] = s1
            if sut.name.startswith("vswitch"):
                # The size on the wire as the switch counted it (no FCS in virtio).
                ports = {n: {k: v - snap0["ports"][n][k] for k, v in c.items()}
                         for n, c in snap1["ports"].items()}  # fmt: skip
                pk = sum(ports[n]["rx_packets"] for n in ports)
                by = sum(ports[n]["rx_bytes"] for n in ports)
                rec["frame_bytes_at_switch"] = round(by / max(pk, 1), 1)
                rec["switch_delta"] = _switch_delta(snap0, snap1)
                rec["switch_ports_delta"] = ports
                rec["switch_drops"] = {f"{n}.{k}": v for n, c in ports.items() for k, v in c.items()
                                       if "drop" in k and v}  # fmt: skip
            elif snap1:
                rec["switch_stats"] = snap1
            if with_idle:
                await asyncio.sleep(1.0)
                before = await sut.snapshot()
                m = CpuMeter(sut.pid)
                await asyncio.sleep(o.idle)
                rec["idle_after_cpu"] = m.percent()
                rec["idle_after_switch"] = _switch_delta(before, await sut.snapshot())
        finally:
            await gen.stop()
        return rec

    async def run_system(self, name: str, rnd: int, sizes: list[int]) -> None:
        sut = SYSTEM_CLASSES[name](self)
        log(f"round {rnd}: {LABEL[name]}: starting")
        try:
            await asyncio.wait_for(sut.start(), 180)
        except Exception as exc:
            why = f"{LABEL[name]} did not come up: {type(exc).__name__}: {exc}"
            log(f"  FAILED: {why}")
            self.results.append({"round": rnd, "system": name, "error": why})
            with contextlib.suppress(Exception):
                await sut.stop()
            if name == "ovs" and self.opts.quick:
                self.failed[name] = why  # --quick: skip it from now on
            return
        try:
            for size in sizes:
                # Idle CPU once per system (the scale points only in full runs).
                first = name not in self.idle and not (self.opts.quick and name in SCALE)
                try:
                    budget = 120 + self.opts.seconds + self.opts.warmup + 2 * self.opts.idle
                    rec = await asyncio.wait_for(self.measure(sut, size, rnd, first), budget)
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    log(f"  {size} B: FAILED: {why}")
                    self.results.append({"round": rnd, "system": name, "size": size,
                                         "error": why[-3000:]})  # fmt: skip
                    continue
                rec["system_info"] = sut.info
                self.results.append(rec)
                if first:
                    self.idle[name] = {k: rec[k] for k in rec if k.startswith("idle")}
                    self.idle[name]["load_cpu"] = rec["load_cpu"]
                extra = ""
                if "idle_cpu" in rec:
                    extra = (f", idle CPU {rec['idle_cpu']['stat']:.1f} % before, "
                             f"{rec['idle_after_cpu']['stat']:.1f} % after traffic")  # fmt: skip
                log(f"  {size} B: {rec['pps'] / 1e6:.2f} Mpps (frames of "
                    f"{rec['frame_bytes_at_generator']:.0f} B + FCS); CPU: switch "
                    f"{rec['load_cpu']['stat']:.0f} %, generator "
                    f"{rec['generator_cpu']['stat']:.0f} %, machine {rec['machine_cpu']:.0f} % "
                    f"of {100 * (os.cpu_count() or 1)} %{extra}")  # fmt: skip
        finally:
            await sut.stop()

    async def ping(self) -> dict[str, Any]:
        """RTT between two QEMU guests through vswitch (event-driven latency)."""
        from vswitch.guest import Guest, Nic

        await run([str(ROOT / "scripts/build-guest-image")], 900)
        sut = Vswitch(self)
        sut.name = "ping"
        sut.dir = self.work / "ping"
        sut.port_names = ("vm1", "vm2")
        await sut.start()
        guests = [
            Guest(f"vm{i}", self.work / "ping", nics=[Nic(str(sut.dir / f"vm{i}.sock"),
                  f"52:54:00:00:00:0{i}")], ips={0: [f"10.0.0.{i}/24"]})
            for i in (1, 2)
        ]  # fmt: skip
        try:
            await asyncio.gather(*(g.start() for g in guests))
            await asyncio.gather(*(g.wait_ready(timeout=240) for g in guests))
            await sut.wait_ready(None)  # type: ignore[arg-type]
            for _ in range(10):  # ARP, and the switch learning both guests
                if (await guests[0].exec("ping -c 1 -W 2 10.0.0.2", timeout=10)).rc == 0:
                    break
            m = CpuMeter(sut.pid)
            r = await guests[0].exec("ping -c 20 -i 0.2 10.0.0.2", timeout=60)
            cpu = m.percent()
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
            if not rtts:
                raise BenchError(f"ping gave no replies: {r.stdout} {r.stderr}")
            return {
                "count": len(rtts),
                "median_ms": round(statistics.median(rtts), 3),
                "min_ms": min(rtts),
                "max_ms": max(rtts),
                "rtts_ms": rtts,
                "switch_cpu_during_ping": cpu,
            }
        finally:
            await asyncio.gather(*(g.stop() for g in guests), return_exceptions=True)
            await sut.stop()

    async def main(self) -> None:
        o = self.opts
        small = min(o.sizes)
        for rnd in range(1, o.rounds + 1):
            order = (
                o.systems[(rnd - 1) % len(o.systems) :] + o.systems[: (rnd - 1) % len(o.systems)]
            )
            for name in order:
                if name in self.failed:
                    continue
                sizes = [small] if name in SCALE else o.sizes
                await self.run_system(name, rnd, sizes)
        if o.flood:
            log("flooding cost against the number of ports (fast path driven directly)")
            try:
                import bench_flood

                self.flood_result = await asyncio.to_thread(bench_flood.measure)
                pts = self.flood_result["points"]
                per = [f"{p['ports']} ports {p['ns_per_copy']['median']:.0f}" for p in pts]
                log("  ns per copy: " + ", ".join(per))
            except Exception as exc:
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                self.flood_result = {"error": str(exc)[-3000:]}
        if o.ping:
            log("ping RTT between two QEMU guests through vswitch")
            try:
                self.ping_result = await asyncio.wait_for(self.ping(), 600)
                log(f"  median {self.ping_result['median_ms']} ms over "
                    f"{self.ping_result['count']} pings")  # fmt: skip
            except Exception as exc:
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                self.ping_result = {"error": str(exc)[-3000:]}


def _switch_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    """How vswitch's poll thread spent the interval (poll_loops, poll_sleeps)."""
    if "switch" not in a or "switch" not in b:
        return {}
    return {k: b["switch"][k] - a["switch"][k] for k in ("poll_loops", "poll_sleeps", "flooded")
            if k in b["switch"]}  # fmt: skip


# --------------------------------------------------------------------------- machine


class Hugepages:
    """Reserves what the run needs and gives back what it reserved."""

    def __init__(self, want: int = 1024) -> None:
        self.want = want
        self.before: int | None = None
        self.mounted = False

    def setup(self) -> dict[str, Any]:
        nr = Path("/proc/sys/vm/nr_hugepages")
        cur = int(nr.read_text())
        if cur < self.want:
            self.before = cur
            nr.write_text(str(self.want))
        if not os.path.ismount("/dev/hugepages"):
            os.makedirs("/dev/hugepages", exist_ok=True)
            subprocess.run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"], check=True)
            self.mounted = True
        info = meminfo()
        if info["HugePages_Free"] < 600:
            raise BenchError(
                f"only {info['HugePages_Free']} of {info['HugePages_Total']} hugepages free "
                "(the generator and testpmd need 256 each, OVS 150): is another DPDK running?"
            )
        return {"total": info["HugePages_Total"], "free": info["HugePages_Free"]}

    def teardown(self, prefixes: Iterable[str]) -> None:
        for f in Path("/dev/hugepages").glob("*"):
            if any(f.name.startswith(p) for p in prefixes):
                with contextlib.suppress(OSError):
                    f.unlink()
        if self.mounted:
            subprocess.run(["umount", "/dev/hugepages"], check=False)
        if self.before is not None:
            with contextlib.suppress(OSError):
                Path("/proc/sys/vm/nr_hugepages").write_text(str(self.before))


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])
    return out


def sh(*argv: str) -> str:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info() -> dict[str, Any]:
    lscpu = {}
    for line in sh("lscpu").splitlines():
        k, _, v = line.partition(":")
        lscpu[k.strip()] = v.strip()
    pkg = {p: sh("dpkg-query", "-W", "-f=${Version}", p) or None
           for p in ("dpdk", "openvswitch-switch-dpdk", "qemu-system-x86")}  # fmt: skip
    commit = sh("git", "-C", str(ROOT), "rev-parse", "HEAD")
    dirty = bool(sh("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"))
    import vswitch._fastpath as fp

    import vswitch

    so = Path(fp.__file__)
    newest_src = max(p.stat().st_mtime for p in (ROOT / "csrc").glob("*.[ch]"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu_model": lscpu.get("Model name"),
        "cpus": os.cpu_count(),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "kernel": platform.release(),
        "memory_mb": meminfo()["MemTotal"] // 1024,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "versions": {"vswitch": vswitch.__version__, **pkg},
        "commit": commit,
        "dirty": dirty,
        "fastpath": str(so),
        "fastpath_older_than_csrc": so.stat().st_mtime < newest_src,
    }


# --------------------------------------------------------------------------- report


def _stats(vals: list[float]) -> dict[str, float] | None:
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(bench: Bench) -> dict[str, Any]:
    ok = [r for r in bench.results if "pps" in r]
    by: dict[tuple[str, int], dict[int, float]] = {}
    for r in ok:
        by.setdefault((r["system"], r["size"]), {})[r["round"]] = r["pps"]
    sizes = bench.opts.sizes
    summary: dict[str, Any] = {"pps": {}, "ratios": {}, "scale": {}, "cpu": {}}
    for (system, size), rounds in sorted(by.items()):
        summary["pps"].setdefault(str(size), {})[system] = _stats(list(rounds.values()))
    summary["frame_size_check"] = [
        f"round {r['round']}, {r['system']}, {r['size']} B: {where} saw {r[key]} B frames, "
        f"not {r['size'] - 4}"
        for r in ok
        for where, key in (
            ("testpmd", "frame_bytes_at_generator"),
            ("vswitch", "frame_bytes_at_switch"),
        )
        if key in r and abs(r[key] - (r["size"] - 4)) > 0.5
    ]
    base = "vswitch"
    for size in sizes:
        mine = by.get((base, size), {})
        for other in ("testpmd", "ovs"):
            theirs = by.get((other, size), {})
            ratios = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
            summary["ratios"].setdefault(str(size), {})[f"vswitch/{other}"] = _stats(ratios)
    small = min(sizes)
    for scale in SCALE:
        mine = by.get((base, small), {})
        theirs = by.get((scale, small), {})
        ratios = [theirs[r] / mine[r] for r in theirs if r in mine and mine[r] > 0]
        summary["scale"][scale] = {"size": small, "pps": _stats(list(theirs.values())),
                                   f"ratio_to_{base}": _stats(ratios)}  # fmt: skip
    for system in SYSTEMS:
        idle = bench.idle.get(system, {})
        mine = [r for r in ok if r["system"] == system]
        if not mine:
            continue

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            vals = [r[key]["stat"] if isinstance(r[key], dict) else r[key] for r in mine]
            return statistics.median(vals)

        summary["cpu"][system] = {
            "idle": idle.get("idle_cpu"),
            "idle_after_traffic": idle.get("idle_after_cpu"),
            "idle_poll": idle.get("idle_switch"),
            "idle_after_poll": idle.get("idle_after_switch"),
            "load_median": med("load_cpu"),
            "generator_median": med("generator_cpu"),
            "machine_median": med("machine_cpu"),
        }
    return summary


def _mpps(s: dict[str, float] | None) -> str:
    if not s:
        return "—"
    return f"{s['median'] / 1e6:.2f} ({s['min'] / 1e6:.2f}–{s['max'] / 1e6:.2f})"


def _ratio(s: dict[str, float] | None) -> str:
    if not s:
        return "—"
    return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})"


def targets(o: Options, summary: dict[str, Any], flood: dict[str, Any] | None = None) -> list[str]:
    """Issue 5's targets against this run's medians (ratios from the same rounds)."""
    rows = []

    def ratio(size: int, key: str) -> float | None:
        r = summary["ratios"].get(str(size), {}).get(key)
        return r["median"] if r else None

    def scale(name: str) -> float | None:
        r = summary["scale"].get(name, {}).get("ratio_to_vswitch")
        return r["median"] if r else None

    checks: list[tuple[str, float | None, float, str]] = [
        ("64 B: vswitch/OVS-DPDK ≥ 1.0×", ratio(64, "vswitch/ovs"), 1.0, "×"),
        ("64 B: vswitch/testpmd ≥ 0.9× (aim 1.1×)", ratio(64, "vswitch/testpmd"), 0.9, "×"),
        ("1518 B: vswitch/testpmd ≥ 0.9×", ratio(1518, "vswitch/testpmd"), 0.9, "×"),
        ("100k learned MACs ≥ 0.9× the 2-MAC rate", scale("vswitch-100kmac"), 0.9, "×"),
        ("64 ports (62 idle) ≥ 0.9× the 2-port rate", scale("vswitch-64port"), 0.9, "×"),
    ]
    for label, value, want, unit in checks:
        if value is not None:
            rows.append(
                f"| {label} | {value:.2f}{unit} | {'met' if value >= want else 'NOT met'} |"
            )
    if flood and "error" not in flood:
        worst = max(p["ratio_to_2_ports"] for p in flood["points"])
        verdict = "met" if worst <= 1.5 else "NOT met"
        rows.append(f"| flooding: cost per copy flat in ports (≤ 1.5× the 2-port cost) | "
                    f"{worst:.2f}× at worst | {verdict} |")  # fmt: skip
    cpu = summary["cpu"].get("vswitch")
    for when, key in (("before traffic", "idle"), ("after traffic", "idle_after_traffic")):
        m = cpu and cpu.get(key)
        if m:
            ok = m["stat"] < 1.0
            rows.append(f"| vswitch idle {when} < 1 % of a core | {m['stat']:.1f} % | "
                        f"{'met' if ok else 'NOT met'} |")  # fmt: skip
    if not rows:
        return []
    return ["", "## Targets (issue 5), from this run", "", "| Target | Measured (median) | |",
            "|---|---|---|", *rows]  # fmt: skip


def render(bench: Bench, machine: dict[str, Any], summary: dict[str, Any], argv: str) -> str:
    o = bench.opts
    v = machine["versions"]
    commit = (machine["commit"] or "?")[:10] + (
        " (uncommitted changes)" if machine["dirty"] else ""
    )
    lines = [
        "# Benchmark: vswitch against DPDK testpmd and OVS-DPDK",
        "",
        "Written by `scripts/bench` (issue 5); do not edit by hand. Raw rounds: "
        "[bench.json](bench.json).",
        "",
        f"- Date: {machine['date']}; command: `{argv}`",
        f"- Machine: {machine['cpu_model']}, {machine['cpus']} cores"
        f"{' (' + machine['hypervisor'] + ' guest)' if machine.get('hypervisor') else ''}, "
        f"kernel {machine['kernel']}, {machine['memory_mb']} MB",
        f"- Versions: vswitch {v['vswitch']} at {commit}; DPDK {v['dpdk']}; "
        f"Open vSwitch {v['openvswitch-switch-dpdk']}; QEMU {v['qemu-system-x86']}",
        f"- {o.rounds} round(s), interleaved; {o.seconds:g} s measured after {o.warmup:g} s "
        "warm-up; one forwarding core per switch (core 1), the generator's on core 0"
        + (f"; switches and generator at nice {o.nice}" if o.nice else "")
        + f"; load average at the start {machine.get('loadavg', '?')}.",
        "",
        "## Forwarding rate (PVP loop), Mpps: median (min–max over rounds)",
        "",
        "| Frame | vswitch | testpmd io-fwd | OVS-DPDK | vswitch/testpmd | vswitch/OVS |",
        "|---|---|---|---|---|---|",
    ]
    for size in o.sizes:
        p = summary["pps"].get(str(size), {})
        r = summary["ratios"].get(str(size), {})
        lines.append(
            f"| {size} B | {_mpps(p.get('vswitch'))} | {_mpps(p.get('testpmd'))} | "
            f"{_mpps(p.get('ovs'))} | {_ratio(r.get('vswitch/testpmd'))} | "
            f"{_ratio(r.get('vswitch/ovs'))} |"
        )
    lines += [
        "",
        "Ratios are medians of per-round ratios (same round, minutes apart at most). Frame "
        "sizes include the 4-byte FCS that virtio does not carry: the generator sends "
        "SIZE-4 bytes (`--txpkts`), checked each time against testpmd's RX bytes/packets and "
        "vswitch's own counters"
        + (
            ": " + "; ".join(summary["frame_size_check"])
            if summary["frame_size_check"]
            else " (all matched)"
        )
        + ".",
    ]
    lines += targets(o, summary, getattr(bench, "flood_result", None))
    lines += [
        "",
        "## CPU, % of one core",
        "",
        f"| Switch | idle: ports up, no traffic yet ({o.idle:g} s) | idle: after traffic "
        "stopped | under load | generator, under load | whole machine, under load |",
        "|---|---|---|---|---|---|",
    ]

    def pct(m: dict[str, float] | None) -> str:
        return "—" if not m else f"{m['stat']:.1f} %"

    for system in SYSTEMS:
        c = summary["cpu"].get(system)
        if not c:
            continue
        lines.append(
            f"| {LABEL[system]} | {pct(c['idle'])} | {pct(c['idle_after_traffic'])} | "
            f"{c['load_median']:.0f} % | {c['generator_median']:.0f} % | "
            f"{c['machine_median']:.0f} % of {100 * (machine['cpus'] or 1)} % |"
        )
    lines += [
        "",
        "The switch's CPU is utime+stime of its process from /proc/PID/stat over the interval "
        "(all threads; for OVS, ovs-vswitchd). Under load: medians over every measurement. "
        "The generator and whole-machine columns show how much of the machine the loop got: "
        "this machine is shared, and a starved generator caps every switch alike.",
    ]
    for system in ("vswitch", *SCALE):
        c = summary["cpu"].get(system)
        if not c:
            continue
        for when, key, m in (
            ("before traffic", "idle_poll", c["idle"]),
            ("after traffic", "idle_after_poll", c["idle_after_traffic"]),
        ):
            d = c.get(key)
            if d and m:
                sec = m["seconds"]
                lines.append(
                    f"- {LABEL[system]}, idle {when}: the poll thread went to sleep "
                    f"{d['poll_sleeps'] / sec:,.0f} times/s and ran {d['poll_loops'] / sec:,.0f} "
                    "busy-poll loops/s."
                )
    lines += [
        "",
        f"## Scale ({min(o.sizes)} B frames)",
        "",
        "| Case | Mpps | ratio to vswitch with 2 ports, same round |",
        "|---|---|---|",
    ]
    for scale in SCALE:
        s = summary["scale"].get(scale)
        if not s or not s["pps"]:
            continue
        lines.append(f"| {LABEL[scale]} | {_mpps(s['pps'])} | {_ratio(s['ratio_to_vswitch'])} |")
    lines += [
        "",
        f"- 100k learned MACs: before the generator attaches, a third port (driven by the "
        f"test-side front end, tests/vhost_frontend.py) sends one frame from each of "
        f"{LEARN_MACS:,} source MACs; the fast path learns them as dynamic entries "
        "(fdb_size 262144, mac_age 300 s, so the 1 Hz aging pass walks them all during the "
        "run). The generator's two MACs carry the traffic.",
        f"- 64 ports: the generator's two plus {IDLE_PORTS} ports connected by the test-side "
        "front end, rings set up and 64 receive buffers posted, sending nothing.",
    ]
    flood = getattr(bench, "flood_result", None)
    if flood:
        import bench_flood

        if "error" in flood:
            lines += ["", f"Flooding cost: failed: {flood['error'][:300]}"]
        else:
            lines += bench_flood.render(flood)
    ping = getattr(bench, "ping_result", None)
    if ping:
        lines += ["", "## Latency", ""]
        if "error" in ping:
            lines.append(
                f"Ping between two QEMU guests through vswitch failed: {ping['error'][:300]}"
            )
        else:
            lines.append(
                f"Ping RTT between two QEMU guests (TCG, no KVM) through vswitch: median "
                f"{ping['median_ms']:.3f} ms (min {ping['min_ms']:.3f}, max {ping['max_ms']:.3f}) "
                f"over {ping['count']} pings (`ping -c 20 -i 0.2`); the guests' emulation "
                "dominates it."
            )
    failures = [r for r in bench.results if "error" in r]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            where = f"round {r['round']}, {LABEL[r['system']]}" + (
                f", {r['size']} B" if "size" in r else "")  # fmt: skip
            first = r["error"].strip().splitlines()[0][:200] if r["error"].strip() else "?"
            lines.append(f"- {where}: {first}")
    if machine.get("fastpath_older_than_csrc"):
        lines += ["", "Note: the fast path module was older than csrc/ when this ran."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> Options:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 1)")
    ap.add_argument(
        "--seconds", type=float, help="measured seconds per point (default 10; --quick 5)"
    )
    ap.add_argument(
        "--warmup", type=float, help="seconds of traffic before measuring (default 3; --quick 2)"
    )
    ap.add_argument(
        "--idle", type=float, help="seconds of idle-CPU measurement (default 10; --quick 3)"
    )
    ap.add_argument(
        "--sizes", help="frame sizes in bytes with FCS (default 64,512,1518; --quick 64)"
    )
    ap.add_argument("--only", help=f"systems, comma-separated, of: {','.join(SYSTEMS)}, "
                    "or 'scale' for the two scale points (default: all)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a smoke check: 1 round, 5 s, 64 B, "
                    "OVS skipped if it fails to come up")  # fmt: skip
    ap.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of the switches and the generator, and of their scheduler "
        "autogroups (default -10; 0 = leave alone): on a shared machine the loop then gets "
        "most of its two cores instead of an equal share with every other session; it "
        "changes nothing on an idle machine",
    )
    ap.add_argument("--no-ping", action="store_true", help="skip the QEMU ping RTT")
    ap.add_argument(
        "--no-flood",
        action="store_true",
        help="skip the flooding-cost scale (scripts/bench_flood.py)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where bench.md/bench.json go")
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="run nothing: rewrite bench.md (in --out) from a bench.json this script wrote",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    a = ap.parse_args(argv)
    q = a.quick
    systems = list(SYSTEMS)
    if a.only:
        systems = []
        for s in a.only.split(","):
            s = s.strip()
            add = list(SCALE) if s == "scale" else [s]
            for x in add:
                if x not in SYSTEMS:
                    ap.error(f"--only: unknown system {x!r} (known: {', '.join(SYSTEMS)}, scale)")
                if x not in systems:
                    systems.append(x)
    sizes = [int(x) for x in (a.sizes or ("64" if q else "64,512,1518")).split(",")]
    for s in sizes:
        if not 64 <= s <= 1518:
            ap.error(f"--sizes: {s} is not a frame size from 64 to 1518 bytes")
    return Options(
        rounds=a.rounds or (1 if q else 5),
        seconds=a.seconds or (5 if q else 10),
        warmup=a.warmup if a.warmup is not None else (2 if q else 3),
        idle=a.idle or (3 if q else 10),
        sizes=sizes,
        systems=systems,
        quick=q,
        out=Path(a.out),
        keep=a.keep,
        ping=not a.no_ping,
        flood=not a.no_flood and not a.quick,
        nice=a.nice,
        render=a.render,
    )


async def amain(opts: Options, argv_text: str) -> int:
    if os.geteuid() != 0:
        print("scripts/bench: run as root (hugepages, DPDK, OVS)", file=sys.stderr)
        return 2
    for tool in ("dpdk-testpmd", "stdbuf", "taskset"):
        if shutil.which(tool) is None:
            print(f"scripts/bench: {tool} not found (scripts/bench installs it)", file=sys.stderr)
            return 2
    NICE[0] = opts.nice
    machine = machine_info()
    if machine["fastpath_older_than_csrc"]:
        log(f"warning: {machine['fastpath']} is older than csrc/ (scripts/build-inplace)")
    work = Path(tempfile.mkdtemp(prefix="vsbench-"))
    bench = Bench(opts, work)
    huge = Hugepages()
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    import atexit

    atexit.register(bench.kids.kill_all_now)
    t_start = time.monotonic()
    try:
        machine["hugepages"] = huge.setup()
        log(f"work dir {work}; systems {', '.join(opts.systems)}; sizes {opts.sizes}; "
            f"{opts.rounds} round(s) of {opts.seconds:g} s")  # fmt: skip
        await bench.main()
    finally:
        await bench.kids.stop_all()
        huge.teardown([f"vsbench-{w}-{os.getpid()}" for w in ("gen", "tp", "ovs")])
        if opts.keep:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    machine["duration_s"] = round(time.monotonic() - t_start)
    summary = summarize(bench)
    md = render(bench, machine, summary, argv_text)
    opts.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": argv_text,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "machine": machine,
        "summary": summary,
        "idle": bench.idle,
        "ping": getattr(bench, "ping_result", None),
        "flood": getattr(bench, "flood_result", None),
        "rounds": bench.results,
    }
    (opts.out / "bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    (opts.out / "bench.md").write_text(md)
    update_readme(md, opts.out)
    print()
    print(md)
    log(f"wrote {opts.out / 'bench.md'} and {opts.out / 'bench.json'} "
        f"in {machine['duration_s']} s")  # fmt: skip
    bad = [r for r in bench.results if "error" in r and not (opts.quick and r["system"] == "ovs")]
    return 1 if bad else 0


README = ROOT / "README.md"
README_START = "<!-- scripts/bench: latest table -->"
README_END = "<!-- end of scripts/bench table -->"


def update_readme(md: str, out: Path) -> None:
    """The README shows the latest run's forwarding and targets tables, between
    its markers, when the report went to docs/ (a run elsewhere leaves it)."""
    if out.resolve() != (ROOT / "docs").resolve() or not README.exists():
        return
    text = README.read_text()
    if README_START not in text or README_END not in text:
        log(f"README.md has no {README_START!r} marker: not updated")
        return
    keep: list[str] = []
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- Date:") or line.startswith("- Machine:"):
            keep.append(line)
        if line.startswith("## Forwarding rate") or line.startswith("## Targets"):
            keep += ["", "#" + line]  # one level down in the README
            for nxt in lines[i + 1 :]:
                if nxt.startswith("## "):
                    break
                keep.append(nxt)
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    body = "\n".join(keep).strip()
    README.write_text(f"{head}{README_START}\n{body}\n\n{README_END}{tail}")
    log("README.md: latest table updated")


def rerender(opts: Options) -> int:
    """--render: bench.md again from bench.json, e.g. after the report's layout changed."""
    assert opts.render is not None
    doc = json.loads(Path(opts.render).read_text())
    o = doc["options"]
    saved = Options(**{**o, "out": Path(o["out"]), "render": None})
    bench = Bench(saved, Path(tempfile.gettempdir()))
    bench.results = doc["rounds"]
    bench.idle = doc["idle"]
    if doc.get("ping") is not None:
        bench.ping_result = doc["ping"]
    if doc.get("flood") is not None:
        bench.flood_result = doc["flood"]
    summary = summarize(bench)
    md = render(bench, doc["machine"], summary, doc["command"])
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "bench.md").write_text(md)
    update_readme(md, opts.out)
    print(md)
    return 0


def main() -> int:
    opts = parse_args(sys.argv[1:])
    if opts.render:
        return rerender(opts)
    argv_text = " ".join(["scripts/bench", *sys.argv[1:]])
    try:
        return asyncio.run(amain(opts, argv_text))
    except KeyboardInterrupt:
        print("scripts/bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("scripts/bench: terminated; everything it started is stopped", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
