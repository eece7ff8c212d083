"""A hostile guest or front end against the C fast path: malformed rings,
bad ring addresses, bad ring sizes and bad memory tables.

Every case must end with the port stopped (a negative return or
VS_STATE_BROKEN with a reason), counted, nothing written outside guest
memory, and the other ports still forwarding; vs_port_reset and a fresh
setup bring the port back.
"""

from __future__ import annotations

import errno
import os
import struct
from collections.abc import Callable, Iterator

import pytest

from vswitch.testkit.virtio_driver import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    F_INDIRECT_DESC,
    F_VERSION_1,
    MODERN,
    Q_RX,
    Q_TX,
    GuestMemory,
    SplitRing,
    Switch,
    eth,
    lib,
    net_hdr,
    run_bounded,
)

BCAST = "ff:ff:ff:ff:ff:ff"
MA, MB, MC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
NUM = 8
GPA = 0x100000
SIZE = 4 << 20
END = GPA + SIZE  # first guest-physical address past the region
UA = 0x7F0000000000


def hostile_memory() -> GuestMemory:
    """One region in the middle of its file, with canaries on both sides."""
    mem = GuestMemory.single(size=SIZE, gpa=GPA, uaddr=UA, file_off=0x3000, slack=0x3000)
    mem.fill_outside()
    return mem


class Net:
    """Port a (the victim, with small rings and no RX buffers yet) and two
    bystanders b and c."""

    def __init__(self, sw: Switch, features: int = MODERN) -> None:
        self.sw = sw
        self.mem = hostile_memory()
        self.a = sw.port(mem=self.mem, num=NUM, features=features)
        self.b = sw.port()
        self.c = sw.port()
        self.b.post_rx(32)
        self.c.post_rx(32)
        self.canary = self.mem.outside()

    def close(self) -> None:
        self.mem.close()

    def bystanders_forward(self) -> None:
        f = eth(BCAST, MB, 77)
        assert self.b.send(f) == 1
        assert self.c.frames() == [f]
        f = eth(MB, MC, 78)
        assert self.c.send(f) == 1
        assert self.b.frames()[-1:] == [f]

    def assert_stopped(self, rc: int) -> None:
        a = self.a
        assert rc < 0 or a.broken
        assert a.broken, "a malformed ring must mark the port broken"
        assert a.error != ""
        assert not a.up
        assert a.stats()["ring_errors"] == 1
        assert self.mem.outside() == self.canary
        # It stays stopped, quietly: more kicks and polls do nothing.
        assert a.kick() <= 0 and self.sw.poll() >= 0
        assert a.stats()["ring_errors"] == 1


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


@pytest.fixture
def net() -> Iterator[Net]:
    with Switch() as sw:
        n = Net(sw)
        try:
            yield n
        finally:
            sw.close()
            n.close()


def chain(r: SplitRing, *descs: tuple[int, int, int, int], head: int = 0) -> None:
    """Write raw descriptors (addr, len, flags, next) from `head` on and publish head."""
    for i, (addr, ln, fl, nx) in enumerate(descs):
        r.write_desc(head + i, addr, ln, fl, nx)
    r.publish(head)


def buf(r: SplitRing, data: bytes) -> int:
    gpa = r.mem.alloc(len(data), 16)
    r.mem.write(gpa, data)
    return gpa


def frame_buf(r: SplitRing) -> int:
    return buf(r, net_hdr(12) + eth(BCAST, MA, 60))


def table(r: SplitRing, *descs: tuple[int, int, int, int]) -> int:
    """An indirect table in guest memory."""
    return buf(r, b"".join(struct.pack("<QIHH", *d) for d in descs))


Poison = Callable[[SplitRing], None]

# name -> (poison for a TX ring, is it a bad chain).  A bad chain is found
# after the good frame before it went out, and counts in rx_drop_bad_desc; a
# bad avail index stops the ring before anything is taken.  Poisons use
# descriptors 0..NUM-2: the good frame is in NUM-1.
TX_POISONS: dict[str, tuple[Poison, bool]] = {
    "addr-below-memory": (lambda r: chain(r, (0x10, 74, 0, 0)), True),
    "addr-past-memory": (lambda r: chain(r, (END + 0x1000, 74, 0, 0)), True),
    "addr-len-wraps-2^64": (lambda r: chain(r, (2**64 - 16, 74, 0, 0)), True),
    "len-crosses-region-end": (lambda r: chain(r, (END - 32, 74, 0, 0)), True),
    "len-4GiB": (lambda r: chain(r, (GPA + 0x200000, 0xFFFFFFFF, 0, 0)), True),
    "loop": (lambda r: chain(r, (frame_buf(r), 10, DESC_F_NEXT, 1),
                             (frame_buf(r), 10, DESC_F_NEXT, 0)), True),
    "self-loop": (lambda r: chain(r, (frame_buf(r), 1, DESC_F_NEXT, 0)), True),
    "chain-longer-than-ring": (
        lambda r: chain(r, *[(frame_buf(r), 8, DESC_F_NEXT, (i + 1) % (NUM - 1))
                             for i in range(NUM - 1)]), True),
    "next-equals-num": (lambda r: chain(r, (frame_buf(r), 10, DESC_F_NEXT, NUM)), True),
    "next-ffff": (lambda r: chain(r, (frame_buf(r), 10, DESC_F_NEXT, 0xFFFF)), True),
    "head-equals-num": (lambda r: r.publish(NUM), True),
    "head-ffff": (lambda r: r.publish(0xFFFF), True),
    "avail-idx-jumps": (lambda r: r.set_avail_idx(NUM + 1), False),
    "avail-idx-goes-back": (lambda r: r.set_avail_idx(0xFFFF), False),
    "writable-in-tx-chain": (lambda r: chain(r, (frame_buf(r), 74, DESC_F_WRITE, 0)), True),
    "indirect-len-not-16n": (lambda r: chain(r, (frame_buf(r), 24, DESC_F_INDIRECT, 0)), True),
    "indirect-len-zero": (lambda r: chain(r, (frame_buf(r), 0, DESC_F_INDIRECT, 0)), True),
    "indirect-outside-memory": (lambda r: chain(r, (0x10, 32, DESC_F_INDIRECT, 0)), True),
    "indirect-crosses-region-end": (lambda r: chain(r, (END - 16, 32, DESC_F_INDIRECT, 0)),
                                    True),
    "indirect-in-indirect": (
        lambda r: chain(r, (table(r, (table(r, (frame_buf(r), 74, 0, 0)), 16,
                                      DESC_F_INDIRECT, 0)), 16, DESC_F_INDIRECT, 0)), True),
    "indirect-and-next": (
        lambda r: chain(r, (table(r, (frame_buf(r), 74, 0, 0)), 16,
                            DESC_F_INDIRECT | DESC_F_NEXT, 1), (frame_buf(r), 10, 0, 0)), True),
    "indirect-next-out-of-table": (
        lambda r: chain(r, (table(r, (frame_buf(r), 10, DESC_F_NEXT, 2),
                                  (frame_buf(r), 10, 0, 0)), 32, DESC_F_INDIRECT, 0)), True),
    "indirect-loop": (
        lambda r: chain(r, (table(r, (frame_buf(r), 10, DESC_F_NEXT, 1),
                                  (frame_buf(r), 10, DESC_F_NEXT, 0)), 32, DESC_F_INDIRECT, 0)),
        True),
    "indirect-entry-outside": (
        lambda r: chain(r, (table(r, (END + 64, 74, 0, 0)), 16, DESC_F_INDIRECT, 0)), True),
}


# What the port's error says for each: what was wrong, not just where.
TX_ERRORS: dict[str, str] = {
    "addr-below-memory": "TX buffer outside guest memory",
    "addr-past-memory": "TX buffer outside guest memory",
    "addr-len-wraps-2^64": "TX buffer outside guest memory",
    "len-crosses-region-end": "TX buffer runs past the end of guest memory",
    "len-4GiB": "TX buffer runs past the end of guest memory",
    "loop": "descriptor chain longer than the queue size (or a loop)",
    "self-loop": "descriptor chain longer than the queue size (or a loop)",
    "chain-longer-than-ring": "descriptor chain longer than the queue size (or a loop)",
    "next-equals-num": "next index past the end of the descriptor table",
    "next-ffff": "next index past the end of the descriptor table",
    "head-equals-num": "avail ring names a head past the end of the descriptor table",
    "head-ffff": "avail ring names a head past the end of the descriptor table",
    "avail-idx-jumps": "avail index moved by more than the ring size",
    "avail-idx-goes-back": "avail index moved by more than the ring size",
    "writable-in-tx-chain": "device-writable descriptor in a TX chain",
    "indirect-len-not-16n": "indirect table length not a multiple of 16",
    "indirect-len-zero": "indirect table of length 0",
    "indirect-outside-memory": "indirect table outside guest memory",
    "indirect-crosses-region-end": "indirect table crosses the end of a guest memory region",
    "indirect-in-indirect": "indirect descriptor inside an indirect table",
    "indirect-and-next": "indirect descriptor with the NEXT flag set",
    "indirect-next-out-of-table": "next index past the end of an indirect table",
    "indirect-loop": "descriptor chain longer than the queue size (or a loop)",
    "indirect-entry-outside": "TX buffer outside guest memory",
}


@pytest.mark.parametrize("name", list(TX_POISONS))
def test_malformed_tx_ring(net: Net, name: str) -> None:
    poison, bad_chain = TX_POISONS[name]
    a = net.a
    # A good frame first, in the last descriptor.
    a.tx.free_ids = [NUM - 1]
    a.tx.add_tx(eth(BCAST, MA, 64), net_hdr(12))
    poison(a.tx)
    rc = a.kick()
    net.assert_stopped(rc)
    assert a.error == TX_ERRORS[name]
    good = 1 if bad_chain else 0
    assert len(net.b.frames()) == good and len(net.c.frames()) == good
    st = a.stats()
    assert st["rx_packets"] == good
    assert st["rx_drop_bad_desc"] == good
    assert a.tx.used_idx == good and a.tx.used_entry(0).id == (NUM - 1) * good
    net.bystanders_forward()


def test_indirect_without_negotiating_it() -> None:
    with Switch() as sw:
        net = Net(sw, features=MODERN & ~F_INDIRECT_DESC)
        try:
            a = net.a
            a.tx.add_tx(eth(BCAST, MA, 64), net_hdr(12), indirect=True)
            net.assert_stopped(a.kick())
            assert a.error == "indirect descriptor, but INDIRECT_DESC was not negotiated"
            assert a.stats()["rx_drop_bad_desc"] == 1
            net.bystanders_forward()
        finally:
            sw.close()
            net.close()


RX_POISONS: dict[str, Poison] = {
    "addr-outside": lambda r: chain(r, (0x10, 2048, DESC_F_WRITE, 0)),
    "len-crosses-region-end": lambda r: chain(r, (END - 40, 2048, DESC_F_WRITE, 0)),
    "addr-len-wraps-2^64": lambda r: chain(r, (2**64 - 64, 2048, DESC_F_WRITE, 0)),
    "device-readable": lambda r: chain(r, (frame_buf(r), 2048, 0, 0)),
    "loop": lambda r: chain(r, (frame_buf(r), 8, DESC_F_WRITE | DESC_F_NEXT, 0)),
    "next-equals-num": lambda r: chain(r, (frame_buf(r), 8, DESC_F_WRITE | DESC_F_NEXT, NUM)),
    "head-equals-num": lambda r: r.publish(NUM),
    "avail-idx-jumps": lambda r: r.set_avail_idx(NUM + 5),
    "indirect-len-not-16n": lambda r: chain(r, (frame_buf(r), 20, DESC_F_INDIRECT, 0)),
    "indirect-entry-outside": lambda r: chain(
        r, (table(r, (END - 8, 2048, DESC_F_WRITE, 0)), 16, DESC_F_INDIRECT, 0)),
}


@pytest.mark.parametrize("name", list(RX_POISONS))
def test_malformed_rx_ring(net: Net, name: str) -> None:
    a, b, c = net.a, net.b, net.c
    before = a.stats()
    RX_POISONS[name](a.rx)
    f = eth(BCAST, MB, 90)
    assert b.send(f) == 1  # b is fine: its frame was taken
    assert not b.broken
    assert c.frames() == [f]
    net.assert_stopped(-1)
    assert a.stats()["tx_packets"] == before["tx_packets"]
    assert a.rx.used_idx == 0
    net.bystanders_forward()
    # Frames for a are now counted as undeliverable, not written anywhere.
    assert b.send(eth(BCAST, MB, 91)) == 1
    assert net.mem.outside() == net.canary


def test_broken_port_comes_back_after_reset(net: Net) -> None:
    a = net.a
    a.tx.set_avail_idx(NUM + 3)
    net.assert_stopped(a.kick())
    a.reset()
    assert a.state == lib.VS_STATE_OPEN and a.error == ""
    # The front end sets everything up again, on fresh rings.
    a.rings = [SplitRing(a.mem, NUM), SplitRing(a.mem, NUM)]
    a.setup()
    a.post_rx(4)
    f = eth(BCAST, MA, 100)
    assert a.send(f) == 1
    assert net.b.frames()[-1:] == [f] and net.c.frames()[-1:] == [f]
    assert net.b.send(eth(BCAST, MB, 101)) == 1
    assert a.frames() == [eth(BCAST, MB, 101)]
    assert a.stats()["ring_errors"] == 1


@pytest.mark.parametrize("features", [0, F_VERSION_1], ids=["legacy", "v1"])
def test_used_ring_overlapping_avail_ring_is_refused(sw: Switch, features: int) -> None:
    """Found by csrc/fuzz/fuzz_vring.c.  Without EVENT_IDX, kick suppression is
    the NO_NOTIFY bit in used->flags; a guest that puts its used ring 2
    bytes after its avail ring makes that word its avail->idx, so each time
    the switch re-enabled kicks the ring seemed to have changed and one call
    never ended.  Overlapping ring parts are now refused up front, and the
    budget (next test) bounds a call whatever the guest's memory says."""
    a = sw.port(num=2, features=features, setup=False)
    assert lib.vs_port_set_features(sw.sw, a.id, features) == 0
    assert a.set_mem() == 0
    base = a.mem.alloc(64, 16)
    avail, used = a.mem.uaddr(base + 2), a.mem.uaddr(base + 4)  # used->flags == avail->idx
    assert lib.vs_vring_set_num(sw.sw, a.id, Q_TX, 2) == 0
    assert lib.vs_vring_set_addr(sw.sw, a.id, Q_TX, a.tx.desc_ua, used, avail) == -errno.EINVAL
    assert lib.vs_vring_set_kick(sw.sw, a.id, Q_TX, a.kick_fds[Q_TX]) == 0
    assert lib.vs_vring_enable(sw.sw, a.id, Q_TX, 1) == 0
    assert not lib.vs_vring_ready(sw.sw, a.id, Q_TX)
    err = run_bounded(lambda: lib.vs_port_kick(sw.sw, a.id, Q_TX))
    assert err is None, f"vs_port_kick: {err}"


# Ring addresses and sizes


def _addr_cases() -> dict[str, Callable[[SplitRing], tuple[int, int, int]]]:
    return {
        "desc-untranslatable": lambda r: (0x1000, r.used_ua, r.avail_ua),
        "avail-untranslatable": lambda r: (r.desc_ua, r.used_ua, UA + SIZE + 0x1000),
        "used-untranslatable": lambda r: (r.desc_ua, 0x10, r.avail_ua),
        "gpa-given-for-uaddr": lambda r: (r.desc, r.used, r.avail),
        "desc-misaligned": lambda r: (r.desc_ua + 8, r.used_ua, r.avail_ua),
        "avail-misaligned": lambda r: (r.desc_ua, r.used_ua, r.avail_ua + 1),
        "used-misaligned": lambda r: (r.desc_ua, r.used_ua + 2, r.avail_ua),
        "desc-crosses-region-end": lambda r: (UA + SIZE - 16 * NUM + 16, r.used_ua, r.avail_ua),
        # Would fit without EVENT_IDX; avail_event / used_event lie past the region.
        "avail-event-past-end": lambda r: (r.desc_ua, UA + SIZE - 4 - 8 * NUM, r.avail_ua),
        "used-event-past-end": lambda r: (r.desc_ua, r.used_ua, UA + SIZE - 4 - 2 * NUM),
    }


@pytest.mark.parametrize("name", list(_addr_cases()))
def test_bad_ring_addresses_fail_cleanly(name: str) -> None:
    with Switch() as sw:
        mem = hostile_memory()
        try:
            b = sw.port()
            b.post_rx(4)
            a = sw.port(mem=mem, num=NUM, setup=False)
            assert lib.vs_port_set_features(sw.sw, a.id, MODERN) == 0
            assert a.set_mem() == 0
            a.setup_queue(Q_RX)
            r = a.tx
            desc, used, avail = _addr_cases()[name](r)
            assert lib.vs_vring_set_num(sw.sw, a.id, Q_TX, NUM) == 0
            rc = lib.vs_vring_set_addr(sw.sw, a.id, Q_TX, desc, used, avail)
            assert rc < 0
            assert lib.vs_vring_set_kick(sw.sw, a.id, Q_TX, a.kick_fds[Q_TX]) == 0
            assert lib.vs_vring_enable(sw.sw, a.id, Q_TX, 1) == 0
            assert not a.ready(Q_TX) and not a.up
            assert a.kick() <= 0 and sw.poll() >= 0
            assert mem.outside() == bytes([0xA5]) * len(mem.outside())
            # The same ring at good addresses works.
            assert lib.vs_vring_set_addr(sw.sw, a.id, Q_TX, r.desc_ua, r.used_ua,
                                         r.avail_ua) == 0
            assert a.up
            assert a.send(eth(BCAST, MA)) == 1 and len(b.frames()) == 1
        finally:
            sw.close()
            mem.close()


def test_addresses_before_memory_table(sw: Switch) -> None:
    """vhost-user allows SET_VRING_ADDR before SET_MEM_TABLE: the ring is
    not ready until a table where the addresses translate arrives."""
    b = sw.port()
    b.post_rx(2)
    a = sw.port(setup=False)
    assert lib.vs_port_set_features(sw.sw, a.id, MODERN) == 0
    for q in (Q_RX, Q_TX):
        r = a.rings[q]
        assert lib.vs_vring_set_num(sw.sw, a.id, q, r.num) == 0
        assert lib.vs_vring_set_addr(sw.sw, a.id, q, r.desc_ua, r.used_ua, r.avail_ua) == 0
        assert lib.vs_vring_set_kick(sw.sw, a.id, q, a.kick_fds[q]) == 0
        assert lib.vs_vring_enable(sw.sw, a.id, q, 1) == 0
    assert not a.up
    assert a.send(eth(BCAST, MA)) == 0
    # A table where the rings are not: still down.
    other = GuestMemory.single(uaddr=0x6F0000000000)
    try:
        assert a.set_mem(other.table()) == 0
        assert not a.up
        assert a.set_mem() == 0
        assert a.up
        assert a.kick() == 1 and len(b.frames()) == 1
    finally:
        other.close()


def test_new_memory_table_moves_rings(sw: Switch) -> None:
    """The same memory at new front-end addresses: rings go down until
    SET_VRING_ADDR gives their new addresses, then resume where they were."""
    a, b = sw.port(), sw.port()
    b.post_rx(8)
    assert a.send(eth(BCAST, MA)) == 1
    moved = [(g, s, u + 0x100000000, o, fd) for g, s, u, o, fd in a.mem.table()]
    assert a.set_mem(moved) == 0
    assert not a.up
    for q in (Q_RX, Q_TX):
        r = a.rings[q]
        ok = lib.vs_vring_set_addr(sw.sw, a.id, q, r.desc_ua + 0x100000000,
                                   r.used_ua + 0x100000000, r.avail_ua + 0x100000000)
        assert ok == 0
    assert a.up
    assert a.send(eth(BCAST, MA, 65)) == 1
    assert [len(f) for f in b.frames()] == [64, 65]
    assert a.tx.used_idx == 2


@pytest.mark.parametrize("num", [0, 3, 100, 32767, 65536, 1 << 20, 2**32 - 1])
def test_bad_ring_size(sw: Switch, num: int) -> None:
    a = sw.port(setup=False)
    assert lib.vs_vring_set_num(sw.sw, a.id, Q_TX, num) < 0


@pytest.mark.parametrize("num", [1, 2, lib.VS_MAX_RING_SIZE])
def test_extreme_good_ring_sizes(num: int) -> None:
    mem = GuestMemory.single(size=8 << 20)
    try:
        with Switch() as sw:
            a = sw.port(mem=mem, num=num)
            b = sw.port()
            b.post_rx(4)
            assert a.send(eth(BCAST, MA)) == 1 and len(b.frames()) == 1
    finally:
        mem.close()


# Memory tables


def _table_cases(mem: GuestMemory) -> dict[str, list[tuple[int, int, int, int, int]]]:
    fd = mem.fd
    t = mem.table()
    g, s, u, o, _ = t[0]
    return {
        "empty": [],
        "too-many": [(g + i * 4096, 4096, u + i * 4096, i * 4096, fd)
                     for i in range(lib.VS_MAX_MEM_REGIONS + 1)],
        "zero-size": [*t, (0x10000000, 0, 0x10000000, 0, fd)],
        "gpa-overlap": [(0x100000, 0x200000, 0x10000, 0, fd), (0x200000, 0x1000, 0x900000, 0, fd)],
        "uaddr-overlap": [(0x100000, 0x1000, 0x10000, 0, fd), (0x900000, 0x1000, 0x10800, 0, fd)],
        "gpa-overflow": [(2**64 - 0x1000, 0x2000, u, 0, fd)],
        "uaddr-overflow": [(g, 0x2000, 2**64 - 0x1000, 0, fd)],
        "offset-overflow": [(g, 0x2000, u, 2**64 - 0x1000, fd)],
        "past-end-of-file": [(g, s, u, o + 0x1000, fd)],
        "bigger-than-file": [(g, mem.file_size + 0x1000, u, 0, fd)],
        "fd-minus-one": [(g, s, u, o, -1)],
        "fd-not-open": [(g, s, u, o, 1_000_000)],
        "fd-pipe": [(g, 4096, u, 0, _pipe_fd())],
        "second-region-bad-fd": [*t, (0x10000000, 0x1000, 0x10000000, 0, -5)],
    }


_keep: list[int] = []


def _pipe_fd() -> int:
    r, w = os.pipe()
    _keep.extend((r, w))
    return r


def test_bad_memory_tables_leave_the_old_one_working(sw: Switch) -> None:
    a, b = sw.port(), sw.port()
    b.post_rx(64)
    try:
        for name, rows in _table_cases(a.mem).items():
            rc = a.set_mem(rows)
            assert rc < 0, f"{name}: accepted"
            assert a.up, f"{name}: the port went down"
            f = eth(BCAST, MA, 60 + len(name))
            assert a.send(f) == 1, name
            assert b.frames() == [f], name
    finally:
        for fd in _keep:
            os.close(fd)
        _keep.clear()


def test_memory_table_with_three_regions_and_offsets(sw: Switch) -> None:
    mem = GuestMemory.three()
    try:
        a = sw.port(mem=mem, ring_region=2)
        b = sw.port()
        b.post_rx(8)
        frames = [eth(BCAST, MA, 100 + i) for i in range(3)]
        # Place each frame's buffer in a different region.
        for i, f in enumerate(frames):
            gpa = mem.alloc(200, 16, region=i)
            mem.write(gpa, net_hdr(12) + f)
            (d,) = a.tx.take_ids(1)
            a.tx.write_desc(d, gpa, 12 + len(f))
            a.tx.publish(d)
        assert a.kick() == 3
        assert b.frames() == frames
        # Each region is mapped by itself (its pages, from its own offset),
        # not the file from its start: beside the test's own mapping of the
        # whole file, exactly one mapping per region.
        page = 4096
        want = [(0, -(-mem.file_size // page) * page)]
        for r in mem.regions:
            lo, hi = r.file_off // page * page, -(-(r.file_off + r.size) // page) * page
            want.append((lo, hi - lo))
        assert sorted(mappings_of(mem.fd)) == sorted(want)
    finally:
        sw.close()
        mem.close()


def mappings_of(fd: int) -> list[tuple[int, int]]:
    """(file offset, length) of every mapping of fd's file in this process."""
    ino = os.fstat(fd).st_ino
    out = []
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and int(fields[4]) == ino and "memfd:" in fields[5]:
                lo, hi = (int(x, 16) for x in fields[0].split("-"))
                out.append((int(fields[2], 16), hi - lo))
    return out
