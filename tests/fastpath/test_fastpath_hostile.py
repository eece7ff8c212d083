"""A hostile guest's rings cost the switch bounded work (issue 12, "Denial of
service from guest memory"), and a few protocol edges.

The rule: no guest action makes the switch spend more than a frame's worth
of work per frame.  One descriptor count per chain across its direct and
indirect parts (longer than the queue size: a broken ring); zero-length
descriptors count; one frame may use at most VS_FRAME_MAX_DESCS descriptors
and VS_FRAME_MAX_HEADS RX buffers; after a port's first "no room" the rest
of that burst to it is dropped, not tried again; the poll budget charges
descriptors.  Work is asserted through the `descs` counter (descriptors
read from a port's rings), not through timings.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    MODERN,
    Q_RX,
    Q_TX,
    GuestMemory,
    SplitRing,
    Switch,
    eth,
    lib,
    net_hdr,
    wait_for,
)

BCAST = "ff:ff:ff:ff:ff:ff"
MA, MB, MH = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0e"
MAX_DESCS = lib.VS_FRAME_MAX_DESCS
MAX_HEADS = lib.VS_FRAME_MAX_HEADS
_DESC = struct.Struct("<QIHH")


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def put(ring: SplitRing, data: bytes, align: int = 16, offset: int = 0) -> int:
    """data in guest memory at an address offset bytes past an align boundary."""
    gpa = ring.mem.alloc(len(data) + offset, align) + offset
    ring.mem.write(gpa, data)
    return gpa


def raw_table(descs: list[tuple[int, int, int, int]]) -> bytes:
    return b"".join(_DESC.pack(*d) for d in descs)


def write_chain(ring: SplitRing, descs: list[tuple[int, int, int, int]], head: int = 0) -> None:
    ring.mem.write(ring.desc + 16 * head, raw_table(descs))


def tx_frame(ring: SplitRing, size: int = 60, dst: str = BCAST, src: str = MA) -> tuple[int, int]:
    """(gpa, len) of a header and frame ready to send."""
    data = net_hdr(12) + eth(dst, src, size)
    return put(ring, data), len(data)


# One budget per chain, across direct and indirect parts


@pytest.mark.parametrize("q", [Q_TX, Q_RX], ids=["tx", "rx"])
def test_chain_of_direct_and_indirect_longer_than_the_queue_is_broken(sw: Switch, q: int) -> None:
    """num 8: five direct descriptors, then an indirect table of five.  Each
    part is shorter than the queue; the chain is not (virtio 1.2, 2.7.5.3.1).
    Before, the count started again in the table and the chain went through."""
    num = 8
    h = sw.port(num=num)
    b = sw.port()
    b.post_rx(4)
    ring = h.rings[q]
    w = DESC_F_WRITE if q == Q_RX else 0
    gpa, ln = tx_frame(ring, 300)
    if q == Q_RX:
        gpa, ln = put(ring, bytes(2048)), 2048
    table = put(ring, raw_table([(gpa, ln if i == 4 else 0, w | (DESC_F_NEXT if i < 4 else 0),
                                  i + 1) for i in range(5)]))
    write_chain(ring, [(gpa, 0, w | DESC_F_NEXT, i + 1) for i in range(5)]
                + [(table, 5 * 16, DESC_F_INDIRECT, 0)])
    ring.publish(0)
    if q == Q_TX:
        assert h.kick() < 0
        assert b.frames() == []
    else:
        assert b.send(eth(BCAST, MB, 100)) == 1
    assert h.broken
    assert h.error == "descriptor chain longer than the queue size (or a loop)"
    assert h.stats()["ring_errors"] == 1


@pytest.mark.parametrize("q", [Q_TX, Q_RX], ids=["tx", "rx"])
def test_chain_of_exactly_the_queue_size_across_both_parts_is_fine(sw: Switch, q: int) -> None:
    num = 8
    h = sw.port(num=num)
    b = sw.port()
    b.post_rx(4)
    ring = h.rings[q]
    w = DESC_F_WRITE if q == Q_RX else 0
    if q == Q_TX:
        gpa, ln = tx_frame(ring, 300)
    else:
        gpa, ln = put(ring, bytes(2048)), 2048
    # 3 direct + a table of 5 = 8 descriptors (the indirect one is not counted).
    table = put(ring, raw_table([(gpa, ln if i == 4 else 0, w | (DESC_F_NEXT if i < 4 else 0),
                                  i + 1) for i in range(5)]))
    write_chain(ring, [(gpa, 0, w | DESC_F_NEXT, i + 1) for i in range(2)]
                + [(gpa, 0, w | DESC_F_NEXT, 3), (table, 5 * 16, DESC_F_INDIRECT, 0)])
    ring.publish(0)
    if q == Q_TX:
        assert h.kick() == 1
        assert len(b.frames()) == 1
    else:
        assert b.send(eth(BCAST, MB, 100)) == 1
        assert h.rx.used_idx == 1 and h.rx.used_entry(0).len == 12 + 100
    assert not h.broken


# Zero-length descriptors count; a frame may use VS_FRAME_MAX_DESCS


def test_zero_length_descriptors_count_against_the_frame_limit(sw: Switch) -> None:
    """A chain of a frame and 200 zero-length descriptors (inside a ring of
    256, so not a broken ring): dropped after MAX_DESCS + 1 descriptors,
    counted, its buffer given back; the ring goes on."""
    a = sw.port(num=256)
    b = sw.port()
    b.post_rx(8)
    gpa, ln = tx_frame(a.tx)
    write_chain(a.tx, [(gpa, ln, DESC_F_NEXT, 1)]
                + [(gpa, 0, DESC_F_NEXT if i < 199 else 0, i + 2) for i in range(200)])
    a.tx.publish(0)
    before = a.stats()["descs"]
    assert a.kick() == 0
    st = a.stats()
    assert st["rx_drop_desc_limit"] == 1 and st["rx_packets"] == 0
    assert st["descs"] - before == MAX_DESCS + 1
    assert a.tx.used_idx == 1 and not a.broken
    assert b.frames() == []
    # A chain right at the limit goes through.
    write_chain(a.tx, [(gpa, ln, DESC_F_NEXT, 1)]
                + [(gpa, 0, DESC_F_NEXT if i < MAX_DESCS - 2 else 0, i + 2)
                   for i in range(MAX_DESCS - 1)])
    a.tx.publish(0)
    assert a.kick() == 1
    assert len(b.frames()) == 1 and a.stats()["rx_packets"] == 1


def test_hostile_tx_ring_of_32768_costs_a_frame_limit_per_chain() -> None:
    """The issue's TX case: every head a chain of 32767 zero-length
    descriptors and an indirect table of 32768 more.  Before, each kick read
    the whole of 256 such chains (16.7 M descriptors)."""
    num = lib.VS_MAX_RING_SIZE
    mem = GuestMemory.single(size=8 << 20)
    try:
        with Switch() as sw:
            h = sw.port(mem=mem, num=num)
            _hostile_chain(h.tx, 0)
            h.tx.set_avail_idx(num)
            before = h.stats()["descs"]
            h.kick()
            st = h.stats()
            kick_budget = 8 * lib.VS_BURST
            assert st["descs"] - before <= kick_budget * lib.VS_BUDGET_DESCS + 2 * (MAX_DESCS + 1)
            assert st["rx_drop_desc_limit"] == h.tx.used_idx > 0
            assert not h.broken
    finally:
        mem.close()


def _hostile_chain(ring: SplitRing, flags: int) -> None:
    """Descriptors 0..num-2 zero-length and chained, num-1 an indirect table
    of num more; every avail slot names head 0."""
    num = ring.num
    buf = ring.mem.alloc(64, 16)
    table = ring.mem.alloc(16 * num, 16)
    ring.mem.write(ring.desc, b"".join(_DESC.pack(buf, 0, flags | DESC_F_NEXT, i + 1)
                                       for i in range(num - 1))
                   + _DESC.pack(table, 16 * num, DESC_F_INDIRECT, 0))
    ring.mem.write(table, b"".join(_DESC.pack(buf, 0, flags | DESC_F_NEXT, i + 1)
                                   for i in range(num - 1)) + _DESC.pack(buf, 0, flags, 0))
    ring.mem.write(ring.avail + 4, bytes(2 * num))


# RX: heads and descriptors one frame may use


def test_rx_frame_needing_more_heads_than_the_limit_is_dropped(sw: Switch) -> None:
    """Mergeable buffers of 16 bytes: a 1500-byte frame would need 95 heads.
    Dropped after MAX_HEADS heads and counted; nothing consumed; a frame
    that fits in MAX_HEADS buffers still goes."""
    a = sw.port()
    h = sw.port(num=256)
    h.post_rx(200, 16)
    assert a.send(eth(BCAST, MA, 1500)) == 1
    st = h.stats()
    assert st["tx_drop_desc_limit"] == 1 and st["tx_packets"] == 0
    assert st["descs"] == MAX_HEADS
    assert h.rx.used_idx == 0 and not h.broken
    # 12 + 1012 bytes: exactly MAX_HEADS buffers of 16.
    f = eth(BCAST, MA, 16 * MAX_HEADS - 12)
    assert a.send(f) == 1
    (r,) = h.received()
    assert r.frame == f and r.num_buffers == MAX_HEADS


def test_rx_frame_needing_more_descriptors_than_the_limit_is_dropped(sw: Switch) -> None:
    """One head whose chain has 200 descriptors of 8 bytes (1600 bytes of
    room): a 1500-byte frame would need 190 of them."""
    a = sw.port()
    h = sw.port(num=256)
    buf = h.rx.mem.alloc(8 * 200, 16)
    write_chain(h.rx, [(buf + 8 * i, 8, DESC_F_WRITE | (DESC_F_NEXT if i < 199 else 0), i + 1)
                       for i in range(200)])
    h.rx.publish(0)
    assert a.send(eth(BCAST, MA, 1500)) == 1
    st = h.stats()
    assert st["tx_drop_desc_limit"] == 1 and st["tx_packets"] == 0
    assert st["descs"] == MAX_DESCS + 1
    assert h.rx.used_idx == 0 and not h.broken
    # Chains are walked whole (and checked whole), so that chain holds no
    # frame at all, however small; the next one does.
    assert a.send(eth(BCAST, MA, 60)) == 1
    assert h.stats()["tx_drop_desc_limit"] == 2 and h.rx.used_idx == 0
    h.rx.free_ids = list(range(200, 256))
    h.rx.set_avail_slot(0, h.rx.add_chain([(2048, True)], publish=False))
    assert a.send(eth(BCAST, MA, 60)) == 1
    assert h.rx.used_idx == 1 and h.stats()["tx_packets"] == 1


def test_no_room_drops_the_rest_of_the_burst_without_walking_again(sw: Switch) -> None:
    """Eight one-byte buffers never hold a frame.  A burst of 32 frames walks
    them once, not once per frame: 8 descriptors, 32 drops."""
    a = sw.port()
    b = sw.port()
    h = sw.port()
    b.post_rx(64)
    h.post_rx(8, 1)
    frames = [eth(BCAST, MA, 60 + i) for i in range(lib.VS_BURST)]
    assert a.send(*frames) == lib.VS_BURST
    assert b.frames() == frames  # the honest port gets the whole burst
    st = h.stats()
    assert st["tx_drop_no_buffer"] == lib.VS_BURST and st["tx_packets"] == 0
    assert st["descs"] == 8
    assert h.rx.used_idx == 0 and not h.broken
    # The next burst walks them once more.
    assert a.send(*frames) == lib.VS_BURST
    assert h.stats()["descs"] == 16 and h.stats()["tx_drop_no_buffer"] == 2 * lib.VS_BURST


def test_room_running_out_mid_burst_drops_the_rest(sw: Switch) -> None:
    a = sw.port()
    h = sw.port()
    h.post_rx(3, 2048)
    assert a.send(*[eth(BCAST, MA, 60 + i) for i in range(10)]) == 10
    st = h.stats()
    assert st["tx_packets"] == 3 and st["tx_drop_no_buffer"] == 7
    assert st["descs"] == 3


def test_hostile_rx_ring_of_32768_costs_one_frame_limit_per_burst() -> None:
    """The issue's RX case: 256 heads per frame, each a chain of 32767
    zero-length descriptors and an indirect table of 32768; no room ever.
    Before, each frame of a burst read up to 16.7 M descriptors."""
    num = lib.VS_MAX_RING_SIZE
    mem = GuestMemory.single(size=8 << 20)
    try:
        with Switch() as sw:
            a = sw.port()
            b = sw.port()
            b.post_rx(64)
            h = sw.port(mem=mem, num=num)
            _hostile_chain(h.rx, DESC_F_WRITE)
            h.rx.set_avail_idx(num)
            assert a.send(*[eth(BCAST, MA)] * lib.VS_BURST) == lib.VS_BURST
            assert len(b.frames()) == lib.VS_BURST
            st = h.stats()
            assert st["descs"] == MAX_DESCS + 1
            assert st["tx_drop_desc_limit"] + st["tx_drop_no_buffer"] == lib.VS_BURST
            assert not h.broken
    finally:
        mem.close()


def test_legitimate_layouts_are_within_the_limits(sw: Switch) -> None:
    """What real drivers post at the largest MTU: Linux's mergeable buffers
    (1518 bytes and more), DPDK's 2 KiB mbufs, Linux's "big packets" (a
    header and page-sized pieces), and a TX chain of 47 descriptors
    (MAX_SKB_FRAGS 45 + 2)."""
    a = sw.port(mtu=9000)
    linux = sw.port(mtu=9000)
    dpdk = sw.port(mtu=9000)
    big = sw.port(mtu=9000, features=MODERN & ~(1 << 15))
    linux.post_rx(16, 1518 + 12)
    dpdk.post_rx(16, 2048)
    big.post_rx(2, split=[12] + [4096] * 3)
    f = eth(BCAST, MA, 9014)
    cuts = sorted({(i * 9014) // 46 for i in range(1, 46)})
    assert a.send(f, split=cuts, indirect=True) == 1
    for p in (linux, dpdk, big):
        (r,) = p.received()
        assert r.frame == f
    assert a.stats()["rx_drop_desc_limit"] == 0


# The budget charges descriptors


def test_poll_budget_charges_descriptors(sw: Switch) -> None:
    """Chains of 100 descriptors (within the frame limit, so they are sent)
    cost their descriptors: a budget of one burst takes two of them, where
    it takes a whole burst of one-descriptor chains."""
    a = sw.port(num=4096)
    b = sw.port(num=4096)
    b.post_rx(256)
    f = eth(BCAST, MA, 1000)
    cuts = list(range(10, 1000, 10))  # 100 pieces
    for _ in range(40):
        a.tx.add_tx(f, net_hdr(12), split=cuts, publish=False)
    a.tx.publish(*sorted(a.tx.chains))
    before = a.stats()["descs"]
    lib.vs_poll(sw.sw, lib.VS_BURST)
    st = a.stats()
    assert a.tx.used_idx == 2 and st["rx_packets"] == 2
    assert st["descs"] - before == 200
    for _ in range(19):
        lib.vs_poll(sw.sw, lib.VS_BURST)
    assert a.tx.used_idx == 40 and len(b.frames()) == 40
    # One-descriptor chains: one budget unit each, as before.
    a.tx.reclaim()
    for _ in range(64):
        a.tx.add_tx(eth(BCAST, MA, 60), net_hdr(12), publish=False)
    a.tx.publish(*sorted(a.tx.chains))
    lib.vs_poll(sw.sw, lib.VS_BURST)
    assert a.tx.used_idx == 40 + lib.VS_BURST


# Indirect tables at any alignment


@pytest.mark.parametrize("offset", [1, 4, 8, 12])
def test_indirect_table_at_any_alignment(sw: Switch, offset: int) -> None:
    a = sw.port()
    b = sw.port()
    f = eth(BCAST, MA, 200)
    data = net_hdr(12) + f
    gpa = put(a.tx, data)
    t = put(a.tx, raw_table([(gpa, 40, DESC_F_NEXT, 1), (gpa + 40, len(data) - 40, 0, 0)]),
            offset=offset)
    (d,) = a.tx.take_ids(1)
    a.tx.write_desc(d, t, 32, DESC_F_INDIRECT)
    a.tx.publish(d)
    # b's RX buffer through an unaligned table too.
    buf = put(b.rx, bytes(2048))
    t = put(b.rx, raw_table([(buf, 2048, DESC_F_WRITE, 0)]), offset=offset)
    (d,) = b.rx.take_ids(1)
    b.rx.write_desc(d, t, 16, DESC_F_INDIRECT)
    b.rx.publish(d)
    assert a.kick() == 1
    assert not a.broken and not b.broken
    assert b.rx.used_idx == 1 and b.rx.used_entry(0).len == 12 + 200
    assert b.mem.read(buf + 12, 200) == f


# A disabled TX ring is drained, its frames dropped


def test_disabled_tx_ring_is_drained_and_its_frames_dropped(sw: Switch) -> None:
    """vhost-user.rst, ring states: while a ring is disabled the back end
    "must not supply any new RX packets, but must process and discard any TX
    packets"."""
    a = sw.port()
    b = sw.port()
    a.post_rx(8)
    b.post_rx(8)
    assert lib.vs_vring_enable(sw.sw, a.id, Q_TX, 0) == 0
    assert not a.up
    assert a.send(eth(BCAST, MA), eth(BCAST, MA, 70)) == 0
    st = a.stats()
    assert st["rx_drop_disabled"] == 2 and st["rx_packets"] == 0
    assert a.tx.used_idx == 2 and len(a.tx.reclaim()) == 2
    assert b.frames() == []
    # Its RX ring is enabled, and still gets frames.
    assert b.send(eth(BCAST, MB)) == 1
    assert len(a.frames()) == 1
    # Enabled again: forwarding as before.
    assert lib.vs_vring_enable(sw.sw, a.id, Q_TX, 1) == 0
    assert a.up
    assert a.send(eth(BCAST, MA, 80)) == 1
    assert [len(f) for f in b.frames()] == [80]


def test_disabled_rx_ring_gets_nothing(sw: Switch) -> None:
    a = sw.port()
    b = sw.port()
    b.post_rx(8)
    assert lib.vs_vring_enable(sw.sw, b.id, Q_RX, 0) == 0
    assert a.send(eth(BCAST, MA)) == 1
    assert b.rx.used_idx == 0 and b.stats()["tx_packets"] == 0


def test_poll_thread_drains_a_disabled_tx_ring(sw: Switch) -> None:
    a = sw.port()
    b = sw.port()
    b.post_rx(8)
    assert lib.vs_vring_enable(sw.sw, a.id, Q_TX, 0) == 0
    t = threading.Thread(target=lib.vs_run, args=(sw.sw, 100, 0))
    t.start()
    try:
        # Let it go to sleep first: then only a kick can wake it.
        assert wait_for(lambda: sw.stats()["poll_sleeps"] > 0)
        a.send(eth(BCAST, MA), kick=False)
        os.eventfd_write(a.kick_fds[Q_TX], 1)
        assert wait_for(lambda: a.stats()["rx_drop_disabled"] == 1)
        assert a.tx.used_idx == 1
    finally:
        lib.vs_run_stop(sw.sw)
        t.join()
    assert b.rx.used_idx == 0
