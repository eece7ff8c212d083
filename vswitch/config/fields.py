"""Field checks shared by every configuration model (the switch's and the lab's).

Each check takes the raw YAML value and returns the clean one, or raises ValueError with a
message that says what was wrong and what to write instead.
"""

from __future__ import annotations

import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, ValidationInfo

from vswitch.limits import MAX_FDB_SIZE, MAX_MTU, MAX_QUEUE_PAIRS, MIN_MTU
from vswitch.logs import LEVELS
from vswitch.mac import MAC_FIX, parse_static_mac

MAX_SUN_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")  # IFNAMSIZ - 1, no '/', ':' or blanks
_NETNS_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


def describe(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, int | float):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def int_in(lo: int, hi: int, fix: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {describe(v)} ({fix})")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range {lo}..{hi} ({fix})")
        return v

    return check


def file_mode(v: Any) -> int:
    fix = 'write it as a quoted octal string, e.g. "0660"'
    if isinstance(v, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", v.strip()):
        mode = int(v.strip().removeprefix("0o") or "0", 8)
    elif isinstance(v, int) and not isinstance(v, bool):
        mode = v
    else:
        raise ValueError(f"expected a file mode, got {describe(v)} ({fix})")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{v!r} is octal {mode:o}: bits beyond rwxrwxrwx ({fix})")
    if mode & 0o002:
        raise ValueError(
            f"mode {mode:04o} is world-writable: any local user could connect to the socket and "
            "control the switch or its guests (drop the o+w bit, e.g. 0660, and share with `group`)"
        )
    return mode


def socket_path(v: Any, info: ValidationInfo) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"expected a path, got {describe(v)} (write e.g. /run/vswitch/vm1.sock)")
    if "\0" in v:
        raise ValueError("path contains a NUL byte (remove it)")
    base = (info.context or {}).get("base_dir") or Path.cwd()
    path = Path(os.path.abspath(Path(base) / Path(v).expanduser()))
    if len(os.fsencode(path)) > MAX_SUN_PATH:
        raise ValueError(
            f"{path} is {len(os.fsencode(path))} bytes long; unix socket paths are limited to "
            f"{MAX_SUN_PATH} (use a shorter path)"
        )
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist (create it, or fix the path)")
    return path


def port_name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise ValueError(
            f"{describe(v)} is not a valid port name "
            "(use 1-15 characters from A-Z a-z 0-9 _ . -, e.g. vm1)"
        )
    return v


def id_lookup(kind: str) -> Callable[[Any], int | None]:
    lookup = pwd.getpwnam if kind == "user" else grp.getgrnam

    def check(v: Any) -> int | None:
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        if isinstance(v, str) and v.isdigit():
            return int(v)
        if not isinstance(v, str) or not v:
            raise ValueError(f"expected a {kind} name or id, got {describe(v)}")
        try:
            entry = lookup(v)
        except KeyError:
            raise ValueError(
                f"unknown {kind} {v!r} (create it, or give an existing {kind} name or numeric id)"
            ) from None
        return entry.pw_uid if isinstance(entry, pwd.struct_passwd) else entry.gr_gid

    return check


def static_mac(v: Any) -> int:
    if not isinstance(v, str):
        raise ValueError(f"expected a MAC address, got {describe(v)} ({MAC_FIX})")
    return parse_static_mac(v)


def log_level(v: Any) -> str:
    if isinstance(v, str) and v.lower() in LEVELS:
        return v.lower()
    raise ValueError(f"{describe(v)} is not a log level (use one of {', '.join(LEVELS)})")


def listen_addr(v: Any) -> str:
    """HOST:PORT with an IPv4 address, [IPv6] or a host name; port 0 picks a free one."""
    fix = 'write HOST:PORT, e.g. "127.0.0.1:9400" or "[::1]:9400"'
    if not isinstance(v, str):
        raise ValueError(f"expected HOST:PORT, got {describe(v)} ({fix})")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", v.strip())
    if not m:
        raise ValueError(f"{v!r} is not HOST:PORT ({fix})")
    host, port = m.group(1), int(m.group(2))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535 ({fix})")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address ({fix})") from None
    return f"{host}:{port}"


def check_ifname(v: Any) -> str:
    if not isinstance(v, str) or not _IFNAME_RE.match(v) or v in (".", ".."):
        raise ValueError(
            f"{describe(v)} is not a valid interface name "
            "(use 1-15 characters from A-Z a-z 0-9 _ . -, e.g. tap0)"
        )
    return v


def check_netns_name(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or not _NETNS_RE.match(v):
        raise ValueError(
            f"{describe(v)} is not a valid network namespace name "
            "(use 1-64 characters from A-Z a-z 0-9 _ . -, not starting with . or -, e.g. h1)"
        )
    return v


def iface_mac(v: Any) -> int | None:
    """An interface's own address (None: the kernel picks one)."""
    if v is None:
        return None
    try:
        return static_mac(v)
    except ValueError as exc:
        raise ValueError(
            str(exc).replace("can be static", "can be an interface's address")
        ) from None


def check_bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {describe(v)} (write up: true)")
    return v


def check_address(v: Any) -> str:
    """'10.0.0.1/24' or 'fd00::1/64' -> the same, normalised; an address needs its prefix."""
    fix = "write it with its prefix length, e.g. 10.0.0.1/24 or fd00::1/64"
    if not isinstance(v, str) or "/" not in v:
        raise ValueError(f"{describe(v)} is not an address with a prefix ({fix})")
    try:
        iface = ipaddress.ip_interface(v.strip())
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 or IPv6 address with a prefix ({fix})") from None
    ip, net = iface.ip, iface.network
    broadcast = ip.version == 4 and net.prefixlen < 31 and ip == net.broadcast_address
    if ip.is_multicast or ip.is_unspecified or broadcast:
        raise ValueError(f"{v} cannot be an interface address (give a unicast host address)")
    return str(iface)


def unique_addresses(addrs: tuple[str, ...]) -> tuple[str, ...]:
    seen: set[str] = set()
    for a in addrs:
        ip = a.split("/")[0]
        if ip in seen:
            raise ValueError(f"{ip} is given twice (keep one)")
        seen.add(ip)
    return addrs


def check_ip(v: Any) -> str:
    """A unicast IPv4 or IPv6 host address, without a prefix, normalised."""
    fix = "write an address, e.g. 192.0.2.1 or 2001:db8::1"
    if not isinstance(v, str):
        raise ValueError(f"expected an IP address, got {describe(v)} ({fix})")
    try:
        ip = ipaddress.ip_address(v.strip())
    except ValueError:
        raise ValueError(f"{v!r} is not an IPv4 or IPv6 address ({fix})") from None
    if ip.is_multicast or ip.is_unspecified or str(ip) == "255.255.255.255":
        raise ValueError(f"{v} is not a unicast address (give a host's address)")
    return str(ip)


queue_pairs = int_in(1, MAX_QUEUE_PAIRS, "queue pairs a front end may set up, e.g. 4")

LogLevel = BeforeValidator(log_level)
QueuePairs = Annotated[int, BeforeValidator(queue_pairs)]
FileMode = Annotated[int, BeforeValidator(file_mode)]
SocketPath = Annotated[Path, BeforeValidator(socket_path)]
PortName = Annotated[str, BeforeValidator(port_name)]
Mac = Annotated[int, BeforeValidator(static_mac)]
MacLimit = Annotated[int, BeforeValidator(int_in(0, MAX_FDB_SIZE, "0 = no limit, e.g. 4096"))]
Mtu = Annotated[int, BeforeValidator(int_in(MIN_MTU, MAX_MTU, "e.g. 1500"))]
Address = Annotated[str, BeforeValidator(check_address)]
IpAddress = Annotated[str, BeforeValidator(check_ip)]
