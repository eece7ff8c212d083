"""The soak of issue 12: a real `vswitch run` forwards for an honest pair the whole time
while a front end connects and disconnects (rings set up, traffic) over and over and
hostile front ends of random kinds come and go.  Nothing may leak (descriptors, guest
memory mappings, threads, RSS) and the honest pair may never stall.

CI runs a bounded slice; scripts/soak runs the long one (VSWITCH_SOAK_CYCLES=1000,
VSWITCH_SOAK_HOSTILE=100) and prints the figures."""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from support.peers import (
    SoftGuest,
    frame,
    memfd_maps,
    open_fds,
    raw_connect,
    rss_kib,
    seq_of,
    vports,
)
from support.switch_process import SwitchProcess

from vswitch.testkit.vhost_frontend import Frontend
from vswitch.testkit.virtio_driver import eventfd_take
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import Req

CYCLES = int(os.environ.get("VSWITCH_SOAK_CYCLES", "120"))
HOSTILE = int(os.environ.get("VSWITCH_SOAK_HOSTILE", "30"))
SEED = int(os.environ.get("VSWITCH_SOAK_SEED", "12"))
# The target is 100 ms (scripts/soak holds it); the CI slice shares two cores with the
# rest of the suite, whose scheduling noise alone has reached 85 ms here.
MAX_STALL = float(os.environ.get("VSWITCH_SOAK_MAX_STALL", "0.25"))
PERIOD = 0.002  # the honest pair's frame interval

MACS = {n: f"02:00:00:00:0a:{i:02x}" for i, n in enumerate("abcdh", 1)}


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


class Honest:
    """a sends b a numbered frame every PERIOD; b notes when each arrives."""

    def __init__(self, a: SoftGuest, b: SoftGuest) -> None:
        self.a, self.b = a, b
        self.arrivals: list[float] = []
        self.sent = 0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        async def sender() -> None:
            while not self.stop.is_set():
                await self.a.send([frame(self.b.mac, self.a.mac, self.sent)])
                self.sent += 1
                await asyncio.sleep(PERIOD)

        async def receiver() -> None:
            while not self.stop.is_set():
                for f in self.b.received():
                    s = seq_of(f)
                    if s is not None and s[1] == self.a.mac:
                        self.arrivals.append(time.monotonic())
                await asyncio.sleep(0.001)

        await asyncio.gather(sender(), receiver())

    def longest_gap(self) -> float:
        t = self.arrivals
        return max((b - a for a, b in itertools.pairwise(t)), default=float("inf"))


# Hostile front ends: each opens a connection to port h, misbehaves, and goes.


async def h_garbage(path: str, rng: random.Random) -> None:
    s = await raw_connect(path)
    s.send(rng.randbytes(rng.randrange(1, 200)))
    s.close()


async def h_oversize(path: str, rng: random.Random) -> None:
    s = await raw_connect(path)
    s.send(P.HEADER.pack(Req.SET_MEM_TABLE, 1, 0xFFFFFFFF))
    s.close()


async def h_half_message(path: str, rng: random.Random) -> None:
    s = await raw_connect(path)
    s.send(P.encode(Req.GET_FEATURES)[: rng.randrange(1, P.HEADER.size)])
    s.close()


async def h_unknown_need_reply(path: str, rng: random.Random) -> None:
    async with Frontend(path) as fe:
        await fe.send_raw(P.HEADER.pack(200 + rng.randrange(50), 1 | P.FLAG_NEED_REPLY, 0))
        await fe.recv()  # NACKed, connection kept


async def h_wrong_fd_kind(path: str, rng: random.Random) -> None:
    r, w = os.pipe()
    s1, s2 = socket.socketpair()
    bad = rng.choice([r, w, s1.fileno()])
    try:
        async with Frontend(path) as fe:
            await fe.negotiate()
            if rng.random() < 0.5:
                region = P.MEM_REGION.pack(0, 1 << 20, 0x7F0000000000, 0)
                await fe.send_raw(
                    P.encode(Req.SET_MEM_TABLE, P.MEM_HEADER.pack(1, 0) + region), [bad]
                )
            else:
                await fe.send_raw(P.encode(Req.SET_VRING_KICK, P.U64.pack(1)), [bad])
    finally:
        for fd in (r, w):
            os.close(fd)
        s1.close()
        s2.close()


async def h_mid_setup(path: str, rng: random.Random) -> None:
    g = SoftGuest(path, MACS["h"], num=64, mem_size=1 << 20)
    try:
        await g.fe.connect()
        await g.fe.negotiate()
    finally:
        g.close()


async def h_bad_ring(path: str, rng: random.Random) -> None:
    """A ring whose avail index jumps past the ring, or whose head is out of range."""
    g = SoftGuest(path, MACS["h"], num=64, mem_size=1 << 20)
    try:
        await g.attach()
        if rng.random() < 0.5:
            g.tx.set_avail_idx(g.tx.avail_idx + 64 * 3)
        else:
            g.mem.put16(g.tx.avail + 4, 0xFFFF)  # head 65535 of a 64-entry ring
            g.tx.set_avail_idx(g.tx.avail_idx + 1)
        os.eventfd_write(g.kick[1], 1)
        await asyncio.sleep(0.02)
    finally:
        g.close()


async def h_long_chains(path: str, rng: random.Random) -> None:
    """Chains of hundreds of descriptors (indirect ones too), zero-length pieces included,
    and RX buffers cut into 8-byte heads: bounded work, the frames dropped and counted."""
    g = SoftGuest(path, MACS["h"], num=256, mem_size=4 << 20)
    try:
        await g.attach(rx_buffers=0)
        g.rx.add_rx(8, count=200)
        os.eventfd_write(g.kick[0], 1)
        body = frame("ff:ff:ff:ff:ff:ff", MACS["h"], 0, size=600)
        for indirect in (False, True):
            cuts = sorted(rng.sample(range(1, len(body)), 150))
            g.tx.add_tx(body, bytes(12), split=cuts + cuts[:20], indirect=indirect)
        os.eventfd_write(g.kick[1], 1)
        await asyncio.sleep(0.02)
    finally:
        g.close()


async def h_truncated_memory(path: str, rng: random.Random) -> None:
    """Memory that cannot be sealed, cut to nothing once the rings run (SIGBUS)."""
    g = SoftGuest(path, MACS["h"], num=64, mem_size=1 << 20, seals="unsealable")
    try:
        await g.attach()
        g.mem.truncate(0)
        os.eventfd_write(g.kick[1], 1)
        os.eventfd_write(g.kick[0], 1)
        await asyncio.sleep(0.02)
    finally:
        g.close()


async def h_saturated_call(path: str, rng: random.Random) -> None:
    """Call eventfds made blocking and filled to the brim, then frames to deliver."""
    g = SoftGuest(path, MACS["h"], num=64, mem_size=1 << 20)
    try:
        await g.attach()
        for fd in g.call:
            fill_eventfd(fd)
            os.set_blocking(fd, True)  # the switch shares this open file description
        await g.send([frame("ff:ff:ff:ff:ff:ff", MACS["h"], i) for i in range(8)])
        await asyncio.sleep(0.02)
    finally:
        g.close()


def fill_eventfd(fd: int) -> None:
    """Fills the counter to its maximum while the fd is still non-blocking: a blocking
    write onto a count the switch has raised meanwhile would hang this process."""
    while True:
        eventfd_take(fd)
        try:
            os.eventfd_write(fd, 0xFFFFFFFFFFFFFFFE)
            return
        except BlockingIOError:
            continue


HOSTILE_KINDS: list[Callable[[str, random.Random], Awaitable[None]]] = [
    h_garbage,
    h_oversize,
    h_half_message,
    h_unknown_need_reply,
    h_wrong_fd_kind,
    h_mid_setup,
    h_bad_ring,
    h_long_chains,
    h_truncated_memory,
    h_saturated_call,
]


async def wait_state(sw: SwitchProcess, name: str, states: set[str], timeout: float = 10) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (await sw.ports())[name]["state"] not in states:
        assert loop.time() < deadline, f"port {name} never became {states}:\n{sw.tail()}"
        await asyncio.sleep(0.01)


async def test_soak_honest_pair_forwards_through_churn_and_attacks(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    async with SwitchProcess(tmp_path, vports(tmp_path, "abcdh"), log_level="info") as sw:
        assert sw.proc is not None
        pid = sw.proc.pid
        a = await SoftGuest(sw.sock("a"), MACS["a"]).attach()
        b = await SoftGuest(sw.sock("b"), MACS["b"]).attach()
        d = await SoftGuest(sw.sock("d"), MACS["d"]).attach()
        honest = Honest(a, b)
        pinger = asyncio.create_task(honest.run())

        async def cycle(i: int) -> None:
            # A fresh front end each time: its own memory, eventfds and socket.
            c = SoftGuest(sw.sock("c"), MACS["c"], num=64, mem_size=1 << 20)
            try:
                await c.attach()
                want = len(d.got) + 3
                await c.send([frame(MACS["d"], MACS["c"], i * 3 + k) for k in range(3)])
                await d.wait_received(want)
                await c.wait_sent()
            finally:
                c.close()
            await wait_state(sw, "c", {"listening"})

        async def hostile(i: int) -> str:
            kind = rng.choice(HOSTILE_KINDS)
            await kind(sw.sock("h"), rng)
            await wait_state(sw, "h", {"listening"})
            return kind.__name__

        for i in range(5):  # warm up: lazy allocations in the daemon
            await cycle(i)
        await asyncio.sleep(0.2)
        fds0, maps0, threads0, rss0 = open_fds(pid), memfd_maps(pid), threads(pid), rss_kib(pid)
        honest.arrivals.clear()
        sent0 = honest.sent
        started = time.monotonic()
        kinds: dict[str, int] = {}
        every = max(1, CYCLES // max(1, HOSTILE))
        done_hostile = 0
        for i in range(CYCLES):
            jobs = [cycle(100 + i)]
            if i % every == 0 and done_hostile < HOSTILE:
                jobs.append(hostile(i))
                done_hostile += 1
            for r in await asyncio.gather(*jobs):
                if isinstance(r, str):
                    kinds[r] = kinds.get(r, 0) + 1
        while done_hostile < HOSTILE:
            k = await hostile(done_hostile)
            kinds[k] = kinds.get(k, 0) + 1
            done_hostile += 1
        elapsed = time.monotonic() - started
        honest.stop.set()
        await pinger
        await asyncio.sleep(0.3)
        fds1, maps1, threads1, rss1 = open_fds(pid), memfd_maps(pid), threads(pid), rss_kib(pid)
        gap = honest.longest_gap()
        got, sent = len(honest.arrivals), honest.sent - sent0
        ports = await sw.ports()
        for g in (a, b, d):
            g.close()

    print(
        f"\nsoak: {CYCLES} cycles + {HOSTILE} hostile sessions {kinds} in {elapsed:.1f} s; "
        f"honest pair {got}/{sent} frames, longest gap {gap * 1000:.1f} ms; "
        f"daemon fds {fds0}->{fds1}, memfd maps {maps0}->{maps1}, "
        f"threads {threads0}->{threads1}, RSS {rss0}->{rss1} KiB"
    )
    assert ports["c"]["connects"] == CYCLES + 5
    assert (fds1, maps1, threads1) == (fds0, maps0, threads0)
    assert rss1 - rss0 < 8 * 1024
    # Frames still in flight when the pair stopped are the only ones not counted.
    assert got >= sent - 2, f"the honest pair lost frames: {ports['b']['counters']}"
    assert gap <= MAX_STALL, f"the honest pair stalled {gap * 1000:.0f} ms"
    assert len(kinds) == min(len(HOSTILE_KINDS), HOSTILE) or HOSTILE > 20
