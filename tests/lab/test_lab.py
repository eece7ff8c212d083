"""Labs: the lab file, the picture, and the three example labs brought up for real.

- the lab file's checks and messages (loops, unknown endpoints, VM interface names...);
- `lab graph` draws an SVG naming every node, switch and address;
- two-vms (through the CLI: up, status, exec, down) and two-switches (through the async
  Python API) side by side, star (through the sync Python API): every node pings every
  other node, then nothing is left: no process, namespace, socket, run directory, tap or
  temp file;
- a bring-up that times out, and one whose owner is killed, leave nothing behind after
  `lab down`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import need_root, need_tool

from vswitch.control import request
from vswitch.errors import ConfigError
from vswitch.lab import Lab, LabError, load_lab, parse_lab
from vswitch.lab.state import labs_root
from vswitch.mac import format_mac
from vswitch.netsys.netns import list_netns

ROOT = Path(__file__).resolve().parents[2]
LABS = ROOT / "configs" / "labs"
# `vswitch lab ...` through the main CLI, as people type it.
CLI = [sys.executable, "-m", "vswitch", "lab"]


# --------------------------------------------------------------------------- the file


def test_examples_load() -> None:
    two = load_lab(LABS / "two-vms.yaml")
    assert [n.name for n in two.vms] == ["vm1", "vm2"] and not two.hosts and not two.trunks
    star = load_lab(LABS / "star.yaml")
    assert len(star.vms) == 4 and [h.name for h in star.hosts] == ["h1"]
    assert star.netns == ["star.h1"]
    assert star.nodes["vm1"].routes == [("default", "10.0.0.100")]
    assert star.nodes["vm4"].routes == [("10.9.0.0/16", "10.0.0.100")]
    ten = load_lab(LABS / "ten-vms.yaml")
    assert [n.name for n in ten.vms] == [f"vm{i}" for i in range(1, 11)]
    sw = load_lab(LABS / "two-switches.yaml")
    (t,) = sw.trunks
    assert (t.a, t.b, t.port_a, t.port_b, t.taps) == (
        "sw1",
        "sw2",
        "to-sw2",
        "to-sw1",
        ("t1a", "t1b"),
    )
    assert sw.trunk_netns == "two-switches._trunk"
    macs = [i.mac for n in sw.nodes.values() for i in n.ifaces]
    assert len(set(macs)) == len(macs)
    assert sw.nodes["h1"].ifaces[0].port == "h1-eth0" and sw.nodes["h1"].ifaces[0].switch == "sw1"


def lab_errors(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_lab(data, name="l.yaml", path=Path("/x/l.yaml"))
    return str(e.value).splitlines()


def test_loops_are_refused() -> None:
    lines = lab_errors(
        {
            "switches": {"sw1": {}, "sw2": {}, "sw3": {}},
            "nodes": {"vm1": {"type": "vm"}},
            "links": [["vm1", "sw1"], ["sw1", "sw2"], ["sw2", "sw3"], ["sw3", "sw1"]],
        }
    )
    assert lines == [
        "l.yaml: links[3]: the link sw3 - sw1 closes a loop sw3 - sw2 - sw1 - sw3 (remove one "
        "of these links: loops are refused until the switch runs spanning tree)"
    ]
    lines = lab_errors(
        {
            "switches": {"sw1": {}, "sw2": {}},
            "nodes": {"vm1": {"type": "vm"}},
            "links": [["vm1", "sw1"], ["sw1", "sw2"], ["sw2", "sw1"]],
        }
    )
    assert "l.yaml: links[2]: the link sw2 - sw1 closes a loop sw2 - sw1 - sw2" in lines[0]


def test_topology_errors_name_the_field() -> None:
    lines = lab_errors(
        {
            "switches": {"sw1": {}, "sw2": None},
            "nodes": {
                "vm1": {
                    "type": "vm",
                    "interfaces": {"eth0": {"addresses": ["10.0.0.1/24"]}, "eth2": {}},
                },
                "h1": {
                    "type": "host",
                    "memory": 256,
                    "routes": [{"to": "default", "via": "10.9.0.1"}],
                    "interfaces": {"eth0": {"addresses": ["10.0.0.1/24"]}},
                },
            },
            "links": [
                ["vm1", "sw1"],
                ["vm1:eth2", "sw1"],
                ["h1", "vm1"],
                ["vm7", "sw1"],
                ["h1:eth0", "sw1"],
            ],
        }
    )
    assert "l.yaml: nodes.h1.memory: memory applies to VMs only (remove it)" in lines
    assert "l.yaml: links[2]: two nodes cannot be cabled directly (link each to a switch)" in lines
    assert any(line.startswith("l.yaml: links[3]: unknown node or switch 'vm7'") for line in lines)
    assert (
        "l.yaml: nodes.vm1: VM interfaces are eth0, eth2; a guest names its NICs eth0, eth1 "
        "in order (rename them)"
    ) in lines
    assert (
        "l.yaml: nodes.h1.routes[0].via: 10.9.0.1 is in no subnet of h1's addresses (add an "
        "address in its subnet, or fix via)"
    ) in lines
    assert (
        "l.yaml: nodes.h1.interfaces.eth0.addresses: 10.0.0.1 is already used by vm1:eth0 "
        "(give each interface its own address)"
    ) in lines
    assert (
        "l.yaml: switches.sw2: switch sw2 has no links (link something to it, or remove it)"
        in lines
    )


def test_schema_errors() -> None:
    lines = lab_errors(
        {
            "switches": {"sw1": {"datapath": "fast"}},
            "nodes": {"vm 1": {"type": "vm"}},
            "links": ["vm1"],
            "extra": 1,
        }
    )
    assert (
        "l.yaml: switches.sw1.datapath: the string 'fast' is not allowed "
        "(use one of 'thread' or 'loop')" in lines
    )
    assert any(
        line.startswith("l.yaml: nodes.vm 1: the string 'vm 1' is not a valid name")
        for line in lines
    )
    assert (
        "l.yaml: links[0]: the string 'vm1' is not a link "
        "(write [NODE:IFACE, SWITCH] or [SWITCH, SWITCH])" in lines
    )
    assert "l.yaml: extra: unknown key (known keys here: links, name, nodes, switches)" in lines


def test_lab_file_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad lab.yaml"
    f.write_text("switches: {sw1: {}}\nnodes: {vm1: {type: vm}}\nlinks: [[vm1, sw1]]\n")
    with pytest.raises(ConfigError, match=r"name: the file name 'bad lab' is no valid lab name"):
        load_lab(f)
    f.write_text("switches:\n  sw1: {}\n  sw1: {}\n")
    with pytest.raises(ConfigError, match=r"line 3, column 3: duplicate key 'sw1'"):
        load_lab(f)
    r = subprocess.run([*CLI, "up", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "duplicate key 'sw1'" in r.stderr, r.stderr


# --------------------------------------------------------------------------- graph


def test_graph_svg(tmp_path: Path) -> None:
    need_tool("dot")
    out = tmp_path / "lab.svg"
    r = subprocess.run(
        [*CLI, "graph", str(LABS / "two-switches.yaml"), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for text in ("sw1", "sw2", "vm1", "vm2", "h1", "h2", "10.0.0.1/24", "fd00::12/64", "trunk"):
        assert text in svg, text
    dot = subprocess.run(
        [*CLI, "graph", str(LABS / "star.yaml"), "-o", "-", "--format", "dot"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dot.returncode == 0 and dot.stdout.startswith("graph star {"), dot.stderr


# --------------------------------------------------------------------------- running labs


def _lab_procs(name: str) -> list[str]:
    """Processes whose command line mentions the lab's run directory or file."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if f"/labs/{name}/" in cmd or f"labs/{name}.yaml" in cmd:
            if (d / "stat").read_text().split(") ", 1)[1][0] != "Z":
                out.append(f"{d.name}: {cmd[:120]}")
    return out


def _root_links() -> set[str]:
    r = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, timeout=10)
    return {line.split(": ")[1].split("@")[0] for line in r.stdout.splitlines()}


def _tmp_files() -> set[str]:
    return {p.name for p in Path("/tmp").glob("vswitch-guest-*")}


class Baseline:
    def __init__(self) -> None:
        self.links = _root_links()
        self.tmp = _tmp_files()

    def leftovers(self, name: str, file: Path | None = None) -> list[str]:
        left = [f"namespace {n}" for n in list_netns() if n.startswith(f"{name}.")]
        if (labs_root() / name).exists():
            left.append(f"run directory {labs_root() / name}")
        left += _lab_procs(name)
        # Interface names of the lab (they live in its namespaces, never here).
        spec = load_lab(file or LABS / f"{name}.yaml")
        ours = {i.name for n in spec.nodes.values() for i in n.ifaces}
        ours |= {tap for t in spec.trunks for tap in t.taps} | {t.bridge for t in spec.trunks}
        left += [f"interface {n}" for n in (_root_links() - self.links) & ours]
        left += [f"temp file {n}" for n in _tmp_files() - self.tmp]
        return left


def _first_v4(node: dict[str, Any] | Any) -> str:
    addrs = node["addresses"] if isinstance(node, dict) else node.addresses
    return next(a.split("/")[0] for a in addrs if ":" not in a)


async def full_mesh_async(lab: Lab) -> None:
    nodes = lab.spec.nodes

    async def from_node(a: str) -> list[str]:
        bad = []
        for b in nodes:
            if a == b:
                continue
            r = await lab.exec_async(a, ping(_first_v4(nodes[b])), timeout=120)
            if r.rc != 0:
                bad.append(f"{a} -> {b}: {r.stdout}{r.stderr}")
        return bad

    bad = [line for lines in await asyncio.gather(*(from_node(a) for a in nodes)) for line in lines]
    assert not bad, "\n".join(bad)


def ping(target: str) -> str:
    # Two tries, bounded as a whole (-w): on a busy 2-core machine a guest answers slowly.
    return f"ping -c 2 -W 5 -w 12 {target}"


def need_lab_tools() -> None:
    need_root()
    need_tool("qemu-system-x86_64")
    need_tool("ping")
    from support.switch_process import build_guest_image

    build_guest_image()


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)


def _cli_lab_two_vms() -> list[str]:
    """two-vms through the CLI; returns the bring-up time line."""
    f = str(LABS / "two-vms.yaml")
    r = cli("up", f, "--timeout", "240", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    for step in (
        "switch sw1 running",
        "vm vm1 booting",
        "vm vm2 up",
        "link vm1:eth0 - sw1 up",
        "lab two-vms is up in",
    ):
        assert step in r.stdout, (step, r.stdout)
    try:
        st = json.loads(cli("status", "two-vms", "--json").stdout)
        assert st["state"] == "up" and {n["name"]: n["state"] for n in st["nodes"]} == {
            "vm1": "up",
            "vm2": "up",
        }, st
        assert all(p["state"] == "up" for s in st["switches"] for p in s["ports"]), st
        human = cli("status", "two-vms").stdout
        assert "vm1" in human and "sw1:vm1-eth0 (up)" in human, human
        for a, b in (("vm1", "10.0.0.2"), ("vm2", "10.0.0.1"), ("vm1", "fd00::2")):
            r = cli(
                "exec",
                "--lab",
                "two-vms",
                "--timeout",
                "120",
                a,
                "--",
                *ping(b).split(),
                timeout=150,
            )
            assert r.returncode == 0, r.stdout + r.stderr
        r = cli("exec", "--lab", "two-vms", "vm2", "--", "echo out; echo err >&2; exit 3")
        assert (r.returncode, r.stdout, r.stderr) == (3, "out\n", "err\n")
        r = cli("exec", "--lab", "two-vms", "vm9", "--", "true")
        assert r.returncode == 1 and "has no node 'vm9' (nodes: vm1, vm2)" in r.stderr
        r = cli("up", f)
        assert r.returncode == 1 and "lab two-vms is already up" in r.stderr, r.stderr
    finally:
        r = cli("down", "two-vms", timeout=120)
    assert r.returncode == 0 and "lab two-vms is down" in r.stdout, r.stdout + r.stderr
    return [line for line in r.stdout.splitlines()]


async def test_two_labs_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    """two-vms (CLI) and two-switches (async API) at once: same node, switch and address
    names in both, kept apart by the lab name; each one's full mesh works."""
    need_lab_tools()
    base = Baseline()
    lines: list[str] = []
    lab = Lab.from_file(LABS / "two-switches.yaml", boot_timeout=240, progress=lines.append)
    cli_task = asyncio.create_task(asyncio.to_thread(_cli_lab_two_vms))
    try:
        async with lab:
            assert lab.state == "up"
            await full_mesh_async(lab)
            r = await lab.exec_async("h1", ping("fd00::2"), timeout=60)  # IPv6 across the trunk
            assert r.rc == 0, r.stdout + r.stderr
            st = await lab.status_async()
            assert st["trunks"] == [
                {
                    "a": "sw1",
                    "b": "sw2",
                    "via": "tap",
                    "bridge": "br1",
                    "netns": "two-switches._trunk",
                    "state": "up",
                }
            ]
            # The trunk's namespace holds the bridge and the two taps, nothing else.
            r = await lab.exec_async("h1", "ip -o link show eth0")
            assert "52:54:00" in r.stdout
            with pytest.raises(LabError, match="no node 'nope'"):
                await lab.exec_async("nope", "true")
            await cli_task
    finally:
        await asyncio.gather(cli_task, return_exceptions=True)
    assert lab.state == "down"
    with capsys.disabled():
        print("\n" + "\n".join(line for line in lines if "is up in" in line))
    for name in ("two-switches", "two-vms"):
        assert not base.leftovers(name), base.leftovers(name)


def test_star_sync_api(capsys: pytest.CaptureFixture[str]) -> None:
    need_lab_tools()
    base = Baseline()
    lines: list[str] = []
    t0 = time.monotonic()
    with Lab.from_file(LABS / "star.yaml", boot_timeout=300, progress=lines.append) as lab:
        up = time.monotonic() - t0
        nodes = lab.spec.nodes
        bad = []
        for a, b in itertools.permutations(nodes, 2):
            r = lab.exec(a, ping(_first_v4(nodes[b])), timeout=120)
            if r.rc != 0:
                bad.append(f"{a} -> {b}: {r.stdout}{r.stderr}")
        assert not bad, "\n".join(bad)
        assert lab.exec("vm3", ping("fd00::100"), timeout=120).rc == 0
        # Routes from the lab file: 10.9.0.1 (h1's second address) is off
        # every VM's subnet; vm1 reaches it by its default route, vm4 by a
        # network route, and vm2, with neither, does not.
        for vm in ("vm1", "vm4"):
            r = lab.exec(vm, ping("10.9.0.1"), timeout=120)
            assert r.rc == 0, (vm, r.stdout, r.stderr)
        r = lab.exec("vm2", "ping -c 1 -W 1 10.9.0.1", timeout=60)
        assert r.rc != 0 and "unreachable" in (r.stdout + r.stderr).lower(), r
        assert "10.9.0.0/16 via 10.0.0.100" in lab.exec("vm4", "ip route").stdout
        st = lab.status()
        assert [s["state"] for s in st["switches"]] == ["running"]
        assert all(n["state"] == "up" for n in st["nodes"]), st["nodes"]
        assert (
            lab.exec("h1", ["cat", "/sys/class/net/eth0/address"]).stdout.strip()
            == (next(i for i in st["nodes"] if i["name"] == "h1")["interfaces"][0]["mac"])
        )
    with capsys.disabled():
        print(f"\nstar: up in {up:.1f}s")
    assert not base.leftovers("star"), base.leftovers("star")



async def test_ten_vms_on_one_switch(capsys: pytest.CaptureFixture[str]) -> None:
    """The largest example lab: ten guests come up together on this
    machine, each reaches its neighbours, the switch learns all ten MACs on
    the right ports, and nothing is left after.  (How long it takes and how
    much memory it uses is measured by scripts/bench-lab, not asserted.)"""
    need_lab_tools()
    base = Baseline()
    t0 = time.monotonic()
    async with Lab.from_file(LABS / "ten-vms.yaml", boot_timeout=300) as lab:
        up = time.monotonic() - t0
        names = [f"vm{i}" for i in range(1, 11)]

        async def to_next(i: int) -> str | None:
            a, b = names[i], names[(i + 1) % 10]
            r = await lab.exec_async(a, ping(_first_v4(lab.spec.nodes[b])), timeout=120)
            return None if r.rc == 0 else f"{a} -> {b}: {r.stdout}{r.stderr}"

        bad = [m for m in await asyncio.gather(*(to_next(i) for i in range(10))) if m]
        assert not bad, "\n".join(bad)
        r = await lab.exec_async("vm10", ping("fd00::1"), timeout=120)
        assert r.rc == 0, r
        fdb = await request(lab.control_path("sw1"), "fdb")
        learned = {e["mac"]: e["port"] for e in fdb}
        for n in names:
            (iface,) = lab.spec.nodes[n].ifaces
            assert learned.get(format_mac(iface.mac)) == iface.port, (n, learned)
    with capsys.disabled():
        print(f"\nten-vms: up in {up:.1f}s")
    assert not base.leftovers("ten-vms"), base.leftovers("ten-vms")


def test_failed_bring_up_leaves_nothing(tmp_path: Path) -> None:
    need_lab_tools()
    base = Baseline()
    # A boot timeout: the message names the node; everything is removed at once.
    r = cli("up", str(LABS / "two-vms.yaml"), "--timeout", "2", timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    # Named: both VMs (or the one that was late, if the other made it).
    assert re.search(r"error: (vms vm1, vm2|vms vm2, vm1|vm vm[12]) did not come up within 2s",
                     r.stderr), r.stderr  # fmt: skip
    assert "tearing down" in r.stdout and "lab two-vms is down" in r.stdout, r.stdout
    assert not base.leftovers("two-vms"), base.leftovers("two-vms")
    r = cli("down", "two-vms")
    assert r.returncode == 0 and "not up" in r.stdout

    # `lab down` in the middle of a bring-up: the bring-up stops and removes everything.
    proc = subprocess.Popen(
        [*CLI, "up", str(LABS / "two-vms.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "booting" in line:
            break
    t0 = time.monotonic()
    r = cli("down", "two-vms", timeout=120)
    assert r.returncode == 0 and "lab two-vms is down" in r.stdout, r.stdout + r.stderr
    assert time.monotonic() - t0 < 30
    rest = proc.communicate(timeout=60)[0]
    assert proc.returncode == 1 and "bring-up interrupted" in rest, rest
    assert not base.leftovers("two-vms"), base.leftovers("two-vms")

    # The owner killed in the middle of a bring-up: its children die with it, and
    # `lab down` removes the namespaces and the run directory it left.
    proc = subprocess.Popen(
        [*CLI, "up", str(LABS / "two-switches.yaml")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if "vm vm2 booting" in line or "vm vm1 booting" in line:
            break
    state = json.loads((labs_root() / "two-switches" / "state.json").read_text())
    os.kill(state["owner"]["pid"], signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert any(n.startswith("two-switches.") for n in list_netns())
    st = cli("status", "two-switches")
    assert st.returncode == 1 and "no running owner" in st.stdout + st.stderr
    r = cli("down", "two-switches", timeout=120)
    assert r.returncode == 0 and "removed namespace two-switches.h1" in r.stdout, r.stdout
    deadline = time.monotonic() + 10
    while base.leftovers("two-switches") and time.monotonic() < deadline:
        time.sleep(0.2)  # QEMU and the switches die with their owner: give them a moment
    assert not base.leftovers("two-switches"), base.leftovers("two-switches")


def test_hosts_only_lab_in_the_foreground(tmp_path: Path) -> None:
    """`lab up --foreground` keeps the lab in that process; `lab exec` on a host runs in its
    namespace, attached to the caller; `lab down` from elsewhere ends the foreground owner."""
    need_root()
    need_tool("ping")
    f = tmp_path / "hosts.yaml"
    f.write_text(
        "name: vst-hosts\n"
        "switches: {sw1: {datapath: loop}}\n"
        "nodes:\n"
        "  h1: {type: host, interfaces: {eth0: {addresses: [10.0.0.1/24]}},\n"
        "       routes: [{to: 10.5.0.0/16, via: 10.0.0.2}]}\n"
        "  h2: {type: host, interfaces: {eth0: {addresses: [10.0.0.2/24]}}}\n"
        "links: [[h1, sw1], [h2, sw1]]\n"
    )
    base = Baseline()
    owner = subprocess.Popen(
        [*CLI, "up", "--foreground", str(f)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert owner.stdout is not None
    try:
        for line in owner.stdout:
            if "Ctrl-C brings it down" in line:
                break
        else:
            raise AssertionError(f"lab did not come up: {owner.wait()}")
        r = cli("exec", "h1", "--", "ping -c1 -W3 10.0.0.2")
        assert r.returncode == 0 and "1 received" in r.stdout, r.stdout + r.stderr
        r = cli("exec", "h2", "--", "cat", "/sys/class/net/eth0/address")
        st = json.loads(cli("status", "vst-hosts", "--json").stdout)
        h2 = next(n for n in st["nodes"] if n["name"] == "h2")
        assert r.stdout.strip() == h2["interfaces"][0]["mac"]
        r = cli("exec", "h1", "--", "ip route show 10.5.0.0/16")
        assert "via 10.0.0.2" in r.stdout, r.stdout
        assert cli("exec", "h1", "--", "exit 7").returncode == 7
        r = cli("down", str(f), timeout=60)
        assert r.returncode == 0 and "lab vst-hosts is down" in r.stdout, r.stdout + r.stderr
        assert owner.wait(timeout=30) == 0
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
            cli("down", "vst-hosts")
    assert not base.leftovers("vst-hosts", f), base.leftovers("vst-hosts", f)
