"""Hot reload: the difference between the running configuration and a new one, applied
without touching what did not change.

- Ports are matched by name.  A new name is added, a missing one removed.  A changed port
  is changed in place when only `mac_limit`, `static_macs` or `mirror` differ, or for
  vhost-user also `mtu` and the socket file's `socket_mode` / `owner` / `group`; anything
  else (a new `path`, `type` or vhost `mode`) restarts that port: its guest sees the link
  go down and must reconnect.
- `switch.mac_age` and `switch.log_level` apply at once; `switch.poll_idle_us` and
  `poll_linger_ns` restart the poll thread (frames wait microseconds, none is lost).
  `switch.fdb_size` and `switch.datapath` are not applied: the MAC table and the data
  path mode are fixed at start (replacing the table would forget every address on every
  port); the reload says so and keeps the old values, and a restart applies them.
- `metrics.listen` restarts the metrics server; `control_mode` is applied to the socket
  file; a new `control` path needs a restart (the reload is answered on the old one).

Every change is logged in one line, and returned to the caller.

`diff()` is pure: it compares two configurations and asks each port kind (its
`Port.restarts()`) whether a change needs a restart.  `apply()` carries the plan out on a
running switch through the Port interface; it knows no port kind's details.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Protocol

from vswitch.config import Config, PortConfig
from vswitch.errors import StartupError
from vswitch.fastpath import Fastpath
from vswitch.logs import set_config_level
from vswitch.mac import format_mac
from vswitch.netsys.unix import prepare_socket_path, set_socket_mode
from vswitch.ports import KINDS, Port

log = logging.getLogger("vswitch.reload")


class Target(Protocol):
    """What apply() changes: the running switch (vswitch.daemon.switch.Switch)."""

    dp: Fastpath | None
    ports: dict[str, Port]

    async def add_port(self, pc: PortConfig) -> None: ...
    def sync_mirrors(self) -> None: ...
    async def remove_port(self, name: str, why: str = ...) -> None: ...
    async def start_metrics(self, host: str, port: int) -> None: ...
    async def stop_metrics(self) -> None: ...


POLL_SETTINGS = ("poll_idle_us", "poll_linger_ns")
NEEDS_RESTART = {
    "fdb_size": "the MAC table is sized at start; restart vswitch to resize it",
    "datapath": "the data path mode is chosen at start; restart vswitch to change it",
}


@dataclass
class PortChange:
    old: PortConfig
    new: PortConfig
    fields: list[str]
    restart: bool  # the port kind cannot take the change while running

    @property
    def name(self) -> str:
        return self.new.name


@dataclass
class Plan:
    old: Config
    new: Config
    added: list[PortConfig] = field(default_factory=list)
    removed: list[PortConfig] = field(default_factory=list)
    changed: list[PortChange] = field(default_factory=list)
    switch: list[str] = field(default_factory=list)  # changed switch: keys
    lines: list[str] = field(default_factory=list)  # changes applied
    warnings: list[str] = field(default_factory=list)  # changes not applied, and why
    errors: list[str] = field(default_factory=list)  # changes that failed


def _fields(a: Any, b: Any) -> list[str]:
    return [k for k in type(b).model_fields if getattr(a, k, None) != getattr(b, k, None)]


def diff(old: Config, new: Config) -> Plan:
    plan = Plan(old, new)
    before = {p.name: p for p in old.ports}
    after = {p.name: p for p in new.ports}
    plan.removed = [p for n, p in before.items() if n not in after]
    plan.added = [p for n, p in after.items() if n not in before]
    for n, p in after.items():
        if n in before and before[n] != p:
            fields = _fields(before[n], p)
            restart = KINDS[p.type].restarts(before[n], p, fields)
            plan.changed.append(PortChange(before[n], p, fields, restart))
    plan.switch = _fields(old.switch, new.switch)
    return plan


def _show(v: Any) -> str:
    if isinstance(v, tuple):
        return "[" + ", ".join(format_mac(m) if isinstance(m, int) else str(m) for m in v) + "]"
    if v is None:
        return "none"
    return str(v)


def _note(plan: Plan, text: str) -> None:
    plan.lines.append(text)
    log.info("reload: %s", text, extra={"event": "reload"})


def _warn(plan: Plan, text: str) -> None:
    plan.warnings.append(text)
    log.warning("reload: %s", text, extra={"event": "reload"})


def _fail(plan: Plan, text: str) -> None:
    plan.errors.append(text)
    log.error("reload: %s", text, extra={"event": "reload"})


def _precheck(plan: Plan) -> None:
    """Refuse, before changing anything, a new socket path that another process holds."""
    ours = {p for pc in plan.old.ports for p in pc.socket_paths}
    starting = plan.added + [c.new for c in plan.changed if c.restart]
    for pc in starting:
        if not pc.listens:
            continue
        for path in pc.socket_paths:
            if path not in ours:
                try:
                    prepare_socket_path(path)
                except StartupError as exc:
                    raise StartupError(f"port {pc.name}: {exc}") from None


async def apply(sw: Target, plan: Plan) -> Config:
    """Apply the plan to the running switch; returns the configuration now in force."""
    _precheck(plan)
    running: dict[str, PortConfig] = {p.name: p for p in plan.old.ports}

    # 1. Ports that go away or restart: their captures end, their sockets close.
    for pc in plan.removed:
        await sw.remove_port(pc.name, "port removed by reload")
        running.pop(pc.name)
        _note(plan, f"port {pc.name} removed")
    restarts = [c for c in plan.changed if c.restart]
    for c in restarts:
        await sw.remove_port(c.name, "port restarted by reload")
        running.pop(c.name)

    # 2. In-place changes: static MACs leave first, so one can move between ports.
    in_place = [c for c in plan.changed if not c.restart]
    for c in in_place:
        sw.ports[c.name].release_static_macs(c.new)
    for c in in_place:
        what = _changes(c.old, c.new, c.fields)
        try:
            notes = sw.ports[c.name].reconfigure(c.new, c.fields)
        except OSError as exc:
            _fail(plan, f"port {c.name}: {what} failed: {exc}")
            continue
        for line in notes:
            _note(plan, f"port {c.name}: {line}")
        _note(plan, f"port {c.name}: {what}")
        running[c.name] = c.new

    # 3. New and restarted ports.
    for pc, what in [(p, "added") for p in plan.added] + [(c.new, "restarted") for c in restarts]:
        try:
            await sw.add_port(pc)
        except (StartupError, OSError) as exc:
            _fail(plan, f"port {pc.name} not {what}: {exc}")
            continue
        running[pc.name] = pc
        if what == "added":
            _note(plan, f"port {pc.name} added ({pc.type}, {', '.join(map(str, pc.socket_paths))})")
        else:
            c = next(c for c in restarts if c.name == pc.name)
            _note(plan, f"port {pc.name} restarted: {_changes(c.old, c.new, c.fields)}")

    # Mirrors name other ports: given to the fast path again once every port is in place
    # (adding and removing ports did too; this covers a change of `mirror:` alone).
    sw.sync_mirrors()

    # 4. Switch-wide settings, metrics, control socket.
    switch = _apply_switch(sw, plan)
    metrics = await _apply_metrics(sw, plan)
    control_mode = plan.old.control_mode
    if plan.new.control_mode != control_mode:
        try:
            set_socket_mode(plan.old.control, plan.new.control_mode)
            control_mode = plan.new.control_mode
            _note(plan, f"control_mode {control_mode:04o}")
        except OSError as exc:
            _fail(plan, f"control_mode not applied: {exc.strerror}")
    if plan.new.control != plan.old.control:
        _warn(
            plan,
            f"control {plan.old.control} -> {plan.new.control} not applied: "
            "the control socket moves at the next restart",
        )
    if not (plan.lines or plan.warnings or plan.errors):
        _note(plan, "no changes")
        plan.lines.clear()

    order = [p.name for p in plan.new.ports if p.name in running]
    order += [n for n in running if n not in order]
    return plan.new.model_copy(
        update={
            "ports": tuple(running[n] for n in order),
            "switch": switch,
            "metrics": metrics,
            "control": plan.old.control,
            "control_mode": control_mode,
        }
    )


def _changes(old: Any, new: Any, fields: list[str]) -> str:
    def show(f: str, v: Any) -> str:
        # File modes as people write them (0660), not as the integers they are.
        return f"{v:04o}" if f.endswith("_mode") and isinstance(v, int) else _show(v)

    return ", ".join(f"{f} {show(f, getattr(old, f, None))} -> {show(f, getattr(new, f))}"
                     for f in fields)  # fmt: skip


def _apply_switch(sw: Target, plan: Plan) -> Any:
    assert sw.dp is not None
    old, new = plan.old.switch, plan.new.switch
    keep: dict[str, Any] = {}
    # The poll thread restarts once, however many of its settings changed.
    if sw.dp.threaded and any(f in POLL_SETTINGS for f in plan.switch):
        sw.dp.stop_thread()
        sw.dp.start_thread(new.poll_idle_us, new.poll_linger_ns)
    for f in plan.switch:
        a, b = getattr(old, f), getattr(new, f)
        text = f"switch.{f} {_show(a)} -> {_show(b)}"
        if f == "mac_age":
            _note(plan, text + (" (aging off)" if b == 0 else ""))
        elif f == "log_level":
            if set_config_level(b):
                _note(plan, text)
            else:
                _warn(plan, f"{text} not applied: --log-level on the command line wins")
        elif f in POLL_SETTINGS and sw.dp.threaded:
            _note(plan, text)
        elif f in POLL_SETTINGS:
            _note(plan, text + " (unused with datapath: loop)")
        else:
            keep[f] = a
            why = NEEDS_RESTART.get(f, "needs a restart of vswitch")
            _warn(plan, f"{text} not applied: {why}")
    return new.model_copy(update=keep)


async def _apply_metrics(sw: Target, plan: Plan) -> Any:
    old, new = plan.old.metrics, plan.new.metrics
    if old == new:
        return old
    await sw.stop_metrics()
    text = f"metrics.listen {_show(old and old.listen)} -> {_show(new and new.listen)}"
    if new is None:
        _note(plan, text)
        return None
    try:
        await sw.start_metrics(new.host, new.port)
    except StartupError as exc:
        _fail(plan, f"{text} failed: {exc}")
        return None
    _note(plan, text)
    return new
