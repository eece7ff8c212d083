"""The switches under test (vswitch and its scale points, testpmd as a switch,
OVS-DPDK) and the testpmd generator that drives them."""

# A harness, not the daemon: small blocking file reads in coroutines are fine
# here (as in tests/).
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, Protocol

from vswitch.testkit.testpmd import PROMPT, TestpmdConsole

from .config import (
    GEN_CORE,
    IDLE_PORTS,
    LEARN_MACS,
    MAC,
    OVS_SCHEMA,
    OVS_VSWITCHD,
    QUEUE_SIZE,
    ROOT,
    SUT_CORE,
    TX_FIRST,
)
from .procs import BenchError, Children, log, run, wait_until


class Bench(Protocol):
    """What a system needs of the run it belongs to (runner.Bench)."""

    kids: Children
    work: Path

    def prefix(self, what: str) -> str: ...

# --------------------------------------------------------------------------- testpmd


class TestPmd(TestpmdConsole):
    """dpdk-testpmd as one of the bench's children: stdout line-buffered
    (stdbuf -oL), stdin kept open for commands (vswitch/testkit/testpmd.py), in its own
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
    # virtio-user needs --in-memory --single-file-segments here, or it fails with
    # "Too many memory regions" (its hugepages would be one file each).
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

    # testpmd commands the generator runs before the first frame (its ports are set up).
    generator_commands: ClassVar[tuple[str, ...]] = ()

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
    a third port, driven by the test-side front end (vswitch/testkit/vhost_frontend.py,
    vswitch/testkit/virtio_driver.py), sends one frame from each of 100k source MACs
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


# testpmd forwards what its port 1 receives out of its port 0 and the other way round, so
# with a trunk behind port 1 and an access port behind port 0 it must take the tag off what
# port 1 receives and put one on what it sends (in software, in the virtio PMD).
VLAN_GENERATOR = ("stop", "port stop 1", "vlan set strip on 1", "tx_vlan set 1 10", "port start 1")


class VswitchVlan(Vswitch):
    """The generator's two ports as an access port of VLAN 10 and a trunk of VLAN 10:
    every frame a -> b gets a tag pushed, every frame b -> a has it popped, so the loop
    pays for both.  Its anchor is VswitchVlanAnchor: the generator does the same tag
    work there."""

    name = "vswitch-vlan"
    generator_commands = VLAN_GENERATOR

    def port_options(self, name: str) -> dict[str, Any]:
        return {"vlan": 10} if name == "a" else {"trunks": [10]}


class VswitchVlanAnchor(Vswitch):
    """vswitch-vlan's anchor: the same generator (tag stripped on its port 1, inserted on
    what port 1 sends), ports without VLANs, which pass tagged frames untouched: the loop
    carries the same frames, and the switch pushes and pops nothing."""

    name = "vswitch-vlan-anchor"
    generator_commands = VLAN_GENERATOR


class IdleFrontend:
    """One port's front end without a VM: guest memory in a memfd, split rings,
    eventfds, QEMU's message order (vswitch/testkit/vhost_frontend.py, virtio_driver.py)."""

    def __init__(self, path: str, mem_size: int = 2 << 20, ring: int = 256) -> None:
        from vswitch.testkit.vhost_frontend import Frontend, eventfd
        from vswitch.testkit.virtio_driver import GuestMemory, SplitRing

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
        from vswitch.testkit.virtio_driver import net_hdr

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
    """OVS-DPDK: the DPDK build of ovs-vswitchd run directly, with a private run dir
    and database and its own ovsdb-server (the system's OVS service is never started)."""

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
    "vswitch-vlan": VswitchVlan,
    "vswitch-vlan-anchor": VswitchVlanAnchor,
}
