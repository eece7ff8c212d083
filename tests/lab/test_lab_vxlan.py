"""Labs whose switches are joined by VXLAN (`via: vxlan` on a switch-to-switch link): the
example file resolves to a vxlan port on each switch, a wrong `via` is refused naming the
field, and a lab of two switches with a namespace host on each comes up, pings across the
tunnel and goes away leaving nothing behind (no QEMU: cheap enough for every run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import need_root, need_tool

from vswitch.errors import ConfigError
from vswitch.lab import Lab, load_lab, parse_lab
from vswitch.lab.switches import switch_config
from vswitch.netsys.netns import list_netns

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "configs" / "labs" / "vxlan-pair.yaml"


def test_example_resolves_to_vxlan_ports(tmp_path: Path) -> None:
    spec = load_lab(EXAMPLE)
    (t,) = spec.trunks
    assert (t.a, t.b, t.via, t.vni, t.mtu) == ("sw1", "sw2", "vxlan", 1, 1500)
    ends = []
    for sw, local, remote in (("sw1", "127.42.1.1", "127.42.1.2"),
                              ("sw2", "127.42.1.2", "127.42.1.1")):  # fmt: skip
        ports = switch_config(spec, tmp_path, sw)["ports"]
        (vx,) = [p for p in ports if p["type"] == "vxlan"]
        assert (vx["local"], vx["remotes"], vx["vni"], vx["mtu"]) == (local, [remote], 1, 1500)
        assert vx["netns"] == spec.trunk_netns
        ends.append(vx["name"])
    assert ends == [t.port_a, t.port_b]


def test_via_is_for_switch_links_only() -> None:
    data = {
        "name": "vsx-via",
        "switches": {"sw1": {}},
        "nodes": {"h1": {"type": "host", "interfaces": {"eth0": {"addresses": ["10.0.0.1/24"]}}}},
        "links": [{"endpoints": ["h1", "sw1"], "via": "vxlan"}],
    }
    with pytest.raises(ConfigError, match=r"links\[0\]\.via: via: vxlan is for a link between "
                                          r"two switches"):  # fmt: skip
        parse_lab(data, name="lab.yaml")
    data["links"] = [{"endpoints": ["sw1", "sw1"], "via": "gre"}]
    with pytest.raises(ConfigError, match=r"links\[0\]\.via"):
        parse_lab(data, name="lab.yaml")


async def test_hosts_lab_joined_by_vxlan(tmp_path: Path) -> None:
    need_root()
    need_tool("ping")
    f = tmp_path / "vx.yaml"
    f.write_text(
        "name: vsx-lab\n"
        "switches: {sw1: {}, sw2: {datapath: loop}}\n"
        "nodes:\n"
        "  h1: {type: host, interfaces: {eth0: {addresses: [10.0.0.1/24]}}}\n"
        "  h2: {type: host, interfaces: {eth0: {addresses: [10.0.0.2/24], mtu: 1400}}}\n"
        "links: [[h1, sw1], [h2, sw2], {endpoints: [sw1, sw2], via: vxlan, mtu: 1400}]\n"
    )
    async with Lab.from_file(f, boot_timeout=60) as lab:
        r = await lab.exec_async("h1", "ping -c 2 -W 3 10.0.0.2", timeout=60)
        assert r.rc == 0, r.stdout + r.stderr
        r = await lab.exec_async("h2", "ping -c 2 -W 3 -M do -s 1372 10.0.0.1", timeout=60)
        assert r.rc == 0, r.stdout + r.stderr
        st = await lab.status_async()
        (t,) = st["trunks"]
        assert (t["via"], t["vni"], t["state"]) == ("vxlan", 1, "up"), t
    assert not [n for n in list_netns() if n.startswith("vsx-lab.")]
