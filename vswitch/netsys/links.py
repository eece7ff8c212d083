"""Bridges, ports of bridges and routes (pyroute2), as a lab's namespaces need them.

Each function works in the calling thread's network namespace: run it through
`vswitch.netsys.netns.run_in_netns` for another one.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterable
from pathlib import Path


def disable_ipv6() -> None:
    """No IPv6 on the namespace's interfaces (present and future): no traffic of its own."""
    for key in ("all", "default"):
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1")


def add_bridges(bridges: Iterable[tuple[str, int]]) -> None:
    """A kernel bridge per (name, mtu): STP off, no forwarding delay, up."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for name, mtu in bridges:
            ipr.link("add", ifname=name, kind="bridge", br_stp_state=0, br_forward_delay=0)
            (idx,) = ipr.link_lookup(ifname=name)
            ipr.link("set", index=idx, mtu=mtu, state="up")


def join_bridge(bridge: str, ports: Iterable[str]) -> str | None:
    """Make each interface a port of the bridge and bring it up, in order; stops at the first
    that does not exist and returns its name (None: all joined)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        (br,) = ipr.link_lookup(ifname=bridge)
        for port in ports:
            found = ipr.link_lookup(ifname=port)
            if not found:
                return port
            ipr.link("set", index=found[0], master=br, state="up")
    return None


def add_routes(routes: Iterable[tuple[str, str]]) -> None:
    """Each (to, via): `to` is "default" (of via's family) or a network, via a gateway."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for to, via in routes:
            v6 = ":" in via
            dst = ("::/0" if v6 else "0.0.0.0/0") if to == "default" else to
            ipr.route("add", dst=dst, gateway=via, family=socket.AF_INET6 if v6 else socket.AF_INET)
