"""A vhost-user port in server mode: a listening unix socket, at most one
front end at a time, and the fast-path port it feeds."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

from vswitch.config import VhostUserPort as PortConfig
from vswitch.control import listen_unix
from vswitch.datapath import Datapath
from vswitch.errors import StartupError
from vswitch.mac import format_mac
from vswitch.vhost import protocol as P
from vswitch.vhost.session import VhostSession

log = logging.getLogger("vswitch.vhost")

# Client mode: reconnect backoff, in seconds.
RETRY_MIN = 0.1
RETRY_MAX = 2.0


class VhostPort:
    def __init__(self, cfg: PortConfig, dp: Datapath) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.dp = dp
        self.port = -1
        self.session: VhostSession | None = None
        self.connects = 0
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task[None] | None = None
        self._session_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
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
        self.port = self.dp.open_port(self.cfg.mtu)
        for mac in self.cfg.static_macs:
            self.dp.fdb_add(mac, self.port, static=True)

    async def stop(self) -> None:
        for task in (self._accept_task, self._session_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.cfg.path)
        if self.port >= 0:
            self.dp.close_port(self.port)
            self.port = -1

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            conn, _ = await loop.sock_accept(self._listener)
            conn.setblocking(False)
            if self.session is not None:
                log.warning(
                    "port %s: refusing a second front end while one is connected", self.name
                )
                conn.close()
                continue
            self.connects += 1
            log.debug("port %s: connection accepted", self.name)
            self.session = VhostSession(self.name, conn, self.dp, self.port, self.cfg.mtu)
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
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, path)
            except OSError as e:
                sock.close()
                if not waiting_logged:
                    log.info("port %s: waiting for a front end at %s (%s)", self.name, path,
                             e.strerror or e)  # fmt: skip
                    waiting_logged = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            self.connects += 1
            log.debug("port %s: connected to %s", self.name, path)
            session = VhostSession(self.name, sock, self.dp, self.port, self.cfg.mtu)
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

    def check(self) -> None:
        if self.session is not None:
            self.session.check_broken()

    def info(self) -> dict[str, Any]:
        s = self.session
        state = self.dp.state(self.port) if self.port >= 0 else 0
        if state & 4:
            status = "broken"
        elif state & 2:
            status = "up"
        elif s is not None:
            status = "down"
        else:
            status = "connecting" if self.cfg.mode == "client" else "listening"
        queues = []
        if s is not None:
            for q, vr in enumerate(s.vrings):
                queues.append(
                    {
                        "index": q,
                        "size": vr.num,
                        "enabled": self.dp.vring_ready(self.port, q) or vr.enabled,
                        "ready": self.dp.vring_ready(self.port, q),
                    }
                )
        return {
            "name": self.name,
            "type": "vhost-user",
            "path": str(self.cfg.path),
            "state": "connecting"
            if status == "listening" and self.cfg.mode == "client"
            else status,
            "mode": self.cfg.mode,
            "peer": "connected" if s is not None else None,
            "connects": self.connects,
            "features": P.feature_names(s.features, P.F) if s else [],
            "protocol_features": P.feature_names(s.protocol_features, P.PF) if s else [],
            "mtu": s.mtu if s else self.cfg.mtu,
            "queues": queues,
            "counters": self.dp.port_stats(self.port) if self.port >= 0 else {},
            "error": (self.dp.error(self.port) or None) if state & 4 else None,
            "static_macs": [format_mac(m) for m in self.cfg.static_macs],
        }
