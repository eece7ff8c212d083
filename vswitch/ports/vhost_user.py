"""vhost-user ports: a QEMU guest (or another front end) on a unix socket, at most one
front end at a time, and the fast-path port it feeds.  The switch listens on the socket
(`mode: server`) or connects to the front end's (`mode: client`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from time import monotonic
from typing import Any, ClassVar

from vswitch.config import PortConfig, VhostUserPort
from vswitch.errors import StartupError
from vswitch.fastpath import PORT_VHOST, Fastpath
from vswitch.limits import QUEUES_PER_PAIR, is_tx_ring
from vswitch.mac import format_mac
from vswitch.netsys.unix import listen_unix, set_socket_mode, socket_file
from vswitch.ports.base import Port
from vswitch.vhost import protocol as P
from vswitch.vhost.session import VhostSession

log = logging.getLogger("vswitch.vhost")

# Client mode: reconnect backoff, in seconds.
RETRY_MIN = 0.1
RETRY_MAX = 2.0


class VhostPort(Port):
    kind = "vhost-user"
    SOCKET_FILE: ClassVar[frozenset[str]] = frozenset({"socket_mode", "owner", "group"})
    IN_PLACE = Port.IN_PLACE | {"mtu"} | SOCKET_FILE
    cfg: VhostUserPort

    def __init__(self, cfg: VhostUserPort, dp: Fastpath) -> None:
        super().__init__(cfg, dp)
        self.session: VhostSession | None = None
        self.connects = 0
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._session_task: asyncio.Task[None] | None = None
        # Since when no front end has been connected (monotonic; None while one is): a
        # port listening for long with nobody connecting is how a QEMU that may not open
        # the socket (libvirt runs it as libvirt-qemu) shows, since QEMU retries silently.
        self._idle_since: float | None = None

    async def start(self) -> None:
        self._idle_since = monotonic()
        if self.cfg.mode == "client":
            self._open_port()
            self._accept_task = asyncio.create_task(self._connect(), name=f"connect {self.name}")
            return
        path = str(self.cfg.path)
        try:
            self._listener = listen_unix(
                path, mode=self.cfg.socket_mode, uid=self.cfg.owner, gid=self.cfg.group
            )
        except StartupError as e:
            raise StartupError(f"port {self.name}: {e}") from e
        self._open_port()
        self._accept_task = asyncio.create_task(self._accept(), name=f"accept {self.name}")
        log.info("port %s: listening on %s", self.name, path)

    def _open_port(self) -> None:
        self._open(PORT_VHOST)

    async def stop(self) -> None:
        for task in (self._accept_task, self._session_task):
            if task is not None:
                task.cancel()
                try:
                    await task
                except asyncio.CancelledError:
                    pass
                except Exception:  # a task that failed earlier must not stop the teardown
                    log.exception("port %s: %s had failed", self.name, task.get_name())
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.path)
        self._close()

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        delay = RETRY_MIN
        while True:
            try:
                conn, _ = await loop.sock_accept(self._listener)
            except OSError as e:
                # Out of descriptors or memory (EMFILE, ENFILE, ENOBUFS): the connection
                # waits in the backlog; try again later rather than stop listening.
                log.warning("port %s: cannot accept a front end: %s; retrying in %.1f s",
                            self.name, e.strerror or e, delay)  # fmt: skip
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            delay = RETRY_MIN
            conn.setblocking(False)
            if self.session is not None:
                log.warning(
                    "port %s: refusing a second front end while one is connected", self.name
                )
                conn.close()
                continue
            self.connects += 1
            self._idle_since = None
            log.debug("port %s: connection accepted", self.name)
            self.session = VhostSession(
                self.name, conn, self.dp, self.port, self.cfg.mtu, queue_pairs=self.cfg.queues
            )
            self._session_task = asyncio.create_task(
                self._serve(self.session), name=f"vhost {self.name}"
            )

    async def _connect(self) -> None:
        """Client mode: connect to the front end's socket, retrying with
        backoff until it is there, and again each time the front end goes
        away (QEMU restarted), so the guest's link comes back on its own.
        A front end that drops the connection before the port ever came up
        (crashing, or not a vhost-user server at all) is retried with the
        same backoff, not hammered."""
        loop = asyncio.get_running_loop()
        path = str(self.cfg.path)
        delay, waiting_logged = RETRY_MIN, False
        while True:
            sock = None
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
                sock.setblocking(False)
                await loop.sock_connect(sock, path)
            except OSError as e:  # no front end yet, or no descriptor left (EMFILE)
                if sock is not None:
                    sock.close()
                if not waiting_logged:
                    log.info("port %s: waiting for a front end at %s (%s)", self.name, path,
                             e.strerror or e)  # fmt: skip
                    waiting_logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.connects += 1
            self._idle_since = None
            log.debug("port %s: connected to %s", self.name, path)
            session = VhostSession(
                self.name, sock, self.dp, self.port, self.cfg.mtu, queue_pairs=self.cfg.queues
            )
            self.session = session
            try:
                await self._serve(session)
            except Exception:
                # Never let one bad session end the reconnects for good.
                log.exception("port %s: session failed", self.name)
            if session.came_up:
                delay, waiting_logged = RETRY_MIN, False
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MAX)

    async def _serve(self, session: VhostSession) -> None:
        try:
            await session.run()
        finally:
            self.session = None
            self._idle_since = monotonic()

    def check(self) -> None:
        if self.session is not None:
            self.session.check_broken()

    @property
    def state(self) -> str:
        state = super().state
        if state != "down" or self.session is not None:
            return state
        return "connecting" if self.cfg.mode == "client" else "listening"

    @classmethod
    def restarts(cls, old: PortConfig, new: PortConfig, fields: list[str]) -> bool:
        # Only a port listening on its path owns the socket file it would chmod.
        if cls.SOCKET_FILE & set(fields) and not new.listens:
            return True
        return super().restarts(old, new, fields)

    def _reconfigure(self, new: PortConfig, fields: list[str]) -> None:
        assert isinstance(new, VhostUserPort)
        old = self.cfg
        if new.mtu != old.mtu:
            mtu = new.mtu
            s = self.session
            if s is not None:
                if s.mtu < old.mtu:  # the front end asked for less (NET_SET_MTU): keep it
                    mtu = min(s.mtu, new.mtu)
                s.max_mtu, s.mtu = new.mtu, mtu
            self.dp.set_mtu(self.port, mtu)
        if self.SOCKET_FILE & set(fields):
            set_socket_mode(new.path, new.socket_mode, new.owner, new.group)

    def info(self) -> dict[str, Any]:
        s = self.session
        status = self.state
        queues = []
        if s is not None:
            for q, vr in enumerate(s.vrings):
                if vr.num == 0 and not vr.enabled:
                    continue  # a ring the front end never set up (another pair's)
                queues.append(
                    {
                        "index": q,
                        "pair": q // QUEUES_PER_PAIR,
                        "direction": "tx" if is_tx_ring(q) else "rx",
                        "size": vr.num,
                        "enabled": self.dp.vring_ready(self.port, q) or vr.enabled,
                        "ready": self.dp.vring_ready(self.port, q),
                        **self.dp.vring_stats(self.port, q),
                    }
                )
        return {
            "name": self.name,
            "type": "vhost-user",
            "path": str(self.cfg.path),
            "state": status,
            "mode": self.cfg.mode,
            "peer": "connected" if s is not None else None,
            "connects": self.connects,
            "features": P.feature_names(s.features, P.F) if s else [],
            "protocol_features": P.feature_names(s.protocol_features, P.PF) if s else [],
            "mtu": s.mtu if s else self.cfg.mtu,
            "queues": queues,
            "counters": self.dp.port_stats(self.port) if self.port >= 0 else {},
            "error": (self.dp.error(self.port) or None) if status == "broken" else None,
            "static_macs": [format_mac(m) for m in self.cfg.static_macs],
            **self.vlan_info(),
            "idle_seconds": self.idle_seconds(),
            "socket": socket_file(self.cfg.path),
            # Logging means a migration is under way (the guest leaves this port).
            "migration": s.migration_info() if s else None,
        }

    def idle_seconds(self) -> float | None:
        """Seconds since the port last had a front end (or since it started), None while
        one is connected."""
        if self.session is not None or self._idle_since is None:
            return None
        return round(monotonic() - self._idle_since, 1)
