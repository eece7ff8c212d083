"""Ring life cycles seen through the real `vswitch run`, with software guests
(tests/support/peers.SoftGuest) that do exactly what a test needs: a TX ring with no
kick eventfd (polled), a ring that turns bad, memory tables that change
while frames flow, RESET_OWNER, and a device reset after a ring error."""

from __future__ import annotations

import asyncio
import os
import select
from pathlib import Path

import pytest
from support.peers import (
    SoftGuest,
    announce,
    busy_seconds,
    count,
    frame,
    log_lines,
    memfd_maps,
    seq_of,
    vports,
)
from support.switch_process import SwitchProcess

from vswitch.testkit.virtio_driver import GuestMemory, net_hdr
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import Req

MACS = {n: f"02:00:00:00:20:{i + 1:02x}" for i, n in enumerate("abcd")}




def seqs(frames: list[bytes], src: str) -> list[int]:
    out = []
    for f in frames:
        s = seq_of(f)
        if s is not None and s[1] == src:
            out.append(s[2])
    return out


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_tx_ring_without_kick_fd_is_polled(tmp_path: Path, datapath: str) -> None:
    """SET_VRING_KICK with the no-fd flag asks the back end to poll the ring
    (vhost-user.rst): frames a queues without ever kicking reach b, and
    polling does not turn into a busy loop."""
    async with SwitchProcess(tmp_path, vports(tmp_path, "ab"), switch={"datapath": datapath}) as sw:
        assert sw.proc is not None
        a = SoftGuest(sw.sock("a"), MACS["a"], poll_tx=True)
        b = SoftGuest(sw.sock("b"), MACS["b"])
        try:
            await a.attach()
            await b.attach()
            await sw.wait_port("a", "up", timeout=10)
            await announce(a, b)
            # Nothing a does reaches the switch's kick fd: a has none.  (In
            # rounds that fit b's RX ring: b reposts between them.)
            for k in range(0, 600, 200):
                await a.send([frame(MACS["b"], MACS["a"], k + i) for i in range(200)])
                await b.wait_received(k + 200)
            assert seqs(b.got, MACS["a"]) == list(range(600))
            await a.wait_sent()
            await asyncio.sleep(0.5)
            busy0 = busy_seconds(sw.proc.pid)
            await asyncio.sleep(2.0)
            busy = busy_seconds(sw.proc.pid) - busy0
            # And the other way round, to a's kicked RX side.
            await b.send([frame(MACS["a"], MACS["b"], 7)])
            assert seqs(await a.wait_received(1), MACS["b"]) == [7]
        finally:
            a.close()
            b.close()
    # Polling a ring nobody kicks costs wake-ups, not a core.
    assert busy < 0.5, f"the switch was busy {busy:.2f}s of 2s polling an idle ring"
    assert count(log_lines(sw.log), r"port a: vring 1 has no kick eventfd: polled") == 1


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_a_bad_ring_stops_its_port_only_and_a_reset_brings_it_back(
    tmp_path: Path, datapath: str
) -> None:
    """A descriptor pointing outside a's memory: a's port stops (logged once
    with the reason, counted, a's error eventfd signalled), b and c keep
    forwarding, and a device reset on the same connection brings a back."""
    async with SwitchProcess(
        tmp_path, vports(tmp_path, "abc"), switch={"datapath": datapath}
    ) as sw:
        a = SoftGuest(sw.sock("a"), MACS["a"])
        b = SoftGuest(sw.sock("b"), MACS["b"])
        c = SoftGuest(sw.sock("c"), MACS["c"])
        try:
            for g in (a, b, c):
                await g.attach()
            await announce(a, b, c)
            assert not readable(a.err[1])

            head = a.tx.add_tx(frame(MACS["b"], MACS["a"], 1), net_hdr(a.hdr_len), publish=False)
            _, ln, flags, nxt = a.tx.read_desc(head)
            a.tx.write_desc(head, 0xDEAD_0000_0000, ln, flags, nxt)
            a.tx.publish(head)
            os.eventfd_write(a.kick[1], 1)
            port = await sw.wait_port("a", "broken", timeout=10)
            assert port["counters"]["ring_errors"] == 1, port
            assert "outside" in port["error"] or "address" in port["error"], port

            deadline = asyncio.get_running_loop().time() + 5
            while not readable(a.err[1]):
                assert asyncio.get_running_loop().time() < deadline, "error eventfd not signalled"
                await asyncio.sleep(0.05)

            # Everyone else is unaffected.
            await b.send([frame(MACS["c"], MACS["b"], k) for k in range(50)])
            assert seqs(await c.wait_received(50), MACS["b"]) == list(range(50))
            # More bad frames from a change nothing and log nothing more.
            os.eventfd_write(a.kick[1], 1)
            await asyncio.sleep(1.5)  # past a poll-thread ring check
            assert (await sw.ports())["a"]["counters"]["ring_errors"] == 1

            # The guest resets the device: GET_VRING_BASE, fresh rings.
            await a.reset_device()
            await sw.wait_port("a", "up", timeout=10)
            c.got.clear()
            await a.send([frame(MACS["c"], MACS["a"], k) for k in range(20)])
            assert seqs(await c.wait_received(20), MACS["a"]) == list(range(20))
        finally:
            for g in (a, b, c):
                g.close()
    lines = log_lines(sw.log)
    assert count(lines, r"port a: ring stopped: ") == 1, sw.tail()
    assert count(lines, r"port [bc]: ring stopped") == 0


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_memory_table_changes_while_frames_flow(tmp_path: Path, datapath: str) -> None:
    """QEMU sends a new memory table whenever guest memory is plugged or
    unplugged, while the rings run.  b's table changes 40 times (a region
    added, then removed again) while a sends to b: every frame arrives, in
    order, no ring breaks, and the old mappings are released."""
    async with SwitchProcess(tmp_path, vports(tmp_path, "ab"), switch={"datapath": datapath}) as sw:
        assert sw.proc is not None
        a = SoftGuest(sw.sock("a"), MACS["a"])
        b = SoftGuest(sw.sock("b"), MACS["b"])
        extra = GuestMemory.single(1 << 20, gpa=0x4000_0000, uaddr=0x7F10_0000_0000)
        try:
            await a.attach()
            await b.attach()
            await announce(a, b)
            maps0 = memfd_maps(sw.proc.pid)
            base = P.MEM_REGION.pack(*b.mem.table()[0][:4])
            plugged = P.MEM_REGION.pack(*extra.table()[0][:4])
            total = 4000

            async def sender() -> None:
                # Up to 100 frames in flight: b's RX ring (256) never runs dry.
                for k in range(0, total, 50):
                    await a.send([frame(MACS["b"], MACS["a"], k + i) for i in range(50)])
                    await b.wait_received(k - 50, timeout=30)

            async def replug() -> None:
                for i in range(40):
                    if i % 2 == 0:
                        table = P.MEM_HEADER.pack(2, 0) + base + plugged
                        fds = [b.mem.fd, extra.fd]
                    else:
                        table = P.MEM_HEADER.pack(1, 0) + base
                        fds = [b.mem.fd]
                    assert await b.fe.set(Req.SET_MEM_TABLE, table, fds) == 0
                    await asyncio.sleep(0.005)

            await asyncio.gather(sender(), replug())
            await b.wait_received(total, timeout=30)
            assert seqs(b.got, MACS["a"]) == list(range(total))
            info = await sw.ports()
            assert info["b"]["state"] == "up", info["b"]
            assert info["b"]["counters"]["ring_errors"] == 0, info["b"]
            assert info["b"]["counters"]["tx_drop_no_buffer"] == 0, info["b"]
            # The last table has one region, like the first: no mapping piles up.
            assert memfd_maps(sw.proc.pid) == maps0
        finally:
            a.close()
            b.close()
            extra.close()


async def test_reset_owner_disables_the_rings_and_keeps_the_session(tmp_path: Path) -> None:
    """RESET_OWNER is deprecated; vhost-user.rst recommends taking it as
    "disable all rings", not as a reset of the connection's state.  After it
    the port is down and takes nothing; starting the rings again (without a
    new memory table or feature negotiation) brings it back."""
    async with SwitchProcess(tmp_path, vports(tmp_path, "ab")) as sw:
        a = SoftGuest(sw.sock("a"), MACS["a"])
        b = SoftGuest(sw.sock("b"), MACS["b"])
        try:
            await a.attach()
            await b.attach()
            await announce(a, b)
            assert await a.fe.set(Req.RESET_OWNER) == 0
            await sw.wait_port("a", "down", timeout=10)
            await a.send([frame(MACS["b"], MACS["a"], 1)])
            await asyncio.sleep(0.5)
            assert b.received() == []
            port = (await sw.ports())["a"]
            assert port["counters"]["rx_packets"] == 1, port  # the announce only
            assert port["features"], port  # negotiated features survive
            await a.reset_device()
            await sw.wait_port("a", "up", timeout=10)
            await a.send([frame(MACS["b"], MACS["a"], k) for k in range(2, 12)])
            assert seqs(await b.wait_received(10), MACS["a"]) == list(range(2, 12))
        finally:
            a.close()
            b.close()
