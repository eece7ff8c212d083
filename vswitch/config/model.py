"""The whole configuration: the `switch:` and `metrics:` sections, the ports, and the
checks that span several ports."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr, model_validator

from vswitch.config.fields import (
    FileMode,
    LogLevel,
    QueuePairs,
    SocketPath,
    int_in,
    listen_addr,
    queue_pairs,
)
from vswitch.config.ports import Model, Port, TapPort, VxlanPort
from vswitch.limits import MAX_FDB_SIZE, MAX_PORTS, MAX_QUEUE_PAIRS
from vswitch.mac import format_mac

Loc = tuple[int | str, ...]


def default_control_path() -> Path:
    """Where the control socket lives when the config does not say.

    root: /run/vswitch/ctl.sock; others: $XDG_RUNTIME_DIR/vswitch/ctl.sock, or
    /tmp/vswitch-$UID/ctl.sock without XDG_RUNTIME_DIR.  The daemon creates the directory.
    """
    if os.geteuid() == 0:
        return Path("/run/vswitch/ctl.sock")
    xdg = os.environ.get("XDG_RUNTIME_DIR", "")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "vswitch" / "ctl.sock"
    return Path(f"/tmp/vswitch-{os.getuid()}/ctl.sock")


class SwitchConfig(Model):
    """The `switch:` section."""

    mac_age: Annotated[int, BeforeValidator(int_in(0, 2**31 - 1, "seconds, 0 = never"))] = 300
    fdb_size: Annotated[int, BeforeValidator(int_in(16, MAX_FDB_SIZE, "e.g. 65536"))] = 65536
    log_level: Annotated[str, LogLevel] = "info"  # one of vswitch.logs.LEVELS
    # thread: the C poll thread serves the rings (busy while frames flow,
    # asleep in epoll when idle); loop: the event loop serves them on kicks.
    datapath: Literal["thread", "loop"] = "thread"
    poll_idle_us: Annotated[int, BeforeValidator(int_in(0, 1_000_000, "microseconds"))] = 100
    poll_linger_ns: Annotated[int, BeforeValidator(int_in(0, 100_000, "nanoseconds"))] = 3000
    # The queue pairs a vhost-user port without its own `queues` may have.
    queues: QueuePairs = MAX_QUEUE_PAIRS


class MetricsConfig(Model):
    """The `metrics:` section: where the Prometheus endpoint listens."""

    listen: Annotated[str, BeforeValidator(listen_addr)] = Field(examples=["127.0.0.1:9400"])

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class Problems(ValueError):
    """Several cross-field problems, each with its own location (the loader renders them)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("\n".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = problems


def _check_ports(ports: Any) -> Any:
    if not ports:
        raise ValueError("no ports (add at least one; see configs/minimal.yaml)")
    if len(ports) > MAX_PORTS:
        raise ValueError(f"{len(ports)} ports given (at most {MAX_PORTS} are supported)")
    return ports


class Config(Model):
    """The whole configuration file."""

    control: SocketPath = Field(default_factory=default_control_path)
    control_mode: FileMode = 0o600
    switch: SwitchConfig = SwitchConfig()
    metrics: MetricsConfig | None = None
    ports: Annotated[tuple[Port, ...], AfterValidator(_check_ports)] = Field(
        examples=["[{name: vm1, type: vhost-user, path: vm1.sock}]"]
    )

    @model_validator(mode="before")
    @classmethod
    def _default_queues(cls, data: Any) -> Any:
        """switch.queues is the default of every vhost-user port's `queues`."""
        if not isinstance(data, dict) or not isinstance(data.get("switch"), dict):
            return data
        default = data["switch"].get("queues")
        ports = data.get("ports")
        if default is None or not isinstance(ports, list | tuple):
            return data
        try:
            queue_pairs(default)
        except ValueError:
            return data  # said once, at switch.queues
        ports = [
            {**p, "queues": default}
            if isinstance(p, dict) and p.get("type") == "vhost-user" and "queues" not in p
            else p
            for p in ports
        ]
        return {**data, "ports": ports}

    @model_validator(mode="after")
    def _unique(self) -> Config:
        problems: list[tuple[Loc, str]] = []
        seen: dict[object, str] = {self.control: "control"}  # name, path or MAC -> its user
        for i, port in enumerate(self.ports):
            here = f"ports[{i}] ({port.name})"
            fix = "give each port a unique name"
            checks: list[tuple[Loc, object, str, str]] = [
                (("ports", i, "name"), ("name", port.name), f"port name {port.name!r}", fix)
            ]
            fix = "give each socket its own path"
            checks += [(("ports", i, "path"), p, str(p), fix) for p in port.socket_paths]
            if isinstance(port, TapPort):
                fix = "give each tap port its own ifname or netns"
                checks.append(
                    (("ports", i, "ifname"), ("tap", port.netns, port.ifname),
                     f"interface {port.where}", fix)
                )  # fmt: skip
            if isinstance(port, VxlanPort):
                fix = "give each vxlan port on one endpoint its own vni"
                checks.append(
                    (("ports", i, "vni"), ("vxlan", port.netns, port.local, port.dstport,
                     port.vni), f"VNI {port.vni} at {port.where}", fix)
                )  # fmt: skip
            fix = "a MAC can be static on one port of a VLAN only"
            checks += [
                (("ports", i, "static_macs", j), ("mac", port.home_vlan, mac), format_mac(mac), fix)
                for j, mac in enumerate(port.static_macs)
            ]
            for loc, key, what, fix in checks:
                if key in seen:
                    problems.append((loc, f"{what} is already used by {seen[key]} ({fix})"))
                seen.setdefault(key, here if loc[2] == "name" else f"{here}.{loc[2]}")
        names = {port.name for port in self.ports}
        for i, port in enumerate(self.ports):
            if port.mirror is None:
                continue
            for j, src in enumerate(port.mirror.sources):
                loc = ("ports", i, "mirror", "from", j)
                if src == port.name:
                    problems.append((loc, f"port {port.name} cannot mirror itself (name the "
                                          "ports whose traffic it should see)"))  # fmt: skip
                elif src not in names:
                    known = ", ".join(sorted(names - {port.name})) or "none"
                    problems.append((loc, f"no port {src!r} to mirror (ports: {known}; fix "
                                          "the name, or add that port)"))  # fmt: skip
        if problems:
            raise Problems(problems)
        return self

    # The file it was loaded from (load_config sets it): what `vswitch reload` re-reads.
    _source: Path | None = PrivateAttr(default=None)

    @property
    def source(self) -> Path | None:
        return self._source

    @property
    def control_is_default(self) -> bool:
        """True when the file gave no `control:`: the daemon creates its directory."""
        return "control" not in self.model_fields_set
