"""Front ends that attack the switch through what they hand over (issue 12):
eventfds made to block, memory files truncated after SET_MEM_TABLE.

Each test drives the real `vswitch run` with test-side front ends (SoftGuest)
and checks that only the hostile port suffers: the others keep forwarding,
the control socket answers, the daemon lives.

An eventfd's O_NONBLOCK lives on the open file description, which the front
end shares with the switch (SCM_RIGHTS): clearing it on the front end's own
copy clears it for the switch too.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
from pathlib import Path

import pytest
from support.peers import BROADCAST, SoftGuest, announce, frame, log_lines, seq_of, vports
from support.switch_process import SwitchProcess

from vswitch.control import request
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import Req

MACS = {n: f"02:00:00:00:20:{i + 1:02x}" for i, n in enumerate("abc")}
FULL = (0xFFFFFFFFFFFFFFFE).to_bytes(8, "little")  # an eventfd counter that takes nothing more


def make_blocking(fd: int) -> None:
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)


def saturate(fd: int) -> None:
    """Counter to its maximum: the next write of 1 would block (O_NONBLOCK clear)."""
    make_blocking(fd)
    # Empty first (non-blocking read through a poll: the test must not block either).
    os.set_blocking(fd, False)
    try:
        os.read(fd, 8)
    except BlockingIOError:
        pass
    os.write(fd, FULL)
    make_blocking(fd)


async def responsive(sw: SwitchProcess, timeout: float = 3.0) -> None:
    """The control socket answers within timeout (the event loop is not blocked)."""
    await asyncio.wait_for(request(sw.control, "ports"), timeout)


async def honest_pair_forwards(a: SoftGuest, c: SoftGuest, n: int = 100, base: int = 0) -> None:
    """a and c exchange n frames each way, within a few seconds."""
    a.got.clear()
    c.got.clear()
    await a.send([frame(MACS["c"], MACS["a"], base + i) for i in range(n)])
    await c.send([frame(MACS["a"], MACS["c"], base + i) for i in range(n)])
    await c.wait_received(n, timeout=5)
    await a.wait_received(n, timeout=5)
    assert [seq_of(f)[2] for f in c.got[:n]] == list(range(base, base + n))  # type: ignore[index]


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_saturated_call_eventfd_blocks_nobody(tmp_path: Path, datapath: str) -> None:
    """b clears O_NONBLOCK on its RX call eventfd and fills its counter: a
    write of 1 by the switch would block (the poll thread forever, or the
    event loop).  Frames to b go on arriving in its ring, a and c forward,
    the control socket answers."""
    async with SwitchProcess(
        tmp_path, vports(tmp_path, "abc"), switch={"datapath": datapath}
    ) as sw:
        a, b, c = (SoftGuest(sw.sock(n), MACS[n]) for n in "abc")
        try:
            for g in (a, b, c):
                await g.attach()
            await announce(a, b, c)
            saturate(b.call[0])
            saturate(b.call[1])
            # Frames for b (unicast and flooded): each delivery to b ends with an
            # interrupt due on its RX ring; b's own TX ring gets one too.
            await a.send([frame(MACS["b"], MACS["a"], i) for i in range(40)])
            await a.send([frame(BROADCAST, MACS["a"], 1000 + i) for i in range(40)])
            await b.send([frame(MACS["c"], MACS["b"], 2000 + i) for i in range(40)])
            await c.wait_received(80, timeout=5)
            await responsive(sw)
            await honest_pair_forwards(a, c)
            await responsive(sw)
            assert b.rx.pending_used() >= 80  # delivered to b, its interrupt counted as sent
            ports = await sw.ports()
            assert ports["a"]["state"] == ports["c"]["state"] == "up", ports
        finally:
            for g in (a, b, c):
                g.close()


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_saturated_error_eventfd_blocks_nobody(tmp_path: Path, datapath: str) -> None:
    """b's rings break (a bogus avail index) with its error eventfds blocking
    and full: the switch tells b through them (SET_VRING_ERR) without ever
    blocking its event loop on them."""
    async with SwitchProcess(
        tmp_path, vports(tmp_path, "abc"), switch={"datapath": datapath}
    ) as sw:
        a, b, c = (SoftGuest(sw.sock(n), MACS[n]) for n in "abc")
        try:
            for g in (a, b, c):
                await g.attach()
            await announce(a, b, c)
            saturate(b.err[0])
            saturate(b.err[1])
            # An avail index more than the ring size ahead: the ring is broken.
            b.mem.put16(b.tx.avail + 2, (b.tx.avail_idx + b.tx.num + 5) & 0xFFFF)
            os.eventfd_write(b.kick[1], 1)
            await sw.wait_port("b", "broken", timeout=5)
            # check_broken signals the error eventfds within a second of the break.
            await asyncio.sleep(1.5)
            await responsive(sw)
            await honest_pair_forwards(a, c)
            await responsive(sw)
            lines = log_lines(sw.log)
            assert any("port b: ring stopped" in ln for ln in lines), sw.tail()
        finally:
            for g in (a, b, c):
                g.close()


async def test_kick_eventfd_read_with_nothing_in_it_blocks_nobody(tmp_path: Path) -> None:
    """Event-loop data path: the switch serves a ring when it is enabled,
    reading its kick eventfd first.  With O_NONBLOCK cleared by the front end
    and the counter at 0, a plain read() blocks the event loop for good."""
    async with SwitchProcess(tmp_path, vports(tmp_path, "abc"), switch={"datapath": "loop"}) as sw:
        a, b, c = (SoftGuest(sw.sock(n), MACS[n]) for n in "abc")
        try:
            for g in (a, b, c):
                await g.attach()
            await announce(a, b, c)
            for fd in b.kick:
                make_blocking(fd)
            # Enabling a ring again makes the session serve it: a kick read at 0.
            for q in (0, 1):
                assert await b.fe.set(Req.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1)) == 0
            await responsive(sw)
            await honest_pair_forwards(a, c)
            # b itself still works: its kicks are read when they come.
            await b.send([frame(MACS["c"], MACS["b"], 5000 + i) for i in range(20)])
            await c.wait_received(120, timeout=5)
            await responsive(sw)
        finally:
            for g in (a, b, c):
                g.close()


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_memory_truncated_under_traffic_breaks_only_its_port(
    tmp_path: Path, datapath: str
) -> None:
    """b's guest memory is a file that cannot be sealed (like hugetlbfs or
    DPDK's memfds); once mapped, b truncates it.  The switch's next access to
    it faults (SIGBUS): b's port breaks with the fault in its error, and a
    and c, which were sending to b at that moment, keep forwarding and get
    their TX buffers back."""
    async with SwitchProcess(
        tmp_path, vports(tmp_path, "abc"), switch={"datapath": datapath}
    ) as sw:
        assert sw.proc is not None
        a, c = SoftGuest(sw.sock("a"), MACS["a"]), SoftGuest(sw.sock("c"), MACS["c"])
        b = SoftGuest(sw.sock("b"), MACS["b"], seals="unsealable")
        try:
            for g in (a, b, c):
                await g.attach()
            await announce(a, b, c)
            b.mem.truncate(0)  # the test never touches b's memory again
            # Unicast to b, then floods: the switch writes into b's RX ring.
            await a.send([frame(MACS["b"], MACS["a"], i) for i in range(64)])
            await c.send([frame(BROADCAST, MACS["c"], 100 + i) for i in range(64)])
            port = await sw.wait_port("b", "broken", timeout=5)
            assert "SIGBUS" in (port["error"] or ""), port
            await a.wait_sent(timeout=5)
            await c.wait_sent(timeout=5)
            await honest_pair_forwards(a, c, base=1000)
            assert sw.proc.returncode is None
            await responsive(sw)
        finally:
            for g in (a, b, c):
                g.close()
        # b's front end comes back with sound memory: the port works again.
        b2 = SoftGuest(sw.sock("b"), MACS["b"])
        a2 = SoftGuest(sw.sock("a"), MACS["a"])
        try:
            await sw.wait_port("b", "listening", timeout=10)
            await sw.wait_port("a", "listening", timeout=10)
            await b2.attach()
            await a2.attach()
            await a2.send([frame(MACS["b"], MACS["a"], 7)])
            await b2.wait_received(1)
        finally:
            b2.close()
            a2.close()
    assert sw.proc.returncode == 0, sw.tail()


async def test_sealable_but_unsealed_memfd_is_refused(tmp_path: Path) -> None:
    """A memfd that could be sealed against shrinking but is not could be
    truncated under the switch at any time: SET_MEM_TABLE is refused and the
    log says why; a memfd sealed as QEMU seals it is taken."""
    async with SwitchProcess(tmp_path, vports(tmp_path, "ab")) as sw:
        bad = SoftGuest(sw.sock("a"), MACS["a"], seals="none")
        good = SoftGuest(sw.sock("b"), MACS["b"])
        try:
            await bad.attach(strict=False)
            assert "SET_MEM_TABLE" in bad.refused
            await good.attach()
            await sw.wait_port("b", "up", timeout=5)
            assert (await sw.ports())["a"]["state"] != "up"
        finally:
            bad.close()
            good.close()
    assert any("F_SEAL_SHRINK" in ln for ln in log_lines(sw.log)), sw.tail()
