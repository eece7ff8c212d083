"""Live migration of a real QEMU guest through `vswitch run`, for tests/e2e/test_migration.py.

The topology: one guest (256 MiB, the Debian kernel and busybox) on port vmA of a switch, a
destination QEMU started with `-incoming` and `-S` on port vmB (of the same switch or of a
second one), and a namespace host on a Linux bridge joined to every switch through a TAP
port.  The host pings the guest every 10 ms and sends it 50 frames a second it drops,
so the switch keeps writing the guest's RX ring while QEMU copies its memory.

The oracle (after QEMU's own tests/qtest/vhost-user-test.c): once migration completes the
source is `postmigrate` and the destination, started with -S, `paused`; both dump guest RAM
(`pmemsave`) and the dumps are compared page by page.  A page the switch wrote and did not
log was sent before the write and never again, so it differs.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import socket
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.qmp import Qmp
from support.switch_process import SwitchProcess
from vswitch.lab.guest import Guest, Nic
from vswitch.netsys.netns import create_netns, delete_netns

MAC = "52:54:00:00:00:01"
GUEST_IP = "10.0.0.1"
HOST_IP = "10.0.0.100"
MEM_MB = 256
PAGE = 4096
BANDWIDTH = 20_000_000  # bytes/s, as in the recipe of shared/notes (3 dirty syncs, 4 s)


def ip(ns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", ns, *args], check=True, capture_output=True, timeout=30)


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The streamer's frames as they lie in an RX buffer: its source MAC and ethertype.
STREAM_MARK = bytes.fromhex("020000000042") + b"\x88\xb5"


def compare_dumps(a: Path, b: Path, pages: list[str] | None = None) -> tuple[int, int]:
    """(pages that differ, of which the source's holds a streamed frame the destination
    lacks: a write of the switch's that did not go); pages gets a line per differing page
    (its address, and the first bytes that differ) for the report."""
    da, db = a.read_bytes(), b.read_bytes()
    assert len(da) == len(db) == MEM_MB << 20, (len(da), len(db))
    ma, mb = memoryview(da), memoryview(db)
    differ = streamed = 0
    for off in range(0, len(da), PAGE):
        if ma[off : off + PAGE] != mb[off : off + PAGE]:
            differ += 1
            pa, pb = da[off : off + PAGE], db[off : off + PAGE]
            # A frame the destination lacks or holds an older one in its place.
            frames = {pa[i : i + 40] for i in _marks(pa)}
            streamed += bool(frames - {pb[i : i + 40] for i in _marks(pb)})
            if pages is not None and len(pages) < 20:
                at = [i for i in range(PAGE) if da[off + i] != db[off + i]]
                pages.append(f"{off:#x}: {len(at)} bytes differ, {at[0]:#x}..{at[-1]:#x}, "
                             f"src {da[off + at[0]:off + at[0] + 16].hex()} "
                             f"dst {db[off + at[0]:off + at[0] + 16].hex()}")  # fmt: skip
    return differ, streamed


def _marks(page: bytes) -> list[int]:
    out, i = [], page.find(STREAM_MARK)
    while i >= 0:
        out.append(i)
        i = page.find(STREAM_MARK, i + 1)
    return out


def longest_gap(lines: list[str]) -> float:
    """The longest time between two echo replies in `ping -D` output, in seconds."""
    pat = re.compile(r"\[(\d+\.\d+)\] \d+ bytes from")
    times = [float(m[1]) for line in lines if (m := pat.match(line))]
    return max((b - a for a, b in itertools.pairwise(times)), default=float("inf"))


class _Resumed(Exception):
    """The destination runs already (no oracle): on to the checks after `cont`."""


@dataclass
class Result:
    differing_pages: int = -1
    differing_streamed: int = -1  # of them, pages where a streamed frame did not go
    downtime_ms: int = -1  # as QEMU reports it
    total_ms: int = -1
    ping_gap_ms: float = -1.0  # the longest gap between replies the host saw
    source: dict[str, Any] = field(default_factory=dict)  # vmA's `vswitch ports` entry after
    fdb_port: str = ""
    pages: list[str] = field(default_factory=list)  # the pages that differ, described
    fdb_first_switch: str = ""
    destination: dict[str, Any] = field(default_factory=dict)


class MigrationRig:
    """Switches, the bridge namespace and the two QEMUs; `async with` tears all down."""

    def __init__(
        self, tmp: Path, image: Path, *, two_switches: bool = False, client: bool = False,
        no_log: bool = False, announce: str = "rarp", stream: bool = True,
        guest_dirty: bool = False, oracle: bool = True,
    ) -> None:  # fmt: skip
        self.stream, self.guest_dirty = stream, guest_dirty
        # oracle: the destination starts paused (-S) for the page compare; without it
        # it runs on at once, as in production, and the ping gap is the outage.
        self.oracle = oracle
        self.tmp, self.image = tmp, image
        # "rarp": the guest's device has no GUEST_ANNOUNCE, so QEMU sends SEND_RARP
        # and the switch announces the guest; "guest": the device offers it.
        self.announce = announce
        self.two, self.client, self.no_log = two_switches, client, no_log
        self.ns = f"mig{os.getpid() % 100000}"
        self.switches: list[SwitchProcess] = []
        self.guests: list[Guest] = []
        self.pinger: asyncio.subprocess.Process | None = None
        self.streamer: asyncio.subprocess.Process | None = None
        self.ping_lines: list[str] = []
        self._ping_task: asyncio.Task[None] | None = None

    def _vport(self, name: str, sw_dir: Path) -> dict[str, Any]:
        path = str(sw_dir / f"{name}.sock")
        port: dict[str, Any] = {"name": name, "type": "vhost-user", "path": path}
        if self.client:
            port["mode"] = "client"
        return port

    async def __aenter__(self) -> MigrationRig:
        create_netns(self.ns)
        ip(self.ns, "link", "add", "br0", "type", "bridge")
        ip(self.ns, "addr", "add", f"{HOST_IP}/24", "dev", "br0")
        ip(self.ns, "link", "set", "br0", "up")
        layout = [["vmA", "vmB"]] if not self.two else [["vmA"], ["vmB"]]
        for i, names in enumerate(layout):
            d = self.tmp / f"sw{i + 1}"
            d.mkdir()
            ports = [self._vport(n, d) for n in names]
            ports.append({"name": f"h{i + 1}", "type": "tap", "netns": self.ns})
            sw = SwitchProcess(d, ports)
            if self.no_log:
                os.environ["VSWITCH_TEST_NO_DIRTY_LOG"] = "1"
            try:
                await sw.start()
            finally:
                os.environ.pop("VSWITCH_TEST_NO_DIRTY_LOG", None)
            self.switches.append(sw)
            await sw.wait_port(f"h{i + 1}", "up")
            ip(self.ns, "link", "set", f"h{i + 1}", "master", "br0")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop_pinger()
        await asyncio.gather(*(g.kill() for g in self.guests), return_exceptions=True)
        for sw in self.switches:
            await sw.stop()
        delete_netns(self.ns)

    def switch_of(self, port: str) -> SwitchProcess:
        return self.switches[1] if self.two and port == "vmB" else self.switches[0]

    def guest(
        self, where: str, port: str, extra: list[str], kernel_args: list[str] | None = None
    ) -> Guest:
        d = self.tmp / where
        d.mkdir(exist_ok=True)
        sw = self.switch_of(port)
        # The same name (and so the same kernel command line) on both sides: the
        # machines must be alike for the migration stream to load.
        g = Guest(
            "vm", d, nics=[Nic(socket=sw.sock(port), mac=MAC, server=self.client,
                          device_opts="guest_announce=off" if self.announce == "rarp" else "")],
            ips={0: [f"{GUEST_IP}/24"]}, memory_mb=MEM_MB, image_dir=self.image,
            extra_args=["-qmp", f"unix:{d / 'qmp.sock'},server=on,wait=off", *extra],
            kernel_args=kernel_args,
        )  # fmt: skip
        self.guests.append(g)
        return g

    async def start_pinger(self) -> None:
        args = ["timeout", "600", "ip", "netns", "exec", self.ns, "ping", "-D", "-i", "0.01",
                "-W", "1", GUEST_IP]  # fmt: skip
        self.pinger = await asyncio.create_subprocess_exec(
            *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )

        async def read() -> None:
            assert self.pinger is not None and self.pinger.stdout is not None
            async for line in self.pinger.stdout:
                self.ping_lines.append(line.decode(errors="replace"))

        self._ping_task = asyncio.create_task(read())

    async def start_streamer(self) -> None:
        """Frames of an ethertype the guest has no handler for (0x88B5), 1400 bytes, 50 a
        second, to the guest's MAC.  The guest's driver copies their first bytes out and
        drops them, so their buffers' pages are written by the switch alone.  The rate is
        low on purpose: a busy RX ring makes the guest recycle its buffer pages, and each
        recycled page is zeroed by the guest (a write QEMU sees) shortly before the
        switch fills it; at this rate the buffers posted at boot, whose pages QEMU's
        first pass sends early, take the frames, and a write the log misses is lost."""
        code = (
            "import socket, struct, time\n"
            "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
            "s.bind(('br0', 0))\n"
            f"dst = bytes.fromhex('{MAC.replace(':', '')}')\n"
            "src = bytes.fromhex('020000000042')\n"
            "n = 0\n"
            "while True:\n"
            "    n += 1\n"
            "    s.send(dst + src + b'\\x88\\xb5' + struct.pack('>Q', n) * 173)\n"
            "    time.sleep(0.02)\n"
        )
        self.streamer = await asyncio.create_subprocess_exec(
            "timeout", "600", "ip", "netns", "exec", self.ns, "python3", "-c", code,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip

    async def stop_pinger(self) -> None:
        if self.streamer is not None and self.streamer.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.streamer.terminate()
            await self.streamer.wait()
        if self.pinger is not None and self.pinger.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.pinger.terminate()
            await self.pinger.wait()
        if self._ping_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ping_task, 5)
            self._ping_task = None

    async def host_ping(self, count: int = 3) -> None:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.ns, "ping", "-c", str(count), "-W", "5", GUEST_IP,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        out, _ = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, out.decode()

    async def run(self) -> Result:
        res = Result()
        src = self.guest("src", "vmA", [])
        await src.start()
        await src.wait_ready(timeout=240)
        await self.switch_of("vmA").wait_port("vmA", "up")
        await self.host_ping()

        port = free_tcp_port()
        incoming = ["-incoming", f"tcp:127.0.0.1:{port}"] + (["-S"] if self.oracle else [])
        dst = self.guest("dst", "vmB", incoming)
        await dst.start()
        qs = await Qmp(str(self.tmp / "src" / "qmp.sock")).connect()
        qd = await Qmp(str(self.tmp / "dst" / "qmp.sock")).connect()
        try:
            if self.stream:
                await self.start_pinger()
                await self.start_streamer()
            if self.guest_dirty:
                # The guest rewrites 1 MiB of its own every 100 ms for 8 s, so QEMU
                # goes on iterating after its first pass, and pages the switch writes
                # meanwhile were sent before: only the dirty log gets them sent again.
                await src.exec(
                    "(i=0; while [ $i -lt 80 ]; do dd if=/dev/zero of=/tmp/dirty bs=64k "
                    "count=16 conv=notrunc 2>/dev/null; i=$((i+1)); sleep 0.1; done) "
                    ">/dev/null 2>&1 &"
                )
            await asyncio.sleep(1.0)  # the stream is flowing before the first RAM pass
            params: dict[str, Any] = {"max-bandwidth": BANDWIDTH}
            if self.guest_dirty:
                # A 1 ms downtime budget (20 KB at this bandwidth): QEMU iterates
                # for as long as the guest rewrites its megabyte every 100 ms.
                params["downtime-limit"] = 1
            await qs.cmd("migrate-set-parameters", **params)
            await qs.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
            info: dict[str, Any] = {}
            for _ in range(1200):
                info = await qs.cmd("query-migrate")
                if info.get("status") in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.05)
            assert info.get("status") == "completed", info
            res.downtime_ms, res.total_ms = info.get("downtime", -1), info.get("total-time", -1)
            assert await qs.status() == "postmigrate"
            if not self.oracle:
                res.source = (await self.switch_of("vmA").ports())["vmA"]
                raise _Resumed
            for _ in range(100):  # the incoming side finishes loading just after
                if await qd.status() == "paused":
                    break
                await asyncio.sleep(0.1)
            assert await qd.status() == "paused"
            a, b = self.tmp / "src.ram", self.tmp / "dst.ram"
            await qs.cmd("pmemsave", val=0, size=MEM_MB << 20, filename=str(a))
            await qd.cmd("pmemsave", val=0, size=MEM_MB << 20, filename=str(b))
            res.differing_pages, res.differing_streamed = await asyncio.to_thread(
                compare_dumps, a, b, res.pages
            )
            a.unlink()
            b.unlink()
            res.source = (await self.switch_of("vmA").ports())["vmA"]
            if self.no_log or self.guest_dirty:
                return res  # the comparison is the point (see test_migration.py)
            await qd.cmd("cont")
        except _Resumed:
            pass
        finally:
            await qs.close()
            await qd.close()
        await dst.wait_ready(timeout=120)
        await self.switch_of("vmB").wait_port("vmB", "up")
        r = await dst.exec(f"ping -c 3 -W 5 -w 20 {HOST_IP}", timeout=60)
        assert r.rc == 0, r.stdout + r.stderr
        await asyncio.sleep(1.0)
        await self.stop_pinger()
        res.ping_gap_ms = round(longest_gap(self.ping_lines) * 1000, 1)
        res.fdb_port = await self.fdb_port_of(MAC)
        res.destination = (await self.switch_of("vmB").ports())["vmB"]
        if self.two:
            # The RARP crossed the bridge: the first switch has the guest on its uplink.
            res.fdb_first_switch = await self.fdb_port_of(MAC, self.switches[0])
        return res

    async def fdb_port_of(self, mac: str, sw: SwitchProcess | None = None) -> str:
        fdb = {e["mac"]: e for e in await (sw or self.switch_of("vmB")).fdb()}
        return fdb.get(mac, {}).get("port", "")
