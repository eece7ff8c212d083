"""What `lab status` shows, piece by piece: the switches with their ports, the nodes with
their interfaces and link state, the trunks."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vswitch.lab.errors import LabError
from vswitch.lab.guest import Guest, GuestError
from vswitch.lab.server import switch_call
from vswitch.lab.topology import LabSpec, Node
from vswitch.mac import format_mac
from vswitch.netsys.netns import netns_exists

PortStates = dict[tuple[str, str], str]  # (switch, port) -> the port's state


async def switches_status(
    spec: LabSpec,
    procs: dict[str, asyncio.subprocess.Process],
    control_path: Callable[[str], Path],
) -> tuple[list[dict[str, Any]], PortStates]:
    """Each switch (pid, control socket, running or not, its ports), and its ports' states."""
    switches = []
    port_state: PortStates = {}
    for sw in spec.switches:
        proc = procs.get(sw)
        entry: dict[str, Any] = {
            "name": sw,
            "pid": proc.pid if proc else None,
            "control": str(control_path(sw)),
            "state": "running" if proc and proc.returncode is None else "stopped",
            "ports": [],
        }
        if entry["state"] == "running":
            with contextlib.suppress(OSError, LabError):
                for p in await switch_call(control_path(sw), "ports", wait=5):
                    port_state[(sw, p["name"])] = p["state"]
                    entry["ports"].append(
                        {"name": p["name"], "type": p["type"], "state": p["state"]}
                    )
        switches.append(entry)
    return switches, port_state


async def _node_state(spec: LabSpec, guests: dict[str, Guest], n: Node) -> str:
    if n.type == "host":
        return "up" if netns_exists(spec.node_netns(n.name)) else "gone"
    g = guests.get(n.name)
    if g is None or not g.running:
        return "stopped"
    try:
        await g.exec("true", timeout=5)
        return "up"
    except GuestError:
        return "not answering"


async def nodes_status(
    spec: LabSpec, guests: dict[str, Guest], port_state: PortStates
) -> list[dict[str, Any]]:
    """Each node: answering or not, where it runs, its interfaces with their link state."""
    states = await asyncio.gather(*(_node_state(spec, guests, n) for n in spec.nodes.values()))
    nodes = []
    for n, st in zip(spec.nodes.values(), states, strict=True):
        g = guests.get(n.name)
        nodes.append(
            {
                "name": n.name,
                "type": n.type,
                "state": st,
                "pid": g.pid if g else None,
                "netns": spec.node_netns(n.name) if n.type == "host" else None,
                "memory": n.memory if n.type == "vm" else None,
                "interfaces": [
                    {
                        "name": i.name,
                        "mac": format_mac(i.mac),
                        "addresses": list(i.addresses),
                        "switch": i.switch,
                        "port": i.port,
                        "link": port_state.get((i.switch, i.port), "unknown"),
                    }
                    for i in n.ifaces
                ],
                "routes": [{"to": to, "via": via} for to, via in n.routes],
            }
        )
    return nodes


def trunks_status(spec: LabSpec, port_state: PortStates) -> list[dict[str, Any]]:
    """Each trunk: up when the ports at both ends are."""
    return [
        {
            "a": t.a,
            "b": t.b,
            "via": t.via,
            "bridge": t.bridge if t.via == "tap" else None,
            **({"vni": t.vni} if t.via == "vxlan" else {}),
            "netns": spec.trunk_netns,
            "state": "up"
            if port_state.get((t.a, t.port_a)) == port_state.get((t.b, t.port_b)) == "up"
            else "down",
        }
        for t in spec.trunks
    ]
