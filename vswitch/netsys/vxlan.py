"""The sockets of a VXLAN port, opened in the calling thread's network namespace (run them
through `vswitch.netsys.netns.run_in_netns` for the port's `netns:`).

- rx: a UDP socket bound to local:dstport; the fast path reads the tunnel's datagrams
  from it with recvmmsg.
- tx: a raw IPPROTO_UDP socket bound to local; the fast path writes the UDP header itself
  (the source port is a hash of the inner flow) and the kernel the IP header, with DF
  (IP_PMTUDISC_DO: a datagram over the underlay MTU is refused, never fragmented).  It
  never receives: a filter that accepts nothing keeps every UDP packet of the namespace
  out of its queue.  Needs CAP_NET_RAW.

Both are non-blocking; the caller owns the file descriptors.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Sequence

# <linux/in.h>, <linux/in6.h>, <asm-generic/socket.h>
IP_MTU_DISCOVER = 10
IP_PMTUDISC_DO = 2
IPV6_CHECKSUM = 7
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DO = 2
SO_ATTACH_FILTER = 26
SO_RCVBUFFORCE = 33
SO_SNDBUFFORCE = 32
BUFFER = 4 << 20  # socket buffers: bursts of full-size frames to and from many remotes

# One classic BPF instruction, `ret #0`: accept nothing.
_DROP_ALL = (ctypes.c_uint8 * 8)(*struct.pack("HBBI", 0x06, 0, 0, 0))


def _family(local: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(local).version == 6 else socket.AF_INET


def _buffers(s: socket.socket, opt: int, force: int) -> None:
    try:
        s.setsockopt(socket.SOL_SOCKET, force, BUFFER)  # past rmem_max/wmem_max (root)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, opt, BUFFER)


def open_vxlan_sockets(local: str, dstport: int) -> tuple[int, int]:
    """(rx fd, tx fd) for a VXLAN endpoint at local:dstport.  OSError with the reason."""
    fam = _family(local)
    rx = socket.socket(fam, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    tx = None
    try:
        if fam == socket.AF_INET6:
            rx.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        _buffers(rx, socket.SO_RCVBUF, SO_RCVBUFFORCE)
        try:
            rx.bind((local, dstport))
        except OSError as exc:
            raise _bind_error(exc, local, dstport) from None
        tx = socket.socket(
            fam, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, socket.IPPROTO_UDP
        )
        prog = struct.pack("@HP", 1, ctypes.addressof(_DROP_ALL))
        tx.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        _buffers(tx, socket.SO_SNDBUF, SO_SNDBUFFORCE)
        if fam == socket.AF_INET6:
            tx.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DO)
            tx.setsockopt(socket.IPPROTO_IPV6, IPV6_CHECKSUM, 6)  # the UDP checksum field
        else:
            tx.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DO)
        tx.bind((local, 0))
    except BaseException:
        rx.close()
        if tx is not None:
            tx.close()
        raise
    return rx.detach(), tx.detach()


def _bind_error(exc: OSError, local: str, dstport: int) -> OSError:
    where = f"[{local}]:{dstport}" if ":" in local else f"{local}:{dstport}"
    if exc.errno == errno.EADDRNOTAVAIL:
        why = f"local {local} is not an address of this network namespace (add it, or fix local)"
    elif exc.errno == errno.EADDRINUSE:
        why = (
            f"UDP {where} is taken: another VXLAN endpoint listens there (a kernel vxlan device "
            "binds every address of its namespace: put the switch's underlay in its own netns, "
            "or use another dstport)"
        )
    else:
        why = f"cannot bind UDP {where}: {exc.strerror}"
    return OSError(exc.errno, why)


def underlay_mtu(local: str, remotes: Sequence[str] = ()) -> int:
    """The underlay MTU: the smallest over the routes to the remotes (the interface each
    leaves by, or the route's own mtu), else that of the interface holding `local` (a port
    with no remotes yet, or no route).  OSError if neither is found."""
    from pyroute2 import IPRoute

    fam = _family(local)
    with IPRoute() as ipr:
        mtus = []
        for r in remotes:
            try:
                (route,) = ipr.route("get", dst=r, family=fam)
            except Exception:  # no route: sending to it fails (counted); others decide
                continue
            oif = route.get_attr("RTA_OIF")
            metrics = route.get_attr("RTA_METRICS")
            mtu = metrics.get_attr("RTAX_MTU") if metrics is not None else None
            if not mtu and oif:
                (link,) = ipr.get_links(oif)
                mtu = link.get_attr("IFLA_MTU")
            if mtu:
                mtus.append(int(mtu))
        if mtus:
            return min(mtus)
        want = ipaddress.ip_address(local)
        for msg in ipr.get_addr(family=fam):
            addr = msg.get_attr("IFA_ADDRESS") or msg.get_attr("IFA_LOCAL")
            with contextlib.suppress(ValueError):
                if addr and ipaddress.ip_address(addr) == want:
                    (link,) = ipr.get_links(msg["index"])
                    return int(link.get_attr("IFLA_MTU"))
    raise OSError(
        errno.EADDRNOTAVAIL,
        f"no route to the remotes and local {local} is not an address of this network namespace",
    )


def open_endpoint(local: str, dstport: int, remotes: Sequence[str]) -> tuple[int, int, int]:
    """(rx fd, tx fd, underlay MTU): everything a VXLAN port needs from its namespace."""
    rx, tx = open_vxlan_sockets(local, dstport)
    try:
        return rx, tx, underlay_mtu(local, remotes)
    except BaseException:
        os.close(rx)
        os.close(tx)
        raise
