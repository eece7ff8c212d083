"""The lab file: switches, nodes (VMs and namespace hosts) and the links between them.

`load_lab(path)` returns a checked, resolved `LabSpec` or raises `ConfigError` with one line
per problem, `FILE: FIELD: problem (fix)`, like vswitch.config.  docs/lab.md documents it.

    name: star                     # optional: the file name without .yaml
    switches:
      sw1: {}                      # optional keys: datapath, mac_age, fdb_size, log_level
    nodes:
      vm1:
        type: vm                   # a QEMU guest (memory: MiB, default 128)
        interfaces:
          eth0: {addresses: [10.0.0.1/24, "fd00::1/64"]}
        routes:
          - {to: default, via: 10.0.0.254}
      h1:
        type: host                 # a network namespace attached through a TAP port
        interfaces:
          eth0: {addresses: [10.0.0.10/24]}
    links:
      - [vm1:eth0, sw1]            # node interface <-> switch
      - [h1, sw1]                  # `h1` alone means h1:eth0
      - [sw1, sw2]                 # switch <-> switch: a trunk
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from vswitch.config import DuplicateKey, StrictLoader
from vswitch.config.fields import (
    Address,
    LogLevel,
    Mtu,
    check_ifname,
    describe,
    iface_mac,
    int_in,
)
from vswitch.errors import ConfigError
from vswitch.limits import MAX_FDB_SIZE
from vswitch.mac import format_mac

__all__ = ["LabSpec", "Loc", "load_lab", "parse_lab"]

Loc = tuple[int | str, ...]
MAX_VMS = 64
_LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")
_VM_IF_RE = re.compile(r"^eth([0-9]|[1-9][0-9])$")
NAME_FIX = "use 1-15 characters from A-Z a-z 0-9 _ -, starting with a letter, e.g. vm1"


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise ValueError(f"{describe(v)} is not a valid name ({NAME_FIX})")
    return v


def _lab_name(v: Any) -> str:
    if not isinstance(v, str) or not _LAB_RE.match(v):
        raise ValueError(
            f"{describe(v)} is not a valid lab name "
            "(use 1-16 characters from A-Z a-z 0-9 _ -, e.g. star)"
        )
    return v


def _none_is_empty(v: Any) -> Any:
    return {} if v is None else v




class _M(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InterfaceSpec(_M):
    mac: Annotated[int | None, BeforeValidator(iface_mac)] = Field(
        default=None, examples=['"52:54:00:00:01:01"']
    )
    addresses: tuple[Address, ...] = Field(default=(), examples=["[10.0.0.1/24]"])
    mtu: Mtu = 1500


class RouteSpec(_M):
    to: str = Field(examples=["default"])
    via: str = Field(examples=["10.0.0.254"])

    @field_validator("to", mode="before")
    @classmethod
    def _to(cls, v: Any) -> str:
        fix = "write `default` or a network like 10.1.0.0/24 or fd01::/64"
        if v == "default":
            return v
        if not isinstance(v, str):
            raise ValueError(f"expected a destination, got {describe(v)} ({fix})")
        try:
            return str(ipaddress.ip_network(v.strip()))
        except ValueError as exc:
            if "host bits" in str(exc):
                net = ipaddress.ip_network(v.strip(), strict=False)
                raise ValueError(f"{v} has host bits set (write {net})") from None
            raise ValueError(f"{v!r} is not a network ({fix})") from None

    @field_validator("via", mode="before")
    @classmethod
    def _via(cls, v: Any) -> str:
        try:
            return str(ipaddress.ip_address(v.strip() if isinstance(v, str) else v))
        except (ValueError, TypeError):
            raise ValueError(
                f"{describe(v)} is not an IP address (write the gateway, e.g. 10.0.0.254)"
            ) from None


class NodeSpec(_M):
    type: Literal["vm", "host"] = Field(examples=["vm"])
    memory: Annotated[
        int | None,
        BeforeValidator(lambda v: None if v is None else int_in(64, 4096, "MiB, e.g. 128")(v)),
    ] = None
    interfaces: Annotated[
        dict[str, Annotated[InterfaceSpec, BeforeValidator(_none_is_empty)]],
        BeforeValidator(_none_is_empty),
    ] = Field(default_factory=dict, examples=["{eth0: {addresses: [10.0.0.1/24]}}"])
    routes: tuple[RouteSpec, ...] = ()


class SwitchSpec(_M):
    datapath: Literal["thread", "loop"] = "thread"
    mac_age: Annotated[int, BeforeValidator(int_in(0, 2**31 - 1, "seconds, 0 = never"))] = 300
    fdb_size: Annotated[int, BeforeValidator(int_in(16, MAX_FDB_SIZE, "e.g. 65536"))] = 65536
    log_level: Annotated[str, LogLevel] = "info"  # one of vswitch.logs.LEVELS


def _link(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return {"endpoints": v}
    if not isinstance(v, dict):
        raise ValueError(
            f"{describe(v)} is not a link (write [NODE:IFACE, SWITCH] or [SWITCH, SWITCH])"
        )
    return v


class LinkSpec(_M):
    endpoints: tuple[str, str] = Field(examples=["[vm1:eth0, sw1]"])
    mtu: Mtu | None = None  # trunks: default 1500; node links take the interface's mtu

    @field_validator("endpoints", mode="before")
    @classmethod
    def _two(cls, v: Any) -> Any:
        fix = "write a link as [NODE:IFACE, SWITCH] or [SWITCH, SWITCH]"
        if not isinstance(v, list | tuple) or len(v) != 2:
            raise ValueError(f"a link joins exactly two endpoints ({fix})")
        for e in v:
            if not isinstance(e, str) or not e.strip():
                raise ValueError(f"endpoint {describe(e)} is not a name ({fix})")
        return tuple(e.strip() for e in v)


class LabFile(_M):
    name: Annotated[str | None, BeforeValidator(lambda v: None if v is None else _lab_name(v))] = (
        None
    )
    switches: Annotated[
        dict[
            Annotated[str, BeforeValidator(_name)],
            Annotated[SwitchSpec, BeforeValidator(_none_is_empty)],
        ],
        BeforeValidator(_none_is_empty),
    ] = Field(examples=["{sw1: {}}"])
    nodes: dict[Annotated[str, BeforeValidator(_name)], NodeSpec] = Field(
        examples=["{vm1: {type: vm}}"]
    )
    links: tuple[Annotated[LinkSpec, BeforeValidator(_link)], ...] = Field(
        examples=["[[vm1:eth0, sw1]]"]
    )


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

    @property
    def taps(self) -> tuple[str, str]:
        return f"t{self.index}a", f"t{self.index}b"

    @property
    def bridge(self) -> str:
        return f"br{self.index}"


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


# --------------------------------------------------------------------------- checks


class _Problems(Exception):
    def __init__(self) -> None:
        self.items: list[tuple[Loc, str]] = []

    def add(self, loc: Loc, msg: str) -> None:
        self.items.append((loc, msg))


def _port_name(used: set[str], *parts: str) -> str:
    base = "-".join(parts)[:15]
    name, n = base, 1
    while name in used:
        n += 1
        name = f"{base[: 15 - len(str(n)) - 1]}-{n}"
    used.add(name)
    return name


def _resolve(f: LabFile, name: str, path: Path | None) -> LabSpec:
    p = _Problems()
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

    # Node interfaces as declared.
    ifspecs: dict[tuple[str, str], InterfaceSpec] = {}
    for nname, n in f.nodes.items():
        if n.type == "host" and n.memory is not None:
            p.add(("nodes", nname, "memory"), "memory applies to VMs only (remove it)")
        for iname, spec in n.interfaces.items():
            loc = ("nodes", nname, "interfaces", iname)
            if n.type == "vm" and not _VM_IF_RE.match(iname):
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

    # Links.
    linked: dict[tuple[str, str], tuple[str, int]] = {}  # (node, iface) -> (switch, link idx)
    trunks: list[Trunk] = []
    order: list[tuple[str, str, str, int | None, int]] = []  # node, iface, switch, mtu, idx
    for i, link in enumerate(f.links):
        loc = ("links", i)
        ends = []
        for e in link.endpoints:
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
        if any(k == "?" for k, _, _ in ends):
            continue
        kinds = sorted(k for k, _, _ in ends)
        if kinds == ["node", "node"]:
            p.add(loc, "two nodes cannot be cabled directly (link each to a switch)")
            continue
        if kinds == ["switch", "switch"]:
            a, b = ends[0][1], ends[1][1]
            if a == b:
                p.add(loc, f"a link from {a} to itself is a loop (remove it)")
                continue
            trunks.append(Trunk(len(trunks) + 1, a, b, link.mtu or 1500, link=i))
            continue
        (_, nname, iname), (_, sname, _) = sorted(ends, key=lambda x: x[0] != "node")
        key = (nname, iname)
        if key in linked:
            p.add(
                loc,
                f"{nname}:{iname} is already linked (links[{linked[key][1]}]); an "
                "interface has one link (add another interface)",
            )
            continue
        node = f.nodes[nname]
        if node.type == "vm" and not _VM_IF_RE.match(iname):
            p.add(loc, f"{nname}:{iname}: VM interfaces are named eth0, eth1, ... in NIC order")
            continue
        if node.type == "host":
            try:
                check_ifname(iname)
            except ValueError as exc:
                p.add(loc, f"{nname}:{iname}: {exc}")
                continue
        linked[key] = (sname, i)
        order.append((nname, iname, sname, link.mtu, i))

    # Loops among switches (the trunks): union-find.
    parent = {s: s for s in f.switches}

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
                f"the link {t.a} - {t.b} closes a loop {' - '.join(cycle)} (remove one of these "
                "links: loops are refused until the switch runs spanning tree)",
            )
            continue
        parent[ra] = rb
        adjacency[t.a].append(t.b)
        adjacency[t.b].append(t.a)

    for (nname, iname), _spec in ifspecs.items():
        if (nname, iname) not in linked:
            p.add(
                ("nodes", nname, "interfaces", iname),
                f"{nname}:{iname} is in no link (add a link like [{nname}:{iname}, SWITCH], "
                "or remove the interface)",
            )
    for nname in f.nodes:
        if not any(k[0] == nname for k in linked):
            p.add(
                ("nodes", nname), f"node {nname} is linked to no switch (add a link, or remove it)"
            )
    for sname in f.switches:
        if not any(s == sname for s, _ in linked.values()) and not any(
            sname in (t.a, t.b) for t in trunks
        ):
            p.add(
                ("switches", sname),
                f"switch {sname} has no links (link something to it, or remove it)",
            )

    # VM interfaces are contiguous: eth0..ethN in the order the guest sees its NICs.
    for nname, n in f.nodes.items():
        if n.type != "vm":
            continue
        nums = sorted(int(i[3:]) for (nn, i) in linked if nn == nname)
        if nums and nums != list(range(len(nums))):
            want = ", ".join(f"eth{k}" for k in range(len(nums)))
            have = ", ".join(f"eth{k}" for k in nums)
            p.add(
                ("nodes", nname),
                f"VM interfaces are {have}; a guest names its NICs {want} in order (rename them)",
            )

    # Build nodes with MACs, check addresses, routes.
    salt = zlib.crc32(name.encode()) & 0xFF
    nodes: dict[str, Node] = {}
    macs: dict[int, str] = {}
    ips: dict[str, str] = {}
    for idx, (nname, n) in enumerate(f.nodes.items()):
        names = sorted((i for (nn, i) in linked if nn == nname), key=_iface_key)
        ifaces = []
        for k, iname in enumerate(names):
            spec = ifspecs.get((nname, iname), InterfaceSpec())
            mac = (
                spec.mac
                if spec.mac is not None
                else (0x525400000000 | salt << 16 | ((idx + 1) & 0xFF) << 8 | k)
            )
            where = f"{nname}:{iname}"
            loc = ("nodes", nname, "interfaces", iname)
            if mac in macs:
                p.add(
                    (*loc, "mac"),
                    f"{format_mac(mac)} is already used by {macs[mac]} "
                    "(give each interface its own MAC)",
                )
            macs.setdefault(mac, where)
            for a in spec.addresses:
                ip = a.split("/")[0]
                if ip in ips:
                    p.add(
                        (*loc, "addresses"),
                        f"{ip} is already used by {ips[ip]} (give each interface its own address)",
                    )
                ips.setdefault(ip, where)
            ifaces.append(Iface(nname, iname, mac, spec.addresses, spec.mtu))
        nets = [ipaddress.ip_interface(a).network for i in ifaces for a in i.addresses]
        defaults: set[int] = set()
        routes = []
        for j, r in enumerate(n.routes):
            loc = ("nodes", nname, "routes", j)
            via = ipaddress.ip_address(r.via)
            if r.to != "default" and ipaddress.ip_network(r.to).version != via.version:
                p.add(
                    loc,
                    f"to {r.to} via {r.via} mixes IPv4 and IPv6 (use a gateway of the same family)",
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
        nodes[nname] = Node(nname, n.type, n.memory or 128, ifaces, routes)

    if p.items:
        raise p

    # Switch ports.
    switches = {s: Switch(s, spec) for s, spec in f.switches.items()}
    used: dict[str, set[str]] = {s: set() for s in switches}
    for nname, iname, sname, mtu, _ in order:
        iface = next(i for i in nodes[nname].ifaces if i.name == iname)
        if mtu is not None:
            iface.mtu = mtu
        iface.switch = sname
        iface.port = _port_name(used[sname], nname, iname)
        switches[sname].ports.append(iface.port)
    for t in trunks:
        t.port_a = _port_name(used[t.a], "to", t.b)
        t.port_b = _port_name(used[t.b], "to", t.a)
        switches[t.a].ports.append(t.port_a)
        switches[t.b].ports.append(t.port_b)
    return LabSpec(name, path, switches, nodes, trunks)


def _iface_key(name: str) -> tuple[int, str]:
    m = _VM_IF_RE.match(name)
    return (int(m.group(1)), "") if m else (1 << 20, name)


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


# --------------------------------------------------------------------------- errors


def _loc_text(loc: Loc) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_MODELS: dict[str, type[_M]] = {
    "": LabFile,
    "switches": SwitchSpec,
    "nodes": NodeSpec,
    "interfaces": InterfaceSpec,
    "routes": RouteSpec,
    "links": LinkSpec,
}


def _owner(loc: Loc) -> type[_M] | None:
    """The model that owns the last key of loc (for `unknown key` and `missing` hints)."""
    parents = [p for p in loc[:-1] if isinstance(p, str) and p in _MODELS]
    if len(loc) == 1:
        return LabFile
    return _MODELS.get(parents[-1]) if parents else None


def _convert(exc: ValidationError) -> list[str]:
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if p not in ("[key]", "function-before[_link()]"))
        if err["loc"] and err["loc"][-1] == "[key]":
            loc = (*loc[:-1], loc[-1]) if loc else loc
        kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
        key = str(loc[-1]) if loc else ""
        model = _owner(loc)
        if kind == "value_error":
            text = str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
        elif kind == "extra_forbidden":
            known = sorted(model.model_fields) if model else []
            text = f"unknown key (known keys here: {', '.join(known)})"
        elif kind == "missing":
            f = model.model_fields.get(key) if model else None
            example = f"{key}: {f.examples[0]}" if f and f.examples else f"{key}: ..."
            text = f"required key is missing (add `{example}`)"
        elif kind == "literal_error":
            text = f"{describe(value)} is not allowed (use one of {ctx.get('expected')})"
        elif kind in ("model_type", "model_attributes_type", "dict_type"):
            text = (
                f"expected a mapping of `key: value` lines, got {describe(value)} "
                "(see docs/lab.md)"
            )
        elif kind in ("tuple_type", "list_type"):
            text = f"expected a list, got {describe(value)} (write `- item` lines or [a, b])"
        elif kind == "string_type":
            text = f"expected a string, got {describe(value)}"
        else:
            text = f"{err['msg']} (see docs/lab.md)"
        lines.append(f"{_loc_text(loc)}: {text}" if loc else text)
    return list(dict.fromkeys(lines))


def parse_lab(data: Any, *, name: str = "lab", path: Path | None = None) -> LabSpec:
    """Validate parsed YAML into a LabSpec; ConfigError (one line per problem) otherwise."""
    if data is None:
        raise ConfigError(f"{name}: the file is empty (see configs/labs/two-vms.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: the top level is {describe(data)}, not a mapping "
            "(start with `switches:`; see configs/labs/two-vms.yaml)"
        )
    try:
        f = LabFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{name}: {line}" for line in _convert(exc))) from None
    lab_name = f.name
    if lab_name is None:
        stem = path.stem if path is not None else ""
        try:
            lab_name = _lab_name(stem)
        except ValueError:
            raise ConfigError(
                f"{name}: name: the file name {stem!r} is no valid lab name (add `name: mylab`: "
                "1-16 characters from A-Z a-z 0-9 _ -)"
            ) from None
    try:
        return _resolve(f, lab_name, path)
    except _Problems as p:
        raise ConfigError(
            "\n".join(f"{name}: {_loc_text(loc)}: {m}" for loc, m in p.items)
        ) from None


def load_lab(path: str | Path) -> LabSpec:
    """Read and check a lab file (YAML).  Blocking."""
    name = str(path)
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(
            f"{name}: cannot read the file: {exc.strerror} (check the path)"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: byte {exc.start}: not valid UTF-8 (save it as UTF-8)") from None
    try:
        data = yaml.load(text, Loader=StrictLoader)  # a SafeLoader refusing duplicate keys
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        fix = "" if isinstance(exc, DuplicateKey) else " (fix the YAML there)"
        raise ConfigError(f"{name}: {where}{exc.problem}{fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: YAML error: {exc} (fix the YAML)") from None
    return parse_lab(data, name=name, path=path.absolute())
