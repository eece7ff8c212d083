"""VLAN isolation with real guests: two QEMU guests on access VLAN 10, one on VLAN 20, and
a trunk guest with eth0.10 and eth0.20 (the guest kernel's 8021q).  Who reaches whom is
checked with ping from the inside; what the switch learned, with `vswitch fdb`; and a
reload that takes a VLAN off the trunk, with the guest that lost it.  (A TAP trunk to a
namespace host is tests/ports/test_tap_vlan.py: this machine's own kernel has no 802.1Q
devices.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import yaml
from conftest import need_tool
from support.switch_process import SwitchProcess, build_guest_image

from vswitch.control import request
from vswitch.lab.guest import Guest, Nic

pytestmark = pytest.mark.qemu

MAC = {n: f"52:54:00:00:0a:{i:02x}" for i, n in enumerate(["vm1", "vm2", "vm3", "trunk"], 1)}


@pytest.fixture(scope="module")
def image() -> Path:
    need_tool("qemu-system-x86_64")
    return build_guest_image()


async def reaches(g: Guest, target: str, size: int = 56) -> bool:
    """A ping answered within 6 s."""
    r = await g.exec(f"ping -c 1 -W 2 -w 6 -s {size} {target}", timeout=30)
    return r.rc == 0


async def vlan_link(g: Guest, vid: int, addr: str) -> None:
    r = await g.exec(
        f"ip link add link eth0 name eth0.{vid} type vlan id {vid} && "
        f"ip addr add {addr} dev eth0.{vid} && ip link set eth0.{vid} up"
    )
    assert r.rc == 0, r.stdout + r.stderr


async def test_vlans_keep_tenants_apart_and_trunks_carry_them(tmp_path: Path, image: Path) -> None:
    ports = [
        {"name": "vm1", "type": "vhost-user", "path": str(tmp_path / "vm1.sock"), "vlan": 10},
        {"name": "vm2", "type": "vhost-user", "path": str(tmp_path / "vm2.sock"), "vlan": 10},
        {"name": "vm3", "type": "vhost-user", "path": str(tmp_path / "vm3.sock"), "vlan": 20},
        {"name": "trunk", "type": "vhost-user", "path": str(tmp_path / "trunk.sock"),
         "trunks": [10, 20]},
    ]  # fmt: skip
    # vm3 also holds 10.0.10.3, an address of VLAN 10's subnet: the subnets overlap, the
    # VLANs do not, so nobody on VLAN 10 may reach it.
    ips = {
        "vm1": ["10.0.10.1/24"],
        "vm2": ["10.0.10.2/24"],
        "vm3": ["10.0.20.3/24", "10.0.10.3/24"],
        "trunk": [],
    }
    async with SwitchProcess(tmp_path, ports) as sw:
        guests = {
            n: Guest(n, sw.workdir, nics=[Nic(socket=sw.sock(n), mac=MAC[n])], ips={0: ips[n]},
                     image_dir=image)
            for n in MAC
        }  # fmt: skip
        try:
            await asyncio.gather(*(g.start() for g in guests.values()))
            await asyncio.gather(*(g.wait_ready(timeout=240) for g in guests.values()))
            for n in MAC:
                await sw.wait_port(n, "up")
            tr = guests["trunk"]
            await vlan_link(tr, 10, "10.0.10.4/24")
            await vlan_link(tr, 20, "10.0.20.4/24")

            vm1, vm2, vm3 = guests["vm1"], guests["vm2"], guests["vm3"]
            assert await reaches(vm1, "10.0.10.2")
            assert await reaches(vm1, "10.0.10.4")  # trunk.10
            assert await reaches(vm2, "10.0.10.4")
            assert await reaches(vm3, "10.0.20.4")  # trunk.20
            # Full-size frames, MTU + 4 on the trunks: 1472 + 28 = 1500 bytes of IP.
            assert await reaches(vm1, "10.0.10.4", size=1472)
            assert await reaches(vm3, "10.0.20.4", size=1472)
            # Nothing crosses between VLANs.
            assert not await reaches(vm1, "10.0.10.3")
            assert not await reaches(vm3, "10.0.10.1")
            assert not await reaches(vm3, "10.0.10.2")

            fdb = {(e["mac"], e["vlan"]): e["port"] for e in await sw.fdb()}
            assert fdb[(MAC["vm1"], 10)] == "vm1" and fdb[(MAC["vm2"], 10)] == "vm2"
            assert fdb[(MAC["vm3"], 20)] == "vm3"
            assert fdb[(MAC["trunk"], 10)] == fdb[(MAC["trunk"], 20)] == "trunk"
            assert (MAC["vm3"], 10) not in fdb and (MAC["vm1"], 20) not in fdb

            # A guest on an access port that tags its frames: dropped and counted, per
            # port and per VLAN; the trunk sending a VLAN it does not carry, the same.
            await vlan_link(vm1, 30, "10.0.30.1/24")
            await vlan_link(tr, 30, "10.0.30.4/24")
            assert not await reaches(vm1, "10.0.30.4")
            info = await sw.ports()
            assert info["vm1"]["counters"]["rx_drop_vlan_tagged"] > 0
            assert info["trunk"]["counters"]["rx_drop_vlan"] > 0
            assert info["trunk"]["vlan_mode"] == "trunk" and info["trunk"]["trunks"] == [10, 20]
            stats = await request(sw.control, "stats")
            assert stats["vlans"]["30"]["tagged"] > 0 and stats["vlans"]["30"]["not_allowed"] > 0

            # Reload: the trunk guest leaves VLAN 20, in place (its connection stays), and
            # what it learned there is flushed.
            doc = yaml.safe_load(sw.config.read_text())
            doc["ports"][3]["trunks"] = [10]
            sw.config.write_text(yaml.safe_dump(doc))
            connects = info["trunk"]["connects"]
            result = await request(sw.control, "reload")
            assert any("trunk" in c for c in result["changes"]), result
            assert (await sw.ports())["trunk"]["connects"] == connects
            fdb = {(e["mac"], e["vlan"]): e["port"] for e in await sw.fdb()}
            assert (MAC["trunk"], 20) not in fdb
            assert await reaches(vm1, "10.0.10.4")
            assert not await reaches(vm3, "10.0.20.4")
        finally:
            await asyncio.gather(*(g.stop() for g in guests.values()), return_exceptions=True)
