"""The running switch: the fast path, its ports, the control socket and the
housekeeping timers, started and torn down together."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from vswitch import __version__
from vswitch.config import Config
from vswitch.control import ControlServer, make_handler
from vswitch.datapath import Datapath
from vswitch.mac import format_mac
from vswitch.vhost.port import VhostPort

log = logging.getLogger("vswitch")

AGE_INTERVAL = 1.0


class Switch:
    """`async with Switch(config) as sw: await sw.serve_forever()`."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.dp: Datapath | None = None
        self.ports: dict[str, VhostPort] = {}
        self._control: ControlServer | None = None
        self._stopped = asyncio.Event()
        self._timers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Switch:
        try:
            await self._start()
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._shutdown()

    async def _start(self) -> None:
        cfg = self.config
        self.dp = Datapath(cfg.switch.fdb_size)
        if cfg.switch.datapath == "thread":
            # Before any port exists, so no session ever watches kicks itself.
            self.dp.start_thread(cfg.switch.poll_idle_us)
            self._timers.append(asyncio.create_task(self._watch_rings(), name="ring watch"))
        for pc in cfg.ports:
            port = VhostPort(pc, self.dp)
            self.ports[pc.name] = port
            await port.start()
        control = ControlServer(
            str(cfg.control), make_handler(self._commands()), mode=cfg.control_mode
        )
        await control.start()
        self._control = control
        if cfg.switch.mac_age > 0:
            self._timers.append(asyncio.create_task(self._age(), name="fdb aging"))
        log.info(
            "vswitch %s running: %d port(s), control socket %s",
            __version__,
            len(self.ports),
            cfg.control,
        )

    async def _shutdown(self) -> None:
        for t in self._timers:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._timers.clear()
        if self._control is not None:
            await self._control.close()
            self._control = None
        for port in self.ports.values():
            await port.stop()
        self.ports.clear()
        if self.dp is not None:
            self.dp.close()
            self.dp = None

    def stop(self) -> None:
        self._stopped.set()

    async def serve_forever(self) -> None:
        await self._stopped.wait()
        log.info("vswitch stopping")

    async def _watch_rings(self) -> None:
        """With a poll thread no kick handler sees a ring break: look each second."""
        while True:
            await asyncio.sleep(AGE_INTERVAL)
            for port in self.ports.values():
                port.check()

    async def _age(self) -> None:
        assert self.dp is not None
        while True:
            await asyncio.sleep(AGE_INTERVAL)
            n = self.dp.fdb_age(self.config.switch.mac_age)
            if n:
                log.debug("aged out %d MAC address(es)", n)

    # Control socket

    def _port_name(self, port_id: int) -> str:
        for p in self.ports.values():
            if p.port == port_id:
                return p.name
        return f"#{port_id}"

    def ports_info(self) -> list[dict[str, Any]]:
        return [p.info() for p in self.ports.values()]

    def fdb_info(self) -> list[dict[str, Any]]:
        assert self.dp is not None
        entries = sorted(self.dp.fdb_dump(), key=lambda e: (e.vlan, e.mac))
        return [
            {
                "mac": format_mac(e.mac),
                "vlan": e.vlan,
                "port": self._port_name(e.port),
                "age": e.age,
                "type": "static" if e.static else "dynamic",
            }
            for e in entries
        ]

    def stats(self) -> dict[str, Any]:
        assert self.dp is not None
        return {
            "switch": self.dp.switch_stats(),
            "ports": {p.name: p.info()["counters"] for p in self.ports.values()},
        }

    def _commands(self) -> dict[str, Callable[..., Awaitable[Any]]]:
        async def ports() -> list[dict[str, Any]]:
            return self.ports_info()

        async def fdb() -> list[dict[str, Any]]:
            return self.fdb_info()

        async def stats() -> dict[str, Any]:
            return self.stats()

        async def version() -> dict[str, str]:
            return {"version": __version__}

        return {"ports": ports, "fdb": fdb, "stats": stats, "version": version}
