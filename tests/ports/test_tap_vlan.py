"""A TAP trunk to a namespace host: tagged frames cross a real tap device both ways.

This machine's kernel has no 802.1Q devices (CONFIG_VLAN_8021Q is not set), so the host in
the namespace speaks VLANs through a packet socket on its tap, as a VLAN-aware host
application would; the QEMU test (tests/e2e/test_vlans_qemu.py) has the guest kernel's
eth0.10 and eth0.20 on a trunk."""

from __future__ import annotations

import asyncio
import socket
import struct
import uuid
from pathlib import Path

from conftest import need_root
from support.ops import VGuest, wait_until

from vswitch.config import parse_config
from vswitch.daemon.switch import Switch
from vswitch.netsys.netns import run_in_netns
from vswitch.testkit.virtio_driver import eth

MA, MB, MH = "02:00:00:00:0b:0a", "02:00:00:00:0b:0b", "02:00:00:00:0b:01"
BCAST = "ff:ff:ff:ff:ff:ff"
ETH_P_ALL = 0x0003
SOL_PACKET, PACKET_AUXDATA = 263, 8
TP_STATUS_VLAN_VALID = 1 << 4
AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata


def tag(frame: bytes, vid: int, pcp: int = 0) -> bytes:
    return frame[:12] + struct.pack("!HH", 0x8100, pcp << 13 | vid) + frame[12:]


def packet_socket(ifname: str) -> socket.socket:
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    s.bind((ifname, 0))
    s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    s.setblocking(False)
    return s


def read_frames(s: socket.socket) -> list[bytes]:
    """What the switch wrote to the tap, with the tag the kernel moved to metadata put back
    where it was on the wire."""
    out = []
    while True:
        try:
            data, anc, _, addr = s.recvmsg(65536, socket.CMSG_SPACE(AUXDATA.size))
        except BlockingIOError:
            return out
        if addr[2] == socket.PACKET_OUTGOING:
            continue  # our own sends
        for level, kind, value in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA:
                status, _, _, _, _, tci, tpid = AUXDATA.unpack(value[: AUXDATA.size])
                if status & TP_STATUS_VLAN_VALID:
                    data = data[:12] + struct.pack("!HH", tpid or 0x8100, tci) + data[12:]
        if data[6:12] != bytes.fromhex(MH.replace(":", "")):
            out.append(data)


async def test_tap_trunk_carries_tagged_frames_both_ways(tmp_path: Path) -> None:
    need_root()
    ns = f"vst-v-{uuid.uuid4().hex[:6]}"
    ports = [
        {"name": "a", "type": "vhost-user", "path": str(tmp_path / "a.sock"), "vlan": 10},
        {"name": "b", "type": "vhost-user", "path": str(tmp_path / "b.sock"), "vlan": 20},
        {"name": "t", "type": "tap", "ifname": "vt0", "netns": ns, "mac": MH,
         "trunks": [10, 20]},
    ]  # fmt: skip
    conf = parse_config({"control": str(tmp_path / "ctl.sock"), "ports": ports})
    async with Switch(conf) as sw:
        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
        ps = await asyncio.to_thread(run_in_netns, ns, lambda: packet_socket("vt0"))
        try:
            for g in (a, b):
                await g.start()
                g.post_rx(64)
            await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
            read_frames(ps)  # whatever the kernel sent when the tap came up (IPv6 solicits)

            # Guest a (VLAN 10) to the trunk: the namespace gets it tagged 10.
            f = eth(BCAST, MA, 200)
            await a.send(f)
            got: list[bytes] = []
            await wait_until(lambda: got.extend(read_frames(ps)) or tag(f, 10) in got,
                             what=f"the tagged frame on vt0 (got {got})")  # fmt: skip
            assert b.received() == []

            # From the namespace, tagged 20 with priority 4: b gets it untagged, a nothing.
            g = eth(BCAST, "02:00:00:00:0b:99", 300)
            ps.send(tag(g, 20, pcp=4))
            await wait_until(lambda: b.rx.pending_used() > 0, what="b's frame")
            assert b.received() == [g]
            # Unicast back to the learned station: out tagged 20 again, to the tap only.
            h = eth("02:00:00:00:0b:99", MB, 120)
            await b.send(h)
            got = []
            await wait_until(lambda: got.extend(read_frames(ps)) or tag(h, 20) in got,
                             what="the unicast reply on vt0")  # fmt: skip

            # A VLAN the trunk does not carry, and an untagged frame (no native VLAN): both
            # dropped and counted on t, per VLAN too; the learned MAC is on VLAN 20 only.
            # (The namespace's kernel sends untagged frames of its own, IPv6 solicitations:
            # those are VLAN 0 drops as well.)
            assert sw.dp is not None
            t = sw.ports["t"]
            before = t.info()["counters"]["rx_drop_vlan"]
            ps.send(tag(g, 30))
            ps.send(g)
            await wait_until(lambda: t.info()["counters"]["rx_drop_vlan"] >= before + 2,
                             what="two more VLAN drops on t")  # fmt: skip
            assert sw.dp.vlan_stats()[30] == {"not_allowed": 1, "tagged": 0}
            assert sw.dp.vlan_stats()[0]["not_allowed"] >= 1
            assert a.received() == [] and b.received() == []
            fdb = {(e.mac, e.vlan) for e in sw.dp.fdb_dump()}
            station = int("02000000", 16) << 16 | 0x0B99
            assert (station, 20) in fdb and (station, 30) not in fdb and (station, 0) not in fdb
        finally:
            ps.close()
            a.close()
            b.close()
