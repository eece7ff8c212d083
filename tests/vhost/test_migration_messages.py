"""The migration and hotplug messages against the real server, with test-side front ends:
SET_LOG_BASE (its reply, a repeat replacing the log), LOG_ALL toggled while the rings
run, SET_VRING_ADDR's log flag, SEND_RARP moving the MAC and flooding a RARP, and
GET_MAX_MEM_SLOTS, ADD_MEM_REG and REM_MEM_REG with their refusals.  The QEMU migration
itself is tests/e2e/test_migration.py."""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from support.peers import SoftGuest, announce, frame, macb, open_fds, vports

from vswitch.config import parse_config
from vswitch.daemon.switch import Switch
from vswitch.limits import MAX_MEM_REGIONS
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import F, Req

MA, MB, MC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
PAGE = 4096


@pytest.fixture
async def switch(tmp_path: Path) -> AsyncIterator[Switch]:
    cfg = parse_config({"control": str(tmp_path / "ctl.sock"), "ports": vports(tmp_path, "abc")})
    async with Switch(cfg) as sw:
        yield sw


def sock(sw: Switch, name: str) -> str:
    return str(sw.ports[name].cfg.path)


def sealed_memfd(name: str, size: int) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, size)
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
    return fd


def log_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("vhost-log" in line for line in f)


async def set_log_base(g: SoftGuest, fd: int, size: int, offset: int = 0) -> P.Message:
    await g.fe.send(Req.SET_LOG_BASE, P.LOG_BASE.pack(size, offset), [fd])
    return await g.fe.recv()


async def test_log_base_and_log_all_while_running(switch: Switch) -> None:
    async with SoftGuest(sock(switch, "a"), MA) as a, SoftGuest(sock(switch, "b"), MB) as b:
        await announce(a, b)
        top = max(r.gpa + r.size for r in b.mem.regions)
        size = -(-top // PAGE // 8)
        fd = sealed_memfd("vhost-log", size)
        logmap = mmap.mmap(fd, size)
        try:
            maps = log_maps()
            reply = await set_log_base(b, fd, size)
            # The reply QEMU waits for: the same request, no payload.
            assert (reply.request, reply.payload) == (Req.SET_LOG_BASE, b"")
            assert reply.flags & P.FLAG_REPLY
            assert log_maps() == maps + 1
            # Migration starts: LOG_ALL, the barrier, the ring addresses with the log flag.
            assert await b.fe.set(Req.SET_FEATURES, P.U64.pack(b.acked | 1 << F.LOG_ALL)) == 0
            await b.fe.call(Req.GET_FEATURES)
            addr = P.VRING_ADDR.pack(0, P.VRING_F_LOG, b.rx.desc_ua, b.rx.used_ua, b.rx.avail_ua,
                                     b.rx.used)  # fmt: skip
            assert await b.fe.set(Req.SET_VRING_ADDR, addr) == 0
            await b.fe.call(Req.GET_FEATURES)
            info = switch.ports["b"].info()
            assert info["state"] == "up" and info["migration"]["logging"], info
            # The rings went on: frames still arrive, and their pages are logged.
            await a.send([frame(MB, MA, i, 200) for i in range(10)])
            await b.wait_received(10)
            assert any(logmap[: size])
            assert logmap[b.rx.used // PAGE // 8] & 1 << (b.rx.used // PAGE % 8)
            mig = switch.ports["b"].info()["migration"]
            assert mig["pages_marked"] > 0 and mig["log_bytes"] == size
            # Again (memory grew): the old log is unmapped, the new one used.
            fd2 = sealed_memfd("vhost-log", 2 * size)
            try:
                reply = await set_log_base(b, fd2, 2 * size)
                assert reply.request == Req.SET_LOG_BASE
                assert log_maps() == maps + 1
            finally:
                os.close(fd2)
            # Cancelled: LOG_ALL off, the rings go on, nothing more is logged.
            assert await b.fe.set(Req.SET_FEATURES, P.U64.pack(b.acked)) == 0
            assert not switch.ports["b"].info()["migration"]["logging"]
            await a.send([frame(MB, MA, 99)])
            await b.wait_received(11)
        finally:
            logmap.close()
            os.close(fd)


async def test_log_base_refusals(switch: Switch) -> None:
    async with SoftGuest(sock(switch, "a"), MA) as a:
        unsealed = os.memfd_create("vhost-log", os.MFD_CLOEXEC)
        os.ftruncate(unsealed, PAGE)
        try:
            # REPLY_ACK asked for: a NACK naming nothing changed, and the session goes on.
            await a.fe.send(Req.SET_LOG_BASE, P.LOG_BASE.pack(PAGE, 0), [unsealed],
                            need_reply=True)  # fmt: skip
            assert (await a.fe.recv()).u64() == 1
            assert (await a.fe.call(Req.GET_FEATURES)).u64() == P.OFFERED_FEATURES
            # Past the end of the file: refused too.
            fd = sealed_memfd("vhost-log", PAGE)
            try:
                await a.fe.send(Req.SET_LOG_BASE, P.LOG_BASE.pack(PAGE, 16), [fd],
                                need_reply=True)  # fmt: skip
                assert (await a.fe.recv()).u64() == 1
            finally:
                os.close(fd)
        finally:
            os.close(unsealed)


async def test_send_rarp_moves_the_mac_and_floods_an_announcement(switch: Switch) -> None:
    async with (SoftGuest(sock(switch, "a"), MA) as a, SoftGuest(sock(switch, "b"), MB) as b,
                SoftGuest(sock(switch, "c"), MC) as c):  # fmt: skip
        await announce(a, b, c)
        fdb = {e.mac: e.port for e in switch.dp.fdb_dump()}
        assert fdb[int.from_bytes(macb(MA), "big")] == switch.ports["a"].port
        # "a" moved behind port c (its migration's destination): c's front end says so.
        for _ in range(2):
            assert await c.fe.set(Req.SEND_RARP, macb(MA) + bytes(2)) == 0
        fdb = {e.mac: e.port for e in switch.dp.fdb_dump()}
        assert fdb[int.from_bytes(macb(MA), "big")] == switch.ports["c"].port
        got = await b.wait_received(2)
        rarp = P.rarp_frame(macb(MA))
        assert got == [rarp, rarp] and rarp[12:14] == b"\x80\x35" and len(rarp) == 60
        assert switch.ports["c"].info()["migration"]["announces"] == 2
        # Frames for a go to c now.
        await b.send([frame(MA, MB, 7)])
        assert (await c.wait_received(1))[-1] == frame(MA, MB, 7)


async def test_memory_slots_added_and_removed_while_running(switch: Switch) -> None:
    async with SoftGuest(sock(switch, "a"), MA) as a, SoftGuest(sock(switch, "b"), MB) as b:
        await announce(a, b)
        assert (await b.fe.call(Req.GET_MAX_MEM_SLOTS)).u64() == MAX_MEM_REGIONS
        g0, s0, u0, _o, _fd = b.mem.table()[0]
        dimm = sealed_memfd("dimm", 1 << 20)
        dimm_region = (g0 + (1 << 30), 1 << 20, u0 + (1 << 30), 0)
        payload = P.MEM_SINGLE.pack(0, *dimm_region)
        try:
            before = open_fds()
            assert await b.fe.set(Req.ADD_MEM_REG, payload, [dimm]) == 0
            assert switch.ports["b"].info()["migration"]["mem_regions"] == 2
            # The switch keeps the mapping, not the descriptor.
            assert open_fds() == before
            # The same region again is another queue pair's (QEMU 7.2 sends each region
            # once per pair): taken, mapped once.  One overlapping it is refused (NACK).
            assert await b.fe.set(Req.ADD_MEM_REG, payload, [dimm]) == 0
            assert switch.ports["b"].info()["migration"]["mem_regions"] == 2
            assert open_fds() == before
            overlap = P.MEM_SINGLE.pack(0, g0 + (1 << 30) + PAGE, PAGE, u0 + (2 << 30), 0)
            assert await b.fe.set(Req.ADD_MEM_REG, overlap, [dimm]) == 1
            # The region the rings live in cannot go while they run.
            ring = P.MEM_SINGLE.pack(0, g0, s0, u0, 0)
            assert await b.fe.set(Req.REM_MEM_REG, ring) == 1
            await a.send([frame(MB, MA, 1)])
            await b.wait_received(1)
            # REM_MEM_REG with a descriptor (allowed): it is closed.  The first of the two
            # pairs' removals keeps the mapping, the second unmaps it.
            extra = os.dup(dimm)
            assert await b.fe.set(Req.REM_MEM_REG, payload, [extra]) == 0
            os.close(extra)
            assert switch.ports["b"].info()["migration"]["mem_regions"] == 2
            assert await b.fe.set(Req.REM_MEM_REG, payload) == 0
            assert switch.ports["b"].info()["migration"]["mem_regions"] == 1
            assert await b.fe.set(Req.REM_MEM_REG, payload) == 1  # gone already
            assert open_fds() == before
            assert switch.ports["b"].info()["state"] == "up"
        finally:
            os.close(dimm)


@pytest.mark.parametrize(
    "req,payload,nfds",
    [
        (Req.ADD_MEM_REG, P.MEM_SINGLE.pack(0, 0, PAGE, 0, 0), 0),
        (Req.ADD_MEM_REG, P.MEM_SINGLE.pack(0, 0, PAGE, 0, 0)[:32], 1),
        (Req.REM_MEM_REG, P.MEM_SINGLE.pack(0, 0, PAGE, 0, 0), 2),
        (Req.SET_LOG_BASE, P.LOG_BASE.pack(PAGE, 0), 2),
        (Req.SET_LOG_BASE, P.LOG_BASE.pack(PAGE, 0)[:8], 1),
        (Req.SEND_RARP, b"\x02" * 6, 0),
    ],
    ids=["add-no-fd", "add-short", "rem-two-fds", "log-two-fds", "log-short", "rarp-short"],
)
async def test_malformed_messages_close_only_that_connection(
    switch: Switch, req: int, payload: bytes, nfds: int
) -> None:
    fds = [sealed_memfd("x", PAGE) for _ in range(nfds)]
    before = open_fds()
    try:
        async with SoftGuest(sock(switch, "a"), MA) as a:
            await a.fe.send(req, payload, fds)
            loop = asyncio.get_running_loop()
            assert a.fe.sock is not None
            assert await asyncio.wait_for(loop.sock_recv(a.fe.sock, 64), 2) == b""
        async with SoftGuest(sock(switch, "a"), MA):
            pass
    finally:
        for fd in fds:
            os.close(fd)
    await asyncio.sleep(0.1)
    assert open_fds() <= before + 1
