"""VXLAN tunnel ports (`type: vxlan`): the switch's frames to and from other hosts, carried
in UDP (RFC 7348) to their vswitch, Open vSwitch or Linux kernel vxlan device.

The port opens its two sockets (vswitch.netsys.vxlan) in its `netns` (which must exist and
hold `local`: it is the underlay's, set up by whoever set up the underlay) and hands them
to the C fast path, which encapsulates and decapsulates in bursts.  To the switch it is a
port like any other: MACs are learned on it (and behind which remote), frames flood to it.

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
from typing import Any, ClassVar

from vswitch.config import PortConfig
from vswitch.config import VxlanPort as VxlanConfig
from vswitch.errors import StartupError
from vswitch.fastpath import PORT_VXLAN, Fastpath
from vswitch.limits import MAX_MTU, QUEUE_TX
from vswitch.mac import format_mac
from vswitch.netsys.netns import netns_exists, run_in_netns
from vswitch.netsys.vxlan import open_endpoint, underlay_mtu
from vswitch.ports.base import Port

log = logging.getLogger("vswitch.vxlan")


class VxlanPort(Port):
    kind = "vxlan"
    cfg: VxlanConfig
    IN_PLACE: ClassVar[frozenset[str]] = Port.IN_PLACE | {"remotes", "learn_remotes", "mtu"}

    def __init__(self, cfg: VxlanConfig, dp: Fastpath) -> None:
        super().__init__(cfg, dp)
        self.rx_fd = -1
        self.tx_fd = -1
        self.underlay_mtu = 0
        self.mtu = 0  # the inner MTU in force
        self._reader = False
        self._loop: asyncio.AbstractEventLoop | None = None

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
        self._loop = asyncio.get_running_loop()
        if cfg.netns is not None and not netns_exists(cfg.netns):
            raise StartupError(
                f"port {self.name}: network namespace {cfg.netns} does not exist (the underlay "
                "is set up outside the switch: create it with the address local, or fix netns)"
            )
        try:
            self.rx_fd, self.tx_fd, self.underlay_mtu = await asyncio.to_thread(
                run_in_netns, cfg.netns, lambda: open_endpoint(cfg.local, cfg.dstport, cfg.remotes)
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
        if not self.dp.threaded:
            self._loop.add_reader(self.rx_fd, self._readable)
            self._reader = True
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
        if self._reader and self._loop is not None and self.rx_fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.rx_fd)
        self._reader = False
        self._close()  # the data path lets go of the sockets first
        for fd in (self.rx_fd, self.tx_fd):
            if fd >= 0:
                os.close(fd)
        self.rx_fd = self.tx_fd = -1

    def _readable(self) -> None:
        """Event-loop mode: datagrams are waiting; the fast path takes them."""
        if self.port >= 0:
            self.dp.kick(self.port, QUEUE_TX)

    def check(self) -> None:
        if self.port >= 0 and self.dp.is_broken(self.port) and self.rx_fd >= 0:
            log.warning("port %s: %s; re-armed", self.name, self.dp.error(self.port))
            self.dp.set_fd(self.port, self.rx_fd)

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
        }
