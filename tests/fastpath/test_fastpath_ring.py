"""The C fast path's split virtqueues: buffer layouts (mergeable RX buffers,
split headers, indirect tables, legacy headers), interrupt and kick
suppression, stop/base, batches and index wrap-around.

Malformed rings are in test_fastpath_malformed.py.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import (
    AVAIL_F_NO_INTERRUPT,
    F_EVENT_IDX,
    F_INDIRECT_DESC,
    F_MRG_RXBUF,
    F_VERSION_1,
    MODERN,
    Q_RX,
    Q_TX,
    USED_F_NO_NOTIFY,
    GuestMemory,
    Port,
    Region,
    Switch,
    eth,
    features_id,
    lib,
    mac_int,
    net_hdr,
)

BCAST = "ff:ff:ff:ff:ff:ff"
MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def pair(sw: Switch, rx: int = 16, rx_size: int = 2048, **kw: object) -> tuple[Port, Port]:
    a = sw.port(**kw)  # type: ignore[arg-type]
    b = sw.port(**kw)  # type: ignore[arg-type]
    a.post_rx(rx, rx_size)
    b.post_rx(rx, rx_size)
    return a, b


# Mergeable and non-mergeable RX buffers


@pytest.mark.parametrize(("size", "buf"), [(1500, 256), (1514, 1526), (1514, 1525), (60, 72),
                                           (200, 16)])
def test_mergeable_rx_buffers(sw: Switch, size: int, buf: int) -> None:
    a = sw.port()
    b = sw.port()
    b.post_rx(128, buf)
    frame = eth(BCAST, MA, size)
    assert a.send(frame) == 1
    got = b.received()
    assert len(got) == 1
    r = got[0]
    need = 12 + size
    nbuf = -(-need // buf)
    assert r.num_buffers == nbuf == len(r.buffers)
    assert [u.len for u in r.buffers] == [buf] * (nbuf - 1) + [need - buf * (nbuf - 1)]
    assert r.frame == frame
    assert b.rx.pending_used() == 0 and b.calls() == 1
    assert b.stats()["tx_packets"] == 1


def test_mergeable_frame_spans_chains_of_several_descriptors(sw: Switch) -> None:
    a = sw.port()
    b = sw.port()
    b.post_rx(8, split=[100, 1, 27, 300])  # 428 bytes per buffer, 4 descriptors
    frame = eth(BCAST, MA, 1000)
    assert a.send(frame) == 1
    (r,) = b.received()
    assert r.num_buffers == 3 and [u.len for u in r.buffers] == [428, 428, 156]
    assert r.frame == frame


@pytest.mark.parametrize("features", [F_VERSION_1, 0], ids=features_id)
def test_big_packets_layout_without_mrg_rxbuf(sw: Switch, features: int) -> None:
    """Linux's "big packets" receive layout: one chain per frame, the header
    in its own descriptor, then page-sized pieces."""
    a = sw.port(features=features)
    b = sw.port(features=features)
    hl = b.hdr_len
    b.post_rx(4, split=[hl, 4096, 4096, 4096])
    frame = eth(BCAST, MA, 1514)
    assert a.send(frame) == 1
    (r,) = b.received()
    assert r.frame == frame and r.num_buffers == 1
    assert r.buffers[0].len == hl + 1514


def test_without_mrg_rxbuf_small_buffer_drops_and_consumes_nothing(sw: Switch) -> None:
    a = sw.port(features=F_VERSION_1)
    b = sw.port(features=F_VERSION_1)
    (head,) = b.post_rx(1, 200)
    before = b.mem.snapshot()
    assert a.send(eth(BCAST, MA, 400)) == 1
    assert b.stats()["tx_drop_no_buffer"] == 1 and b.stats()["tx_packets"] == 0
    assert b.rx.used_idx == 0 and b.mem.snapshot() == before
    # A frame that fits takes that same buffer, with num_buffers 1.
    small = eth(BCAST, MA, 150)
    assert a.send(small) == 1
    (r,) = b.received()
    assert r.frame == small and r.hdr == net_hdr(12, num_buffers=1)
    assert r.buffers[0].id == head and r.buffers[0].len == 162


@pytest.mark.parametrize("features", [MODERN, F_VERSION_1, 0], ids=features_id)
def test_empty_rx_ring_drops_and_changes_nothing(sw: Switch, features: int) -> None:
    a = sw.port(features=features)
    b = sw.port(features=features)
    before = b.mem.snapshot()
    assert a.send(eth(BCAST, MA), eth(BCAST, MA, 80)) == 2
    assert b.stats()["tx_drop_no_buffer"] == 2
    assert b.mem.snapshot() == before
    assert b.calls() == 0 and not b.broken and b.up
    b.post_rx(2)
    assert a.send(eth(BCAST, MA, 90)) == 1
    assert [len(f) for f in b.frames()] == [90]


def test_rx_ring_fills_up_mid_batch(sw: Switch) -> None:
    a = sw.port()
    b = sw.port()
    b.post_rx(3, 2048)
    frames = [eth(BCAST, MA, 60 + i) for i in range(5)]
    assert a.send(*frames) == 5
    assert b.frames() == frames[:3]
    assert b.stats()["tx_drop_no_buffer"] == 2


# Chain layouts on the TX side


def _tx_layouts() -> dict[str, dict[str, object]]:
    return {
        "one-descriptor": {},
        "header-separate": {"hdr_separate": True},
        "split-frame": {"split": [1, 6, 7, 13, 14, 500]},
        "many-descriptors": {"split": list(range(1, 200, 3))},
        "indirect": {"indirect": True, "split": [20, 40]},
        "indirect-header-separate": {"indirect": True, "hdr_separate": True},
    }


@pytest.mark.parametrize("layout", list(_tx_layouts()))
def test_tx_chain_layouts(sw: Switch, layout: str) -> None:
    a, b = pair(sw)
    frame = eth(BCAST, MA, 1000)
    assert a.send(frame, **_tx_layouts()[layout]) == 1
    assert b.frames() == [frame]
    assert a.stats()["rx_bytes"] == 1000


@pytest.mark.parametrize("cut", [1, 5, 10, 11])
def test_header_split_across_descriptors(sw: Switch, cut: int) -> None:
    a, b = pair(sw)
    frame = eth(BCAST, MA, 300)
    hdr = net_hdr(12)
    a.tx.add_chain([(hdr[:cut], False), (hdr[cut:] + frame[:50], False), (frame[50:], False)])
    assert a.kick() == 1
    assert b.frames() == [frame]


def test_zero_length_descriptors_are_harmless(sw: Switch) -> None:
    a, b = pair(sw)
    frame = eth(BCAST, MA, 100)
    a.tx.add_chain([(b"", False), (net_hdr(12), False), (b"", False), (frame, False)])
    assert a.kick() == 1
    assert b.frames() == [frame]


@pytest.mark.parametrize("split", [None, [6, 6, 500]])
def test_indirect_rx_buffers(sw: Switch, split: list[int] | None) -> None:
    a = sw.port()
    b = sw.port()
    b.post_rx(4, 512, split=split, indirect=True)
    frame = eth(BCAST, MA, 700)
    assert a.send(frame) == 1
    (r,) = b.received()
    assert r.frame == frame and r.num_buffers == 2


def test_legacy_header(sw: Switch) -> None:
    """No VERSION_1, no MRG_RXBUF: 10-byte header, no num_buffers."""
    a, b = pair(sw, features=0)
    frame = eth(BCAST, MA, 128)
    a.tx.add_tx(frame, net_hdr(10))
    assert a.kick() == 1
    (r,) = b.received()
    assert r.hdr == bytes(10) and r.frame == frame and r.buffers[0].len == 138
    # A 12-byte header on a legacy port is read as 10 bytes of header and
    # 2 of frame: the frame comes out shifted, not dropped.
    a.tx.add_tx(frame, net_hdr(12))
    assert a.kick() == 1
    assert b.frames() == [b"\0\0" + frame]


def test_mrg_rxbuf_without_version_1_has_12_byte_header(sw: Switch) -> None:
    a, b = pair(sw, rx_size=64, features=F_MRG_RXBUF)
    frame = eth(BCAST, MA, 100)
    assert a.send(frame) == 1
    (r,) = b.received()
    assert r.num_buffers == 2 and r.frame == frame


def test_buffers_spanning_two_adjacent_regions() -> None:
    """Two regions contiguous in guest-physical space but not in the file:
    a buffer across the boundary is read and written in two pieces."""
    mb = 1 << 20
    regions = [Region(0x100000, mb, 0x7F0000000000, mb), Region(0x200000, mb, 0x7F2000000000, 0)]
    mem_a, mem_b = GuestMemory(regions), GuestMemory(regions)
    try:
        with Switch() as sw:
            a = sw.port(mem=mem_a, ring_region=1)
            b = sw.port(mem=mem_b, ring_region=1)
            frame = eth(BCAST, MA, 1000)
            edge = 0x200000 - 300
            mem_a.write(edge, net_hdr(12) + frame)
            a.tx.write_desc(0, edge, 12 + len(frame))
            a.tx.free_ids.remove(0)
            a.tx.publish(0)
            b.rx.write_desc(5, edge, 2048, 2)
            b.rx.free_ids.remove(5)
            b.rx.publish(5)
            assert a.kick() == 1
            assert b.rx.used_idx == 1 and b.rx.used_entry(0).id == 5
            assert mem_b.read(edge, 12 + len(frame)) == net_hdr(12, 1) + frame
    finally:
        mem_a.close()
        mem_b.close()


# Interrupts (used side) and kicks (avail side)


def test_event_idx_used_event_respected_on_rx(sw: Switch) -> None:
    a, b = pair(sw)
    b.rx.rearm = False
    assert a.send(eth(BCAST, MA)) == 1
    assert b.calls() == 1  # first one after start always goes
    b.received()  # used idx 1
    b.rx.set_used_event(2)  # interrupt me once entry 2 (the third) is used
    assert a.send(eth(BCAST, MA)) == 1  # entry 1
    assert b.calls() == 0
    assert a.send(eth(BCAST, MA)) == 1  # entry 2: crossed
    assert b.calls() == 1
    assert b.stats()["calls"] == 2
    assert a.send(eth(BCAST, MA)) == 1
    assert b.calls() == 0  # event 2 is behind now


def test_event_idx_used_event_respected_on_tx(sw: Switch) -> None:
    a, _ = pair(sw)
    a.tx.rearm = False
    assert a.send(eth(BCAST, MA)) == 1
    assert a.calls(Q_TX) == 1
    a.tx.set_used_event(0xFFFF)  # far away
    assert a.send(eth(BCAST, MA), eth(BCAST, MA)) == 2
    assert a.calls(Q_TX) == 0
    a.tx.set_used_event(3)
    assert a.send(eth(BCAST, MA)) == 1  # used 3 -> 4 crosses entry 3
    assert a.calls(Q_TX) == 1


@pytest.mark.parametrize("features", [F_VERSION_1 | F_MRG_RXBUF, 0], ids=features_id)
def test_no_interrupt_flag_without_event_idx(sw: Switch, features: int) -> None:
    a, b = pair(sw, features=features)
    b.rx.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    assert a.send(eth(BCAST, MA)) == 1
    assert b.calls() == 0 and len(b.frames()) == 1
    b.rx.set_avail_flags(0)
    assert a.send(eth(BCAST, MA)) == 1
    assert b.calls() == 1


def test_no_interrupt_flag_ignored_with_event_idx(sw: Switch) -> None:
    a, b = pair(sw)
    b.received()
    b.rx.set_avail_flags(AVAIL_F_NO_INTERRUPT)
    assert a.send(eth(BCAST, MA)) == 1
    assert b.calls() == 1


@pytest.mark.parametrize("features", [MODERN & ~F_EVENT_IDX, 0], ids=features_id)
def test_one_interrupt_per_kick_without_event_idx(sw: Switch, features: int) -> None:
    """A kick that takes three frames returns them with one interrupt, and a
    kick that finds nothing sends none: nothing new is in the used ring."""
    a, b = pair(sw, features=features)
    assert a.send(eth(BCAST, MA), eth(BCAST, MA), eth(BCAST, MA)) == 3
    assert a.calls(Q_TX) == 1 and b.calls(Q_RX) == 1
    assert a.kick() == 0
    assert a.calls(Q_TX) == 0
    assert a.stats()["calls"] == 1


@pytest.mark.parametrize("features", [MODERN, 0], ids=features_id)
def test_kick_on_empty_ring_sends_no_interrupt(sw: Switch, features: int) -> None:
    a, _ = pair(sw, features=features)
    assert a.kick() == 0
    assert a.calls(Q_TX) == 0 and a.stats()["calls"] == 0
    assert a.tx.used_idx == 0


def test_poll_budget_counts_dropped_frames(sw: Switch) -> None:
    """The budget bounds the work of one call.  Frames the port drops (runts
    here) are work too: a guest that keeps its TX ring full of them must not
    hold the switch in one call while other ports wait."""
    a, _ = pair(sw, num=1024, rx=8)
    for _ in range(600):
        a.tx.add_chain([(net_hdr(12) + b"\x01" * 8, False)], publish=False)
    a.tx.publish(*sorted(a.tx.chains))
    lib.vs_poll(sw.sw, lib.VS_BURST)
    assert a.stats()["rx_drop_runt"] <= 2 * lib.VS_BURST
    assert a.tx.used_idx <= 2 * lib.VS_BURST


def test_kick_suppression_event_idx(sw: Switch) -> None:
    a, _ = pair(sw)
    for n in (1, 5, 3):
        assert a.send(*[eth(BCAST, MA)] * n) == n
        assert a.tx.avail_event == a.tx.avail_idx
    assert a.tx.used_flags & USED_F_NO_NOTIFY == 0


@pytest.mark.parametrize("features", [F_VERSION_1 | F_MRG_RXBUF | F_INDIRECT_DESC, 0],
                         ids=features_id)
def test_kick_suppression_flag_cleared_when_idle(sw: Switch, features: int) -> None:
    a, _ = pair(sw, features=features)
    assert a.send(*[eth(BCAST, MA)] * 4) == 4
    assert a.tx.used_flags & USED_F_NO_NOTIFY == 0
    assert a.kick() == 0
    assert a.tx.used_flags & USED_F_NO_NOTIFY == 0


def test_rx_kick_is_counted_and_harmless(sw: Switch) -> None:
    a, _ = pair(sw)
    assert a.kick(Q_RX) == 0
    assert a.stats()["kicks"] == 1


# Stop, base, batches, wrap-around


def test_stop_returns_base_and_set_base_resumes(sw: Switch) -> None:
    a, b = pair(sw, rx=8)
    frames = [eth(BCAST, MA, 60 + i) for i in range(5)]
    assert a.send(*frames) == 5
    assert b.frames() == frames
    assert lib.vs_vring_stop(sw.sw, a.id, Q_TX) == 5
    assert lib.vs_vring_stop(sw.sw, b.id, Q_RX) == 5
    assert not a.up and not b.up
    # Frames queued while stopped wait in the ring.
    a.send(eth(BCAST, MA, 99), kick=False)
    assert sw.poll() == 0
    # The control plane starts the rings again from the saved bases.
    _restart(a, Q_TX, 5)
    _restart(b, Q_RX, 5)
    assert a.up and b.up
    assert a.kick() == 1
    assert b.frames() == [eth(BCAST, MA, 99)]
    assert b.rx.used_entry(5).len == 12 + 99 and a.tx.used_idx == 6


def _restart(p: Port, q: int, base: int) -> None:
    r = p.rings[q]
    assert lib.vs_vring_set_num(p.sw, p.id, q, r.num) == 0
    assert lib.vs_vring_set_base(p.sw, p.id, q, base) == 0
    assert lib.vs_vring_set_addr(p.sw, p.id, q, r.desc_ua, r.used_ua, r.avail_ua) == 0
    assert lib.vs_vring_set_kick(p.sw, p.id, q, p.kick_fds[q]) == 0
    assert lib.vs_vring_set_call(p.sw, p.id, q, p.call_fds[q]) == 0
    assert lib.vs_vring_enable(p.sw, p.id, q, 1) == 0


def test_set_base_rejects_more_than_16_bits(sw: Switch) -> None:
    a = sw.port()
    assert lib.vs_vring_set_base(sw.sw, a.id, Q_TX, 0x10000) < 0


def test_batch_larger_than_burst(sw: Switch) -> None:
    a, b = pair(sw, rx=200, num=256)
    n = 3 * lib.VS_BURST + 7
    frames = [eth(BCAST, MA, 60 + i) for i in range(n)]
    assert a.send(*frames) == n
    assert b.frames() == frames
    assert a.tx.used_idx == n and len(a.tx.reclaim()) == n


def test_kick_budget_leaves_the_rest_for_the_next_call(sw: Switch) -> None:
    a, b = pair(sw, rx=1024, num=1024, rx_size=128)
    n = 700
    assert a.send(*[eth(BCAST, MA, 64)] * n) > 0
    total = a.tx.used_idx
    for _ in range(10):
        if total == n:
            break
        a.kick()
        total = a.tx.used_idx
    assert total == n and len(b.frames()) == n


@pytest.mark.parametrize("base", [0, 65530, 65535])
def test_small_rings_wrap_many_times(sw: Switch, base: int) -> None:
    a = sw.port(num=8, base=base)
    b = sw.port(num=8, base=base)
    sent: list[bytes] = []
    got: list[bytes] = []
    for rnd in range(40):
        b.post_rx(5)
        frames = [eth(BCAST, MA, 60 + (rnd * 5 + i) % 200) for i in range(5)]
        assert a.send(*frames) == 5
        a.tx.reclaim()
        sent += frames
        got += b.frames()
        # EVENT_IDX across the 16-bit wrap: the driver re-arms after each
        # round, so each round costs exactly one interrupt per ring.
        assert (a.calls(Q_TX), b.calls(Q_RX)) == (1, 1), f"round {rnd}"
    assert got == sent
    assert a.tx.used_idx == (base + 200) & 0xFFFF
    assert not a.broken and not b.broken


def test_full_ring_of_single_descriptor_chains(sw: Switch) -> None:
    a, b = pair(sw, num=8, rx=0)
    b.post_rx(8)
    frames = [eth(BCAST, MA, 70 + i) for i in range(8)]
    assert a.send(*frames) == 8
    assert b.frames() == frames


def test_buffers_are_used_in_the_order_they_were_made_available(sw: Switch) -> None:
    """VIRTIO_F_IN_ORDER is offered: TX chains (dropped ones included) and
    RX buffers come back in exactly the order the guest made them available,
    even when their heads are not consecutive descriptors."""
    a = sw.port()
    b = sw.port()
    rx_heads = b.post_rx(12, split=[40, 1000])  # two descriptors per buffer
    big = eth(BCAST, MA, 1400)
    tx_heads = [
        a.tx.add_tx(eth(BCAST, MA, 100), net_hdr(12), split=[20, 50]),
        a.tx.add_tx(b"\x01" * 6, net_hdr(12)),               # runt: dropped, still used
        a.tx.add_tx(big, net_hdr(12), hdr_separate=True),      # two RX buffers (mergeable)
        a.tx.add_tx(eth(BCAST, MA, 2000), net_hdr(12)),        # too long: dropped
        a.tx.add_tx(eth(BCAST, MA, 60), net_hdr(12), indirect=True),
        a.tx.add_tx(eth(BCAST, MA, 300), net_hdr(12, flags=1)),  # offload asked: dropped
        a.tx.add_tx(eth(BCAST, MA, 64), net_hdr(12)),
    ]
    assert len(set(tx_heads)) == len(tx_heads)
    assert a.kick() == 4
    assert [u.id for u in a.tx.reclaim()] == tx_heads
    got = b.received()
    assert [len(r.frame) for r in got] == [100, 1400, 60, 64]
    assert [u.id for r in got for u in r.buffers] == rx_heads[:5]


@pytest.mark.parametrize("features", [F_VERSION_1, F_VERSION_1 | F_EVENT_IDX],
                         ids=["flags", "event-idx"])  # fmt: skip
def test_rx_rings_ask_for_no_kicks(sw: Switch, features: int) -> None:
    """Nothing waits for RX buffers, so the switch tells the guest not to
    kick for them: NO_NOTIFY on the RX ring; with EVENT_IDX an avail_event
    that never moves (at most one kick per 65536 buffers)."""
    a = sw.port(features=features)
    a.post_rx(16)
    if features & F_EVENT_IDX:
        assert a.rx.avail_event == 0 and a.rx.used_flags == 0
    else:
        assert a.rx.used_flags & USED_F_NO_NOTIFY
        assert not a.tx.used_flags & USED_F_NO_NOTIFY  # TX still wants kicks when idle


def test_a_move_inside_a_burst_reaches_the_next_frame(sw: Switch) -> None:
    """The burst remembers its last lookup; a source learned later in the
    same burst that moves that address must not be forwarded on the stale
    answer (here: X moves to a, so a frame from a to X stays on a)."""
    a, b, c = sw.port(), sw.port(), sw.port()
    for p in (a, b, c):
        p.post_rx(8)
    mx = "02:00:00:00:00:0c"
    assert c.send(eth(MB, mx, 64)) == 1  # X is on c
    b.received()
    a.received()
    assert a.send(eth(mx, MA, 64), eth(mx, mx, 65)) == 2
    assert [len(f) for f in c.frames()] == [64]
    assert sw.fdb()[mac_int(mx)][0] == a.id
