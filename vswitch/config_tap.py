"""The `type: tap` port model (see docs/lab.md, "TAP ports").

Kept in its own module so that vswitch.config can import it for the port union; the field
checks it shares with vswitch.config are looked up when a value is validated (by then both
modules are loaded), so neither import waits for the other.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

__all__ = ["TapPort", "check_ifname", "check_netns_name"]

MIN_MTU, MAX_MTU = 68, 9000  # VS_MIN_MTU, VS_MAX_MTU
DEFAULT_MAC_LIMIT = 4096  # as vswitch.config.DEFAULT_MAC_LIMIT
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1, no '/', ':' or blanks
_NETNS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def _config() -> Any:
    from vswitch import config  # late: vswitch.config imports this module

    return config


def check_ifname(v: Any) -> str:
    if not isinstance(v, str) or not _IFNAME_RE.match(v) or v in (".", ".."):
        raise ValueError(
            f"{_config()._describe(v)} is not a valid interface name "
            "(use 1-15 characters from A-Z a-z 0-9 _ . -, e.g. tap0)"
        )
    return v


def check_netns_name(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _NETNS_RE.match(v):
        raise ValueError(
            f"{_config()._describe(v)} is not a valid network namespace name "
            "(use 1-64 characters from A-Z a-z 0-9 _ . -, not starting with . or -, e.g. h1)"
        )
    return v


def _port_name(v: Any) -> str:
    return _config()._port_name(v)


def _mtu(v: Any) -> int:
    return _config()._int_in(MIN_MTU, MAX_MTU, "e.g. 1500")(v)


def _mac_limit(v: Any) -> int:
    return _config()._int_in(0, 16 * 2**20, "0 = no limit, e.g. 4096")(v)


def _mac(v: Any) -> int | None:
    if v is None:
        return None
    try:
        return _config()._mac(v)
    except ValueError as exc:
        raise ValueError(
            str(exc).replace("can be static", "can be an interface's address")
        ) from None


def _static_mac(v: Any) -> int:
    return _config()._mac(v)


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {_config()._describe(v)} (write up: true)")
    return v


def check_address(v: Any) -> str:
    """'10.0.0.1/24' or 'fd00::1/64' -> the same, normalised; an address needs its prefix."""
    fix = "write it with its prefix length, e.g. 10.0.0.1/24 or fd00::1/64"
    if not isinstance(v, str) or "/" not in v:
        raise ValueError(f"{_config()._describe(v)} is not an address with a prefix ({fix})")
    try:
        iface = ipaddress.ip_interface(v.strip())
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 or IPv6 address with a prefix ({fix})") from None
    ip, net = iface.ip, iface.network
    broadcast = ip.version == 4 and net.prefixlen < 31 and ip == net.broadcast_address
    if ip.is_multicast or ip.is_unspecified or broadcast:
        raise ValueError(f"{v} cannot be an interface address (give a unicast host address)")
    return str(iface)


Address = Annotated[str, BeforeValidator(check_address)]


def _unique_addresses(addrs: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for a in addrs:
        ip = a.split("/")[0]
        if ip in seen:
            raise ValueError(f"{ip} is given twice (keep one)")
        seen.add(ip)
    return addrs


class TapPort(BaseModel):
    """A port whose peer is the kernel: a TAP interface, optionally in a network namespace.

    When `ifname` does not exist, the switch creates it (IFF_TAP|IFF_NO_PI) in `netns`
    (creating the namespace if needed), applies mtu, mac, addresses and `up`, and removes
    both when the port stops.  An existing persistent tap of that name is attached and left
    in place when the port stops."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, BeforeValidator(_port_name)] = Field(examples=["h1"])
    type: Literal["tap"] = Field(examples=["tap"])
    ifname: Annotated[str, BeforeValidator(check_ifname)] = Field(default="", examples=["tap0"])
    netns: Annotated[str | None, BeforeValidator(check_netns_name)] = Field(
        default=None, examples=["h1"]
    )
    mtu: Annotated[int, BeforeValidator(_mtu)] = 1500
    mac: Annotated[int | None, BeforeValidator(_mac)] = Field(
        default=None, examples=['"52:54:00:00:10:01"']
    )  # the interface's own address (48-bit int); the kernel picks one when absent
    addresses: Annotated[tuple[Address, ...], AfterValidator(_unique_addresses)] = Field(
        default=(), examples=["[10.0.0.10/24, fd00::10/64]"]
    )
    up: Annotated[bool, BeforeValidator(_bool)] = True
    mac_limit: Annotated[int, BeforeValidator(_mac_limit)] = DEFAULT_MAC_LIMIT
    static_macs: tuple[Annotated[int, BeforeValidator(_static_mac)], ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _default_ifname(cls, data: Any) -> Any:
        # ifname defaults to the port name (both are 1-15 characters).
        if isinstance(data, dict) and "ifname" not in data and isinstance(data.get("name"), str):
            data = {**data, "ifname": data["name"]}
        return data

    @property
    def socket_paths(self) -> tuple[Path, ...]:
        return ()

    @property
    def where(self) -> str:
        """'tap0' or 'tap0 in netns h1', for messages."""
        return f"{self.ifname} in netns {self.netns}" if self.netns else self.ifname
