"""Hostile input to the vhost-user device side, fuzzed with hypothesis.

A real in-process Switch (on uvloop, as `vswitch run` runs it) gets message
sequences through vswitch.testkit.vhost_frontend.Frontend.send_raw: known and unknown
requests, any flags, payload sizes that match the header or not (and over
the maximum), random payloads and structured ones (vring states and
addresses, memory tables), and descriptors of every kind attached to any
message (eventfds, a blocking eventfd about to saturate, memfds, one that shrinks to
nothing under the rings, one that could be sealed but is not, sockets, pipes, /dev/null,
a directory).  A
second generator follows QEMU's valid order and corrupts one thing.

After every example:
  - no exception escaped the session task, the event loop's exception
    handler saw nothing, and no log record carries a traceback;
  - the port takes a fresh front end, which gets GET_FEATURES answered;
  - no descriptor leaked (/proc/self/fd) and no guest memory stays mapped
    (memfd lines of /proc/self/maps).

VSWITCH_FUZZ_EXAMPLES sets the number of examples per generator and
datapath mode (default 150: 600 in all); raise it for longer local runs.
Failing examples are kept in build/hypothesis and replayed first.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import socket
import struct
import tempfile
import termios
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import uvloop
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from support.peers import (
    SoftGuest,
    announce,
    busy_seconds,
    frame,
    memfd_maps,
    open_fds,
    vports,
)
from support.switch_process import ROOT, SwitchProcess

from vswitch.config import parse_config
from vswitch.daemon.switch import Switch
from vswitch.testkit.vhost_frontend import QEMU_FEATURES, QEMU_PROTOCOL_FEATURES, Frontend
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import F, Req

# Per test and datapath mode: 2 generators x 2 modes x 150 = 600 examples.
EXAMPLES = int(os.environ.get("VSWITCH_FUZZ_EXAMPLES", "150"))

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(ROOT / "build" / "hypothesis")),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

# Guest memory of the valid sequence (and of memfds attached at random).
MEM = 2 << 20
GPA = 0x100000
UADDR = 0x7F0000000000
RING = 256
DESC, AVAIL, USED = 0x0, 0x2000, 0x3000


# Descriptors a front end can attach


FD_KINDS = [
    "eventfd",
    "eventfd-full",  # blocking, its counter one short of full: a write to it would block
    "memfd",
    "memfd-empty",
    "memfd-shrinks",  # cut to nothing once the messages are sent (under the rings)
    "memfd-sealable",  # could be sealed against shrinking, but is not
    "memfd-sealed",  # sealed as QEMU seals its memory and its dirty log
    "socket",
    "pipe-r",
    "pipe-w",
    "devnull",
    "dir",
]


class Fds:
    """Every descriptor an example creates; closed after the switch is done."""

    def __init__(self) -> None:
        self.fds: list[int] = []
        self.eventfds: list[int] = []
        self.shrinks: list[int] = []
        self.keep: list[Any] = []

    def make(self, kind: str) -> int:
        if kind == "eventfd":
            fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            self.eventfds.append(fd)
        elif kind == "eventfd-full":
            fd = os.eventfd(0, os.EFD_CLOEXEC)
            os.eventfd_write(fd, 0xFFFFFFFFFFFFFFFE)
        elif kind.startswith("memfd"):
            sealing = os.MFD_ALLOW_SEALING if kind in ("memfd-sealable", "memfd-sealed") else 0
            fd = os.memfd_create("fuzz", os.MFD_CLOEXEC | sealing)
            if kind != "memfd-empty":
                os.ftruncate(fd, MEM)
            if kind == "memfd-sealed":
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
            if kind == "memfd-shrinks":
                self.shrinks.append(fd)
        elif kind == "socket":
            a, b = socket.socketpair()
            self.keep.append(b)
            fd = a.detach()
        elif kind.startswith("pipe"):
            r, w = os.pipe2(os.O_CLOEXEC)  # blocking, as a careless front end's would be
            fd, other = (r, w) if kind == "pipe-r" else (w, r)
            self.fds.append(other)
        elif kind == "devnull":
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        elif kind == "dir":
            fd = os.open(tempfile.gettempdir(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            raise ValueError(kind)
        self.fds.append(fd)
        return fd

    def kick_all(self) -> None:
        for fd in self.shrinks:
            os.ftruncate(fd, 0)  # the switch may have it mapped: its next access faults
        for fd in self.eventfds:
            os.eventfd_write(fd, 1)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        for s in self.keep:
            s.close()
        self.fds.clear()
        self.eventfds.clear()
        self.shrinks.clear()
        self.keep.clear()


def fd_table() -> dict[int, str]:
    out = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            out[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:
            pass
    return out


# The switch under test, in its own uvloop event loop


class Harness:
    def __init__(self, tmp: Path, datapath: str) -> None:
        self.tmp = tmp
        self.loop = uvloop.new_event_loop()
        self.loop_errors: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        self.bad_records: list[logging.LogRecord] = []
        self.handler = _Collect(self.bad_records)
        logging.getLogger("vswitch").addHandler(self.handler)
        cfg = parse_config(
            {
                "control": str(tmp / "ctl.sock"),
                "switch": {"datapath": datapath},
                "ports": [
                    {"name": n, "type": "vhost-user", "path": str(tmp / f"{n}.sock")} for n in "ab"
                ],
            }
        )
        self.sw = Switch(cfg)
        self.run(self.sw.__aenter__())
        self.examples = 0
        self.fds_before: dict[int, str] = {}

    def path(self, name: str = "a") -> str:
        return str(self.tmp / f"{name}.sock")

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        try:
            self.run(self.sw.__aexit__(None, None, None))
        finally:
            logging.getLogger("vswitch").removeHandler(self.handler)
            self.loop.close()

    async def session_gone(self, name: str = "a", timeout: float = 5.0) -> None:
        port = self.sw.ports[name]
        deadline = time.monotonic() + timeout
        while port.session is not None:
            if time.monotonic() > deadline:
                raise AssertionError(f"port {name}: the session did not end after EOF")
            await asyncio.sleep(0.001)

    async def check(self, fds0: int, maps0: int) -> None:
        """The invariants that must hold after any example."""
        port = self.sw.ports["a"]
        task = port._session_task
        if task is not None:
            assert task.done()
            if not task.cancelled() and task.exception() is not None:
                raise AssertionError("an exception escaped the session") from task.exception()
        assert not self.loop_errors, self.loop_errors
        assert not self.bad_records, [r.getMessage() for r in self.bad_records]
        # The port takes the next front end.
        async with Frontend(self.path()) as fe:
            assert (await fe.call(Req.GET_FEATURES)).u64() == P.OFFERED_FEATURES
        await self.session_gone()
        assert port.info()["state"] == "listening"
        # Nothing leaked (the poll thread's epoll fd is rebuilt after every
        # pause: look again if a count was caught mid-rebuild).
        for _ in range(50):
            if open_fds() == fds0 and memfd_maps() == maps0:
                break
            await asyncio.sleep(0.01)
        if open_fds() != fds0:
            now = fd_table()
            new = {fd: t for fd, t in now.items() if self.fds_before.get(fd) != t}
            gone = {fd: t for fd, t in self.fds_before.items() if now.get(fd) != t}
            raise AssertionError(
                f"descriptors: {fds0} before, {len(now)} after: new {new}, gone {gone}"
            )
        assert memfd_maps() == maps0, f"memfd mappings: {maps0} before, {memfd_maps()} after"


class _Collect(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.CRITICAL or "Traceback" in str(record.msg):
            self.into.append(record)


@pytest.fixture(scope="module", params=["thread", "loop"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    with tempfile.TemporaryDirectory(prefix="vswitch-fuzz-") as tmp:
        h = Harness(Path(tmp), request.param)
        try:
            yield h
        finally:
            h.close()


# Playing a sequence


@dataclass
class Msg:
    request: int
    flags: int
    payload: bytes
    size: int | None = None  # the header's size field; None = len(payload)
    fds: list[str] = field(default_factory=list)

    def wire(self) -> bytes:
        size = len(self.payload) if self.size is None else self.size
        return P.HEADER.pack(self.request, self.flags, size) + self.payload

    def __repr__(self) -> str:
        size = "" if self.size is None else f" size={self.size}"
        fds = f" fds={self.fds}" if self.fds else ""
        return (
            f"<{P.request_name(self.request)} flags={self.flags:#x}{size}"
            f" payload={self.payload[:48].hex()}{'...' if len(self.payload) > 48 else ''}{fds}>"
        )


def _drain(sock: socket.socket) -> bool:
    """Reads what the switch sent; False once it closed the connection."""
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return True
        except ConnectionResetError:
            return False
        if not data:
            return False


async def _send(fe: Frontend, data: bytes, fds: list[int]) -> bool:
    """send_raw, reading replies meanwhile so that the switch never blocks on
    a full socket; False if the switch has closed the connection."""
    assert fe.sock is not None
    deadline = time.monotonic() + 5
    while True:
        try:
            await fe.send_raw(data, fds)
            return True
        except BlockingIOError:
            if not _drain(fe.sock):
                return False
            assert time.monotonic() < deadline, "the switch stopped reading"
            await asyncio.sleep(0.001)
        except (BrokenPipeError, ConnectionResetError):
            return False


Hook = Callable[[Fds], Awaitable[None]]


async def play(h: Harness, msgs: list[Msg], before_close: Hook | None = None) -> None:
    fds = Fds()
    fe = Frontend(h.path())
    await fe.connect()
    assert fe.sock is not None
    try:
        for m in msgs:
            if not await _send(fe, m.wire(), [fds.make(k) for k in m.fds]):
                break
            if not _drain(fe.sock):
                break
            await asyncio.sleep(0)  # let the switch handle it now and then
        if before_close is not None:
            await before_close(fds)
        # Half-close: the switch reads everything sent, then EOF, and closes.
        try:
            fe.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        deadline = time.monotonic() + 5
        while _drain(fe.sock):
            assert time.monotonic() < deadline, "the switch did not close after EOF"
            await asyncio.sleep(0.001)
    finally:
        fe.close()
    await h.session_gone()
    fds.close()


def run_example(h: Harness, msgs: list[Msg], before_close: Hook | None = None) -> None:
    h.examples += 1

    async def go() -> None:
        # Counted with the loop running (uvloop holds a socket pair for
        # signals only while it runs).
        fds0, maps0 = open_fds(), memfd_maps()
        h.fds_before = fd_table()
        await play(h, msgs, before_close)
        await h.check(fds0, maps0)

    h.run(go())


# Strategies: anything at all

KNOWN = [int(r) for r in Req]
INTERESTING_U32 = [0, 1, 2, 3, 7, 8, 255, 256, 257, 0x100, 0x1FF, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
                   32768, 65536, 2**31 - 1, 2**31, 2**32 - 1]  # fmt: skip
INTERESTING_U64 = [0, 1, 0x1000, GPA, MEM, MEM - 1, MEM + 1, GPA + MEM, UADDR, UADDR + MEM,
                   2**32, 2**48, 2**63, 2**64 - 0x1000, 2**64 - 1]  # fmt: skip

u32 = st.one_of(st.sampled_from(INTERESTING_U32), st.integers(0, 2**32 - 1))
u64 = st.one_of(st.sampled_from(INTERESTING_U64 + INTERESTING_U32), st.integers(0, 2**64 - 1))
requests = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN),
    st.sampled_from([0, 41, 42, 99, 0xFF, 0x100, 2**31, 2**32 - 1]),
    st.integers(0, 2**32 - 1),
)
flags = st.one_of(
    st.sampled_from([1, 1, 1 | P.FLAG_NEED_REPLY, 1 | P.FLAG_REPLY, 0, 2, 3, 1 | 0x10, 0xFFFFFFFF]),
    st.integers(0, 2**32 - 1),
)


@st.composite
def mem_table(draw: st.DrawFn) -> bytes:
    n = draw(st.one_of(st.integers(0, 9), st.sampled_from([2**31, 2**32 - 1])))
    shown = draw(st.integers(0, min(n, 8)))
    regions = [P.MEM_REGION.pack(draw(u64), draw(u64), draw(u64), draw(u64)) for _ in range(shown)]
    pad = draw(st.sampled_from([0, 0, 8 - shown])) if shown <= 8 else 0
    return P.MEM_HEADER.pack(n, draw(u32)) + b"".join(regions) + bytes(32 * pad)


payloads = st.one_of(
    st.binary(max_size=48),
    u64.map(P.U64.pack),
    st.tuples(u32, u32).map(lambda t: P.VRING_STATE.pack(*t)),
    st.tuples(u32, u32, u64, u64, u64, u64).map(lambda t: P.VRING_ADDR.pack(*t)),
    mem_table(),
    st.tuples(u64, u64).map(lambda t: P.LOG_BASE.pack(*t)),  # SET_LOG_BASE
    st.tuples(u64, u64, u64, u64, u64).map(lambda t: P.MEM_SINGLE.pack(*t)),  # ADD/REM_MEM_REG
    # Around the maximum, filled with a short drawn pattern (cheap to generate).
    st.builds(
        lambda n, pat: (pat * (n // len(pat) + 1))[:n],
        st.integers(P.MAX_PAYLOAD - 8, P.MAX_PAYLOAD + 8),
        st.binary(min_size=1, max_size=8),
    ),
)
sizes = st.one_of(
    st.none(),
    st.none(),
    st.none(),
    st.sampled_from([0, 1, 4, 7, 8, 9, 16, 40, P.MAX_PAYLOAD, P.MAX_PAYLOAD + 1]),
    u32,
)
fd_lists = st.one_of(
    st.just([]),
    st.just([]),
    st.lists(st.sampled_from(FD_KINDS), min_size=1, max_size=2),
    st.lists(st.sampled_from(FD_KINDS), min_size=3, max_size=12),
)
messages = st.builds(Msg, requests, flags, payloads, sizes, fd_lists)


@FUZZ
@given(msgs=st.lists(messages, min_size=1, max_size=12))
def test_random_message_sequences(harness: Harness, msgs: list[Msg]) -> None:
    note(f"{len(msgs)} messages: {msgs}")

    async def shrink_and_kick(fds: Fds) -> None:
        fds.kick_all()  # memory files shrink under whatever was mapped, rings get kicks
        await asyncio.sleep(0.002)

    run_example(harness, msgs, before_close=shrink_and_kick)


# Strategies: QEMU's order with one thing wrong


def qemu_sequence() -> list[Msg]:
    """What QEMU sends for one guest: init, then start (one queue pair),
    then stop (GET_VRING_BASE per ring)."""
    V = 1
    A = 1 | P.FLAG_NEED_REPLY  # REPLY_ACK is negotiated
    seq = [
        Msg(Req.GET_FEATURES, V, b""),
        Msg(Req.GET_PROTOCOL_FEATURES, V, b""),
        Msg(Req.SET_PROTOCOL_FEATURES, V, P.U64.pack(QEMU_PROTOCOL_FEATURES)),
        Msg(Req.GET_QUEUE_NUM, V, b""),
        Msg(Req.SET_OWNER, A, b""),
        Msg(Req.SET_FEATURES, A, P.U64.pack(QEMU_FEATURES & P.OFFERED_FEATURES)),
        Msg(Req.NET_SET_MTU, A, P.U64.pack(1500)),
        Msg(
            Req.SET_MEM_TABLE,
            A,
            P.MEM_HEADER.pack(1, 0) + P.MEM_REGION.pack(GPA, MEM, UADDR, 0) + bytes(32 * 7),
            fds=["memfd"],
        ),
    ]
    for q in range(2):
        base = UADDR + q * 0x10000
        seq += [
            Msg(Req.SET_VRING_NUM, A, P.VRING_STATE.pack(q, RING)),
            Msg(Req.SET_VRING_BASE, A, P.VRING_STATE.pack(q, 0)),
            Msg(
                Req.SET_VRING_ADDR,
                A,
                P.VRING_ADDR.pack(q, 0, base + DESC, base + USED, base + AVAIL, 0),
            ),
            Msg(Req.SET_VRING_KICK, A, P.U64.pack(q), fds=["eventfd"]),
            Msg(Req.SET_VRING_CALL, A, P.U64.pack(q), fds=["eventfd"]),
        ]
    seq += [Msg(Req.SET_VRING_ENABLE, A, P.VRING_STATE.pack(q, 1)) for q in range(2)]
    seq += [Msg(Req.SET_STATUS, A, P.U64.pack(0xF))]
    # Migration starts (QEMU's order): the log, LOG_ALL, the rings' addresses again with
    # the log flag, each followed by GET_FEATURES, QEMU's barrier.
    log_all = (QEMU_FEATURES & P.OFFERED_FEATURES) | 1 << F.LOG_ALL
    seq += [Msg(Req.SET_LOG_BASE, V, P.LOG_BASE.pack(MEM // 4096 // 8, 0), fds=["memfd-sealed"]),
            Msg(Req.SET_FEATURES, A, P.U64.pack(log_all)), Msg(Req.GET_FEATURES, V, b"")]
    for q in range(2):
        base = UADDR + q * 0x10000
        addr = P.VRING_ADDR.pack(q, P.VRING_F_LOG, base + DESC, base + USED, base + AVAIL,
                                 GPA + q * 0x10000 + USED)  # fmt: skip
        seq += [Msg(Req.SET_VRING_ADDR, A, addr), Msg(Req.GET_FEATURES, V, b"")]
    seq += [Msg(Req.GET_VRING_BASE, V, P.VRING_STATE.pack(q, 0)) for q in range(2)]
    return seq


# A field of a payload gets most of the attention: that is where the values are.
MUTATIONS = ["field"] * 6 + ["request", "flags", "size", "truncate", "extend", "fds", "drop",
                             "dup", "swap"] + ["peer-fd"] * 3  # fmt: skip
# A descriptor of the right kind that turns against the switch once the rings run: the
# memory file shrinks to nothing, could be sealed and is not, an eventfd about to saturate.
PEER_FDS = {
    Req.SET_MEM_TABLE: ["memfd-shrinks", "memfd-sealable"],
    Req.SET_VRING_CALL: ["eventfd-full"],
    Req.SET_VRING_KICK: ["eventfd-full"],
}


@st.composite
def corrupted_qemu_sequence(draw: st.DrawFn) -> tuple[list[Msg], str]:
    seq = qemu_sequence()
    how = draw(st.sampled_from(MUTATIONS))
    if how == "peer-fd":
        # The rings keep running (no GET_VRING_BASE), so the switch meets the descriptor
        # when the example's hook kicks them.
        seq = [m for m in seq if m.request != Req.GET_VRING_BASE]
        i = draw(st.sampled_from([k for k, m in enumerate(seq) if m.request in PEER_FDS]))
    else:
        i = draw(st.integers(0, len(seq) - 1))
    m = seq[i]
    if how == "peer-fd":
        m.fds = [draw(st.sampled_from(PEER_FDS[Req(m.request)]))]
    elif how == "request":
        m.request = draw(requests)
    elif how == "flags":
        m.flags = draw(flags)
    elif how == "size":
        m.size = draw(st.one_of(st.integers(0, len(m.payload) + 16), u32))
    elif how == "truncate" and m.payload:
        m.payload = m.payload[: draw(st.integers(0, len(m.payload) - 1))]
    elif how == "extend":
        m.payload += draw(st.binary(min_size=1, max_size=64))
    elif how == "field" and len(m.payload) >= 4:
        width = draw(st.sampled_from([4, 8])) if len(m.payload) >= 8 else 4
        at = draw(st.integers(0, (len(m.payload) - width) // 4)) * 4
        value = draw(u32 if width == 4 else u64)
        m.payload = m.payload[:at] + value.to_bytes(width, "little") + m.payload[at + width :]
    elif how == "fds":
        m.fds = draw(fd_lists)
    elif how == "drop":
        del seq[i]
    elif how == "dup":
        seq.insert(i, Msg(m.request, m.flags, m.payload, m.size, list(m.fds)))
    elif how == "swap" and i + 1 < len(seq):
        seq[i], seq[i + 1] = seq[i + 1], seq[i]
    return seq, f"{how} at {i} ({P.request_name(m.request)})"


@FUZZ
@given(case=corrupted_qemu_sequence())
def test_qemu_order_with_one_field_corrupted(harness: Harness, case: tuple[list[Msg], str]) -> None:
    msgs, what = case
    note(what)
    note(repr(msgs))

    async def kick(fds: Fds) -> None:
        fds.kick_all()  # the data path looks at whatever rings were set up
        await asyncio.sleep(0.002)

    run_example(harness, msgs, before_close=kick)


def test_the_valid_qemu_sequence_brings_the_port_up(harness: Harness) -> None:
    """The baseline the corruptions start from is itself accepted."""
    msgs = qemu_sequence()
    stop = msgs[-2:]
    seen: list[str] = []

    async def up_before_stop(fds: Fds) -> None:
        port = harness.sw.ports["a"]
        for _ in range(500):
            if port.info()["state"] == "up":
                break
            await asyncio.sleep(0.002)
        seen.append(port.info()["state"])

    run_example(harness, msgs[:-2], before_close=up_before_stop)
    assert seen == ["up"]
    run_example(harness, msgs[:-2] + stop)


# Hostile descriptors, targeted: a front end hands over something that is
# not an eventfd where the switch expects one.  Against `vswitch run`, so a
# hang is a failed test and not a hung test run.

MACS = {n: f"02:00:00:00:20:{i + 1:02x}" for i, n in enumerate("abc")}
F_EVENT_IDX = 1 << 29




@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_call_fd_that_blocks_stalls_nobody_else(tmp_path: Path, datapath: str) -> None:
    """Port a's RX interrupt "eventfd" is a blocking pipe nobody reads.  Once
    it is full, signalling a must not block the switch: b and c keep
    talking and the control socket answers."""
    async with SwitchProcess(
        tmp_path, vports(tmp_path, "abc"), switch={"datapath": datapath}
    ) as sw:
        r, w = os.pipe2(os.O_CLOEXEC)
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, 4096)  # full after 512 interrupts
        # Without EVENT_IDX every delivery to a asks for an interrupt.
        a = SoftGuest(sw.sock("a"), MACS["a"], features=QEMU_FEATURES & ~F_EVENT_IDX)
        os.close(a.call[0])
        a.call[0] = w
        b = SoftGuest(sw.sock("b"), MACS["b"])
        c = SoftGuest(sw.sock("c"), MACS["c"])
        try:
            # Refusing the pipe outright (NACK) is a fine answer too.
            await a.attach(strict=False)
            for g in (b, c):
                await g.attach()
            if not a.refused:
                await announce(a, b, c)

                async def b_to_a() -> None:
                    # One frame at a time: each delivery to a is one interrupt.
                    for i in range(1500):
                        await b.send([frame(MACS["a"], MACS["b"], i)], timeout=3)
                        await a.wait_received(i + 1, timeout=3)

                with contextlib.suppress(AssertionError, TimeoutError):
                    await asyncio.wait_for(b_to_a(), 30)
            else:
                await announce(b, c)
            # (Reading the pipe would unblock the switch: only look at its fill.)
            filled = struct.unpack("i", fcntl.ioctl(r, termios.FIONREAD, b"\0" * 4))[0]
            note = f"{filled} bytes of interrupts in the pipe, {len(a.got)} frames reached a"

            # Everyone else is unaffected.
            try:
                info = await asyncio.wait_for(sw.ports(), 5)
            except TimeoutError:
                raise AssertionError(f"the control socket stopped answering ({note})") from None
            assert info["b"]["state"] == "up" and info["c"]["state"] == "up", info
            b.got.clear()
            try:
                await c.send([frame(MACS["b"], MACS["c"], k) for k in range(10)], timeout=5)
                await b.wait_received(10, timeout=5)
            except AssertionError as e:
                raise AssertionError(f"b and c stopped talking ({note}): {e}") from None
        finally:
            for g in (a, b, c):
                g.close()
            os.close(r)


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_kick_fd_at_eof_costs_nothing(tmp_path: Path, datapath: str) -> None:
    """Port a's TX kick "eventfd" is a pipe whose write end is closed: always
    readable, never a kick.  The switch must not spin on it."""
    async with SwitchProcess(tmp_path, vports(tmp_path, "ab"), switch={"datapath": datapath}) as sw:
        assert sw.proc is not None
        r, w = os.pipe2(os.O_CLOEXEC)
        a = SoftGuest(sw.sock("a"), MACS["a"])
        os.close(a.kick[1])
        a.kick[1] = r
        b = SoftGuest(sw.sock("b"), MACS["b"])
        try:
            await a.attach(strict=False)  # refusing the pipe (NACK) is a fine answer too
            await b.attach()
            os.close(w)  # the switch's copy of r now reads EOF forever
            a.kick[1] = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
            os.close(r)
            await asyncio.sleep(0.5)
            busy0 = busy_seconds(sw.proc.pid)
            await asyncio.sleep(2.0)
            busy = busy_seconds(sw.proc.pid) - busy0
            # Frames still reach a meanwhile.
            if not a.refused:
                await b.send([frame(MACS["a"], MACS["b"], 1)])
                await a.wait_received(1)
        finally:
            a.close()
            b.close()
    assert busy < 0.5, f"the switch was running or runnable {busy:.2f}s of 2s with no traffic"
