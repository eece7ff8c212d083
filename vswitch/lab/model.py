"""The lab file as written: switches, nodes (VMs and namespace hosts) and the links between
them, checked key by key (pydantic).  topology.py resolves a checked file into a LabSpec;
loader.py reads the file and renders the problems.  docs/lab.md documents it.

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
      - {endpoints: [sw2, sw3], via: vxlan}   # a trunk that is a VXLAN tunnel
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from vswitch.config.fields import Address, LogLevel, Mtu, describe, iface_mac, int_in
from vswitch.limits import MAX_FDB_SIZE

__all__ = [
    "MODELS",
    "VM_IFACE_RE",
    "InterfaceSpec",
    "LabFile",
    "LinkSpec",
    "NodeSpec",
    "RouteSpec",
    "SwitchSpec",
    "lab_name",
]

_LAB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,15}$")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,14}$")
VM_IFACE_RE = re.compile(r"^eth([0-9]|[1-9][0-9])$")  # a guest's NICs, in order
NAME_FIX = "use 1-15 characters from A-Z a-z 0-9 _ -, starting with a letter, e.g. vm1"


def _name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise ValueError(f"{describe(v)} is not a valid name ({NAME_FIX})")
    return v


def lab_name(v: Any) -> str:
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
    # trunks: a kernel bridge between TAP ports (tap), or a VXLAN tunnel (vxlan)
    via: Literal["tap", "vxlan"] = "tap"

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
    name: Annotated[str | None, BeforeValidator(lambda v: None if v is None else lab_name(v))] = (
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


# The model that owns the keys under each key of the file (for `unknown key` and `missing`
# hints): loader.py renders pydantic's errors with it.
MODELS: dict[str, type[BaseModel]] = {
    "": LabFile,
    "switches": SwitchSpec,
    "nodes": NodeSpec,
    "interfaces": InterfaceSpec,
    "routes": RouteSpec,
    "links": LinkSpec,
}
