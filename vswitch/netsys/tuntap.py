"""TUN/TAP interfaces and the netlink calls that configure links (pyroute2).

Each function works in the calling thread's network namespace: run it through
`vswitch.netsys.netns.run_in_netns` for another one.
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import struct
from typing import Any

from vswitch.config import TapPort as TapConfig
from vswitch.mac import format_mac

# <linux/if_tun.h>, <linux/if_addr.h>
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
TAP_FLAGS = IFF_TAP | IFF_NO_PI
IFA_F_NODAD = 0x02


class TapError(OSError):
    pass


def _ifreq(ifname: str, flags: int) -> bytes:
    return struct.pack("16sH22x", ifname.encode(), flags)


def _tap_kind(link: Any) -> str:
    """'tap', 'tun', or the link kind ('veth', 'bridge', ...) of a pyroute2 link message."""
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind != "tun":
        return kind or "device"
    data = info.get_attr("IFLA_INFO_DATA")
    tun_type = data.get_attr("IFLA_TUN_TYPE") if data is not None else None
    return "tap" if tun_type == IFF_TAP else "tun"


def configure_link(
    ipr: Any,
    index: int,
    *,
    mtu: int | None = None,
    mac: int | None = None,
    addresses: tuple[str, ...] | list[str] = (),
    up: bool | None = True,
) -> None:
    """Set mtu/mac, add addresses (no duplicate address detection: usable at once), up/down."""
    changes: dict[str, Any] = {}
    if mtu is not None:
        changes["mtu"] = mtu
    if mac is not None:
        changes["address"] = format_mac(mac)
    if changes:
        ipr.link("set", index=index, **changes)
    for a in addresses:
        ip, prefix = a.split("/")
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            ipr.addr(
                "add",
                index=index,
                address=ip,
                prefixlen=int(prefix),
                family=family,
                flags=IFA_F_NODAD,
            )
        except Exception as exc:  # pyroute2's NetlinkError carries the errno as .code
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
    if up is not None:
        ipr.link("set", index=index, state="up" if up else "down")


def open_tap(cfg: TapConfig) -> tuple[int, bool, int]:
    """In the calling thread's namespace: open (creating if missing) and configure the tap.

    Returns (fd, created, ifindex).  Raises TapError with a message for a person."""
    from pyroute2 import IPRoute

    ifname = cfg.ifname
    with IPRoute() as ipr:
        existing = ipr.link_lookup(ifname=ifname)
        if existing:
            kind = _tap_kind(ipr.link("get", index=existing[0])[0])
            if kind != "tap":
                raise TapError(
                    errno.EEXIST,
                    f"interface {cfg.where} exists and is a {kind}, not a tap "
                    "(choose another ifname, or delete that interface)",
                )
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                fcntl.ioctl(fd, TUNSETIFF, _ifreq(ifname, TAP_FLAGS))
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise TapError(
                        exc.errno,
                        f"tap {cfg.where} is in use by another process "
                        "(stop it, or choose another ifname)",
                    ) from None
                raise TapError(exc.errno, f"cannot open tap {cfg.where}: {exc.strerror}") from None
            index = ipr.link_lookup(ifname=ifname)[0]
            configure_link(ipr, index, mtu=cfg.mtu, mac=cfg.mac, addresses=cfg.addresses, up=cfg.up)
        except BaseException:
            os.close(fd)  # a tap we just created goes with its last fd
            raise
    return fd, not existing, index


def delete_link(index: int, ifname: str) -> bool:
    """In the calling thread's namespace: delete the interface if it is still ifname at index."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if index not in ipr.link_lookup(ifname=ifname):
            return False
        try:
            ipr.link("del", index=index)
        except Exception as exc:
            if getattr(exc, "code", None) in (errno.ENODEV, errno.ENOENT):
                return False
            raise
    return True
