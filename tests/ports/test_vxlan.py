"""VXLAN tunnel ports (issue 16).

- the `type: vxlan` config model and its error messages;
- interoperability with a Linux kernel vxlan device (`ip link add vx0 type vxlan id 42
  dstport 4789 local ... remote ...`) in a namespace on a veth underlay, IPv4 and IPv6,
  both data path modes: ARP broadcast and ping both ways, the largest inner frame the
  underlay carries both ways, one byte more dropped and counted; tshark on the underlay
  sees VXLAN with flags 0x08 and VNI 42, DF set, UDP source ports in the dynamic range,
  and no fragment; the MAC table maps the kernel's MAC to the port and its remote;
- bad input (wrong flags, reserved bits, unknown VNI, truncated header, runt and
  oversized inner frames, datagrams larger than a buffer, unknown remotes) dropped and
  counted per reason, never forwarded; learn_remotes by reload, in place, after which a
  unicast frame goes to the one remote its MAC was learned behind; a new vni restarts it;
- a vhost-user guest (the test's software front end) talking to the kernel peer;
- several VXLAN ports on one switch, on one endpoint (one socket, a port per VNI) or two;
- the underlay MTU taken from the routes to the remotes;
- two `vswitch run` processes, each with a host, joined by VXLAN: fdb remotes in JSON and
  in the table, the counters in the metrics.

Every test here needs root (CI runs them as root) and leaves no namespace behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need_root, need_tool
from support.underlay import (
    PREFIX,
    Capture,
    Underlay,
    drain,
    eth_frame,
    ns_name,
    ping,
    run,
    send_datagrams,
    udp_listener,
    vxlan_header,
)

from vswitch.config import ConfigError, parse_config
from vswitch.config import VxlanPort as VxlanConfig
from vswitch.netsys.netns import delete_netns, list_netns
from vswitch.ports.vxlan import ENDPOINTS

HOST_MAC = "52:54:00:42:00:01"
FAMILIES = {
    "v4": {"local": "192.0.2.1", "peer": "192.0.2.2", "plen": 24, "mtu": 1450},
    "v6": {"local": "2001:db8:42::1", "peer": "2001:db8:42::2", "plen": 64, "mtu": 1430},
}

# --------------------------------------------------------------------------- config


def vx(**kw: Any) -> dict[str, Any]:
    return {"name": "vx1", "type": "vxlan", "vni": 42, "local": "192.0.2.1",
            "remotes": ["192.0.2.2"], **kw}  # fmt: skip


def cfg(*ports: dict[str, Any]) -> Any:
    return parse_config({"control": "/tmp/vsx-ctl.sock", "ports": list(ports)}, name="t.yaml")


def test_vxlan_config_defaults_and_values() -> None:
    p = cfg(vx()).ports[0]
    assert isinstance(p, VxlanConfig)
    assert (p.vni, p.local, p.remotes, p.dstport, p.netns) == (42, "192.0.2.1", ("192.0.2.2",),
                                                                4789, None)  # fmt: skip
    assert (p.learn_remotes, p.mtu, p.overhead, p.socket_paths) == (False, None, 50, ())
    p = cfg(vx(local="2001:DB8::1", remotes="2001:db8::2", dstport=8472, netns="u",
               learn_remotes=True, mtu=1400)).ports[0]  # fmt: skip
    assert (p.local, p.remotes, p.dstport, p.overhead) == (
        "2001:db8::1",
        ("2001:db8::2",),
        8472,
        70,
    )
    assert p.where == "[2001:db8::1]:8472 in netns u"
    assert cfg(vx(remotes=[], learn_remotes=True)).ports[0].remotes == ()


@pytest.mark.parametrize(
    ("port", "expect"),
    [
        (vx(vni=2**24), "ports[0] (vx1).vni: 16777216 is out of range 0..16777215"),
        (vx(vni="42"), "ports[0] (vx1).vni: expected a whole number, got the string '42'"),
        (vx(local="192.0.2.1/24"), "ports[0] (vx1).local: '192.0.2.1/24' is not an IPv4 or IPv6"),
        (vx(local="224.0.0.1"), "ports[0] (vx1).local: 224.0.0.1 is not a unicast address"),
        (vx(remotes=["x"]), "ports[0] (vx1).remotes[0]: 'x' is not an IPv4 or IPv6 address"),
        (vx(remotes=["192.0.2.1"]), "ports[0] (vx1).remotes: 192.0.2.1 is the local address"),
        (vx(remotes=["192.0.2.2", "192.0.2.2"]), "192.0.2.2 is listed twice"),
        (vx(remotes=["2001:db8::2"]), "2001:db8::2 is not IPv4 like local 192.0.2.1"),
        (vx(remotes=[]), "ports[0] (vx1): remotes: no remotes, and learn_remotes is off"),
        (vx(dstport=70000), "ports[0] (vx1).dstport: 70000 is out of range 1..65535"),
        (vx(mtu=9001), "ports[0] (vx1).mtu: 9001 is out of range 68..9000"),
        (vx(learn_remotes="yes"), "ports[0] (vx1).learn_remotes: expected true or false"),
        (vx(netns="../x"), "ports[0] (vx1).netns: the string '../x' is not a valid network"),
        (
            vx(group="239.1.1.1"),
            "ports[0] (vx1).group: unknown key (known keys here: dstport, "
            "learn_remotes, local, mac_limit, mirror, mtu, name, native_vlan, netns, "
            "remotes, static_macs, trunks, type, vlan, vni)",
        ),
        (
            {"name": "vx1", "type": "vxlan", "local": "192.0.2.1", "remotes": ["192.0.2.2"]},
            "ports[0] (vx1).vni: required key is missing",
        ),
    ],
)
def test_vxlan_config_errors(port: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg(port)
    assert all(line.startswith("t.yaml: ports[0] (vx1)") for line in str(e.value).splitlines())
    assert expect in str(e.value)


def test_one_vni_per_endpoint() -> None:
    with pytest.raises(ConfigError) as e:
        cfg(vx(), vx(name="vx2", remotes=["192.0.2.3"]))
    assert (
        "ports[1] (vx2).vni: VNI 42 at 192.0.2.1:4789 is already used by ports[0] (vx1).vni "
        "(give each vxlan port on one endpoint its own vni)" in str(e.value)
    )
    # Another VNI on the same endpoint shares its socket; another dstport, namespace or
    # address is another endpoint.
    cfg(vx(), vx(name="vx2", vni=43), vx(name="vx3", dstport=4790), vx(name="vx4", netns="u2"),
        vx(name="vx5", local="192.0.2.9"))  # fmt: skip


# --------------------------------------------------------------------------- helpers


@contextlib.asynccontextmanager
async def switch(tmp: Path, ports: list[dict[str, Any]], datapath: str = "thread",
                 ) -> AsyncIterator[Any]:  # fmt: skip
    from vswitch.daemon.switch import Switch

    conf = parse_config(
        {"control": str(tmp / "ctl.sock"), "switch": {"datapath": datapath}, "ports": ports}
    )
    async with Switch(conf) as sw:
        yield sw


def host_port(ns: str, addr: str = "10.42.0.1/24", mac: str = HOST_MAC) -> dict[str, Any]:
    return {"name": "h1", "type": "tap", "ifname": "eth0", "netns": ns, "mac": mac,
            "addresses": [addr]}  # fmt: skip


def counters(sw: Any, name: str) -> dict[str, int]:
    return sw.ports[name].info()["counters"]


async def aping(*args: Any, **kw: Any) -> Any:
    return await asyncio.to_thread(ping, *args, **kw)


def ok(r: Any) -> None:
    assert r.returncode == 0, r.stdout + r.stderr


# --------------------------------------------------------------------------- kernel peer


@pytest.mark.parametrize(("family", "datapath"), [("v4", "thread"), ("v6", "thread"),
                                                  ("v4", "loop")])  # fmt: skip
async def test_kernel_vxlan_peer_both_ways(tmp_path: Path, family: str, datapath: str) -> None:
    need_root()
    need_tool("ping")
    need_tool("tshark")
    f = FAMILIES[family]
    local, peer, mtu = f["local"], f["peer"], f["mtu"]
    host = ns_name("h")
    with Underlay() as u:
        u.veth("sw", "u0", f"{local}/{f['plen']}", "k", "k0", f"{peer}/{f['plen']}")
        kmac = u.kernel_vxlan("k", "k0", local=peer, remote=local, inner="10.42.0.2/24")
        kns = u.ns("k")
        # The kernel device takes its MTU from the underlay: the switch's must match it.
        assert f"mtu {mtu}" in run("ip", "link", "show", "vx0", ns=kns).stdout
        ports = [host_port(host),
                 {"name": "vx1", "type": "vxlan", "vni": 42, "local": local, "remotes": [peer],
                  "netns": u.ns("sw")}]  # fmt: skip
        try:
            async with switch(tmp_path, ports, datapath) as sw:
                info = sw.ports["vx1"].info()
                assert (info["state"], info["mtu"], info["underlay_mtu"]) == ("up", mtu, 1500)
                cap = await asyncio.to_thread(Capture, u.ns("sw"), "u0", tmp_path / "u0.pcap")
                try:
                    ok(await aping(host, "10.42.0.2"))  # ARP broadcast, then unicast
                    ok(await aping(kns, "10.42.0.1"))
                    big = mtu - 28  # ICMP payload of the largest inner IPv4 packet
                    ok(await aping(host, "10.42.0.2", size=big))
                    ok(await aping(kns, "10.42.0.1", size=big))
                    before = counters(sw, "vx1")["tx_drop_too_long"]
                    r = await aping(host, "10.42.0.2", count=2, size=big + 1, df=False, wait=1)
                    assert r.returncode != 0, r.stdout
                finally:
                    await asyncio.to_thread(cap.stop)
                c = counters(sw, "vx1")
                assert c["tx_drop_too_long"] == before + 2, c
                assert c["rx_packets"] >= 8 and c["tx_packets"] >= 8, c
                assert c["rx_datagrams"] == c["rx_packets"], c
                drops = {k: v for k, v in c.items() if "drop" in k and k != "tx_drop_too_long"}
                assert not any(drops.values()), drops
                fdb = {e.mac: e for e in sw.dp.fdb_dump()}
                kernel = fdb[int(kmac.replace(":", ""), 16)]
                assert (kernel.port, kernel.remote) == (sw.ports["vx1"].port, 1), kernel
                assert fdb[int(HOST_MAC.replace(":", ""), 16)].port == sw.ports["h1"].port
        finally:
            delete_netns(host)
        check_capture(cap, family, local, peer, mtu)


def _csum(b: bytes) -> int:
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _arp_request(mac: str, ip_: str, target: str) -> bytes:
    m = bytes.fromhex(mac.replace(":", ""))
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + m + socket.inet_aton(ip_)
    body += bytes(6) + socket.inet_aton(target)
    return b"\xff" * 6 + m + b"\x08\x06" + body + bytes(18)


def _echo(dst_mac: str, src_mac: str, src: str, dst: str, size: int) -> bytes:
    icmp = struct.pack("!BBHHH", 8, 0, 0, 0x4242, 1) + bytes(range(256)) * (size // 256 + 1)
    icmp = icmp[: 8 + size]
    icmp = icmp[:2] + struct.pack("!H", _csum(icmp)) + icmp[4:]
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0x4000, 64, 1, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))  # fmt: skip
    iph = iph[:10] + struct.pack("!H", _csum(iph)) + iph[12:]
    eth = bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", ""))
    return eth + b"\x08\x00" + iph + icmp


async def test_vhost_guest_to_kernel_vxlan(tmp_path: Path) -> None:
    """A vhost-user guest (the test's software front end) on the switch: its frames, taken
    from its rings in guest memory, go out encapsulated to the kernel peer, whose answers
    come back into its RX ring: ARP, then an echo of the largest inner packet."""
    from support.peers import SoftGuest

    need_root()
    gmac = "52:54:00:42:00:77"
    with Underlay() as u:
        u.veth("sw", "u0", "192.0.2.1/24", "k", "k0", "192.0.2.2/24")
        kmac = u.kernel_vxlan("k", "k0", local="192.0.2.2", remote="192.0.2.1",
                              inner="10.42.0.2/24")  # fmt: skip
        ports = [{"name": "vm", "type": "vhost-user", "path": str(tmp_path / "vm.sock"),
                  "mtu": 1450},
                 {"name": "vx1", "type": "vxlan", "vni": 42, "local": "192.0.2.1",
                  "remotes": ["192.0.2.2"], "netns": u.ns("sw")}]  # fmt: skip
        async with switch(tmp_path, ports) as sw:
            g = SoftGuest(str(tmp_path / "vm.sock"), gmac)
            try:
                await g.attach()
                await g.send([_arp_request(gmac, "10.42.0.1", "10.42.0.2")])

                def replies() -> list[bytes]:
                    g.received()
                    return [f for f in g.got if f[12:14] == b"\x08\x06" and f[21] == 2]

                deadline = asyncio.get_running_loop().time() + 10
                while not replies():
                    assert asyncio.get_running_loop().time() < deadline, g.got
                    await asyncio.sleep(0.05)
                (arp,) = replies()
                assert arp[6:12] == bytes.fromhex(kmac.replace(":", ""))
                size = 1450 - 28
                await g.send([_echo(kmac, gmac, "10.42.0.1", "10.42.0.2", size)])

                def echo_replies() -> list[bytes]:
                    g.received()
                    return [f for f in g.got if f[12:14] == b"\x08\x00" and f[34] == 0]

                while not echo_replies():
                    assert asyncio.get_running_loop().time() < deadline + 10, g.got
                    await asyncio.sleep(0.05)
                (echo,) = echo_replies()
                assert len(echo) == 14 + 1450 and echo[42:] == _echo(
                    kmac, gmac, "10.42.0.1", "10.42.0.2", size)[42:]  # fmt: skip
                c = counters(sw, "vx1")
                assert c["tx_datagrams"] >= 2 and c["rx_packets"] >= 2, c
            finally:
                g.close()


def check_capture(cap: Capture, family: str, local: str, peer: str, mtu: int) -> None:
    """What tshark saw on the underlay: well-formed VXLAN both ways, no fragment."""
    ipf = "ip" if family == "v4" else "ipv6"
    frags = "ip.flags.mf == 1 or ip.frag_offset > 0" if family == "v4" else "ipv6.fraghdr"
    assert cap.fields("frame.number", display=frags) == [], "fragments on the underlay"
    rows = cap.fields(f"{ipf}.src", f"{ipf}.dst", "udp.srcport", "udp.dstport", "vxlan.flags",
                      "vxlan.vni", "frame.len", "ip.flags.df", display="vxlan")  # fmt: skip
    assert rows, "no VXLAN seen"
    ours = theirs = 0
    sizes: dict[str, set[int]] = {local: set(), peer: set()}
    for src, dst, sport, dport, flags, vni, flen, df in rows:
        src, dst = src.split(",")[0], dst.split(",")[0]  # the outer header's
        assert dport == "4789" and int(flags, 16) == 0x0800 and vni == "42", (src, flags, vni)
        sizes[src].add(int(flen))
        if src == local:
            ours += 1
            assert dst == peer and 49152 <= int(sport) <= 65535, (dst, sport)
            if family == "v4":
                assert df.split(",")[0] == "1", "DF not set"
        else:
            theirs += 1
    assert ours >= 8 and theirs >= 8, (ours, theirs)
    # The largest frames, both ways: an outer packet of the underlay's MTU exactly.
    full = 14 + 1500
    assert full in sizes[local] and full in sizes[peer], sizes
    assert max(sizes[local]) == full  # the one byte more never left


# --------------------------------------------------------------------------- bad input


async def test_bad_input_is_dropped_and_counted_and_learn_remotes(tmp_path: Path) -> None:
    need_root()
    need_tool("ping")
    host = ns_name("h")
    m2, m3 = "52:54:00:42:00:02", "52:54:00:42:00:03"
    with Underlay() as u:
        u.veth("sw", "u1", "192.0.3.1/24", "x", "x0", "192.0.3.2/24")
        xns = u.ns("x")
        run("ip", "addr", "add", "192.0.3.3/24", "dev", "x0", ns=xns)
        vxp = {"name": "vx1", "type": "vxlan", "vni": 42, "local": "192.0.3.1",
               "remotes": ["192.0.3.2"], "netns": u.ns("sw"), "mtu": 1400}  # fmt: skip
        try:
            async with switch(tmp_path, [host_port(host), vxp]) as sw:
                assert sw.ports["vx1"].info()["mtu"] == 1400
                good = vxlan_header(42) + eth_frame("ff:ff:ff:ff:ff:ff", m2)
                bad = [
                    vxlan_header(42, flags=0x0C) + good[8:],            # flags
                    vxlan_header(42, reserved=b"\0\0\1") + good[8:],    # flags (reserved)
                    vxlan_header(42, last=1) + good[8:],                # flags (reserved)
                    vxlan_header(43) + good[8:],                        # vni
                    b"\x08\0\0",                                        # short
                    b"",                                                # short
                    vxlan_header(42) + good[8:18],                      # runt
                    vxlan_header(42) + eth_frame("ff:ff:ff:ff:ff:ff", m2, 1400 + 15),  # long
                    vxlan_header(42) + eth_frame("ff:ff:ff:ff:ff:ff", m2, 9300),  # trunc
                ]  # fmt: skip
                fits = vxlan_header(42) + eth_frame("ff:ff:ff:ff:ff:ff", m2, 1400 + 14)
                await asyncio.to_thread(send_datagrams, xns, "192.0.3.2", "192.0.3.1",
                                        [*bad, good, fits])  # fmt: skip
                await asyncio.to_thread(send_datagrams, xns, "192.0.3.3", "192.0.3.1", [good])
                want = {"rx_datagrams": len(bad) + 3, "rx_drop_vxlan_flags": 3,
                        "rx_drop_vxlan_vni": 1, "rx_drop_vxlan_short": 2, "rx_drop_runt": 1,
                        "rx_drop_too_long": 1, "rx_drop_vxlan_trunc": 1,
                        "rx_drop_vxlan_remote": 1, "rx_packets": 2}  # fmt: skip
                deadline = asyncio.get_running_loop().time() + 10
                while {k: counters(sw, "vx1")[k] for k in want} != want:
                    assert asyncio.get_running_loop().time() < deadline, counters(sw, "vx1")
                    await asyncio.sleep(0.1)
                # Only the two good frames reached the host.
                assert counters(sw, "h1")["tx_packets"] == 2

                # learn_remotes, by reload: in place, same sockets, same fast-path port.
                port, rx_fd = sw.ports["vx1"].port, sw.ports["vx1"].rx_fd
                new = parse_config({"control": str(tmp_path / "ctl.sock"), "ports": [
                    host_port(host), {**vxp, "learn_remotes": True}]})  # fmt: skip
                res = await sw.reload(new)
                assert res["changes"] == ["port vx1: learn_remotes False -> True"], res
                assert (sw.ports["vx1"].port, sw.ports["vx1"].rx_fd) == (port, rx_fd)
                from3 = vxlan_header(42) + eth_frame("ff:ff:ff:ff:ff:ff", m3)
                await asyncio.to_thread(send_datagrams, xns, "192.0.3.3", "192.0.3.1", [from3])
                await asyncio.sleep(0.3)
                info = sw.ports["vx1"].info()
                assert info["learned_remotes"] == ["192.0.3.3"], info
                assert info["counters"]["remotes_learned"] == 1
                e = sw.dp.fdb_get(int(m3.replace(":", ""), 16))
                assert e is not None and (e.port, e.remote) == (port, 2), e
                # A frame for m3 goes to 192.0.3.3 only; a broadcast to the flood list only.
                l2 = await asyncio.to_thread(udp_listener, xns, "192.0.3.2")
                l3 = await asyncio.to_thread(udp_listener, xns, "192.0.3.3")
                try:
                    run("ip", "neigh", "add", "10.42.0.3", "lladdr", m3, "dev", "eth0", ns=host)
                    await aping(host, "10.42.0.3", count=2, wait=1)
                    got2, got3 = drain(l2), drain(l3)
                finally:
                    l2.close()
                    l3.close()

                def to_m3(got: list[tuple[bytes, str]]) -> int:
                    return sum(1 for d, _ in got if d[8:14] == bytes.fromhex(m3.replace(":", "")))

                assert to_m3(got3) == 2 and to_m3(got2) == 0, (got2, got3)
                assert all(d[:8] == vxlan_header(42) for d, _ in got2 + got3)

                # A new vni restarts the port (its sockets are bound to the endpoint).
                new = parse_config({"control": str(tmp_path / "ctl.sock"), "ports": [
                    host_port(host), {**vxp, "learn_remotes": True, "vni": 7}]})  # fmt: skip
                res = await sw.reload(new)
                assert res["changes"] == ["port vx1 restarted: vni 42 -> 7"], res
                assert sw.ports["vx1"].info()["vni"] == 7
                assert sw.ports["vx1"].info()["state"] == "up"
        finally:
            delete_netns(host)


async def test_startup_errors_name_the_problem(tmp_path: Path) -> None:
    from vswitch.errors import StartupError

    need_root()
    with Underlay() as u:
        u.veth("sw", "u2", "192.0.3.1/24", "x", "x0", "192.0.3.2/24")
        base = {"name": "vx1", "type": "vxlan", "vni": 42, "remotes": ["192.0.3.2"]}
        cases = [
            ({"local": "192.0.3.9", "netns": u.ns("sw")}, "local 192.0.3.9 is not an address"),
            ({"local": "192.0.3.1", "netns": "vsx-none"}, "network namespace vsx-none does not"),
            ({"local": "192.0.3.1", "netns": u.ns("sw"), "mtu": 1451},
             "mtu 1451 is more than the underlay can carry: its MTU is 1500, less 50 bytes of "
             "VXLAN headers leaves 1450"),
        ]  # fmt: skip
        u.kernel_vxlan("x", "x0", local="192.0.3.2", remote="192.0.3.1", inner="10.9.0.1/24")
        cases.append(({"local": "192.0.3.2", "netns": u.ns("x"), "remotes": ["192.0.3.1"]},
                      "UDP 192.0.3.2:4789 is taken"))  # fmt: skip
        for extra, expect in cases:
            with pytest.raises(StartupError) as e:
                async with switch(tmp_path, [{**base, **extra}]):
                    pass
            assert f"port vx1: {expect}" in str(e.value)


@pytest.mark.parametrize(("shared", "datapath"), [(True, "thread"), (True, "loop"),
                                                  (False, "thread")])  # fmt: skip
async def test_several_vxlan_ports_on_one_switch(tmp_path: Path, shared: bool,
                                                 datapath: str) -> None:  # fmt: skip
    """Two VXLAN ports (VNIs 42 and 43) to two kernel peers, and a host: every pair reaches
    the other, tunnel to tunnel too.  On one endpoint (192.0.2.1:4789: one socket, each
    datagram to the port of its VNI) or on two (192.0.2.1 and 192.0.4.1)."""
    need_root()
    need_tool("ping")
    host = ns_name("h")
    with Underlay() as u:
        u.veth("sw", "u0", "192.0.2.1/24", "k1", "k0", "192.0.2.2/24")
        u.veth("sw", "u1", "192.0.4.1/24", "k2", "k0", "192.0.4.2/24")
        second = "192.0.2.1" if shared else "192.0.4.1"
        run("ip", "route", "add", "192.0.2.0/24", "via", "192.0.4.1", ns=u.ns("k2"))
        u.kernel_vxlan("k1", "k0", local="192.0.2.2", remote="192.0.2.1", inner="10.42.0.2/24")
        u.kernel_vxlan("k2", "k0", local="192.0.4.2", remote=second, inner="10.42.0.3/24",
                       vni=43)  # fmt: skip
        ports = [host_port(host)]
        for name, vni, local, remote in (("vx1", 42, "192.0.2.1", "192.0.2.2"),
                                         ("vx2", 43, second, "192.0.4.2")):  # fmt: skip
            ports.append({"name": name, "type": "vxlan", "vni": vni, "local": local,
                          "remotes": [remote], "netns": u.ns("sw")})  # fmt: skip
        try:
            async with switch(tmp_path, ports, datapath) as sw:
                # The kernel peers talk from the moment they are up (IPv6 neighbour
                # discovery): what vx1 read of VNI 43 before vx2 started is dropped, counted.
                before = {n: counters(sw, n) for n in ("vx1", "vx2")}
                ok(await aping(host, "10.42.0.2"))
                ok(await aping(host, "10.42.0.3"))
                ok(await aping(u.ns("k1"), "10.42.0.3", size=1450 - 28))
                for name in ("vx1", "vx2"):
                    c = counters(sw, name)
                    assert c["rx_packets"] >= 6 and c["tx_packets"] >= 6, (name, c)
                    for k in ("rx_drop_vxlan_vni", "rx_drop_vxlan_remote"):
                        assert c[k] == before[name][k], (name, k, c)
                assert (sw.ports["vx1"].rx_fd == sw.ports["vx2"].rx_fd) is shared
                dp_id = id(sw.dp)
                assert len([k for k in ENDPOINTS if k[0] == dp_id]) == (1 if shared else 2)
            # The endpoint's sockets went with its last port.
            assert not [k for k in ENDPOINTS if k[0] == dp_id]
        finally:
            delete_netns(host)


async def test_underlay_mtu_follows_the_routes_to_the_remotes(tmp_path: Path) -> None:
    """A VTEP address on lo (as EVPN setups have it): the MTU is the one of the way to the
    remotes, the smallest of them, a route's own `mtu` first."""
    from vswitch.netsys.netns import run_in_netns
    from vswitch.netsys.vxlan import underlay_mtu

    need_root()
    with Underlay() as u:
        u.veth("sw", "u3", "192.0.6.1/24", "x", "x0", "192.0.6.2/24", mtu=9000)
        sw_ns = u.ns("sw")
        run("ip", "addr", "add", "10.255.0.1/32", "dev", "lo", ns=sw_ns)
        run("ip", "route", "add", "192.0.7.0/24", "dev", "u3", "mtu", "1400", ns=sw_ns)

        def mtu(*remotes: str) -> int:
            return run_in_netns(sw_ns, lambda: underlay_mtu("10.255.0.1", remotes))

        assert mtu("192.0.6.2") == 9000
        assert mtu("192.0.7.2") == 1400
        assert mtu("192.0.6.2", "192.0.7.2") == 1400
        assert mtu() == 65536  # no remotes: the interface of local (lo)
        port = {"name": "vx1", "type": "vxlan", "vni": 42, "local": "10.255.0.1",
                "remotes": ["192.0.6.2"], "netns": sw_ns}  # fmt: skip
        async with switch(tmp_path, [port]) as sw:
            assert sw.ports["vx1"].info()["mtu"] == 8950


# --------------------------------------------------------------------------- two switches


async def test_two_switches_joined_by_vxlan(tmp_path: Path) -> None:
    """Two `vswitch run` processes ("hosts" in their own namespaces), each with a host on a
    TAP port, joined by VXLAN over a veth underlay."""
    from support.switch_process import SwitchProcess

    need_root()
    need_tool("ping")
    ha, hb = ns_name("ha"), ns_name("hb")
    with Underlay() as u:
        u.veth("a", "ua", "192.0.2.1/24", "b", "ub", "192.0.2.2/24")
        sides = []
        metrics = _free_port()
        for tag, h, addr, local, remote in (
            ("a", ha, "10.43.0.1/24", "192.0.2.1", "192.0.2.2"),
            ("b", hb, "10.43.0.2/24", "192.0.2.2", "192.0.2.1"),
        ):
            work = tmp_path / tag
            work.mkdir()
            ports = [host_port(h, addr, mac=f"52:54:00:43:00:0{len(sides) + 1}"),
                     {"name": "vx1", "type": "vxlan", "vni": 4242, "local": local,
                      "remotes": [remote], "netns": u.ns(tag)}]  # fmt: skip
            extra = {"metrics": {"listen": f"127.0.0.1:{metrics}"}} if tag == "a" else {}
            sides.append(SwitchProcess(work, ports, log_level="info", **extra))
        try:
            async with sides[0] as a, sides[1] as b:
                ok(await aping(ha, "10.43.0.2"))
                ok(await aping(hb, "10.43.0.1"))
                ok(await aping(ha, "10.43.0.2", size=1450 - 28))
                ok(await aping(hb, "10.43.0.1", size=1450 - 28))
                for sp in (a, b):
                    port = (await sp.ports())["vx1"]
                    assert port["state"] == "up" and port["mtu"] == 1450, port
                    c = port["counters"]
                    assert c["rx_packets"] >= 6 and c["tx_packets"] >= 6, c
                    assert c["rx_datagrams"] == c["rx_packets"], c
                    fdb = {e["mac"]: e for e in await sp.fdb()}
                    other = "52:54:00:43:00:02" if sp is a else "52:54:00:43:00:01"
                    remote = "192.0.2.2" if sp is a else "192.0.2.1"
                    assert (fdb[other]["port"], fdb[other]["remote"]) == ("vx1", remote), fdb
                    out = await asyncio.to_thread(
                        run, sys.executable, "-m", "vswitch", "fdb", "--control", str(sp.control)
                    )
                    assert "REMOTE" in out.stdout.splitlines()[0], out.stdout + out.stderr
                    assert any(other in ln and ln.split()[-1] == remote
                               for ln in out.stdout.splitlines()), out.stdout  # fmt: skip
                # The counters in the metrics too, drops by reason.
                text = await asyncio.to_thread(_scrape, metrics)
                assert 'vswitch_port_vxlan_tx_datagrams_total{port="vx1"}' in text, text
                assert 'vswitch_port_rx_drops_total{port="vx1",reason="vxlan_vni"} 0.0' in text
        finally:
            delete_netns(ha)
            delete_netns(hb)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def test_no_test_namespace_left() -> None:
    """Runs last in this file: no namespace of these tests is left behind."""
    left = [n for n in list_netns() if n.startswith(PREFIX)]
    assert not left, left
