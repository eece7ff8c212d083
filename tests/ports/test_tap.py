"""TAP ports: the kernel side of the switch.

- the `type: tap` config model and its error messages;
- in-process switches between network namespaces (both data path modes): frames both ways,
  the namespace and interface created and removed, a persistent tap attached and left,
  a tap in use or a non-tap name refused, a tap deleted from outside taking only its port
  down, an interface set down and up again;
- `vswitch run` with a QEMU guest and namespace hosts: ping both ways through a TAP port,
  tshark in the host's namespace sees the echo requests and replies with the right MACs,
  and deleting a TAP from outside leaves the switch, the VM and the other host running.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from conftest import need_root, need_tool

from vswitch.config import ConfigError, parse_config
from vswitch.config import TapPort as TapConfig
from vswitch.netsys.netns import (
    create_netns,
    delete_netns,
    list_netns,
    netns_exists,
    netns_preexec,
)


def _ns(tag: str) -> str:
    return f"vst-{tag}-{uuid.uuid4().hex[:6]}"


def run_ns(ns: str, *argv: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv), preexec_fn=netns_preexec(ns), capture_output=True, text=True, timeout=timeout
    )


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)


# --------------------------------------------------------------------------- config


def cfg(**kw: Any) -> Any:
    port = {"name": "h1", "type": "tap", **kw}
    return parse_config({"control": "/tmp/vst-ctl.sock", "ports": [port]}, name="t.yaml")


def test_tap_config_defaults_and_values() -> None:
    c = cfg(netns="lab1", addresses=["10.0.0.1/24", "FD00::1/64"], mac="52:54:00:AA:00:01")
    p = c.ports[0]
    assert isinstance(p, TapConfig)
    assert (p.ifname, p.netns, p.mtu, p.up) == ("h1", "lab1", 1500, True)
    assert p.addresses == ("10.0.0.1/24", "fd00::1/64")
    assert p.mac == 0x525400AA0001
    assert p.socket_paths == ()
    assert cfg(ifname="tap7", up=False, mtu=9000).ports[0].ifname == "tap7"


@pytest.mark.parametrize(
    ("port", "expect"),
    [
        (
            {"ifname": "x" * 16},
            "ports[0] (h1).ifname: the string 'xxxxxxxxxxxxxxxx' is not a valid interface name",
        ),
        ({"ifname": "a/b"}, "is not a valid interface name"),
        (
            {"netns": "../etc"},
            "ports[0] (h1).netns: the string '../etc' is not a valid network namespace name",
        ),
        (
            {"mtu": "1500"},
            "ports[0] (h1).mtu: expected a whole number, got the string '1500' (e.g. 1500)",
        ),
        ({"mtu": 10000}, "ports[0] (h1).mtu: 10000 is out of range 68..9000"),
        (
            {"addresses": ["10.0.0.1"]},
            "ports[0] (h1).addresses[0]: the string '10.0.0.1' is not an address with a prefix "
            "(write it with its prefix length",
        ),
        (
            {"addresses": ["10.0.0.1/24", "10.0.0.1/16"]},
            "ports[0] (h1).addresses: 10.0.0.1 is given twice (keep one)",
        ),
        ({"addresses": ["224.0.0.1/24"]}, "cannot be an interface address"),
        (
            {"mac": "01:00:5e:00:00:01"},
            "ports[0] (h1).mac: 01:00:5e:00:00:01 is a multicast address; only unicast "
            "addresses can be an interface's address",
        ),
        ({"up": "yes"}, "ports[0] (h1).up: expected true or false, got the string 'yes'"),
        (
            {"bridge": "br0"},
            "ports[0] (h1).bridge: unknown key (known keys here: addresses, ifname, mac, "
            "mac_limit, mirror, mtu, name, native_vlan, netns, static_macs, trunks, type, up, "
            "vlan)",
        ),
    ],
)
def test_tap_config_errors(port: dict[str, Any], expect: str) -> None:
    with pytest.raises(ConfigError) as e:
        cfg(**port)
    assert all(line.startswith("t.yaml: ports[0] (h1).") for line in str(e.value).splitlines())
    assert expect in str(e.value)


def test_tap_and_vhost_ports_share_names() -> None:
    with pytest.raises(ConfigError, match=r"port name 'h1' is already used by ports\[0\]"):
        parse_config(
            {
                "control": "/tmp/vst-ctl.sock",
                "ports": [
                    {"name": "h1", "type": "tap"},
                    {"name": "h1", "type": "vhost-user", "path": "/tmp/vst-h1.sock"},
                ],
            }
        )


def test_two_tap_ports_on_one_interface_are_refused() -> None:
    ports = [
        {"name": "a", "type": "tap", "ifname": "tap0", "netns": "n1"},
        {"name": "b", "type": "tap", "ifname": "tap0", "netns": "n2"},
        {"name": "c", "type": "tap", "ifname": "tap0", "netns": "n1"},
    ]
    with pytest.raises(ConfigError) as e:
        parse_config({"control": "/tmp/vst-ctl.sock", "ports": ports}, name="t.yaml")
    assert str(e.value) == (
        "t.yaml: ports[2] (c).ifname: interface tap0 in netns n1 is already used by "
        "ports[0] (a).ifname (give each tap port its own ifname or netns)"
    )


# --------------------------------------------------------------------------- in-process


@contextlib.asynccontextmanager
async def switch(tmp: Path, datapath: str, ports: list[dict[str, Any]]) -> AsyncIterator[Any]:
    from vswitch.daemon.switch import Switch

    conf = parse_config(
        {"control": str(tmp / "ctl.sock"), "switch": {"datapath": datapath}, "ports": ports}
    )
    async with Switch(conf) as sw:
        yield sw


async def wait_for(pred: Any, what: str, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not pred():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def ping_ns(ns: str, target: str, count: int = 2) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(
        run_ns, ns, "ping", "-c", str(count), "-i", "0.2", "-W", "3", target, timeout=30
    )


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_two_namespaces_through_the_switch(tmp_path: Path, datapath: str) -> None:
    need_root()
    need_tool("ping")
    a, b = _ns("a"), _ns("b")
    ports = [
        {
            "name": "a",
            "type": "tap",
            "ifname": "eth0",
            "netns": a,
            "mtu": 1400,
            "mac": "52:54:00:0a:00:01",
            "addresses": ["10.99.0.1/24", "fd99::1/64"],
        },
        {
            "name": "b",
            "type": "tap",
            "ifname": "eth0",
            "netns": b,
            "mac": "52:54:00:0a:00:02",
            "addresses": ["10.99.0.2/24", "fd99::2/64"],
        },
    ]
    try:
        async with switch(tmp_path, datapath, ports) as sw:
            assert netns_exists(a) and netns_exists(b)
            link = run_ns(a, "ip", "-o", "link", "show", "eth0").stdout
            assert "mtu 1400" in link and "52:54:00:0a:00:01" in link and "UP" in link
            r = await ping_ns(a, "10.99.0.2")
            assert r.returncode == 0, r.stdout + r.stderr
            r = await ping_ns(b, "fd99::1")
            assert r.returncode == 0, r.stdout + r.stderr
            info = {n: p.info() for n, p in sw.ports.items()}
            for name in ("a", "b"):
                p = info[name]
                assert p["type"] == "tap" and p["state"] == "up" and p["created"], p
                assert p["counters"]["rx_packets"] >= 4 and p["counters"]["tx_packets"] >= 4, p
            fdb = {e.mac for e in sw.dp.fdb_dump()}
            assert {0x525400_0A0001, 0x525400_0A0002} <= fdb
        # The switch made both namespaces and interfaces: both are gone.
        assert not netns_exists(a) and not netns_exists(b)
        assert a not in list_netns() and b not in list_netns()
    finally:
        delete_netns(a)
        delete_netns(b)


async def test_persistent_tap_is_attached_and_left(tmp_path: Path) -> None:
    need_root()
    ns = _ns("p")
    create_netns(ns)
    try:
        r = run_ns(ns, "ip", "tuntap", "add", "dev", "ptap0", "mode", "tap")
        assert r.returncode == 0, r.stderr
        ports = [
            {
                "name": "p",
                "type": "tap",
                "ifname": "ptap0",
                "netns": ns,
                "addresses": ["10.98.0.1/24"],
            }
        ]
        async with switch(tmp_path, "loop", ports) as sw:
            p = sw.ports["p"].info()
            assert p["state"] == "up" and p["created"] is False, p
            # In use by the switch: a second opener is refused with a clear message.
            from vswitch.errors import StartupError
            from vswitch.ports.tap import TapPort

            other = TapPort(TapConfig(name="p2", type="tap", ifname="ptap0", netns=ns), sw.dp)
            with pytest.raises(StartupError, match=r"tap ptap0 in netns .* is in use by another"):
                await other.start()
            await other.stop()
        # Left in place (it existed before), and the netns too (it was not the switch's).
        assert netns_exists(ns)
        assert "ptap0" in run_ns(ns, "ip", "-o", "link").stdout
    finally:
        delete_netns(ns)


async def test_non_tap_interface_is_refused(tmp_path: Path) -> None:
    need_root()
    ns = _ns("n")
    create_netns(ns)
    try:
        assert run_ns(ns, "ip", "link", "add", "br9", "type", "bridge").returncode == 0
        ports = [{"name": "d", "type": "tap", "ifname": "br9", "netns": ns}]
        from vswitch.errors import StartupError

        with pytest.raises(StartupError, match=r"interface br9 in netns .* is a bridge, not a tap"):
            async with switch(tmp_path, "loop", ports):
                pass
        assert "br9" in run_ns(ns, "ip", "-o", "link").stdout
    finally:
        delete_netns(ns)


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_tap_deleted_from_outside_takes_only_its_port_down(
    tmp_path: Path, datapath: str, caplog: pytest.LogCaptureFixture
) -> None:
    need_root()
    need_tool("ping")
    a, b, c = _ns("a"), _ns("b"), _ns("c")
    ports = [
        {"name": n, "type": "tap", "ifname": "eth0", "netns": ns, "addresses": [f"10.97.0.{i}/24"]}
        for i, (n, ns) in enumerate([("a", a), ("b", b), ("c", c)], start=1)
    ]
    try:
        async with switch(tmp_path, datapath, ports) as sw:
            assert (await ping_ns(a, "10.97.0.3")).returncode == 0
            # Down and up again: frames sent meanwhile are lost, the port is not.
            assert run_ns(c, "ip", "link", "set", "eth0", "down").returncode == 0
            await ping_ns(a, "10.97.0.3", count=1)
            assert run_ns(c, "ip", "link", "set", "eth0", "up").returncode == 0
            await wait_for(lambda: sw.ports["c"].info()["state"] == "up", "c up again", 5)
            r = await ping_ns(a, "10.97.0.3")
            assert r.returncode == 0, r.stdout
            # Deleted: that port goes down and stays down, logged once; the rest goes on.
            assert run_ns(b, "ip", "link", "del", "eth0").returncode == 0
            await ping_ns(a, "10.97.0.2", count=1)  # traffic towards it
            await wait_for(lambda: sw.ports["b"].info()["state"] == "broken", "b broken")
            info = sw.ports["b"].info()
            assert "was deleted" in info["error"], info
            r = await ping_ns(a, "10.97.0.3")
            assert r.returncode == 0, r.stdout
            assert sw.ports["a"].info()["state"] == sw.ports["c"].info()["state"] == "up"
            await asyncio.sleep(1.2)
            gone = [r for r in caplog.records if "was deleted" in r.getMessage()]
            assert len(gone) == 1, [r.getMessage() for r in gone]
        assert not any(netns_exists(ns) for ns in (a, b, c))
    finally:
        for ns in (a, b, c):
            delete_netns(ns)


# --------------------------------------------------------------------------- with QEMU


@pytest.fixture(scope="module")
def image() -> Path:
    need_root()
    need_tool("qemu-system-x86_64")
    from support.switch_process import build_guest_image

    return build_guest_image()


def _capture_cmd(ns: str, out: Path) -> subprocess.Popen[bytes]:
    tshark = need_tool("tshark")
    return subprocess.Popen(
        [tshark, "-i", "eth0", "-f", "icmp", "-c", "4", "-a", "duration:120", "-w", str(out)],
        preexec_fn=netns_preexec(ns),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_capturing(cap: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until tshark says it captures (it starts slowly: dissectors, then the interface)."""
    assert cap.stderr is not None
    os.set_blocking(cap.stderr.fileno(), False)
    seen = b""
    deadline = time.monotonic() + timeout
    while b"Capturing on" not in seen:
        assert cap.poll() is None, f"tshark exited: {seen.decode(errors='replace')}"
        assert time.monotonic() < deadline, f"tshark did not start: {seen!r}"
        seen += cap.stderr.read() or b""
        time.sleep(0.1)


def _stop_capture(cap: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """tshark stops after 4 frames; if fewer came, SIGINT makes it write what it has."""
    try:
        cap.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        cap.send_signal(signal.SIGINT)
        try:
            cap.wait(timeout=15)
        except subprocess.TimeoutExpired:
            cap.kill()
            cap.wait()


async def test_host_and_vm_through_tap_with_tshark(tmp_path: Path, image: Path) -> None:
    """A namespace host pings a VM through a TAP port and back, tshark on the host sees the
    frames; deleting the host's TAP from outside leaves the switch, the VM and the other
    host running."""
    from support.switch_process import SwitchProcess

    from vswitch.lab.guest import Guest, Nic

    need_tool("ping")
    h1, h2 = _ns("h1"), _ns("h2")
    vm_mac, h1_mac = "52:54:00:0b:00:01", "52:54:00:0b:00:11"
    ports = [
        {"name": "vm1", "type": "vhost-user", "path": str(tmp_path / "vm1.sock")},
        {
            "name": "h1",
            "type": "tap",
            "ifname": "eth0",
            "netns": h1,
            "mac": h1_mac,
            "addresses": ["10.96.0.11/24", "fd96::11/64"],
        },
        {
            "name": "h2",
            "type": "tap",
            "ifname": "eth0",
            "netns": h2,
            "addresses": ["10.96.0.12/24"],
        },
    ]
    try:
        async with SwitchProcess(tmp_path, ports) as sw:
            g = Guest(
                "vm1",
                tmp_path,
                nics=[Nic(str(tmp_path / "vm1.sock"), vm_mac)],
                ips={0: ["10.96.0.1/24", "fd96::1/64"]},
                image_dir=image,
            )
            async with g:
                await sw.wait_port("vm1", "up")
                assert (await sw.ports())["h1"]["state"] == "up"
                # tshark in h1's namespace, on its eth0, while h1 pings the VM.
                pcap = tmp_path / "h1.pcapng"
                cap = _capture_cmd(h1, pcap)
                try:
                    await asyncio.to_thread(_wait_capturing, cap)
                    r = await ping_ns(h1, "10.96.0.1", count=2)
                    assert r.returncode == 0, r.stdout + r.stderr
                finally:
                    await asyncio.to_thread(_stop_capture, cap)
                fields = ("eth.src", "eth.dst", "ip.src", "ip.dst", "icmp.type")
                argv = ["tshark", "-r", str(pcap), "-T", "fields"]
                argv += [arg for f in fields for arg in ("-e", f)]
                res = await asyncio.to_thread(
                    subprocess.run, argv, capture_output=True, text=True, timeout=60
                )
                frames = [tuple(line.split("\t")) for line in res.stdout.splitlines() if line]
                assert (h1_mac, vm_mac, "10.96.0.11", "10.96.0.1", "8") in frames, frames
                assert (vm_mac, h1_mac, "10.96.0.1", "10.96.0.11", "0") in frames, frames
                # And back: the VM pings the host, over IPv4 and IPv6.
                for target in ("10.96.0.11", "fd96::11", "10.96.0.12"):
                    res = await g.exec(f"ping -c 2 -W 5 -w 12 {target}", timeout=120)
                    assert res.rc == 0, res.stdout + res.stderr
                counters = (await sw.ports())["h1"]["counters"]
                assert counters["rx_packets"] >= 4 and counters["tx_packets"] >= 4, counters

                # The TAP deleted from outside: only its port goes down.
                assert run_ns(h1, "ip", "link", "del", "eth0").returncode == 0
                await g.exec("ping -c 1 -W 1 -w 2 10.96.0.11", timeout=120)
                await sw.wait_port("h1", "broken", timeout=15)
                res = await g.exec("ping -c 2 -W 5 -w 12 10.96.0.12", timeout=120)
                assert res.rc == 0, res.stdout + res.stderr
                info = await sw.ports()
                assert info["vm1"]["state"] == "up" and info["h2"]["state"] == "up", info
                assert sw.proc is not None and sw.proc.returncode is None
            assert await sw.stop() == 0, sw.tail()
        assert "was deleted" in sw.tail(200)
        # The switch created the namespaces: they left with it.
        assert not netns_exists(h1) and not netns_exists(h2)
    finally:
        delete_netns(h1)
        delete_netns(h2)


def test_no_test_namespace_left() -> None:
    """Runs last in this file: no namespace of these tests is left behind."""
    left = [n for n in list_netns() if n.startswith("vst-")]
    assert not left, left
