"""VXLAN ports in the fast path alone (csrc/vs_vxlan.c), over loopback sockets: the
datagrams the switch sends (header, VNI, source port from the inner flow, one copy per
remote when flooding, one remote for a learned MAC), the ones it takes, the drops it
counts, and the MTU.  test_fastpath_sanitizers.py runs this file under ASan and UBSan.

The switch's sockets are the ones vswitch.netsys.vxlan opens (the sender is a raw socket:
root).  A TAP-kind port on one end of a socketpair plays the host on the switch.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
from conftest import need_root

from vswitch.netsys.vxlan import open_vxlan_sockets

# First: under VSWITCH_FASTPATH_DIR this loads the build under test (the sanitizers'),
# which vswitch.fastpath then finds already imported.
from vswitch.testkit.virtio_driver import lib

if TYPE_CHECKING:
    from vswitch.fastpath import Fastpath

H, M2, M3 = "525400420009", "525400420002", "525400420003"
BCAST = "ff" * 6


def frame(dst: str, src: str, size: int = 60, sport: int = 1234, dport: int = 5678) -> bytes:
    """IPv4/UDP from 10.0.0.2 to 10.0.0.9, of `size` bytes."""
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 9])
    f = bytes.fromhex(dst) + bytes.fromhex(src) + b"\x08\x00" + ip
    f += struct.pack(">HHHH", sport, dport, 8, 0)
    return f + bytes(max(size - len(f), 0))


def vxh(vni: int = 42) -> bytes:
    return b"\x08\0\0\0" + vni.to_bytes(3, "big") + b"\0"


@dataclass
class Rig:
    dp: Fastpath
    vx: int
    tap: int
    host: socket.socket  # the TAP port's peer
    port: int  # the switch's UDP port on 127.0.0.1
    listeners: dict[str, socket.socket]  # remote address -> a socket at remote:port
    fds: list[int]

    def remote(self, addr: str) -> socket.socket:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, 0))
        self.listeners.setdefault(f"from-{addr}", s)
        return s

    def send_from(self, addr: str, *payloads: bytes) -> None:
        s = self.remote(addr)
        for p in payloads:
            s.sendto(p, ("127.0.0.1", self.port))
        self.poll()

    def from_host(self, *frames: bytes) -> None:
        for f in frames:
            self.host.send(f)
        self.poll()

    def poll(self) -> None:
        for _ in range(20):
            if self.dp.poll(256) <= 0:
                break

    def got(self, addr: str) -> list[tuple[bytes, int]]:
        out = []
        s = self.listeners[addr]
        while True:
            try:
                data, who = s.recvfrom(65535)
            except BlockingIOError:
                return out
            out.append((data, who[1]))

    def host_got(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.host.recv(65535))
            except BlockingIOError:
                return out

    def stats(self) -> dict[str, int]:
        return {**self.dp.port_stats(self.vx), **self.dp.vxlan_stats(self.vx)}


@pytest.fixture
def rig() -> Iterator[Rig]:
    from vswitch.fastpath import Fastpath

    need_root()
    dp = Fastpath(64)
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    rx, tx = open_vxlan_sockets("127.0.0.1", port)
    listeners = {}
    for addr in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, port))
        s.setblocking(False)
        listeners[addr] = s
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    a.setblocking(False)
    b.setblocking(False)
    vx = dp.open_port(1500, lib.VS_PORT_VXLAN)
    dp.vxlan_configure(vx, vni=42, local="127.0.0.1", remotes=["127.0.0.2", "127.0.0.3"],
                       dstport=port, learn_remotes=False, tx_fd=tx)  # fmt: skip
    dp.set_fd(vx, rx)
    tap = dp.open_port(9000, lib.VS_PORT_TAP)
    dp.set_fd(tap, a.fileno())
    r = Rig(dp, vx, tap, b, port, listeners, [rx, tx])
    try:
        yield r
    finally:
        dp.close()
        for fd in r.fds:
            socket.close(fd)
        for s in (*r.listeners.values(), a, b):
            s.close()


def test_flood_goes_to_every_remote_with_a_vxlan_header(rig: Rig) -> None:
    f = frame(BCAST, H)
    rig.from_host(f)
    time.sleep(0.05)
    for addr in ("127.0.0.2", "127.0.0.3"):
        (got,) = rig.got(addr)
        data, sport = got
        assert data == vxh(42) + f
        assert 49152 <= sport <= 65535
    assert rig.got("127.0.0.4") == []
    st = rig.stats()
    assert (st["tx_packets"], st["tx_datagrams"], st["tx_bytes"]) == (1, 2, len(f))


def test_source_port_follows_the_inner_flow(rig: Rig) -> None:
    flows = [frame(BCAST, H, sport=1000 + i) for i in range(32)]
    rig.from_host(*flows, *flows)
    time.sleep(0.05)
    ports = [sport for _, sport in rig.got("127.0.0.2")]
    assert len(ports) == 64
    assert ports[:32] == ports[32:]  # one flow, one source port
    assert len(set(ports)) >= 16  # flows spread


def test_learned_mac_goes_to_its_one_remote(rig: Rig) -> None:
    rig.send_from("127.0.0.3", vxh() + frame(BCAST, M3))
    (f,) = rig.host_got()
    assert f == frame(BCAST, M3)
    e = rig.dp.fdb_get(int(M3, 16))
    assert e is not None and (e.port, e.remote) == (rig.vx, 2)
    rig.from_host(frame(M3, H), frame(M3, H, sport=9))
    time.sleep(0.05)
    assert [d for d, _ in rig.got("127.0.0.3")] == [vxh() + frame(M3, H),
                                                    vxh() + frame(M3, H, sport=9)]  # fmt: skip
    assert rig.got("127.0.0.2") == []
    # The station moves behind the other remote: the entry follows it.
    rig.send_from("127.0.0.2", vxh() + frame(BCAST, M3))
    e = rig.dp.fdb_get(int(M3, 16))
    assert e is not None and e.remote == 1
    # A new flood list forgets what was learned behind the old one.
    rig.dp.vxlan_configure(rig.vx, vni=42, local="127.0.0.1", remotes=["127.0.0.4"],
                           dstport=rig.port, learn_remotes=False, tx_fd=rig.fds[1])  # fmt: skip
    assert rig.dp.fdb_get(int(M3, 16)) is None
    assert rig.dp.vxlan_remotes(rig.vx, False) == ["127.0.0.4"]


def test_bad_datagrams_are_counted_by_reason(rig: Rig) -> None:
    good = frame(BCAST, M2)
    rig.send_from(
        "127.0.0.2",
        b"\x0c\0\0\0\0\0\x2a\0" + good,  # flags
        b"\x08\0\0\x01\0\0\x2a\0" + good,  # reserved bits
        b"\x08\0\0\0\0\0\x2a\x01" + good,  # reserved last byte
        vxh(43) + good,  # VNI
        b"\x08\0\0\0\0\0",  # short
        vxh() + good[:13],  # runt
        vxh() + frame(BCAST, M2, 1515),  # over the MTU
        vxh() + bytes(9300),  # over a buffer
        vxh() + frame(BCAST, M2, 1514),  # the largest that fits
    )
    rig.send_from("127.0.0.4", vxh() + good)  # not a remote
    st = rig.stats()
    want = {"rx_datagrams": 10, "rx_drop_vxlan_flags": 3, "rx_drop_vxlan_vni": 1,
            "rx_drop_vxlan_short": 1, "rx_drop_runt": 1, "rx_drop_too_long": 1,
            "rx_drop_vxlan_trunc": 1, "rx_drop_vxlan_remote": 1, "rx_packets": 1}  # fmt: skip
    assert {k: st[k] for k in want} == want
    assert [len(f) for f in rig.host_got()] == [1514]
    assert rig.dp.fdb_get(int(M2, 16)) is not None  # learned from the good one only


def test_learn_remotes(rig: Rig) -> None:
    rig.dp.vxlan_configure(rig.vx, vni=42, local="127.0.0.1", remotes=["127.0.0.2"],
                           dstport=rig.port, learn_remotes=True, tx_fd=rig.fds[1])  # fmt: skip
    rig.send_from("127.0.0.4", vxh() + frame(BCAST, M3))
    assert rig.dp.vxlan_remotes(rig.vx, False) == ["127.0.0.2", "127.0.0.4"]
    assert rig.stats()["remotes_learned"] == 1
    e = rig.dp.fdb_get(int(M3, 16))
    assert e is not None and e.remote == 2
    rig.from_host(frame(M3, H), frame(BCAST, H))
    time.sleep(0.05)
    assert [d for d, _ in rig.got("127.0.0.4")] == [vxh() + frame(M3, H)]
    # A broadcast goes to the flood list only, not to learned remotes.
    assert [d for d, _ in rig.got("127.0.0.2")] == [vxh() + frame(BCAST, H)]


def test_frames_over_the_mtu_are_dropped_not_sent(rig: Rig) -> None:
    rig.dp.set_mtu(rig.vx, 1400)
    rig.from_host(frame(BCAST, H, 1415), frame(BCAST, H, 1414))
    time.sleep(0.05)
    assert [len(d) for d, _ in rig.got("127.0.0.2")] == [8 + 1414]
    st = rig.stats()
    assert (st["tx_drop_too_long"], st["tx_packets"]) == (1, 1)


def test_two_vnis_share_one_socket(rig: Rig) -> None:
    """A second VXLAN port on the same socket (another VNI, its own remotes): each datagram
    goes to the port of its VNI; one no port has is counted on the port that read it."""
    vx2 = rig.dp.open_port(1500, lib.VS_PORT_VXLAN)
    rig.dp.vxlan_configure(vx2, vni=7, local="127.0.0.1", remotes=["127.0.0.4"],
                           dstport=rig.port, learn_remotes=False, tx_fd=rig.fds[1])  # fmt: skip
    rig.dp.set_fd(vx2, rig.fds[0])
    rig.send_from("127.0.0.4", vxh(7) + frame(BCAST, M3), vxh(42) + frame(BCAST, M3),
                  vxh(9) + frame(BCAST, M3))  # fmt: skip
    rig.send_from("127.0.0.2", vxh(42) + frame(BCAST, M2), vxh(7) + frame(BCAST, M2))
    one, two = rig.stats(), {**rig.dp.port_stats(vx2), **rig.dp.vxlan_stats(vx2)}
    # VNI 7 from 127.0.0.4: vx2's; VNI 42 from it: vx1's, not a remote of vx1; VNI 9: no
    # port; VNI 42 from 127.0.0.2: vx1's; VNI 7 from 127.0.0.2: not a remote of vx2.
    assert (two["rx_packets"], two["rx_drop_vxlan_remote"]) == (1, 1), two
    assert (one["rx_packets"], one["rx_drop_vxlan_remote"]) == (1, 1), one
    assert one["rx_drop_vxlan_vni"] + two["rx_drop_vxlan_vni"] == 1
    assert one["rx_datagrams"] + two["rx_datagrams"] == 5
    e = rig.dp.fdb_get(int(M3, 16))
    assert e is not None and (e.port, e.remote) == (vx2, 1)
    # vx1's broadcast from M2 went to vx2's remote too (the switch bridges its ports).
    time.sleep(0.05)
    assert [d for d, _ in rig.got("127.0.0.4")] == [vxh(7) + frame(BCAST, M2)]
    # The host's frames flood to both tunnels, each to its own remotes.
    for a in ("127.0.0.2", "127.0.0.3"):
        rig.got(a)
    rig.from_host(frame(BCAST, H))
    time.sleep(0.05)
    got = {a: [d[:8] for d, _ in rig.got(a)] for a in ("127.0.0.2", "127.0.0.3", "127.0.0.4")}
    assert got == {"127.0.0.2": [vxh(42)], "127.0.0.3": [vxh(42)], "127.0.0.4": [vxh(7)]}


def test_each_vni_carries_the_vlan_of_its_port(rig: Rig) -> None:
    """Two tenants over one underlay: VNI 42 (vx1) is VLAN 10, VNI 7 (vx2) VLAN 20, and
    the host is a trunk of both.  A tenant's frames cross only its own tunnel, and leave
    the host's trunk tagged with its VLAN; the same MAC in both tenants is two stations."""
    vx2 = rig.dp.open_port(1500, lib.VS_PORT_VXLAN)
    rig.dp.vxlan_configure(vx2, vni=7, local="127.0.0.1", remotes=["127.0.0.4"],
                           dstport=rig.port, learn_remotes=False, tx_fd=rig.fds[1])  # fmt: skip
    rig.dp.set_fd(vx2, rig.fds[0])
    rig.dp.set_vlans(rig.vx, vlan=10)
    rig.dp.set_vlans(vx2, vlan=20)
    rig.dp.set_vlans(rig.tap, trunks=(10, 20))

    def tag(f: bytes, vid: int) -> bytes:
        return f[:12] + struct.pack("!HH", 0x8100, vid) + f[12:]

    # From the tunnels: the host gets each tenant's frame tagged with its VLAN.
    rig.send_from("127.0.0.2", vxh(42) + frame(BCAST, M2))
    rig.send_from("127.0.0.4", vxh(7) + frame(BCAST, M2))
    time.sleep(0.05)
    assert rig.host_got() == [tag(frame(BCAST, M2), 10), tag(frame(BCAST, M2), 20)]
    assert rig.dp.fdb_get(int(M2, 16), vlan=10).port == rig.vx  # type: ignore[union-attr]
    assert rig.dp.fdb_get(int(M2, 16), vlan=20).port == vx2  # type: ignore[union-attr]
    # From the host, tagged 20: only VNI 7's remote, with the inner frame untagged.
    for a in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        rig.got(a)
    rig.from_host(tag(frame(M2, H, 80), 20))
    time.sleep(0.05)
    assert [d for d, _ in rig.got("127.0.0.4")] == [vxh(7) + frame(M2, H, 80)]
    assert rig.got("127.0.0.2") == [] and rig.got("127.0.0.3") == []
