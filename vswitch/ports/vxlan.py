"""VXLAN tunnel ports (`type: vxlan`): the switch's frames to and from other hosts, carried
in UDP (RFC 7348) to their vswitch, Open vSwitch or Linux kernel vxlan device.

The port opens its two sockets (vswitch.netsys.vxlan) in its `netns` (which must exist and
hold `local`: it is the underlay's, set up by whoever set up the underlay) and hands them
to the C fast path, which encapsulates and decapsulates in bursts.  Ports on the same
endpoint (netns, local, dstport), one per VNI, share the sockets (an Endpoint).  To the
switch it is a port like any other: MACs are learned on it (and behind which remote),
frames flood to it.

Its inner MTU is the underlay's (the routes to the remotes) minus the outer headers (50
bytes, 70 over IPv6), or the config's `mtu` if that is lower; a frame above it is dropped
and counted, never fragmented.  `remotes`, `learn_remotes` and `mtu` change in place;
`vni`, `local`, `dstport` and `netns` restart the port (its sockets are bound to them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from vswitch.config import PortConfig
from vswitch.config import VxlanPort as VxlanConfig
from vswitch.errors import StartupError
from vswitch.fastpath import PORT_VXLAN, Fastpath
from vswitch.limits import MAX_MTU, QUEUE_TX
from vswitch.mac import format_mac
from vswitch.netsys.netns import netns_exists, run_in_netns
from vswitch.netsys.vxlan import open_vxlan_sockets, underlay_mtu
from vswitch.ports.base import Port

log = logging.getLogger("vswitch.vxlan")


@dataclass
class Endpoint:
    """The sockets of one (netns, local, dstport), shared by the VXLAN ports on it (one per
    VNI): the fast path gives each datagram to the port of its VNI, whichever port's turn
    it is to read.  Closed when its last port stops."""

    key: tuple[int, str | None, str, int]
    rx_fd: int
    tx_fd: int
    ports: dict[str, VxlanPort] = field(default_factory=dict)
    loop: asyncio.AbstractEventLoop | None = None  # event-loop mode: it watches rx_fd

    def readable(self) -> None:
        """Event-loop mode: datagrams are waiting; any port of the endpoint takes them all."""
        for p in self.ports.values():
            if p.port >= 0:
                p.dp.kick(p.port, QUEUE_TX)
                return

    def close(self) -> None:
        if self.loop is not None:
            with contextlib.suppress(Exception):
                self.loop.remove_reader(self.rx_fd)
            self.loop = None
        for fd in (self.rx_fd, self.tx_fd):
            os.close(fd)


# The endpoints in use, by (id of the fast path, netns, local, dstport).
ENDPOINTS: dict[tuple[int, str | None, str, int], Endpoint] = {}


class VxlanPort(Port):
    kind = "vxlan"
    cfg: VxlanConfig
    IN_PLACE: ClassVar[frozenset[str]] = Port.IN_PLACE | {"remotes", "learn_remotes", "mtu"}

    def __init__(self, cfg: VxlanConfig, dp: Fastpath) -> None:
        super().__init__(cfg, dp)
        self.ep: Endpoint | None = None
        self.underlay_mtu = 0
        self.mtu = 0  # the inner MTU in force

    @property
    def rx_fd(self) -> int:
        return self.ep.rx_fd if self.ep is not None else -1

    @property
    def tx_fd(self) -> int:
        return self.ep.tx_fd if self.ep is not None else -1

    def inner_mtu(self, cfg: VxlanConfig) -> int:
        """The MTU the port carries: the underlay's minus the outer headers, or less."""
        most = min(self.underlay_mtu - cfg.overhead, MAX_MTU)
        if cfg.mtu is None:
            return most
        if cfg.mtu > most:
            raise StartupError(
                f"port {self.name}: mtu {cfg.mtu} is more than the underlay can carry: its "
                f"MTU is {self.underlay_mtu}, less {cfg.overhead} bytes of VXLAN headers "
                f"leaves {most} (lower mtu, or raise the underlay's)"
            )
        return cfg.mtu

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        if cfg.netns is not None and not netns_exists(cfg.netns):
            raise StartupError(
                f"port {self.name}: network namespace {cfg.netns} does not exist (the underlay "
                "is set up outside the switch: create it with the address local, or fix netns)"
            )
        key = (id(self.dp), cfg.netns, cfg.local, cfg.dstport)
        try:
            ep = ENDPOINTS.get(key)
            if ep is None:
                rx, tx = await asyncio.to_thread(
                    run_in_netns, cfg.netns, lambda: open_vxlan_sockets(cfg.local, cfg.dstport)
                )
                ep = ENDPOINTS[key] = Endpoint(key, rx, tx)
            ep.ports[self.name] = self
            self.ep = ep
            self.underlay_mtu = await asyncio.to_thread(
                run_in_netns, cfg.netns, lambda: underlay_mtu(cfg.local, cfg.remotes)
            )
        except PermissionError:
            raise StartupError(
                f"port {self.name}: opening the VXLAN sockets needs CAP_NET_RAW "
                "(run vswitch as root, or give it that capability)"
            ) from None
        except OSError as exc:
            where = f" in netns {cfg.netns}" if cfg.netns else ""
            raise StartupError(f"port {self.name}: {exc.strerror or exc}{where}") from None
        mtu = self.mtu = self.inner_mtu(cfg)
        self._open(PORT_VXLAN, mtu)
        self._configure(cfg)
        self.dp.set_fd(self.port, self.rx_fd)
        if not self.dp.threaded and ep.loop is None:
            loop.add_reader(ep.rx_fd, ep.readable)
            ep.loop = loop
        log.info(
            "port %s: vxlan vni %d at %s, %d remote(s)%s, mtu %d (underlay %d)",
            self.name,
            cfg.vni,
            cfg.where,
            len(cfg.remotes),
            ", learning remotes" if cfg.learn_remotes else "",
            mtu,
            self.underlay_mtu,
        )

    def _configure(self, cfg: VxlanConfig) -> None:
        self.dp.vxlan_configure(
            self.port,
            vni=cfg.vni,
            local=cfg.local,
            remotes=cfg.remotes,
            dstport=cfg.dstport,
            learn_remotes=cfg.learn_remotes,
            tx_fd=self.tx_fd,
        )

    async def stop(self) -> None:
        self._close()  # the data path lets go of the sockets first
        ep, self.ep = self.ep, None
        if ep is not None and ep.ports.get(self.name) is self:
            del ep.ports[self.name]
            if not ep.ports:  # the last port of the endpoint: its sockets go
                ep.close()
                ENDPOINTS.pop(ep.key, None)

    def _reconfigure(self, new: PortConfig, fields: list[str]) -> None:
        assert isinstance(new, VxlanConfig)
        if "mtu" in fields or "remotes" in fields:
            # The way to the remotes (or the underlay) may have changed: look again.
            found = run_in_netns(new.netns, lambda: underlay_mtu(new.local, new.remotes))
            old_underlay, self.underlay_mtu = self.underlay_mtu, found
            try:
                mtu = self.inner_mtu(new)
            except StartupError as exc:
                self.underlay_mtu = old_underlay
                raise OSError(str(exc)) from None
            if mtu != self.mtu:
                self.dp.set_mtu(self.port, mtu)
                self.mtu = mtu
        if "remotes" in fields or "learn_remotes" in fields:
            self._configure(new)

    def remote_address(self, remote: int) -> str | None:
        """The address of remote `remote` (1 + its index, as the MAC table has it)."""
        if self.port < 0 or remote < 1:
            return None
        remotes = self.dp.vxlan_remotes(self.port, self.cfg.ipv6)
        return remotes[remote - 1] if remote <= len(remotes) else None

    def info(self) -> dict[str, Any]:
        cfg = self.cfg
        counters: dict[str, int] = {}
        remotes: list[str] = []
        if self.port >= 0:
            counters = {**self.dp.port_stats(self.port), **self.dp.vxlan_stats(self.port)}
            remotes = self.dp.vxlan_remotes(self.port, cfg.ipv6)
        state = self.state
        return {
            "name": self.name,
            "type": "vxlan",
            "state": state,
            "peer": f"vxlan vni {cfg.vni} from {cfg.where} to {len(remotes)} remote(s)"
            if self.port >= 0
            else None,
            "vni": cfg.vni,
            "local": cfg.local,
            "dstport": cfg.dstport,
            "netns": cfg.netns,
            "remotes": list(cfg.remotes),
            "learned_remotes": remotes[len(cfg.remotes) :],
            "learn_remotes": cfg.learn_remotes,
            "underlay_mtu": self.underlay_mtu or None,
            "features": [],
            "protocol_features": [],
            "mtu": self.mtu or cfg.mtu,
            "queues": [],
            "counters": counters,
            "error": (self.dp.error(self.port) or None) if state == "broken" else None,
            "static_macs": [format_mac(m) for m in cfg.static_macs],
            **self.vlan_info(),
        }
