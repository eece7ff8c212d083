"""Mirror ports (SPAN) in the C fast path: vs_port_set_mirror, each direction, one copy per
frame whatever the reasons, no copy back to the sender, copies never mirrored again, a full
or too small mirror counted without holding the mirrored ports back, TAP mirrors, and ports
closing under a mirror."""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import Port, Switch, eth, ffi, lib, mac_int

BCAST = "ff:ff:ff:ff:ff:ff"
MA, MB, MM, MN = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0e", "02:00:00:00:00:0f"
RX, TX, BOTH = lib.VS_MIRROR_RX, lib.VS_MIRROR_TX, lib.VS_MIRROR_RX | lib.VS_MIRROR_TX


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def set_mirror(sw: Switch, port: int, sources: list[int], dirs: int) -> int:
    arr = ffi.new("uint32_t[]", max(len(sources), 1))
    for i, s in enumerate(sources):
        arr[i] = s
    return int(lib.vs_port_set_mirror(sw.sw, port, arr, len(sources), dirs))


def station(sw: Switch, p: Port, m: str) -> None:
    assert lib.vs_fdb_add(sw.sw, mac_int(m), 0, p.id, 1) == 0


def setup3(sw: Switch, rx: int = 64, m_rx: int | None = None) -> tuple[Port, Port, Port]:
    """a, b and the mirror port m, each with rx RX buffers (m: m_rx) and a static MAC."""
    a, b, m = (sw.port() for _ in range(3))
    for p, addr in ((a, MA), (b, MB), (m, MM)):
        p.post_rx(rx if p is not m or m_rx is None else m_rx)
        station(sw, p, addr)
    return a, b, m


def traffic(a: Port, b: Port, n: int = 3) -> tuple[list[bytes], list[bytes]]:
    """n frames a -> b and n frames b -> a, interleaved; each side gets its n."""
    ab = [eth(MB, MA, 100 + i) for i in range(n)]
    ba = [eth(MA, MB, 200 + i) for i in range(n)]
    for f, g in zip(ab, ba, strict=True):
        assert a.send(f) == 1
        assert b.send(g) == 1
    assert b.frames() == ab
    assert a.frames() == ba
    return ab, ba


@pytest.mark.parametrize("dirs", ["rx", "tx", "both"])
def test_each_direction_gets_its_frames_once(sw: Switch, dirs: str) -> None:
    a, b, m = setup3(sw)
    assert set_mirror(sw, m.id, [a.id], {"rx": RX, "tx": TX, "both": BOTH}[dirs]) == 0
    ab, ba = traffic(a, b)
    want = {"rx": ab, "tx": ba, "both": [f for pair in zip(ab, ba, strict=True) for f in pair]}
    assert m.frames() == want[dirs]
    st = m.stats()
    assert st["tx_mirror"] == len(want[dirs]) == st["tx_packets"]
    assert st["mirror_drops"] == 0 and st["tx_flood"] == 0
    # The mirrored ports see nothing of it.
    for p in (a, b):
        assert p.stats()["tx_mirror"] == p.stats()["mirror_drops"] == 0


def test_frame_from_one_source_to_another_is_copied_once(sw: Switch) -> None:
    # a -> b is rx of a and tx of b: one copy.
    a, b, m = setup3(sw)
    assert set_mirror(sw, m.id, [a.id, b.id], BOTH) == 0
    ab, ba = traffic(a, b)
    assert m.frames() == [f for pair in zip(ab, ba, strict=True) for f in pair]
    assert m.stats()["tx_mirror"] == 6


def test_frame_flooded_to_the_mirror_is_not_copied_again(sw: Switch) -> None:
    a, b, m = setup3(sw)
    assert set_mirror(sw, m.id, [a.id, b.id], BOTH) == 0
    f = eth(BCAST, MA, 90)
    assert a.send(f) == 1
    assert m.frames() == [f] and b.frames() == [f]
    st = m.stats()
    assert (st["tx_flood"], st["tx_mirror"], st["tx_packets"]) == (1, 0, 1)


def test_burst_order_is_kept_between_copies_and_own_frames(sw: Switch) -> None:
    a, _b, m = setup3(sw)
    assert set_mirror(sw, m.id, [a.id], RX) == 0
    frames = [eth(MB if i % 2 else MM, MA, 80 + i) for i in range(8)]
    for f in frames:
        a.tx.add_tx(f, b"\0" * 12)
    assert a.kick() == 8
    assert m.frames() == frames  # its own and the copies, as a sent them
    assert m.stats()["tx_mirror"] == 4


def test_mirror_never_gets_its_own_frames_back(sw: Switch) -> None:
    _a, b, m = setup3(sw)
    assert set_mirror(sw, m.id, [b.id], BOTH) == 0
    f = eth(MB, MM, 70)
    assert m.send(f) == 1
    assert b.frames() == [f]
    assert m.frames() == []
    assert m.stats()["tx_mirror"] == 0


def test_copies_are_never_mirrored_again(sw: Switch) -> None:
    a, b, m = setup3(sw)
    n = sw.port()
    n.post_rx(16)
    station(sw, n, MN)
    assert set_mirror(sw, m.id, [a.id], RX) == 0
    assert set_mirror(sw, n.id, [m.id], BOTH) == 0  # mirrors the mirror port
    f = eth(MB, MA, 100)
    assert a.send(f) == 1
    assert m.frames() == [f] and n.frames() == []
    # m's own traffic is mirrored as any port's.
    g, h = eth(MM, MB, 110), eth(MB, MM, 120)
    assert b.send(g) == 1 and m.send(h) == 1
    assert n.frames() == [g, h]


def test_two_mirrors_of_one_port(sw: Switch) -> None:
    a, b, m = setup3(sw)
    n = sw.port()
    n.post_rx(16)
    assert set_mirror(sw, m.id, [a.id], RX) == 0
    assert set_mirror(sw, n.id, [a.id], TX) == 0
    ab, ba = traffic(a, b, 2)
    assert m.frames() == ab and n.frames() == ba


def test_full_mirror_drops_copies_not_traffic(sw: Switch) -> None:
    a, b, m = setup3(sw, rx=128, m_rx=5)  # room for 5 copies of the burst of 32
    assert set_mirror(sw, m.id, [a.id], RX) == 0
    before_a, before_b = a.stats(), b.stats()
    frames = [eth(MB, MA, 64 + i) for i in range(32)]
    for f in frames:
        a.tx.add_tx(f, b"\0" * 12)
    assert a.kick() == 32
    assert b.frames() == frames
    assert m.frames() == frames[:5]
    st = m.stats()
    assert (st["tx_mirror"], st["mirror_drops"], st["tx_drop_no_buffer"]) == (5, 27, 27)
    assert a.stats()["rx_packets"] - before_a["rx_packets"] == 32
    assert b.stats()["tx_packets"] - before_b["tx_packets"] == 32
    assert b.stats()["tx_drop_no_buffer"] == 0
    # No room at all: every copy is dropped, a and b go on.
    for f in frames:
        a.tx.add_tx(f, b"\0" * 12)
    assert a.kick() == 32
    assert b.frames() == frames and m.frames() == []
    assert m.stats()["mirror_drops"] == 27 + 32


def test_copy_longer_than_the_mirror_mtu_is_dropped(sw: Switch) -> None:
    a, b = sw.port(), sw.port()
    m = sw.port(mtu=500)
    for p, addr in ((a, MA), (b, MB), (m, MM)):
        p.post_rx(8)
        station(sw, p, addr)
    assert set_mirror(sw, m.id, [a.id], RX) == 0
    big, small = eth(MB, MA, 1000), eth(MB, MA, 200)
    assert a.send(big) == 1 and a.send(small) == 1
    assert b.frames() == [big, small]
    assert m.frames() == [small]
    st = m.stats()
    assert (st["tx_mirror"], st["mirror_drops"], st["tx_drop_too_long"]) == (1, 1, 1)


def test_set_mirror_checks_and_replaces(sw: Switch) -> None:
    a, b, m = setup3(sw)
    assert set_mirror(sw, m.id, [m.id], RX) == -errno.EINVAL
    assert set_mirror(sw, m.id, [a.id], 4) == -errno.EINVAL
    assert set_mirror(sw, m.id, [77], RX) == -errno.ENODEV
    assert set_mirror(sw, 99, [a.id], RX) == -errno.ENODEV
    assert set_mirror(sw, m.id, [a.id, 300], RX) == -errno.ENODEV
    # A refused call changed nothing; a new one replaces the old; none clears.
    assert set_mirror(sw, m.id, [a.id], RX) == 0
    assert set_mirror(sw, m.id, [b.id], RX) == 0
    _ab, ba = traffic(a, b, 1)
    assert m.frames() == ba
    assert set_mirror(sw, m.id, [], 0) == 0
    traffic(a, b, 1)
    assert m.frames() == []


def test_closing_ports_takes_them_out_of_mirrors(sw: Switch) -> None:
    a, b, m = setup3(sw)
    c = sw.port()
    c.post_rx(8)
    assert set_mirror(sw, m.id, [a.id, c.id], BOTH) == 0
    lib.vs_port_close(sw.sw, c.id)
    ab, ba = traffic(a, b, 1)
    assert m.frames() == ab + ba
    # The mirror port goes: a port opened in its place mirrors nothing.
    lib.vs_port_close(sw.sw, m.id)
    m.release()
    sw.ports.remove(m)
    fresh = sw.port(m.id)
    fresh.post_rx(8)
    traffic(a, b, 1)
    assert fresh.frames() == []
    assert fresh.stats()["tx_mirror"] == 0


def test_mirror_to_a_tap_port(sw: Switch) -> None:
    """A TAP mirror port (here a SOCK_SEQPACKET socket: one write is one frame)."""
    a, b = sw.port(), sw.port()
    for p, addr in ((a, MA), (b, MB)):
        p.post_rx(8)
        station(sw, p, addr)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ours.setblocking(False)
        theirs.setblocking(False)
        t = 3
        assert lib.vs_port_open(sw.sw, t, lib.VS_PORT_TAP, 1500) == 0
        assert lib.vs_port_set_fd(sw.sw, t, ours.fileno()) == 0
        assert set_mirror(sw, t, [a.id, b.id], BOTH) == 0
        ab, ba = traffic(a, b, 2)
        got = []
        while True:
            try:
                got.append(theirs.recv(4096))
            except BlockingIOError:
                break
        assert got == [f for pair in zip(ab, ba, strict=True) for f in pair]
        st = ffi.new("struct vs_port_stats *")
        lib.vs_port_get_stats(sw.sw, t, st)
        assert (st.tx_mirror, st.mirror_drops) == (4, 0)
        # Nobody reads: the socket fills, copies are dropped, a -> b goes on.
        sent = 0
        while True:
            before = st.mirror_drops
            frames = [eth(MB, MA, 1400) for _ in range(32)]
            b.post_rx(32)
            for f in frames:
                a.tx.add_tx(f, b"\0" * 12)
            assert a.kick() == 32
            assert b.frames() == frames
            sent += 32
            lib.vs_port_get_stats(sw.sw, t, st)
            if st.mirror_drops > before or sent > 100000:
                break
        assert st.mirror_drops > 0
        assert st.tx_drop_no_buffer == st.mirror_drops
        lib.vs_port_close(sw.sw, t)
    finally:
        ours.close()
        theirs.close()
        os.sync()
