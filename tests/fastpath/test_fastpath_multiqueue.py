"""Multiqueue in the C fast path: frames are taken from every enabled TX ring, and go to
one of a port's enabled RX rings by a hash of their flow, so a flow keeps its order on one
queue and flows spread; disabled rings are never filled and a disabled TX ring is drained
and dropped; per-ring counters say which ring carried what."""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import Port, Switch, eth, ffi, lib, mac_int

MA, MB = "02:00:00:00:0c:0a", "02:00:00:00:0c:0b"


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def udp(dst: str, src: str, sport: int, seq: int, dport: int = 9) -> bytes:
    """IPv4/UDP 10.0.0.1 -> 10.0.0.2 from sport, the sequence number in the payload."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 8 + 4, 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
    head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x08\x00"
    return head + ip + struct.pack("!HHHH", sport, dport, 12, 0) + struct.pack("!I", seq)


def seq_of(frame: bytes) -> tuple[int, int]:
    """(source port, sequence number) of a frame udp() made."""
    return struct.unpack("!H", frame[34:36])[0], struct.unpack("!I", frame[42:46])[0]


def qstats(sw: Switch, p: Port, q: int) -> tuple[int, int]:
    st = ffi.new("struct vs_queue_stats *")
    assert lib.vs_vring_get_stats(sw.sw, p.id, q, st) == 0
    return st.packets, st.bytes


def setup(sw: Switch, pairs: int = 4) -> tuple[Port, Port]:
    a = sw.port(pairs=2)
    b = sw.port(pairs=pairs)
    for pair in range(2):
        a.post_rx(64, pair=pair)
    for pair in range(pairs):
        b.post_rx(256, pair=pair)
    assert lib.vs_fdb_add(sw.sw, mac_int(MB), 0, b.id, 1) == 0
    assert lib.vs_fdb_add(sw.sw, mac_int(MA), 0, a.id, 1) == 0
    return a, b


def test_flows_spread_over_the_rx_queues_and_keep_their_order(sw: Switch) -> None:
    a, b = setup(sw)
    flows = range(1000, 1032)
    for seq in range(6):
        a.send(*(udp(MB, MA, f, seq) for f in flows))
    got = {pair: [seq_of(f) for f in b.frames(pair)] for pair in range(4)}
    # Every frame once; each flow on one queue only, in order there.
    assert sorted(x for v in got.values() for x in v) == sorted(
        (f, s) for f in flows for s in range(6)
    )
    where: dict[int, set[int]] = {}
    for pair, frames in got.items():
        for f, _ in frames:
            where.setdefault(f, set()).add(pair)
        for f in flows:
            seqs = [s for g, s in frames if g == f]
            assert seqs == sorted(seqs)
    assert all(len(v) == 1 for v in where.values()), where
    # 32 flows over 4 queues: every queue gets some.
    assert all(got[pair] for pair in range(4)), {p: len(v) for p, v in got.items()}
    # The rings' own counters agree.
    for pair in range(4):
        assert qstats(sw, b, 2 * pair)[0] == len(got[pair])
    assert qstats(sw, a, 1) == (32 * 6, sum(len(udp(MB, MA, 1, 0)) for _ in range(32 * 6)))


def test_every_tx_queue_is_served(sw: Switch) -> None:
    a, b = setup(sw, pairs=1)
    a.send(udp(MB, MA, 1, 0), pair=0, kick=False)
    a.send(udp(MB, MA, 2, 0), pair=1, kick=False)
    assert sw.poll() >= 2
    assert sorted(seq_of(f) for f in b.frames()) == [(1, 0), (2, 0)]
    assert qstats(sw, a, 1)[0] == 1 and qstats(sw, a, 3)[0] == 1
    # A kick on one TX ring serves the others too (one port, one pass).
    a.send(udp(MB, MA, 3, 0), pair=1, kick=False)
    a.send(udp(MB, MA, 4, 0), pair=0)
    assert sorted(seq_of(f) for f in b.frames()) == [(3, 0), (4, 0)]


def test_disabled_queues_are_never_filled_and_their_tx_is_dropped(sw: Switch) -> None:
    a, b = setup(sw)
    # The guest uses 2 of its 4 pairs (ethtool -L combined 2: QEMU disables the rest).
    for q in (4, 5, 6, 7):
        assert lib.vs_vring_enable(sw.sw, b.id, q, 0) == 0
    for seq in range(4):
        a.send(*(udp(MB, MA, f, seq) for f in range(2000, 2016)))
    assert b.frames(2) == [] and b.frames(3) == []
    assert len(b.frames(0)) + len(b.frames(1)) == 64
    # A frame on a disabled TX ring is taken and dropped, not forwarded.
    before = b.stats()["rx_drop_disabled"]
    b.send(udp(MA, MB, 7, 0), pair=3)
    assert b.stats()["rx_drop_disabled"] == before + 1
    assert a.frames(0) == [] and a.frames(1) == []
    # Enabled again: queue 3 gets its flows back.
    for q in (6, 7):
        assert lib.vs_vring_enable(sw.sw, b.id, q, 1) == 0
    for seq in range(4):
        a.send(*(udp(MB, MA, f, seq) for f in range(2000, 2016)))
    assert b.frames(3), "queue pair 3 got nothing after it was enabled again"


def test_one_flow_to_a_multiqueue_port_is_one_queue(sw: Switch) -> None:
    a, b = setup(sw)
    for seq in range(50):
        a.send(udp(MB, MA, 4242, seq))
    lens = [len(b.frames(pair)) for pair in range(4)]
    assert sorted(lens) == [0, 0, 0, 50], lens


def test_non_ip_frames_hash_by_addresses(sw: Switch) -> None:
    a, b = setup(sw)
    for i in range(8):
        a.send(eth(MB, MA, 64 + i))
    lens = [len(b.frames(pair)) for pair in range(4)]
    assert sorted(lens) == [0, 0, 0, 8], lens


def test_a_single_queue_port_still_gets_everything(sw: Switch) -> None:
    a, b = setup(sw, pairs=1)
    a.send(*(udp(MB, MA, f, 0) for f in range(16)))
    assert len(b.frames()) == 16


def test_garbage_headers_hash_without_harm(sw: Switch) -> None:
    """The flow hash reads what the guest wrote: IPv4 headers with a length of 0 or past
    the frame, truncated IPv4 and IPv6 headers, tagged runts.  Every frame is delivered
    once (to some queue) and nothing is read outside the frame (ASan runs this file)."""
    a, b = setup(sw)
    good = udp(MB, MA, 1, 0)
    bad = [
        good[:14] + bytes([0x40]) + good[15:],  # IHL 0
        good[:14] + bytes([0x4F]) + good[15:],  # IHL 15: options past the frame
        good[:20],  # IPv4 header cut short
        good[:12] + b"\x86\xdd" + bytes(10),  # IPv6 header cut short
        good[:12] + b"\x81\x00\x00\x0a\x08\x00" + bytes(3),  # tagged, IPv4 cut short
        good[:12] + b"\x08\x00" + bytes([0x45, 0, 0, 20, 0, 0, 0x3F, 0xFF]) + bytes(12),
    ]
    a.send(*bad)
    got = [f for pair in range(4) for f in b.frames(pair)]
    assert sorted(got) == sorted(bad)
