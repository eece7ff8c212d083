"""The control commands: what the JSON protocol on the control socket can ask.

docs/control.md is the reference for every command, its arguments, results and errors.
Each command checks its arguments and raises ControlError with a message for a person;
operator actions that change the switch are logged, one line each.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from vswitch import PROTOCOL, __version__
from vswitch.config import Config, PortConfig
from vswitch.config.vlans import format_trunks
from vswitch.control import Stream
from vswitch.daemon.capture import (
    DEFAULT_BUFFER,
    MAX_SNAPLEN,
    Capture,
    parse_args,
    parse_filter,
)
from vswitch.daemon.metrics import MetricsServer
from vswitch.errors import ControlError
from vswitch.fastpath import Fastpath
from vswitch.mac import format_mac, parse_static_mac
from vswitch.ports import Port
from vswitch.text import plural

log = logging.getLogger("vswitch.control")

Command = Callable[..., Awaitable[Any]]


class SwitchState(Protocol):
    """What the commands read and change: the running switch (vswitch.daemon.switch)."""

    dp: Fastpath | None
    ports: dict[str, Port]
    captures: dict[str, Capture]
    metrics: MetricsServer | None
    start_time: float
    reloads: dict[str, Any]

    config: Config

    def port_id(self, name: str) -> int: ...
    def port_name(self, port_id: int) -> str: ...
    async def reload(self) -> dict[str, Any]: ...
    async def add_port_live(self, raw: dict[str, Any]) -> dict[str, Any]: ...
    async def remove_port_live(self, name: str) -> dict[str, Any]: ...


def _port_arg(v: Any, what: str = "port") -> str:
    if not isinstance(v, str) or not v:
        raise ControlError(f"{what} must be a port name, got {v!r}")
    return v


def _vlan_arg(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 4094:
        raise ControlError(
            f"vlan must be a whole number in 0..4094 (0: ports that are not VLAN-aware), got {v!r}"
        )
    return v


def _carries(cfg: PortConfig, v: int) -> bool:
    if cfg.trunks:
        return v in cfg.trunks or v == cfg.native_vlan
    return v == cfg.vlan


def _vlans_of(cfg: PortConfig) -> str:
    if cfg.trunks:
        native = f", native_vlan {cfg.native_vlan}" if cfg.native_vlan else ""
        return f"trunks {format_trunks(cfg.trunks)}{native}"
    return f"access VLAN {cfg.vlan}" if cfg.vlan else "not VLAN-aware: VLAN 0"


def _mac_arg(v: Any) -> int:
    if not isinstance(v, str):
        raise ControlError(f"mac must be a string like 52:54:00:00:00:01, got {v!r}")
    try:
        return parse_static_mac(v)
    except ValueError as exc:
        raise ControlError(f"mac: {exc}") from None


def commands(sw: SwitchState) -> dict[str, Command]:
    """The command table for make_handler()."""

    def dp() -> Fastpath:
        if sw.dp is None:
            raise ControlError("the switch is not running")
        return sw.dp

    def port_info(name: str) -> dict[str, Any]:
        p = sw.ports[name]
        info = p.info()
        info["mac_limit"] = p.cfg.mac_limit
        info["capture"] = name in sw.captures
        m = p.cfg.mirror
        info["mirror"] = None if m is None else {"from": list(m.sources),
                                                 "direction": m.direction}  # fmt: skip
        return info

    async def version() -> dict[str, Any]:
        return {"version": __version__}

    async def hello() -> dict[str, Any]:
        return {
            "version": __version__,
            "protocol": PROTOCOL,
            "commands": sorted(table),
            "config": str(sw.config.source) if sw.config.source else None,
        }

    async def port_add(port: Any) -> dict[str, Any]:
        if not isinstance(port, dict):
            raise ControlError(f"port must be a mapping of the port's keys, got {port!r}")
        result = await sw.add_port_live(port)
        name = port.get("name")
        return {"port": port_info(name) if name in sw.ports else None, **result}

    async def port_del(name: Any) -> dict[str, Any]:
        return await sw.remove_port_live(_port_arg(name, "name"))

    async def ports(port: str | None = None) -> list[dict[str, Any]]:
        if port is not None:
            sw.port_id(_port_arg(port))
            return [port_info(port)]
        return [port_info(n) for n in sw.ports]

    async def fdb(port: str | None = None) -> list[dict[str, Any]]:
        want = None if port is None else sw.port_id(_port_arg(port))
        entries = sorted(dp().fdb_dump(), key=lambda e: (e.vlan, e.mac))
        return [
            {
                "mac": format_mac(e.mac),
                "vlan": e.vlan,
                "port": sw.port_name(e.port),
                "age": e.age,
                "type": "static" if e.static else "dynamic",
                **({"remote": sw.port_remote(e.port, e.remote)} if e.remote else {}),
            }
            for e in entries
            if want is None or e.port == want
        ]

    async def fdb_add(mac: Any, port: Any, vlan: Any = None) -> dict[str, Any]:
        pid = sw.port_id(_port_arg(port))
        cfg = sw.ports[port].cfg
        # Without --vlan, the port's own untagged VLAN (0 on a port without VLANs).
        m, v = _mac_arg(mac), cfg.home_vlan if vlan is None else _vlan_arg(vlan)
        if not _carries(cfg, v):
            raise ControlError(
                f"port {port} does not carry VLAN {v} ({_vlans_of(cfg)}): "
                "give --vlan with one of its VLANs"
            )
        try:
            dp().fdb_add(m, pid, vlan=v, static=True)
        except OSError as exc:
            raise ControlError(f"cannot add {format_mac(m)}: {exc.strerror}") from None
        log.info("fdb: static %s vlan %d added on port %s", format_mac(m), v, port)
        return {"mac": format_mac(m), "vlan": v, "port": port, "type": "static"}

    async def fdb_del(mac: Any, vlan: Any = 0) -> dict[str, Any]:
        m, v = _mac_arg(mac), _vlan_arg(vlan)
        # One lookup in C under the same pause as the removal, not a dump of the table.
        e = dp().fdb_del(m, vlan=v)
        if e is None:
            raise ControlError(f"{format_mac(m)} vlan {v} is not in the MAC table")
        where = sw.port_name(e.port)
        log.info("fdb: %s vlan %d removed (was on port %s)", format_mac(m), v, where)
        return {"mac": format_mac(m), "vlan": v, "port": where}

    async def fdb_flush(port: Any = None, static: Any = False, vlan: Any = None) -> dict[str, Any]:
        if not isinstance(static, bool):
            raise ControlError(f"static must be true or false, got {static!r}")
        pid = -1 if port is None else sw.port_id(_port_arg(port))
        v = None if vlan is None else _vlan_arg(vlan)
        n = dp().fdb_flush(pid, vlan=v, include_static=static)
        what = "dynamic and static" if static else "dynamic"
        on = "" if v is None else f" of VLAN {v}"
        log.info(
            "fdb: flushed %s (%s)%s on %s",
            plural(n, "entry", "entries"), what, on, port or "all ports",
        )  # fmt: skip
        return {"flushed": n, "port": port, "static": static, "vlan": v}

    async def stats() -> dict[str, Any]:
        return {
            "switch": dp().switch_stats(),
            "ports": {n: sw.ports[n].info()["counters"] for n in sw.ports},
            "vlans": {str(v): c for v, c in dp().vlan_stats().items()},
            "uptime": round(time.time() - sw.start_time, 3),
            "reloads": dict(sw.reloads),
            "metrics": sw.metrics.address if sw.metrics else None,
            "captures": {
                n: {
                    "frames": c.frames,
                    "direction": c.args.direction,
                    "format": c.args.format,
                    "ports": list(c.args.ports),
                    "filter": c.args.filter,
                }
                for n, c in sw.captures.items()
            },
        }

    async def reload() -> dict[str, Any]:
        return await sw.reload()

    async def capture(
        port: Any,
        direction: Any = "both",
        count: Any = None,
        snaplen: Any = MAX_SNAPLEN,
        format: Any = "pcapng",
        buffer: Any = DEFAULT_BUFFER,
        duration: Any = None,
        filter: Any = None,
    ) -> Stream:
        args = parse_args(port, direction, count, snaplen, format, buffer, duration, filter)
        for name in args.ports:
            sw.port_id(name)  # "no port" before compiling anything
        # libpcap's message for a bad expression.  In a thread: a host name in the
        # expression is looked up (DNS), which must not stop the loop.
        program = await asyncio.to_thread(parse_filter, args.filter) if args.filter else None
        pids = [sw.port_id(name) for name in args.ports]  # again: the await let reloads run
        for name in args.ports:
            if name in sw.captures:
                raise ControlError(
                    f"port {name} already has a capture running (one per port: "
                    "stop the other `vswitch capture` first)"
                )

        def ended(c: Capture) -> None:
            for name in c.args.ports:
                if sw.captures.get(name) is c:
                    del sw.captures[name]

        cap = Capture(dp(), pids, args, ended, program)
        stream = cap.start()  # ControlError if the fast path refuses (EBUSY, ENOMEM)
        for name in args.ports:
            sw.captures[name] = cap
        return stream

    table: dict[str, Command] = {
        "hello": hello,
        "version": version,
        "ports": ports,
        "fdb": fdb,
        "fdb-add": fdb_add,
        "fdb-del": fdb_del,
        "fdb-flush": fdb_flush,
        "stats": stats,
        "reload": reload,
        "capture": capture,
        "port-add": port_add,
        "port-del": port_del,
    }
    return table
