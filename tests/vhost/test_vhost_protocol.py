"""The vhost-user server against a test-side front end: QEMU's message
order, out-of-order setups, malformed and unknown messages, reconnects."""

from __future__ import annotations

import asyncio
import fcntl
import mmap
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from vswitch.config import parse_config
from vswitch.daemon.switch import Switch
from vswitch.errors import StartupError
from vswitch.limits import MAX_QUEUE_PAIRS
from vswitch.testkit.vhost_frontend import QEMU_FEATURES, Frontend, eventfd
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import PF, F, Req

MEM = 2 << 20
GPA = 0x100000
UADDR = 0x7F0000000000
RING = 256
# Ring layout inside guest memory (offsets), one queue pair.
DESC, AVAIL, USED = 0x0, 0x2000, 0x3000


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
async def switch(tmp_path: Path) -> AsyncIterator[Switch]:
    cfg = parse_config(
        {
            "control": str(tmp_path / "ctl.sock"),
            "ports": [
                {"name": "a", "type": "vhost-user", "path": str(tmp_path / "a.sock"), "mtu": 1500},
                {"name": "b", "type": "vhost-user", "path": str(tmp_path / "b.sock")},
            ],
        }
    )
    async with Switch(cfg) as sw:
        yield sw


def sock(sw: Switch, name: str = "a") -> str:
    return str(sw.ports[name].cfg.path)


async def closed_by_server(fe: Frontend) -> bool:
    """True if the server closed the connection (EOF within a second)."""
    assert fe.sock is not None
    loop = asyncio.get_running_loop()
    try:
        data = await asyncio.wait_for(loop.sock_recv(fe.sock, 64), 1.0)
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return data == b""


async def wait_state(sw: Switch, name: str, state: str) -> None:
    for _ in range(100):
        if sw.ports[name].info()["state"] == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"port {name} is {sw.ports[name].info()['state']}, want {state}")


class Memory:
    """Guest memory in a memfd, as QEMU's memory-backend-memfd gives it (sealed:
    seal=on, its default)."""

    def __init__(self, size: int = MEM) -> None:
        self.fd = os.memfd_create("guest", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        os.ftruncate(self.fd, size)
        fcntl.fcntl(
            self.fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        )
        self.map = mmap.mmap(self.fd, size)
        self.size = size

    def region(self) -> tuple[int, int, int, int, int]:
        return (GPA, self.size, UADDR, 0, self.fd)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


async def setup_port(fe: Frontend, mem: Memory) -> list[int]:
    await fe.negotiate()
    assert await fe.set_mem_table([mem.region()]) == 0
    fds = []
    for q in range(2):
        kick, call = eventfd(), eventfd()
        fds += [kick, call]
        base = UADDR + q * 0x10000
        await fe.setup_vring(q, RING, base + DESC, base + USED, base + AVAIL, kick, call)
    return fds


async def test_negotiation_follows_qemu(switch: Switch) -> None:
    async with Frontend(sock(switch)) as fe:
        offered = (await fe.call(Req.GET_FEATURES)).u64()
        assert offered == P.OFFERED_FEATURES
        for f in (F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC, F.EVENT_IDX, F.GUEST_ANNOUNCE, F.MTU,
                  F.IN_ORDER, F.CTRL_VQ, F.MQ):
            assert offered & (1 << f)
        # Never offered: anything we do not implement.
        for f in (F.CSUM, F.GUEST_TSO4, F.HOST_TSO4, F.RING_PACKED):
            assert not offered & (1 << f)
        # Migration: QEMU blocks it without LOG_ALL and LOG_SHMFD.
        assert offered & (1 << F.LOG_ALL)
        pf = (await fe.call(Req.GET_PROTOCOL_FEATURES)).u64()
        for b in (PF.MQ, PF.REPLY_ACK, PF.MTU, PF.STATUS, PF.BACKEND_REQ, PF.LOG_SHMFD, PF.RARP,
                  PF.CONFIGURE_MEM_SLOTS):
            assert pf & (1 << b)
        acked, acked_pf = await fe.negotiate()
        assert acked_pf & (1 << PF.REPLY_ACK)
        assert acked == QEMU_FEATURES & offered
        assert (await fe.call(Req.GET_QUEUE_NUM)).u64() == MAX_QUEUE_PAIRS
        await fe.set(Req.SET_STATUS, P.U64.pack(0x0F))
        assert (await fe.call(Req.GET_STATUS)).u64() == 0x0F
        assert await fe.set(Req.NET_SET_MTU, P.U64.pack(1400)) == 0
        assert switch.ports["a"].info()["mtu"] == 1400
        assert "VERSION_1" in switch.ports["a"].info()["features"]


async def test_refusals_are_nacked_and_the_session_goes_on(switch: Switch) -> None:
    mem = Memory()
    try:
        async with Frontend(sock(switch)) as fe:
            await fe.negotiate()
            assert fe.acks
            # A feature never offered.
            assert await fe.set(Req.SET_FEATURES, P.U64.pack(1 << F.HOST_TSO4)) != 0
            # MTU above the port's configured limit.
            assert await fe.set(Req.NET_SET_MTU, P.U64.pack(9000)) != 0
            # Ring sizes that are not a power of two, or too big.
            for num in (0, 3, 65536):
                assert await fe.set(Req.SET_VRING_NUM, P.VRING_STATE.pack(0, num)) != 0
            # A region the file does not back (reading it would SIGBUS the switch).
            assert await fe.set_mem_table([(GPA, MEM * 2, UADDR, 0, mem.fd)]) != 0
            # Overlapping regions.
            r = mem.region()
            assert await fe.set_mem_table([r, (GPA + 4096, 4096, UADDR + MEM, 0, mem.fd)]) != 0
            # Ring addresses outside guest memory are refused once memory is known.
            assert await fe.set_mem_table([mem.region()]) == 0
            assert await fe.set(Req.SET_VRING_NUM, P.VRING_STATE.pack(0, RING)) == 0
            bad = P.VRING_ADDR.pack(0, 0, 0x1000, 0x2000, 0x3000, 0)
            assert await fe.set(Req.SET_VRING_ADDR, bad) != 0
            # An unknown request that asks for a reply gets a negative one.
            await fe.send(99, b"", need_reply=True)
            assert (await fe.recv()).u64() != 0
            # ...and the session still works.
            assert (await fe.call(Req.GET_FEATURES)).u64() == P.OFFERED_FEATURES
    finally:
        mem.close()


@pytest.mark.parametrize(
    "raw",
    [
        P.encode(Req.SET_VRING_NUM, b"\x00" * 4),  # short payload
        P.encode(Req.SET_FEATURES, b"\x00" * 12),  # long payload
        P.HEADER.pack(Req.GET_FEATURES, 0x2, 0),  # wrong version
        P.HEADER.pack(Req.SET_MEM_TABLE, 1, 1 << 20),  # huge payload size
        P.encode(Req.SET_VRING_NUM, P.VRING_STATE.pack(200, 256)),  # no such vring
        P.encode(Req.SET_MEM_TABLE, P.MEM_HEADER.pack(9, 0)),  # too many regions
        P.encode(Req.SET_MEM_TABLE, P.MEM_HEADER.pack(1, 0) + b"\x00" * 32),  # no fd
        P.encode(Req.SET_VRING_KICK, P.U64.pack(0)),  # kick without its fd
        P.encode(99),  # unknown, no reply requested
        P.encode(Req.SET_LOG_BASE, b"\x00" * 16),  # a log without its fd
    ],
    ids=[
        "short",
        "long",
        "version",
        "huge",
        "vring-index",
        "regions",
        "mem-no-fd",
        "kick-no-fd",
        "unknown",
        "log-base",
    ],
)
async def test_malformed_message_closes_only_that_connection(switch: Switch, raw: bytes) -> None:
    before = open_fds()
    async with Frontend(sock(switch)) as fe:
        await fe.send_raw(raw)
        assert await closed_by_server(fe)
    await wait_state(switch, "a", "listening")
    # The port takes the next front end as if nothing happened.
    async with Frontend(sock(switch)) as fe:
        assert (await fe.call(Req.GET_FEATURES)).u64() == P.OFFERED_FEATURES
    await wait_state(switch, "a", "listening")
    assert open_fds() == before


async def test_stray_descriptors_are_closed(switch: Switch) -> None:
    before = open_fds()
    async with Frontend(sock(switch)) as fe:
        efd = eventfd()
        # SET_OWNER takes no descriptor: the message is refused and the
        # server must not keep the one we passed.
        await fe.send(Req.SET_OWNER, b"", [efd])
        os.close(efd)
        assert await closed_by_server(fe)
    await wait_state(switch, "a", "listening")
    assert open_fds() == before


async def test_out_of_order_setup_and_ring_lifecycle(switch: Switch) -> None:
    mem = Memory()
    fds: list[int] = []
    try:
        # A front end resuming rings (as after a reconnect): the base it sends
        # matches the used index in guest memory.
        for q in range(2):
            for idx in (USED + 2, AVAIL + 2):
                off = q * 0x10000 + idx
                mem.map[off : off + 2] = (7).to_bytes(2, "little")
        async with Frontend(sock(switch)) as fe:
            await fe.negotiate()
            # Rings described before the memory table: accepted, not ready.
            for q in range(2):
                base = UADDR + q * 0x10000
                assert await fe.set(Req.SET_VRING_NUM, P.VRING_STATE.pack(q, RING)) == 0
                assert await fe.set(Req.SET_VRING_BASE, P.VRING_STATE.pack(q, 7)) == 0
                addr = P.VRING_ADDR.pack(q, 0, base + DESC, base + USED, base + AVAIL, 0)
                assert await fe.set(Req.SET_VRING_ADDR, addr) == 0
                kick, call = eventfd(), eventfd()
                fds += [kick, call]
                assert await fe.set(Req.SET_VRING_KICK, P.U64.pack(q), [kick]) == 0
                assert await fe.set(Req.SET_VRING_CALL, P.U64.pack(q), [call]) == 0
            # With PROTOCOL_FEATURES negotiated, rings start disabled.
            assert await fe.set_mem_table([mem.region()]) == 0
            assert switch.ports["a"].info()["state"] == "down"
            for q in range(2):
                assert await fe.set(Req.SET_VRING_ENABLE, P.VRING_STATE.pack(q, 1)) == 0
            assert switch.ports["a"].info()["state"] == "up"
            # The call eventfd is swapped at run time (guest masks interrupts).
            new_call = eventfd()
            fds.append(new_call)
            assert await fe.set(Req.SET_VRING_CALL, P.U64.pack(0), [new_call]) == 0
            assert await fe.set(Req.SET_VRING_CALL, P.U64.pack(0 | P.VRING_NOFD)) == 0
            assert switch.ports["a"].info()["state"] == "up"
            # GET_VRING_BASE stops the ring and returns where it stopped.
            assert await fe.get_vring_base(0) == 7
            assert switch.ports["a"].info()["state"] == "down"
            # A new memory table while set up: accepted.
            assert await fe.set_mem_table([mem.region()]) == 0
    finally:
        for fd in fds:
            os.close(fd)
        mem.close()
    await wait_state(switch, "a", "listening")


async def test_rings_start_enabled_without_protocol_features(switch: Switch) -> None:
    mem = Memory()
    try:
        async with Frontend(sock(switch)) as fe:
            await fe.negotiate(features=QEMU_FEATURES & ~(1 << F.PROTOCOL_FEATURES))
            assert not fe.acks
            fds = []
            assert await fe.set_mem_table([mem.region()]) == 0
            for q in range(2):
                kick, call = eventfd(), eventfd()
                fds += [kick, call]
                base = UADDR + q * 0x10000
                await fe.setup_vring(
                    q, RING, base + DESC, base + USED, base + AVAIL, kick, call, enable=False
                )
            await asyncio.sleep(0.05)
            assert switch.ports["a"].info()["state"] == "up"
            for fd in fds:
                os.close(fd)
    finally:
        mem.close()


async def test_second_front_end_is_refused_and_reconnects_leak_nothing(switch: Switch) -> None:
    mem = Memory()
    try:
        async with Frontend(sock(switch)) as fe:
            fds = await setup_port(fe, mem)
            assert switch.ports["a"].info()["state"] == "up"
            async with Frontend(sock(switch)) as intruder:
                assert await closed_by_server(intruder)
            assert (await fe.call(Req.GET_FEATURES)).u64() == P.OFFERED_FEATURES
            for fd in fds:
                os.close(fd)
        await wait_state(switch, "a", "listening")
        before = open_fds()
        for _ in range(30):
            async with Frontend(sock(switch)) as fe:
                fds = await setup_port(fe, mem)
                for fd in fds:
                    os.close(fd)
            await wait_state(switch, "a", "listening")
        assert open_fds() == before
        assert switch.ports["a"].connects == 31  # the intruder is not counted
    finally:
        mem.close()


async def test_error_and_backend_fds_are_taken_and_released(switch: Switch) -> None:
    before = open_fds()
    async with Frontend(sock(switch)) as fe:
        await fe.negotiate()
        err, backend = eventfd(), socket.socketpair()
        assert await fe.set(Req.SET_VRING_ERR, P.U64.pack(1), [err]) == 0
        assert await fe.set(Req.SET_VRING_ERR, P.U64.pack(1 | P.VRING_NOFD)) == 0
        assert await fe.set(Req.SET_BACKEND_REQ_FD, b"", [backend[1].fileno()]) == 0
        os.close(err)
        backend[1].close()
        # The switch holds the back-end channel until the front end goes away.
        backend[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            backend[0].recv(1)
    await wait_state(switch, "a", "listening")
    assert backend[0].recv(1) == b""  # closed by the switch at disconnect
    backend[0].close()
    assert open_fds() == before


async def test_socket_path_stale_is_replaced_live_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.sock"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: what a crashed run leaves
    cfg = parse_config(
        {
            "control": str(tmp_path / "ctl.sock"),
            "ports": [{"name": "a", "type": "vhost-user", "path": str(path)}],
        }
    )
    async with Switch(cfg):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        cfg2 = parse_config(
            {
                "control": str(tmp_path / "ctl2.sock"),
                "ports": [{"name": "a", "type": "vhost-user", "path": str(path)}],
            }
        )
        with pytest.raises(StartupError, match=str(path)):
            async with Switch(cfg2):
                pass
        assert path.exists()  # the failed second switch left the live socket alone
    assert not path.exists()
