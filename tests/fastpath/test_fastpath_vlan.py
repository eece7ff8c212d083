"""802.1Q in the C fast path (vs_vlan.c): access ports and trunks, tags pushed and popped
in the frame, priority bits kept, learning and flooding per VLAN, the drops and their
counters, QinQ refused, VLAN changes flushing what a port learned, and TAP trunks."""

from __future__ import annotations

import errno
import socket
import struct
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import Port, Switch, eth, ffi, lib, mac_int

BCAST = "ff:ff:ff:ff:ff:ff"
M = {n: f"02:00:00:00:01:{i:02x}" for i, n in enumerate("abcdefgh", 1)}


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def set_vlans(sw: Switch, p: Port, vlan: int = 0, trunks: tuple[int, ...] = (),
              native: int = 0) -> int:
    arr = ffi.new("uint16_t[]", max(len(trunks), 1))
    for i, v in enumerate(trunks):
        arr[i] = v
    return int(lib.vs_port_set_vlans(sw.sw, p.id, vlan, arr, len(trunks), native))


def tag(frame: bytes, vid: int, pcp: int = 0, tpid: int = 0x8100) -> bytes:
    """frame with an 802.1Q (or other) tag after its MAC addresses."""
    return frame[:12] + struct.pack("!HH", tpid, pcp << 13 | vid) + frame[12:]


def untag(frame: bytes) -> bytes:
    return frame[:12] + frame[16:]


def ports(sw: Switch, n: int) -> list[Port]:
    out = [sw.port() for _ in range(n)]
    for p in out:
        p.post_rx(64)
    return out


def vlan_drops(sw: Switch) -> dict[int, tuple[int, int]]:
    out = ffi.new("struct vs_vlan_stats[]", lib.VS_VLAN_IDS)
    n = lib.vs_vlan_stats(sw.sw, out, lib.VS_VLAN_IDS)
    return {out[i].vlan: (out[i].not_allowed, out[i].tagged) for i in range(n)}


def test_access_ports_of_one_vlan_see_each_other_and_only_each_other(sw: Switch) -> None:
    a, b, c, plain = ports(sw, 4)
    assert set_vlans(sw, a, 10) == 0 and set_vlans(sw, b, 10) == 0 and set_vlans(sw, c, 20) == 0
    f = eth(BCAST, M["a"], 80)
    a.send(f)
    assert b.frames() == [f]  # untagged in, untagged out
    assert c.frames() == [] and plain.frames() == []
    # Learned on VLAN 10: unicast back goes to a only.
    g = eth(M["a"], M["b"], 90)
    b.send(g)
    assert a.frames() == [g]
    assert sw.fdb()[mac_int(M["a"])][0] == a.id
    e = ffi.new("struct vs_fdb_entry *")
    assert lib.vs_fdb_get(sw.sw, mac_int(M["a"]), 10, e) == 0 and e.port == a.id
    assert lib.vs_fdb_get(sw.sw, mac_int(M["a"]), 0, e) == -errno.ENOENT


def test_same_mac_on_two_vlans_is_two_stations(sw: Switch) -> None:
    a, b, c, d = ports(sw, 4)
    for p, v in ((a, 10), (b, 10), (c, 20), (d, 20)):
        set_vlans(sw, p, v)
    # The same source address on both VLANs: two entries, no move between them.
    a.send(eth(BCAST, M["h"]))
    c.send(eth(BCAST, M["h"]))
    b.frames(), d.frames()
    for vlan, port in ((10, a), (20, c)):
        e = ffi.new("struct vs_fdb_entry *")
        assert lib.vs_fdb_get(sw.sw, mac_int(M["h"]), vlan, e) == 0 and e.port == port.id
    assert a.stats()["fdb_moved"] == c.stats()["fdb_moved"] == 0
    f = eth(M["h"], M["b"])
    b.send(f)
    assert a.frames() == [f] and c.frames() == []


def test_trunk_gets_tagged_frames_and_untags_them_for_access_ports(sw: Switch) -> None:
    a, b, t = ports(sw, 3)
    set_vlans(sw, a, 10)
    set_vlans(sw, b, 20)
    assert set_vlans(sw, t, trunks=(10, 20)) == 0
    f = eth(BCAST, M["a"], 100)
    a.send(f)
    assert t.frames() == [tag(f, 10)]
    assert b.frames() == []
    # Back from the trunk, tagged 20, priority 5: b gets it untagged.
    g = eth(BCAST, M["c"], 120)
    t.send(tag(g, 20, pcp=5))
    assert b.frames() == [g] and a.frames() == []
    # Unicast to the station learned on the trunk's VLAN 20.
    h = eth(M["c"], M["b"], 70)
    b.send(h)
    assert t.frames() == [tag(h, 20)]


def test_priority_bits_are_kept_between_trunks(sw: Switch) -> None:
    t1, t2 = ports(sw, 2)
    set_vlans(sw, t1, trunks=(30,))
    set_vlans(sw, t2, trunks=(30,))
    f = tag(eth(BCAST, M["a"], 200), 30, pcp=6)
    t1.send(f)
    assert t2.frames() == [f]


def test_native_vlan_is_untagged_both_ways(sw: Switch) -> None:
    a, t = ports(sw, 2)
    set_vlans(sw, a, 1)
    set_vlans(sw, t, trunks=(10,), native=1)
    f = eth(BCAST, M["a"])
    a.send(f)
    assert t.frames() == [f]
    g = eth(BCAST, M["b"])
    t.send(g)
    assert a.frames() == [g]
    # Tagged with the native VLAN: accepted, and still leaves the trunk untagged.
    t2 = sw.port()
    t2.post_rx(16)
    set_vlans(sw, t2, trunks=(10,), native=1)
    t.send(tag(g, 1))
    assert a.frames() == [g] and t2.frames() == [g]


def test_drops_are_counted_per_port_and_per_vlan(sw: Switch) -> None:
    a, t, other = ports(sw, 3)
    set_vlans(sw, a, 10)
    set_vlans(sw, t, trunks=(10, 20))
    set_vlans(sw, other, 30)
    f = eth(BCAST, M["a"])
    a.send(tag(f, 10))               # tagged on an access port
    a.send(tag(f, 99))
    t.send(tag(f, 30))               # not in the trunk's list
    t.send(f)                        # untagged on a trunk without native_vlan
    t.send(tag(f, 4095))             # reserved VLAN ID
    for bad in (tag(tag(f, 10), 20), tag(f, 10, tpid=0x88A8), tag(f, 10, tpid=0x9100)):
        t.send(bad)                  # QinQ
    a.send(tag(f, 10, tpid=0x88A8))
    assert other.frames() == [] and t.frames() == [] and a.frames() == []
    sa, st = a.stats(), t.stats()
    assert sa["rx_drop_vlan_tagged"] == 2 and sa["rx_drop_qinq"] == 1
    assert st["rx_drop_vlan"] == 3 and st["rx_drop_qinq"] == 3
    assert vlan_drops(sw) == {0: (1, 0), 10: (0, 1), 30: (1, 0), 99: (0, 1), 4095: (1, 0)}
    # Dropped frames teach the table nothing.
    assert sw.fdb() == {}


def test_priority_tagged_frame_on_access_port_is_untagged(sw: Switch) -> None:
    a, b, t = ports(sw, 3)
    set_vlans(sw, a, 10)
    set_vlans(sw, b, 10)
    set_vlans(sw, t, trunks=(10,))
    f = eth(BCAST, M["a"], 90)
    a.send(tag(f, 0, pcp=3))
    assert b.frames() == [f]
    assert t.frames() == [tag(f, 10, pcp=3)]


def test_ports_without_vlans_pass_tags_through_untouched(sw: Switch) -> None:
    a, b, t = ports(sw, 3)
    set_vlans(sw, t, trunks=(10,))
    for f in (tag(eth(BCAST, M["a"]), 10), tag(eth(BCAST, M["a"]), 10, tpid=0x88A8)):
        a.send(f)
        assert b.frames() == [f]
    assert t.frames() == []  # VLAN 0 is not on any trunk
    assert a.stats()["rx_drop_qinq"] == 0


@pytest.mark.parametrize("cut", [1, 12, 13, 14, 15, 16, 17])
def test_a_tag_split_across_descriptors_is_read_right(sw: Switch, cut: int) -> None:
    t, a = ports(sw, 2)
    set_vlans(sw, t, trunks=(10,))
    set_vlans(sw, a, 10)
    f = eth(BCAST, M["b"], 300)
    # The guest's buffer is cut `cut` bytes into the frame (after the 12-byte header).
    t.send(tag(f, 10), split=[12 + cut])
    assert a.frames() == [f]


def test_runt_tagged_frame_is_dropped(sw: Switch) -> None:
    t, a = ports(sw, 2)
    set_vlans(sw, t, trunks=(10,))
    set_vlans(sw, a, 10)
    t.send(eth(BCAST, M["b"], 16)[:12] + b"\x81\x00\x00")  # 15 bytes: half a tag
    t.send(tag(eth(BCAST, M["b"], 14), 10)[:17])
    assert a.frames() == []
    assert t.stats()["rx_drop_runt"] == 2


def test_trunk_takes_frames_four_bytes_over_the_mtu(sw: Switch) -> None:
    t = sw.port(mtu=1500)
    a = sw.port(mtu=1500)
    for p in (t, a):
        p.post_rx(8, size=2048)
    set_vlans(sw, t, trunks=(10,))
    set_vlans(sw, a, 10)
    f = eth(BCAST, M["b"], 1514)  # a full 1500-byte payload
    t.send(tag(f, 10))
    assert a.frames() == [f]
    a.send(f)
    assert t.frames() == [tag(f, 10)]


def test_one_tagged_view_serves_every_trunk_and_access_ports_get_theirs(sw: Switch) -> None:
    a, b, t1, t2, t3 = ports(sw, 5)
    set_vlans(sw, a, 10)
    set_vlans(sw, b, 10)
    for t in (t1, t2):
        set_vlans(sw, t, trunks=(10, 20))
    set_vlans(sw, t3, trunks=(10,), native=10)
    frames = [eth(BCAST, M["a"], 64 + i) for i in range(20)]
    a.send(*frames)
    assert b.frames() == frames
    assert t1.frames() == t2.frames() == [tag(f, 10) for f in frames]
    assert t3.frames() == frames


def test_vlan_change_flushes_what_the_port_learned_on_vlans_it_left(sw: Switch) -> None:
    t, a, b = ports(sw, 3)
    set_vlans(sw, t, trunks=(10, 20))
    set_vlans(sw, a, 10)
    set_vlans(sw, b, 20)
    t.send(tag(eth(BCAST, M["c"]), 10), tag(eth(BCAST, M["d"]), 20))
    assert lib.vs_fdb_add(sw.sw, mac_int(M["e"]), 20, t.id, 1) == 0
    assert len(sw.fdb()) == 3
    assert set_vlans(sw, t, trunks=(10,)) == 2  # M["d"] and the static M["e"] on 20
    assert list(sw.fdb()) == [mac_int(M["c"])]
    # A static entry on a VLAN the port does not carry is refused.
    assert lib.vs_fdb_add(sw.sw, mac_int(M["e"]), 20, t.id, 1) == -errno.EINVAL
    # Flushing one VLAN only.
    t.send(tag(eth(BCAST, M["f"]), 10))
    a.send(eth(BCAST, M["g"]))
    assert lib.vs_fdb_flush_vlan(sw.sw, t.id, 10, 0) == 2
    assert list(sw.fdb()) == [mac_int(M["g"])]


@pytest.mark.parametrize(
    "args",
    [(4095, (), 0), (5000, (), 0), (10, (20,), 0), (0, (), 5), (0, (0,), 0), (0, (4095,), 0),
     (0, (10,), 4095)],
)
def test_bad_vlan_settings_are_refused(sw: Switch, args: tuple[int, tuple[int, ...], int]) -> None:
    p = sw.port()
    assert set_vlans(sw, p, *args) == -errno.EINVAL


def test_mirror_copies_show_their_vlan(sw: Switch) -> None:
    a, b, m = ports(sw, 3)
    set_vlans(sw, a, 10)
    set_vlans(sw, b, 10)
    arr = ffi.new("uint32_t[]", [a.id])
    assert lib.vs_port_set_mirror(sw.sw, m.id, arr, 1, lib.VS_MIRROR_RX) == 0
    f = eth(BCAST, M["a"])
    a.send(f)
    assert b.frames() == [f]
    assert m.frames() == [tag(f, 10)]  # m is not on VLAN 10: its copy says which VLAN
    a.send(tag(f, 99))  # dropped on a: no copy either
    assert m.frames() == []


def test_tap_trunk(sw: Switch) -> None:
    """A TAP trunk (a SOCK_SEQPACKET socket stands in for the tap fd: one write is one
    frame); the real tap and a kernel VLAN device are in tests/ports/test_tap_vlan.py."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        ours.setblocking(False)
        theirs.setblocking(False)
        a = sw.port()
        a.post_rx(16)
        t = 5
        assert lib.vs_port_open(sw.sw, t, lib.VS_PORT_TAP, 1500) == 0
        assert lib.vs_port_set_fd(sw.sw, t, ours.fileno()) == 0
        set_vlans(sw, a, 10)
        arr = ffi.new("uint16_t[]", [10])
        assert lib.vs_port_set_vlans(sw.sw, t, 0, arr, 1, 0) == 0
        f = eth(BCAST, M["a"], 100)
        a.send(f)
        assert theirs.recv(4096) == tag(f, 10)
        g = eth(BCAST, M["b"], 110)
        theirs.send(tag(g, 10))
        theirs.send(tag(g, 20))  # not allowed
        assert lib.vs_port_kick(sw.sw, t, 0) >= 0
        assert a.frames() == [g]
        st = ffi.new("struct vs_port_stats *")
        lib.vs_port_get_stats(sw.sw, t, st)
        assert st.rx_drop_vlan == 1
    finally:
        ours.close()
        theirs.close()
