"""A lab's topology: the checked lab file resolved into nodes with their interfaces, MACs,
addresses and routes, switches with their ports, and trunks (`resolve` -> LabSpec).

Resolution finds what no single key shows: unknown or doubly linked endpoints, loops of
trunks, unlinked interfaces, nodes and switches, VM interfaces out of order, MACs and addresses
used twice, gateways outside a node's subnets.  It reports every problem at its place in the
file (`Problems`, rendered by loader.py) before it names a single port.
"""

from __future__ import annotations

import ipaddress
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from vswitch.config.fields import check_ifname
from vswitch.config.model import Loc, Problems
from vswitch.lab.model import VM_IFACE_RE, InterfaceSpec, LabFile, NodeSpec, SwitchSpec
from vswitch.mac import format_mac

__all__ = ["MAX_VMS", "Iface", "LabSpec", "Node", "Switch", "Trunk", "resolve"]

MAX_VMS = 64


# --------------------------------------------------------------------------- resolved lab


@dataclass
class Iface:
    """One node interface and the switch port it is linked to."""

    node: str
    name: str  # eth0 ...
    mac: int
    addresses: tuple[str, ...]
    mtu: int
    switch: str = ""
    port: str = ""  # the switch's port name


@dataclass
class Node:
    name: str
    type: str  # vm | host
    memory: int
    ifaces: list[Iface]
    routes: list[tuple[str, str]]  # (to, via)

    @property
    def addresses(self) -> list[str]:
        return [a for i in self.ifaces for a in i.addresses]


@dataclass
class Trunk:
    index: int
    a: str  # switch names
    b: str
    mtu: int
    port_a: str = ""  # port names on a and b
    port_b: str = ""
    link: int = 0  # index in the file's links
    via: str = "tap"  # tap: TAP ports joined by a bridge; vxlan: VXLAN ports

    @property
    def taps(self) -> tuple[str, str]:
        return f"t{self.index}a", f"t{self.index}b"

    @property
    def bridge(self) -> str:
        return f"br{self.index}"

    @property
    def vni(self) -> int:
        return self.index

    @property
    def vteps(self) -> tuple[str, str]:
        """A VXLAN trunk's underlay addresses, on the trunk namespace's loopback (127/8)."""
        return f"127.42.{self.index}.1", f"127.42.{self.index}.2"


@dataclass
class Switch:
    name: str
    spec: SwitchSpec
    ports: list[str] = field(default_factory=list)


@dataclass
class LabSpec:
    name: str
    file: Path | None
    switches: dict[str, Switch]
    nodes: dict[str, Node]
    trunks: list[Trunk]

    @property
    def vms(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.type == "vm"]

    @property
    def hosts(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.type == "host"]

    def node_netns(self, node: str) -> str:
        return f"{self.name}.{node}"

    @property
    def trunk_netns(self) -> str:
        return f"{self.name}._trunk"  # node names cannot start with _

    @property
    def netns(self) -> list[str]:
        out = [self.node_netns(h.name) for h in self.hosts]
        return out + ([self.trunk_netns] if self.trunks else [])


# --------------------------------------------------------------------------- resolution


class Found(list[tuple[Loc, str]]):
    """The problems found so far, in the order they are reported."""

    def add(self, loc: Loc, msg: str) -> None:
        self.append((loc, msg))


@dataclass
class _Links:
    """The file's links, sorted out: node interfaces to switches, and trunks."""

    linked: dict[tuple[str, str], tuple[str, int]] = field(default_factory=dict)
    # ^ (node, iface) -> (switch, link index)
    order: list[tuple[str, str, str, int | None]] = field(default_factory=list)
    # ^ node, iface, switch, mtu: in the order of the file, for port names
    trunks: list[Trunk] = field(default_factory=list)


def resolve(f: LabFile, name: str, path: Path | None) -> LabSpec:
    """The LabSpec of a checked lab file; Problems (each at its location) otherwise."""
    p = Found()
    _check_names(f, p)
    ifspecs = _declared_interfaces(f, p)
    links = _Links()
    for i in range(len(f.links)):
        _add_link(f, i, links, p)
    _check_loops(f, links.trunks, p)
    _check_unlinked(f, ifspecs, links, p)
    _check_vm_order(f, links, p)
    nodes = _build_nodes(f, name, ifspecs, links, p)
    if p:
        raise Problems(p)
    switches = _assign_ports(f, nodes, links)
    return LabSpec(name, path, switches, nodes, links.trunks)


def _check_names(f: LabFile, p: Found) -> None:
    """Switch names apart from node names; at least one of each; not too many VMs."""
    for sw in f.switches:
        if sw in f.nodes:
            p.add(("switches", sw), f"{sw!r} is also a node name (give each its own name)")
    if not f.nodes:
        p.add(("nodes",), "no nodes (add at least one vm or host)")
    if not f.switches:
        p.add(("switches",), "no switches (add one, e.g. `switches: {sw1: {}}`)")
    n_vms = sum(1 for n in f.nodes.values() if n.type == "vm")
    if n_vms > MAX_VMS:
        p.add(("nodes",), f"{n_vms} VMs (at most {MAX_VMS} per lab)")


def _declared_interfaces(f: LabFile, p: Found) -> dict[tuple[str, str], InterfaceSpec]:
    """The node interfaces as the file declares them, by (node, iface), if well named."""
    ifspecs: dict[tuple[str, str], InterfaceSpec] = {}
    for nname, n in f.nodes.items():
        if n.type == "host" and n.memory is not None:
            p.add(("nodes", nname, "memory"), "memory applies to VMs only (remove it)")
        for iname, spec in n.interfaces.items():
            loc = ("nodes", nname, "interfaces", iname)
            if n.type == "vm" and not VM_IFACE_RE.match(iname):
                p.add(
                    loc, f"VM interfaces are named eth0, eth1, ... in NIC order ({iname!r} is not)"
                )
                continue
            try:
                check_ifname(iname)
                if iname == "lo":
                    raise ValueError("lo is the loopback interface (choose another name)")
            except ValueError as exc:
                p.add(loc, str(exc))
                continue
            ifspecs[(nname, iname)] = spec
    return ifspecs


def _endpoints(f: LabFile, i: int, p: Found) -> list[tuple[str, str, str]] | None:
    """links[i]'s two ends as (kind, name, iface): ("switch", sw, "") or ("node", n, iface);
    None when one names nothing the file has."""
    loc = ("links", i)
    ends = []
    for e in f.links[i].endpoints:
        obj, _, iface = e.partition(":")
        if obj in f.switches:
            if iface:
                p.add(loc, f"{e}: a switch endpoint takes no interface (write {obj})")
            ends.append(("switch", obj, ""))
        elif obj in f.nodes:
            ends.append(("node", obj, iface or "eth0"))
        else:
            known = ", ".join(dict.fromkeys([*f.switches, *f.nodes])) or "none"
            p.add(loc, f"unknown node or switch {obj!r} (known: {known})")
            ends.append(("?", obj, iface))
    return None if any(k == "?" for k, _, _ in ends) else ends


def _add_link(f: LabFile, i: int, links: _Links, p: Found) -> None:
    """links[i]: a trunk between two switches, or a node interface's one link to a switch."""
    loc = ("links", i)
    link = f.links[i]
    ends = _endpoints(f, i, p)
    if ends is None:
        return
    kinds = sorted(k for k, _, _ in ends)
    if kinds == ["node", "node"]:
        p.add(loc, "two nodes cannot be cabled directly (link each to a switch)")
        return
    if kinds == ["switch", "switch"]:
        a, b = ends[0][1], ends[1][1]
        if a == b:
            p.add(loc, f"a link from {a} to itself is a loop (remove it)")
            return
        n = len(links.trunks) + 1
        links.trunks.append(Trunk(n, a, b, link.mtu or 1500, link=i, via=link.via))
        return
    if link.via != "tap":
        p.add((*loc, "via"), "via: vxlan is for a link between two switches (remove it here)")
        return
    (_, nname, iname), (_, sname, _) = sorted(ends, key=lambda x: x[0] != "node")
    key = (nname, iname)
    if key in links.linked:
        p.add(
            loc,
            f"{nname}:{iname} is already linked (links[{links.linked[key][1]}]); an "
            "interface has one link (add another interface)",
        )
        return
    node = f.nodes[nname]
    if node.type == "vm" and not VM_IFACE_RE.match(iname):
        p.add(loc, f"{nname}:{iname}: VM interfaces are named eth0, eth1, ... in NIC order")
        return
    if node.type == "host":
        try:
            check_ifname(iname)
        except ValueError as exc:
            p.add(loc, f"{nname}:{iname}: {exc}")
            return
    links.linked[key] = (sname, i)
    links.order.append((nname, iname, sname, link.mtu))


def _check_loops(f: LabFile, trunks: list[Trunk], p: Found) -> None:
    """Trunks form a forest: a trunk closing a cycle is refused, naming the cycle."""
    parent = {s: s for s in f.switches}  # union-find

    def root(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    adjacency: dict[str, list[str]] = {s: [] for s in f.switches}
    for t in trunks:
        ra, rb = root(t.a), root(t.b)
        if ra == rb:
            cycle = [*_path(adjacency, t.a, t.b), t.a]
            p.add(
                ("links", t.link),
                f"the link {t.a} - {t.b} closes a loop {' - '.join(cycle)} (remove one of "
                "these links: loops are refused until the switch runs spanning tree)",
            )
            continue
        parent[ra] = rb
        adjacency[t.a].append(t.b)
        adjacency[t.b].append(t.a)


def _path(adj: dict[str, list[str]], a: str, b: str) -> list[str]:
    """A path from a to b in a forest (breadth first)."""
    prev: dict[str, str | None] = {a: None}
    queue = [a]
    while queue:
        cur = queue.pop(0)
        if cur == b:
            break
        for nxt in adj[cur]:
            if nxt not in prev:
                prev[nxt] = cur
                queue.append(nxt)
    out: list[str] = []
    node: str | None = b
    while node is not None:
        out.append(node)
        node = prev.get(node)
    return out[::-1]


def _check_unlinked(
    f: LabFile, ifspecs: dict[tuple[str, str], InterfaceSpec], links: _Links, p: Found
) -> None:
    """Every declared interface is in a link, every node and every switch in one at least."""
    for nname, iname in ifspecs:
        if (nname, iname) not in links.linked:
            p.add(
                ("nodes", nname, "interfaces", iname),
                f"{nname}:{iname} is in no link (add a link like [{nname}:{iname}, SWITCH], "
                "or remove the interface)",
            )
    for nname in f.nodes:
        if not any(k[0] == nname for k in links.linked):
            p.add(
                ("nodes", nname), f"node {nname} is linked to no switch (add a link, or remove it)"
            )
    for sname in f.switches:
        if not any(s == sname for s, _ in links.linked.values()) and not any(
            sname in (t.a, t.b) for t in links.trunks
        ):
            p.add(
                ("switches", sname),
                f"switch {sname} has no links (link something to it, or remove it)",
            )


def _check_vm_order(f: LabFile, links: _Links, p: Found) -> None:
    """VM interfaces are contiguous: eth0..ethN in the order the guest sees its NICs."""
    for nname, n in f.nodes.items():
        if n.type != "vm":
            continue
        nums = sorted(int(i[3:]) for (nn, i) in links.linked if nn == nname)
        if nums and nums != list(range(len(nums))):
            want = ", ".join(f"eth{k}" for k in range(len(nums)))
            have = ", ".join(f"eth{k}" for k in nums)
            p.add(
                ("nodes", nname),
                f"VM interfaces are {have}; a guest names its NICs {want} in order (rename them)",
            )


def _build_nodes(
    f: LabFile,
    name: str,
    ifspecs: dict[tuple[str, str], InterfaceSpec],
    links: _Links,
    p: Found,
) -> dict[str, Node]:
    """Each node with its linked interfaces (MACs derived from the lab name where the file
    gives none) and its routes; MACs and addresses unique across the lab."""
    salt = zlib.crc32(name.encode()) & 0xFF
    nodes: dict[str, Node] = {}
    macs: dict[int, str] = {}  # -> node:iface that has it
    ips: dict[str, str] = {}
    for idx, (nname, n) in enumerate(f.nodes.items()):
        names = sorted((i for (nn, i) in links.linked if nn == nname), key=_iface_key)
        ifaces = []
        for k, iname in enumerate(names):
            spec = ifspecs.get((nname, iname), InterfaceSpec())
            mac = (
                spec.mac
                if spec.mac is not None
                else (0x525400000000 | salt << 16 | ((idx + 1) & 0xFF) << 8 | k)
            )
            _claim_unique(nname, iname, mac, spec.addresses, macs, ips, p)
            ifaces.append(Iface(nname, iname, mac, spec.addresses, spec.mtu))
        routes = _routes(nname, n, ifaces, p)
        nodes[nname] = Node(nname, n.type, n.memory or 128, ifaces, routes)
    return nodes


def _claim_unique(
    nname: str,
    iname: str,
    mac: int,
    addresses: tuple[str, ...],
    macs: dict[int, str],
    ips: dict[str, str],
    p: Found,
) -> None:
    """Record the interface's MAC and addresses; report those another interface has."""
    where = f"{nname}:{iname}"
    loc = ("nodes", nname, "interfaces", iname)
    if mac in macs:
        p.add(
            (*loc, "mac"),
            f"{format_mac(mac)} is already used by {macs[mac]} (give each interface its own MAC)",
        )
    macs.setdefault(mac, where)
    for a in addresses:
        ip = a.split("/")[0]
        if ip in ips:
            p.add(
                (*loc, "addresses"),
                f"{ip} is already used by {ips[ip]} (give each interface its own address)",
            )
        ips.setdefault(ip, where)


def _routes(nname: str, n: NodeSpec, ifaces: list[Iface], p: Found) -> list[tuple[str, str]]:
    """The node's routes, each via a gateway in one of its subnets; one default per family."""
    nets = [ipaddress.ip_interface(a).network for i in ifaces for a in i.addresses]
    defaults: set[int] = set()
    routes = []
    for j, r in enumerate(n.routes):
        loc = ("nodes", nname, "routes", j)
        via = ipaddress.ip_address(r.via)
        if r.to != "default" and ipaddress.ip_network(r.to).version != via.version:
            p.add(
                loc, f"to {r.to} via {r.via} mixes IPv4 and IPv6 (use a gateway of the same family)"
            )
            continue
        if not any(via in net for net in nets):
            p.add(
                (*loc, "via"),
                f"{r.via} is in no subnet of {nname}'s addresses (add an "
                "address in its subnet, or fix via)",
            )
            continue
        if r.to == "default":
            if via.version in defaults:
                p.add(loc, f"a second IPv{via.version} default route (keep one)")
                continue
            defaults.add(via.version)
        routes.append((r.to, r.via))
    return routes


def _iface_key(name: str) -> tuple[int, str]:
    m = VM_IFACE_RE.match(name)
    return (int(m.group(1)), "") if m else (1 << 20, name)


def _assign_ports(f: LabFile, nodes: dict[str, Node], links: _Links) -> dict[str, Switch]:
    """Name the switch ports: NODE-IFACE for a node's link, to-SWITCH for a trunk (15
    characters at most, numbered when two would clash); the link's MTU where it sets one."""
    switches = {s: Switch(s, spec) for s, spec in f.switches.items()}
    used: dict[str, set[str]] = {s: set() for s in switches}
    for nname, iname, sname, mtu in links.order:
        iface = next(i for i in nodes[nname].ifaces if i.name == iname)
        if mtu is not None:
            iface.mtu = mtu
        iface.switch = sname
        iface.port = _port_name(used[sname], nname, iname)
        switches[sname].ports.append(iface.port)
    for t in links.trunks:
        t.port_a = _port_name(used[t.a], "to", t.b)
        t.port_b = _port_name(used[t.b], "to", t.a)
        switches[t.a].ports.append(t.port_a)
        switches[t.b].ports.append(t.port_b)
    return switches


def _port_name(used: set[str], *parts: str) -> str:
    base = "-".join(parts)[:15]
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base[: 15 - len(str(n)) - 1]}-{n}"
    used.add(name)
    return name
