"""Peers for failure tests: a software guest behind a test-side vhost-user
front end, raw half-peers that misbehave, and process resource probes.

SoftGuest is QEMU plus a virtio-net driver in one object: it speaks the
vhost-user protocol to the real switch (vswitch.testkit.vhost_frontend.Frontend) and
drives split rings in its own memfd guest memory (vswitch.testkit.virtio_driver), so a
test can decide exactly what the "guest" does with its rings: post RX buffers
or not, reclaim them or not, send a burst of frames, vanish.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vswitch.testkit.vhost_frontend import QEMU_FEATURES, Frontend
from vswitch.testkit.virtio_driver import (
    F_MRG_RXBUF,
    F_VERSION_1,
    GuestMemory,
    SplitRing,
    eventfd,
    eventfd_take,
    net_hdr,
)
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import Req

ETHERTYPE = 0x88B5  # IEEE local experimental
BROADCAST = "ff:ff:ff:ff:ff:ff"
_SEQ = struct.Struct(">4sI")
_TAG = b"VSWT"


def macb(m: str) -> bytes:
    return bytes.fromhex(m.replace(":", ""))


def frame(dst: str, src: str, seq: int, size: int = 64) -> bytes:
    """An Ethernet frame carrying a sequence number after the ethertype."""
    head = macb(dst) + macb(src) + ETHERTYPE.to_bytes(2, "big") + _SEQ.pack(_TAG, seq)
    return head + bytes(max(0, size - len(head)))


def seq_of(f: bytes) -> tuple[str, str, int] | None:
    """(dst, src, seq) of a frame built by frame(); None for anything else
    (a real guest's or the switch's own frames)."""
    if len(f) < 22 or f[12:14] != ETHERTYPE.to_bytes(2, "big") or f[14:18] != _TAG:
        return None
    dst = ":".join(f"{b:02x}" for b in f[0:6])
    src = ":".join(f"{b:02x}" for b in f[6:12])
    return dst, src, _SEQ.unpack_from(f, 14)[1]


class SoftGuest:
    """A vhost-user front end with a software virtio-net guest behind it.

    attach() plays QEMU's order (features, memory table, both rings) and
    posts `rx_buffers` receive buffers (0: a guest that never posts any).
    With repost=False, received() reads nothing back and posts nothing:
    a guest that stops servicing its RX ring.
    """

    def __init__(
        self,
        path: str,
        mac: str,
        *,
        num: int = 256,
        mem_size: int = 4 << 20,
        features: int = QEMU_FEATURES,
        buf_size: int = 2048,
        poll_tx: bool = False,
        seals: str = "qemu",
    ) -> None:
        self.path = path
        self.mac = mac
        self.features = features
        self.buf_size = buf_size
        # poll_tx: the TX ring gets no kick eventfd (SET_VRING_KICK with the
        # no-fd flag), which asks the back end to poll it.
        self.poll_tx = poll_tx
        self.fe = Frontend(path)
        self.mem = GuestMemory.single(mem_size, seals=seals)
        self.num = num
        self.rx = SplitRing(self.mem, num)
        self.tx = SplitRing(self.mem, num)
        self.kick = [eventfd(), eventfd()]
        self.call = [eventfd(), eventfd()]
        self.err = [eventfd(), eventfd()]
        self.hdr_len = 12
        self.acked = 0
        self.got: list[bytes] = []
        self.sent = 0
        self._closed = False

    async def attach(
        self, rx_buffers: int | None = None, sock: socket.socket | None = None, strict: bool = True
    ) -> SoftGuest:
        """Set up; on `sock` when given (an already connected socket).
        A refused (NACKed) step fails unless strict=False: then it is
        recorded in self.refused and the setup goes on."""
        if sock is not None:
            self.fe.sock = sock
        else:
            await self.fe.connect()
        self.refused: list[str] = []
        self.acked, _ = await self.fe.negotiate(self.features)
        self.hdr_len = 12 if self.acked & (F_MRG_RXBUF | F_VERSION_1) else 10

        mem = P.MEM_HEADER.pack(1, 0) + P.MEM_REGION.pack(*self.mem.table()[0][:4])
        await self._step(Req.SET_MEM_TABLE, mem, [self.mem.fd], strict)
        await self.start_rings(strict)
        self.post_rx(self.rx.num if rx_buffers is None else rx_buffers)
        return self

    async def _step(
        self, req: int, payload: bytes, fds: list[int] | None = None, strict: bool = True
    ) -> None:
        if await self.fe.set(req, payload, fds or []) != 0:
            assert not strict, f"{self.mac}: {P.request_name(req)} refused"
            self.refused.append(P.request_name(req))

    async def start_rings(self, strict: bool = True) -> None:
        """Both rings, in QEMU's order (also what a device reset replays)."""
        for q, r in enumerate((self.rx, self.tx)):
            await self._step(Req.SET_VRING_NUM, P.VRING_STATE.pack(q, r.num), None, strict)
            await self._step(Req.SET_VRING_BASE, P.VRING_STATE.pack(q, 0), None, strict)
            addr = P.VRING_ADDR.pack(q, 0, r.desc_ua, r.used_ua, r.avail_ua, 0)
            await self._step(Req.SET_VRING_ADDR, addr, None, strict)
            if q == 1 and self.poll_tx:
                await self._step(Req.SET_VRING_KICK, P.U64.pack(q | P.VRING_NOFD), None, strict)
            else:
                await self._step(Req.SET_VRING_KICK, P.U64.pack(q), [self.kick[q]], strict)
            await self._step(Req.SET_VRING_CALL, P.U64.pack(q), [self.call[q]], strict)
            await self._step(Req.SET_VRING_ERR, P.U64.pack(q), [self.err[q]], strict)
            await self._step(Req.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1), None, strict)

    async def reset_device(self, rx_buffers: int | None = None) -> None:
        """What a guest's device reset does: QEMU stops both rings
        (GET_VRING_BASE), the driver lays out fresh rings, and QEMU starts
        them again over the same connection and memory table."""
        for q in (0, 1):
            await self.fe.get_vring_base(q)
        for fd in self.kick + self.call + self.err:
            os.close(fd)
        self.kick = [eventfd(), eventfd()]
        self.call = [eventfd(), eventfd()]
        self.err = [eventfd(), eventfd()]
        for r in (self.rx, self.tx):
            for chain in r.chains.values():
                for a, ln in chain.allocs:
                    self.mem.free(a, ln)
            r.chains.clear()
        self.rx = SplitRing(self.mem, self.num)
        self.tx = SplitRing(self.mem, self.num)
        await self.start_rings()
        self.post_rx(self.rx.num if rx_buffers is None else rx_buffers)

    # Receive side

    def post_rx(self, count: int) -> None:
        count = min(count, len(self.rx.free_ids))
        if count:
            self.rx.add_rx(self.buf_size, count)
            os.eventfd_write(self.kick[0], 1)

    def received(self, repost: bool = True) -> list[bytes]:
        """Frames the switch delivered since last time (mergeable buffers
        reassembled); with repost, as many fresh buffers are posted."""
        used = self.rx.reclaim()
        out = []
        i = 0
        while i < len(used):
            data = used[i].data
            n = 1
            if self.acked & F_MRG_RXBUF:
                n = struct.unpack_from("<H", data, 10)[0]
                assert n >= 1, f"num_buffers {n}"
            body = data[self.hdr_len :] + b"".join(u.data for u in used[i + 1 : i + n])
            out.append(body)
            i += n
        if repost:
            self.post_rx(len(used))
        _take(self.call[0])
        self.got += out
        return out

    async def wait_received(self, n: int, timeout: float = 10.0) -> list[bytes]:
        """Poll until at least n frames in all were received (self.got)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(self.got) < n:
            self.received()
            if len(self.got) >= n:
                break
            if loop.time() > deadline:
                raise AssertionError(f"{self.mac}: {len(self.got)} frames received, want {n}")
            await asyncio.sleep(0.002)
        return self.got

    # Transmit side

    def _reclaim_tx(self) -> int:
        done = self.tx.reclaim()
        _take(self.call[1])
        return len(done)

    async def send(self, frames: Iterable[bytes], timeout: float = 10.0) -> None:
        """Queue the frames on the TX ring and kick; waits for ring room when
        the switch has not consumed earlier frames yet."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        hdr = net_hdr(self.hdr_len, num_buffers=0)
        queued = 0
        for f in frames:
            while not self.tx.free_ids:
                self._reclaim_tx()
                if self.tx.free_ids:
                    break
                if queued:
                    os.eventfd_write(self.kick[1], 1)
                    queued = 0
                if loop.time() > deadline:
                    raise AssertionError(f"{self.mac}: the switch stopped taking frames")
                await asyncio.sleep(0.001)
            self.tx.add_tx(f, hdr)
            queued += 1
            self.sent += 1
            if queued >= 32:
                os.eventfd_write(self.kick[1], 1)
                queued = 0
        if queued:
            os.eventfd_write(self.kick[1], 1)

    async def wait_sent(self, timeout: float = 10.0) -> None:
        """Until the switch has taken every frame queued on the TX ring."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.tx.chains:
            self._reclaim_tx()
            if not self.tx.chains:
                return
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.mac}: {len(self.tx.chains)} frames still on the TX ring"
                )
            os.eventfd_write(self.kick[1], 1)
            await asyncio.sleep(0.002)

    async def get_features(self) -> int:
        return (await self.fe.call(Req.GET_FEATURES)).u64()

    def close(self) -> None:
        """The front end goes away (as QEMU killed: no GET_VRING_BASE)."""
        if self._closed:
            return
        self._closed = True
        self.fe.close()
        for fd in self.kick + self.call + self.err:
            os.close(fd)
        self.mem.close()

    async def __aenter__(self) -> SoftGuest:
        return await self.attach()

    async def __aexit__(self, *exc: object) -> None:
        self.close()



def vports(tmp: Path, names: str) -> list[dict[str, Any]]:
    """Server-mode vhost-user ports named by the letters of `names`."""
    return [{"name": n, "type": "vhost-user", "path": str(tmp / f"{n}.sock")} for n in names]


async def announce(*guests: SoftGuest) -> None:
    """Each guest broadcasts once, so the switch learns every MAC."""
    for g in guests:
        await g.send([frame(BROADCAST, g.mac, 0)])
    for g in guests:
        await g.wait_received(len(guests) - 1)
        g.got.clear()

def _take(fd: int) -> None:
    """Consume interrupts; a test may have swapped the eventfd for
    something else (a pipe end), which is not ours to read."""
    try:
        eventfd_take(fd)
    except OSError:
        pass


# Misbehaving half-peers


async def raw_connect(path: str, timeout: float = 5.0) -> socket.socket:
    fe = Frontend(path)
    await fe.connect(timeout)
    assert fe.sock is not None
    return fe.sock


async def served(sock: socket.socket, timeout: float = 5.0) -> bool:
    """Sends GET_FEATURES: True if the switch answers, False if it closed
    the connection (a refused second front end)."""
    loop = asyncio.get_running_loop()
    try:
        await loop.sock_sendall(sock, P.encode(Req.GET_FEATURES))
        data = b""
        while len(data) < P.HEADER.size + 8:
            chunk = await asyncio.wait_for(loop.sock_recv(sock, 64), timeout)
            if not chunk:
                return False
            data += chunk
    except (BrokenPipeError, ConnectionResetError):
        return False
    req, flags, size = P.HEADER.unpack_from(data)
    assert req == Req.GET_FEATURES and flags & P.FLAG_REPLY and size == 8, data
    return True


async def closed_by_peer(sock: socket.socket, timeout: float = 1.0) -> bool:
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(sock, 64), timeout)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return data == b""


# Resource probes (for the process they run in)


def open_fds(pid: int | str = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def memfd_maps(pid: int | str = "self") -> int:
    """Mappings of memfd files (guest memory) in the process."""
    with open(f"/proc/{pid}/maps") as f:
        return sum(1 for line in f if "/memfd:" in line)


def rss_kib(pid: int | str = "self") -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert m is not None
    return int(m.group(1))


def busy_seconds(pid: int | str = "self") -> float:
    """Time the process's threads spent running or waiting to run (runnable),
    from /proc/PID/task/*/schedstat.  A thread that sleeps adds nothing; one
    that spins adds wall-clock time however loaded the machine is (CPU time
    alone would not: a spinner on a busy machine gets little of it)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            run, wait, _ = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except (OSError, ValueError):
            continue
        total += int(run) + int(wait)
    return total / 1e9


def log_lines(path: Path, start: int = 0) -> list[str]:
    """Lines of a log file from byte offset `start`."""
    with open(path, "rb") as f:
        f.seek(start)
        return f.read().decode(errors="replace").splitlines()


def count(lines: Iterable[str], pattern: str) -> int:
    rx = re.compile(pattern)
    return sum(1 for line in lines if rx.search(line))
