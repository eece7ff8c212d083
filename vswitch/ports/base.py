"""The Port interface: what the switch, reload and the control commands see of a port.

A port is one `ports:` entry brought to life: a fast-path port (`port`, its index in C)
plus whatever feeds it (a vhost-user socket, a tap fd).  Each kind subclasses Port and
says which config fields it can take while running (`IN_PLACE`); reload asks `restarts()`
before touching anything and then calls `reconfigure()`, so reload knows no kind's details.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from vswitch.config import PortConfig
from vswitch.fastpath import Fastpath

log = logging.getLogger("vswitch")


def _vlans(c: PortConfig) -> tuple[int, tuple[int, ...], int | None]:
    return c.vlan, c.trunks, c.native_vlan


class Port(ABC):
    kind: ClassVar[str]
    # Config fields a running port takes without a restart: the switch-side settings
    # every kind has; a kind adds its own.  `mirror` names other ports, so the switch
    # applies it (Switch.sync_mirrors), after any change to the ports.
    IN_PLACE: ClassVar[frozenset[str]] = frozenset(
        {"mac_limit", "static_macs", "mirror", "vlan", "trunks", "native_vlan"}
    )

    def __init__(self, cfg: PortConfig, dp: Fastpath) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.dp = dp
        self.port = -1  # the fast path's index, while open
        self.mirrors = False  # the fast path copies other ports' frames to it

    @abstractmethod
    async def start(self) -> None:
        """Open the fast-path port and whatever feeds it; on failure leave nothing."""

    @abstractmethod
    async def stop(self) -> None:
        """Close everything start() opened (safe to call after a failed start)."""

    def check(self) -> None:
        """Housekeeping, once a second: notice a peer or a ring that broke."""
        return None

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """What `vswitch ports --json` shows of the port."""

    @property
    def state(self) -> str:
        """up, down or broken, from the fast path (kinds add their own states)."""
        if self.port < 0:
            return "down"
        if self.dp.is_broken(self.port):
            return "broken"
        return "up" if self.dp.is_up(self.port) else "down"

    # Reconfiguration

    @classmethod
    def restarts(cls, old: PortConfig, new: PortConfig, fields: list[str]) -> bool:
        """Whether changing `fields` from old to new needs this port restarted."""
        return old.type != new.type or any(f not in cls.IN_PLACE for f in fields)

    def release_static_macs(self, new: PortConfig) -> None:
        """Step one of an in-place change: drop the static MACs `new` no longer has, so
        that a reload can move a static MAC from one port to another."""
        home = self.cfg.home_vlan
        keep = set(new.static_macs) if new.home_vlan == home else set()
        for mac in set(self.cfg.static_macs) - keep:
            self.dp.fdb_del(mac, vlan=home)

    def reconfigure(self, new: PortConfig, fields: list[str]) -> list[str]:
        """Apply an in-place change (restarts() said no); returns what it did beyond the
        change itself, one line each.  OSError if the change could not be made."""
        notes: list[str] = []
        old, pid = self.cfg, self.port
        self._reconfigure(new, fields)
        if new.mac_limit != old.mac_limit:
            self.dp.set_mac_limit(pid, new.mac_limit)
            have = self.dp.port_stats(pid)["fdb_count"]
            if new.mac_limit and have > new.mac_limit:
                n = self.dp.fdb_flush(pid)
                notes.append(f"{n} dynamic MAC(s) flushed to honour mac_limit")
        if _vlans(new) != _vlans(old):
            n = self._set_vlans(new)
            if n:
                notes.append(f"{n} MAC(s) flushed from VLANs the port left")
        moved = new.home_vlan != old.home_vlan
        for mac in new.static_macs:
            if moved or mac not in old.static_macs:
                self.dp.fdb_add(mac, pid, vlan=new.home_vlan, static=True)
        self.cfg = new
        return notes

    def _reconfigure(self, new: PortConfig, fields: list[str]) -> None:
        """The kind's own in-place fields (IN_PLACE beyond the shared ones)."""
        return None

    # For the kinds

    def _open(self, kind: int, mtu: int | None = None) -> None:
        """Open the fast-path port with the config's MTU (or `mtu`), MAC limit, VLANs and
        static MACs."""
        self.port = self.dp.open_port(mtu if mtu is not None else self.cfg.mtu, kind)
        self.dp.set_mac_limit(self.port, self.cfg.mac_limit)
        self._set_vlans(self.cfg)
        for mac in self.cfg.static_macs:
            self.dp.fdb_add(mac, self.port, vlan=self.cfg.home_vlan, static=True)

    def _set_vlans(self, cfg: PortConfig) -> int:
        return self.dp.set_vlans(
            self.port, vlan=cfg.vlan, trunks=cfg.trunks, native_vlan=cfg.native_vlan or 0
        )

    def vlan_info(self) -> dict[str, Any]:
        """The port's VLANs as `vswitch ports --json` shows them."""
        c = self.cfg
        if c.trunks:
            return {"vlan_mode": "trunk", "trunks": list(c.trunks), "native_vlan": c.native_vlan}
        return {"vlan_mode": "access", "vlan": c.vlan}

    def _close(self) -> None:
        if self.port >= 0:
            self.dp.close_port(self.port)
            self.port = -1
            self.mirrors = False
