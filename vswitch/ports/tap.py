"""TAP ports: the kernel side of the switch (`type: tap` in the config).

A TapPort opens /dev/net/tun with IFF_TAP|IFF_NO_PI, non-blocking, inside the port's
network namespace (created when missing), configures the interface there with pyroute2
(mtu, mac, addresses, up) and hands the fd to the C fast path, which reads and writes
frames in bursts.  With `switch.datapath: loop` the event loop watches the fd and calls
Fastpath.kick(); with the poll thread, the thread watches it itself.

Ownership: an interface the port created is non-persistent (it lives as long as the fd)
and is also deleted explicitly on stop; a namespace the port created is removed on stop.
A pre-existing persistent tap is attached, configured, and left in place on stop.  A tap
deleted from outside takes its port down (logged once); the switch and the other ports go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
from typing import Any

from vswitch.config import TapPort as TapConfig
from vswitch.errors import StartupError
from vswitch.fastpath import PORT_TAP, Fastpath
from vswitch.limits import QUEUE_TX
from vswitch.mac import format_mac
from vswitch.netsys.netns import create_netns, delete_netns, netns_exists, run_in_netns
from vswitch.netsys.tuntap import TUNGETIFF, delete_link, open_tap
from vswitch.ports.base import Port

log = logging.getLogger("vswitch.tap")


class TapPort(Port):
    """A switch port whose peer is a kernel TAP interface.  Its MTU is the interface's,
    set when the tap is created: changing it restarts the port."""

    kind = "tap"
    cfg: TapConfig

    def __init__(self, cfg: TapConfig, dp: Fastpath) -> None:
        super().__init__(cfg, dp)
        self.fd = -1
        self.ifindex = 0
        self.created = False  # we created the interface: we remove it
        self.created_netns = False  # and the namespace
        self.error: str | None = None  # why the port went down for good
        self._reader = False
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        cfg = self.cfg
        self._loop = asyncio.get_running_loop()
        try:
            if cfg.netns is not None and not netns_exists(cfg.netns):
                await asyncio.to_thread(create_netns, cfg.netns)
                self.created_netns = True
                log.info("port %s: created network namespace %s", self.name, cfg.netns)
            self.fd, self.created, self.ifindex = await asyncio.to_thread(
                run_in_netns, cfg.netns, lambda: open_tap(cfg)
            )
        except FileExistsError:
            raise StartupError(
                f"port {self.name}: network namespace {cfg.netns} appeared while it was being "
                "created (try again)"
            ) from None
        except OSError as exc:
            raise StartupError(f"port {self.name}: {exc.strerror or exc}") from None
        self._open(PORT_TAP)
        self.dp.set_fd(self.port, self.fd)
        if not self.dp.threaded:
            self._loop.add_reader(self.fd, self._readable)
            self._reader = True
        log.info(
            "port %s: %s tap %s (mtu %d)",
            self.name,
            "created" if self.created else "attached to existing",
            cfg.where,
            cfg.mtu,
        )

    async def stop(self) -> None:
        self._unwatch()
        self._close()  # the data path lets go of the fd first
        if self.fd >= 0:
            os.close(self.fd)  # a non-persistent tap we created disappears with it
            self.fd = -1
        cfg = self.cfg
        if self.created and self.ifindex:
            # Gone already unless someone made it persistent: then remove it all the same.
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(
                    run_in_netns, cfg.netns, lambda: delete_link(self.ifindex, cfg.ifname)
                ):
                    log.info("port %s: deleted tap %s", self.name, cfg.where)
            self.created = False
        if self.created_netns and cfg.netns is not None:
            await asyncio.to_thread(delete_netns, cfg.netns)
            log.info("port %s: removed network namespace %s", self.name, cfg.netns)
            self.created_netns = False

    def _unwatch(self) -> None:
        if self._reader and self._loop is not None and self.fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.fd)
        self._reader = False

    def _readable(self) -> None:
        """Event-loop mode: the tap fd has frames (or an error); the fast path takes them."""
        if self.port < 0 or self.fd < 0:
            self._unwatch()
            return
        if self.dp.kick(self.port, QUEUE_TX) < 0:
            self.check()

    def attached(self) -> bool:
        """Whether the fd still has its interface (TUNGETIFF fails with EBADFD once the
        interface is deleted)."""
        try:
            fcntl.ioctl(self.fd, TUNGETIFF, bytes(40))
        except OSError as exc:
            return exc.errno != errno.EBADFD
        return True

    def check(self) -> None:
        """Each second (and when a read fails): notice a tap that broke.

        The fast path marks the port broken on a failed read or write.  If the interface
        is still there the failure was passing (a write while the interface was down
        returns EIO): the port is re-armed.  If it is gone, the port goes down for good."""
        if self.port < 0 or self.fd < 0 or not self.dp.is_broken(self.port):
            return
        why = self.dp.error(self.port)
        if self.attached():
            log.debug("port %s: %s while tap %s is down; re-armed", self.name, why, self.cfg.where)
            self.dp.set_fd(self.port, self.fd)
            return
        self._gone(why)

    def _gone(self, why: str) -> None:
        """The interface went away (or its fd failed): this port goes down, nothing else."""
        if self.fd < 0:
            return
        self._unwatch()
        self.dp.set_fd(self.port, -1)  # parks the poll thread: it stops watching the fd
        self.dp.fdb_flush(self.port)
        os.close(self.fd)
        self.fd = -1
        self.created = False  # nothing of it left to remove
        why = why or "tap fd detached"
        self.error = f"tap {self.cfg.where} was deleted, or its namespace removed ({why})"
        log.warning(
            "port %s: %s; the port is down, the switch and the other ports go on",
            self.name,
            self.error,
        )

    def info(self) -> dict[str, Any]:
        cfg = self.cfg
        status = "broken" if self.error is not None else self.state
        error = self.error or ((self.dp.error(self.port) or None) if status == "broken" else None)
        return {
            "name": self.name,
            "type": "tap",
            "ifname": cfg.ifname,
            "netns": cfg.netns,
            "state": status,
            "peer": f"kernel {cfg.where}" if self.fd >= 0 else None,
            "created": self.created,
            "mac": format_mac(cfg.mac) if cfg.mac is not None else None,
            "addresses": list(cfg.addresses),
            "features": [],
            "protocol_features": [],
            "mtu": cfg.mtu,
            "queues": [],
            "counters": self.dp.port_stats(self.port) if self.port >= 0 else {},
            "error": error,
            "static_macs": [format_mac(m) for m in cfg.static_macs],
            **self.vlan_info(),
        }
