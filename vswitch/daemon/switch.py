"""The running switch: the fast path, its ports, the control socket, metrics and the
housekeeping timers, started and torn down together, and changed by reload."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from typing import Any

from vswitch import __version__
from vswitch.config import Config, PortConfig, load_config
from vswitch.config.edit import with_port_added, with_port_removed
from vswitch.control import ControlServer, make_handler
from vswitch.daemon.capture import Capture
from vswitch.daemon.commands import commands
from vswitch.daemon.metrics import MetricsServer, Snapshot
from vswitch.daemon.notify import Notifier
from vswitch.daemon.reload import apply, diff
from vswitch.errors import ConfigError, ControlError, StartupError
from vswitch.fastpath import MIRROR_RX, MIRROR_TX, Fastpath
from vswitch.netsys.fds import raise_fd_limit
from vswitch.ports import Port, VxlanPort, new_port
from vswitch.text import plural

log = logging.getLogger("vswitch")

AGE_INTERVAL = 1.0
CHECK_INTERVAL = 1.0


class Switch:
    """`async with Switch(config) as sw: await sw.serve_forever()`."""

    def __init__(self, config: Config, notify: Notifier | None = None) -> None:
        self.config = config
        self.notify = notify or Notifier(None)  # the service manager (systemd), if any
        self.dp: Fastpath | None = None
        self.ports: dict[str, Port] = {}
        self.captures: dict[str, Capture] = {}
        self.metrics: MetricsServer | None = None
        self.start_time = time.time()
        self.reloads: dict[str, Any] = {"ok": 0, "failed": 0, "last_ok": self.start_time}
        self._control: ControlServer | None = None
        self._stopped = asyncio.Event()
        self._timers: list[asyncio.Task[None]] = []
        self._reload_lock = asyncio.Lock()

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
        raise_fd_limit(len(cfg.ports))
        self.dp = Fastpath(cfg.switch.fdb_size)
        if os.environ.get("VSWITCH_TEST_NO_DIRTY_LOG") == "1":
            # The migration test's negative control: it must see lost pages.
            log.warning("VSWITCH_TEST_NO_DIRTY_LOG=1: dirty logging is off (a test knob); "
                        "a guest migrated now loses the switch's writes")  # fmt: skip
            self.dp.debug_no_log(True)
        if cfg.switch.datapath == "thread":
            # Before any port exists, so no session ever watches kicks itself.
            self.dp.start_thread(cfg.switch.poll_idle_us, cfg.switch.poll_linger_ns)
        # In both data paths: a call on a peer's eventfd that a front end managed to
        # block is interrupted (csrc/vs_peer.c).
        self.dp.start_watchdog()
        self._timers.append(asyncio.create_task(self._check_ports(), name="port checks"))
        for pc in cfg.ports:
            await self.add_port(pc)
        control = ControlServer(
            str(cfg.control), make_handler(commands(self)), mode=cfg.control_mode
        )
        await control.start()
        self._control = control
        if cfg.metrics is not None:
            await self.start_metrics(cfg.metrics.host, cfg.metrics.port)
        self._timers.append(asyncio.create_task(self._age(), name="fdb aging"))
        log.info(
            "vswitch %s running: %d port(s), control socket %s",
            __version__,
            len(self.ports),
            cfg.control,
        )
        self.notify.ready(self.status_line())

    async def _shutdown(self) -> None:
        for cap in list(self.captures.values()):
            cap.abort("vswitch stopping")
        for t in self._timers:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._timers.clear()
        if self._control is not None:
            await self._control.close()
            self._control = None
        await self.stop_metrics()
        for port in self.ports.values():
            try:
                await port.stop()
            except Exception:  # one port's failure must not leave the others behind
                log.exception("port %s: stopping failed", port.name)
        self.ports.clear()
        if self.dp is not None:
            self.dp.close()
            self.dp = None

    def stop(self) -> None:
        self._stopped.set()

    async def serve_forever(self) -> None:
        await self._stopped.wait()
        self.notify.stopping()
        log.info("vswitch stopping")

    def status_line(self) -> str:
        """'3 ports: 2 up, 1 listening', for the service manager's STATUS=."""
        states: dict[str, int] = {}
        for p in self.ports.values():
            states[p.state] = states.get(p.state, 0) + 1
        counts = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
        return f"{plural(len(self.ports), 'port', 'ports')}" + (f": {counts}" if counts else "")

    # Ports

    async def add_port(self, pc: PortConfig) -> None:
        """Create and start a port; on failure nothing of it is left."""
        assert self.dp is not None
        port = new_port(pc, self.dp)
        self.ports[pc.name] = port  # so that a shutdown during start() stops it
        try:
            await port.start()
        except BaseException:
            self.ports.pop(pc.name, None)
            await port.stop()
            raise
        self.sync_mirrors()

    async def remove_port(self, name: str, why: str = "port removed") -> None:
        """Stop a port: its capture ends, its MAC addresses go, its socket is removed."""
        port = self.ports.pop(name)
        cap = self.captures.get(name)
        if cap is not None:
            cap.abort(why, port=name)  # a capture of several ports goes on without it
            if self.captures.get(name) is cap:
                del self.captures[name]
        await port.stop()  # the fast path takes it out of every mirror
        self.sync_mirrors()

    def sync_mirrors(self) -> None:
        """Gives the fast path every port's `mirror:` as the ports run now: a source that
        is not running is left out until it starts (a port's index may change when it
        restarts, so this runs after every change to the ports)."""
        dp = self.dp
        if dp is None:
            return
        dirs = {"rx": MIRROR_RX, "tx": MIRROR_TX, "both": MIRROR_RX | MIRROR_TX}
        with dp.paused():  # once for all of them
            for p in self.ports.values():
                m = p.cfg.mirror
                if p.port < 0 or (m is None and not p.mirrors):
                    continue
                ids = [] if m is None else [
                    self.ports[n].port for n in m.sources
                    if n in self.ports and self.ports[n].port >= 0
                ]  # fmt: skip
                dp.set_mirror(p.port, ids, dirs[m.direction] if m and ids else 0)
                p.mirrors = bool(ids)

    def port_id(self, name: str) -> int:
        """The fast path's index of a port, or ControlError naming the known ports."""
        port = self.ports.get(name)
        if port is None or port.port < 0:
            known = ", ".join(self.ports) or "none"
            raise ControlError(f"no port {name!r} (ports: {known})")
        return port.port

    def port_name(self, port_id: int) -> str:
        for p in self.ports.values():
            if p.port == port_id:
                return p.name
        return f"#{port_id}"

    def port_remote(self, port_id: int, remote: int) -> str | None:
        """The underlay address of remote `remote` (1 + index) of a VXLAN port."""
        for p in self.ports.values():
            if p.port == port_id and isinstance(p, VxlanPort):
                return p.remote_address(remote)
        return None

    # Metrics

    async def start_metrics(self, host: str, port: int) -> None:
        server = MetricsServer(host, port, self.metrics_snapshot)
        await server.start()
        self.metrics = server

    async def stop_metrics(self) -> None:
        server, self.metrics = self.metrics, None
        if server is not None:
            await server.stop()

    def metrics_snapshot(self) -> Snapshot:
        assert self.dp is not None
        ports = []
        for p in self.ports.values():
            info = p.info()
            ports.append(
                {
                    "name": p.name,
                    "type": info["type"],
                    "state": info["state"],
                    "mtu": info["mtu"],
                    "mac_limit": p.cfg.mac_limit,
                    "counters": info["counters"],
                }
            )
        return {
            "switch": self.dp.switch_stats(),
            "ports": ports,
            "vlans": self.dp.vlan_stats(),
            "start_time": self.start_time,
            "reloads": dict(self.reloads),
        }

    # Reload

    async def reload(self, new: Config | None = None) -> dict[str, Any]:
        """Re-read the config file (or take `new`) and apply the difference.

        An invalid file is refused with ControlError and the running configuration stays.
        Returns {"file", "changes", "warnings"}: one line per change applied or not."""
        async with self._reload_lock:
            self.notify.reloading()
            try:
                return await self._reload(new)
            finally:
                self.notify.ready(self.status_line())

    async def _reload(self, new: Config | None) -> dict[str, Any]:
        source = self.config.source
        if new is None:
            if source is None:
                raise ControlError("reload: the running configuration was not read from a file")
            try:
                new = await asyncio.to_thread(load_config, source)
            except ConfigError as exc:
                self.reloads["failed"] += 1
                for line in str(exc).splitlines():
                    log.error("reload refused: %s", line, extra={"event": "reload"})
                raise ControlError(
                    f"reload refused, the running configuration stays:\n{exc}"
                ) from None
        plan = diff(self.config, new)
        try:
            self.config = await apply(self, plan)
        except (StartupError, ControlError) as exc:
            self.reloads["failed"] += 1
            log.error("reload refused: %s", exc, extra={"event": "reload"})
            raise ControlError(
                f"reload refused, the running configuration stays: {exc}"
            ) from None
        if plan.errors:
            self.reloads["failed"] += 1
            raise ControlError(
                "reload partly applied; failed:\n"
                + "\n".join(plan.errors)
                + ("\napplied:\n" + "\n".join(plan.lines) if plan.lines else "")
            )
        self.reloads["ok"] += 1
        self.reloads["last_ok"] = time.time()
        log.info(
            "reload of %s done: %d change(s), %d not applied",
            source or "the given configuration",
            len(plan.lines),
            len(plan.warnings),
            extra={"event": "reload"},
        )
        return {
            "file": str(source) if source else None,
            "changes": plan.lines,
            "warnings": plan.warnings,
        }

    # Runtime port changes (port-add, port-del)

    async def add_port_live(self, raw: dict[str, Any]) -> dict[str, Any]:
        """Add a port given as its mapping in a file: validated like the file with the port
        in it, then applied like a reload of that one port."""
        return await self._change_ports("port-add", lambda cfg: with_port_added(cfg, raw))

    async def remove_port_live(self, name: str) -> dict[str, Any]:
        return await self._change_ports("port-del", lambda cfg: with_port_removed(cfg, name))

    async def _change_ports(
        self, what: str, edit: Callable[[Config], Config]
    ) -> dict[str, Any]:
        async with self._reload_lock:  # never between the steps of a reload
            try:
                new = edit(self.config)
            except ConfigError as exc:  # one line per problem, each "port-add: ..."
                raise ControlError(str(exc)) from None
            self.notify.reloading()
            try:
                plan = diff(self.config, new)
                try:
                    self.config = await apply(self, plan)
                except (StartupError, ControlError) as exc:
                    log.error("%s refused: %s", what, exc, extra={"event": "reload"})
                    raise ControlError(f"{what} refused: {exc}") from None
            finally:
                self.notify.ready(self.status_line())
        if plan.errors:
            raise ControlError(f"{what} failed:\n" + "\n".join(plan.errors))
        return {"changes": plan.lines, "warnings": plan.warnings}

    # Timers

    async def _check_ports(self) -> None:
        """Each port's housekeeping, once a second: with a poll thread no kick handler
        sees a ring break, and a tap's interface can vanish between two frames."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL)
            for port in list(self.ports.values()):
                port.check()
            self.notify.status(self.status_line())

    async def _age(self) -> None:
        """Ages the MAC table each second.  A poll thread does it itself, a slice at a
        time, so the data path never parks for it; without one, this does it.  mac_age
        is read each time, so reload applies at once."""
        aged = 0
        while True:
            await asyncio.sleep(AGE_INTERVAL)
            dp = self.dp
            if dp is None:
                continue
            max_age = self.config.switch.mac_age
            dp.set_thread_max_age(max_age if dp.threaded else 0)
            if not dp.threaded and max_age > 0:
                dp.fdb_age(max_age)
            total = dp.switch_stats()["fdb_aged"]
            if total > aged:
                log.debug("aged out %d MAC address(es)", total - aged)
            aged = total
