"""The YAML configuration: pydantic models, a strict YAML loader and one-line error messages.

`load_config(path)` returns a frozen `Config` or raises `ConfigError` whose message has one
line per problem: `FILE: FIELD: problem (what to do)`.  docs/config.md documents the schema.
"""

from __future__ import annotations

import difflib
import grp
import ipaddress
import os
import pwd
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    model_validator,
)

from vswitch.errors import ConfigError
from vswitch.mac import MAC_FIX, format_mac, parse_mac, parse_static_mac

__all__ = ["Config", "ConfigError", "MetricsConfig", "Port", "SwitchConfig", "VhostUserPort"]
__all__ += ["default_control_path", "format_mac", "load_config", "parse_config", "parse_mac"]

MAX_PORTS = 256  # VS_MAX_PORTS in csrc/fastpath.h
MIN_MTU, MAX_MTU = 68, 9000  # VS_MIN_MTU, VS_MAX_MTU
MAX_SUN_PATH = 107  # sizeof(sockaddr_un.sun_path) - 1 on Linux
LOG_LEVELS = ("debug", "info", "warning", "error")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,15}$")

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


# --------------------------------------------------------------------------- field checks


def _describe(v: Any) -> str:
    if v is None:
        return "nothing (null)"
    if isinstance(v, bool):
        return f"a boolean ({str(v).lower()})"
    if isinstance(v, int | float):
        return f"the number {v}"
    if isinstance(v, str):
        return f"the string {v!r}"
    if isinstance(v, list | tuple):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    return type(v).__name__


def _int_in(lo: int, hi: int, fix: str) -> Callable[[Any], int]:
    def check(v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ValueError(f"expected a whole number, got {_describe(v)} ({fix})")
        if not lo <= v <= hi:
            raise ValueError(f"{v} is out of range {lo}..{hi} ({fix})")
        return v

    return check


def _file_mode(v: Any) -> int:
    fix = 'write it as a quoted octal string, e.g. "0660"'
    if isinstance(v, str) and re.fullmatch(r"(0o?)?[0-7]{1,4}", v.strip()):
        mode = int(v.strip().removeprefix("0o") or "0", 8)
    elif isinstance(v, int) and not isinstance(v, bool):
        mode = v
    else:
        raise ValueError(f"expected a file mode, got {_describe(v)} ({fix})")
    if not 0 <= mode <= 0o777:
        raise ValueError(f"{v!r} is octal {mode:o}: bits beyond rwxrwxrwx ({fix})")
    if mode & 0o002:
        raise ValueError(
            f"mode {mode:04o} is world-writable: any local user could connect to the socket and "
            "control the switch or its guests (drop the o+w bit, e.g. 0660, and share with `group`)"
        )
    return mode


def _socket_path(v: Any, info: ValidationInfo) -> Path:
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"expected a path, got {_describe(v)} (write e.g. /tmp/vswitch/vm1.sock)")
    if "\0" in v:
        raise ValueError("path contains a NUL byte (remove it)")
    base = (info.context or {}).get("base_dir") or Path.cwd()
    path = Path(os.path.abspath(Path(base) / Path(v).expanduser()))
    if len(os.fsencode(path)) > MAX_SUN_PATH:
        raise ValueError(
            f"{path} is {len(os.fsencode(path))} bytes long; unix socket paths are limited to "
            f"{MAX_SUN_PATH} (use a shorter path)"
        )
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist (create it, or fix the path)")
    return path


def _port_name(v: Any) -> str:
    if not isinstance(v, str) or not _NAME_RE.match(v):
        raise ValueError(
            f"{_describe(v)} is not a valid port name "
            "(use 1-15 characters from A-Z a-z 0-9 _ . -, e.g. vm1)"
        )
    return v


def _id_lookup(kind: str) -> Callable[[Any], int | None]:
    lookup = pwd.getpwnam if kind == "user" else grp.getgrnam

    def check(v: Any) -> int | None:
        if v is None:
            return None
        if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
            return v
        if isinstance(v, str) and v.isdigit():
            return int(v)
        if not isinstance(v, str) or not v:
            raise ValueError(f"expected a {kind} name or id, got {_describe(v)}")
        try:
            entry = lookup(v)
        except KeyError:
            raise ValueError(
                f"unknown {kind} {v!r} (create it, or give an existing {kind} name or numeric id)"
            ) from None
        return entry.pw_uid if isinstance(entry, pwd.struct_passwd) else entry.gr_gid

    return check


def _mac(v: Any) -> int:
    if not isinstance(v, str):
        raise ValueError(f"expected a MAC address, got {_describe(v)} ({MAC_FIX})")
    return parse_static_mac(v)


def _log_level(v: Any) -> str:
    if isinstance(v, str) and v.lower() in LOG_LEVELS:
        return v.lower()
    raise ValueError(f"{_describe(v)} is not a log level (use one of {', '.join(LOG_LEVELS)})")


def _listen_addr(v: Any) -> str:
    """HOST:PORT with an IPv4 address, [IPv6] or a host name; port 0 picks a free one."""
    fix = 'write HOST:PORT, e.g. "127.0.0.1:9400" or "[::1]:9400"'
    if not isinstance(v, str):
        raise ValueError(f"expected HOST:PORT, got {_describe(v)} ({fix})")
    m = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})", v.strip())
    if not m:
        raise ValueError(f"{v!r} is not HOST:PORT ({fix})")
    host, port = m.group(1), int(m.group(2))
    if port > 65535:
        raise ValueError(f"port {port} is out of range 0..65535 ({fix})")
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise ValueError(f"{host} is not an IPv6 address ({fix})") from None
    return f"{host}:{port}"


_LogLevel = BeforeValidator(_log_level)
FileMode = Annotated[int, BeforeValidator(_file_mode)]
SocketPath = Annotated[Path, BeforeValidator(_socket_path)]
Mac = Annotated[int, BeforeValidator(_mac)]
MacLimit = Annotated[int, BeforeValidator(_int_in(0, 16 * 2**20, "0 = no limit, e.g. 4096"))]
DEFAULT_MAC_LIMIT = 4096  # dynamic addresses one port may own; 0 = no limit


# --------------------------------------------------------------------------- models


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SwitchConfig(_Model):
    """The `switch:` section."""

    mac_age: Annotated[int, BeforeValidator(_int_in(0, 2**31 - 1, "seconds, 0 = never"))] = 300
    fdb_size: Annotated[int, BeforeValidator(_int_in(16, 16 * 2**20, "e.g. 65536"))] = 65536
    log_level: Annotated[Literal["debug", "info", "warning", "error"], _LogLevel] = "info"
    # thread: the C poll thread serves the rings (busy while frames flow,
    # asleep in epoll when idle); loop: the event loop serves them on kicks.
    datapath: Literal["thread", "loop"] = "thread"
    poll_idle_us: Annotated[int, BeforeValidator(_int_in(0, 1_000_000, "microseconds"))] = 100
    poll_linger_ns: Annotated[int, BeforeValidator(_int_in(0, 100_000, "nanoseconds"))] = 3000


class MetricsConfig(_Model):
    """The `metrics:` section: where the Prometheus endpoint listens."""

    listen: Annotated[str, BeforeValidator(_listen_addr)] = Field(examples=["127.0.0.1:9400"])

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


class VhostUserPort(_Model):
    """A port a QEMU guest attaches to with `-netdev vhost-user`.

    mode server: the switch listens on path and QEMU connects (reconnect=1
    lets QEMU find a restarted switch).  mode client: QEMU serves path
    (`-chardev socket,server=on`) and the switch connects, retrying with
    backoff until it appears and again whenever QEMU goes away."""

    name: Annotated[str, BeforeValidator(_port_name)] = Field(examples=["vm1"])
    type: Literal["vhost-user"] = Field(examples=["vhost-user"])
    path: SocketPath = Field(examples=["/tmp/vswitch/vm1.sock"])
    mode: Literal["server", "client"] = "server"
    socket_mode: FileMode = 0o600
    owner: Annotated[int | None, BeforeValidator(_id_lookup("user"))] = None  # uid
    group: Annotated[int | None, BeforeValidator(_id_lookup("group"))] = None  # gid
    mtu: Annotated[int, BeforeValidator(_int_in(MIN_MTU, MAX_MTU, "e.g. 1500"))] = 1500
    mac_limit: MacLimit = DEFAULT_MAC_LIMIT
    static_macs: tuple[Mac, ...] = ()  # 48-bit ints

    @property
    def socket_paths(self) -> tuple[Path, ...]:
        return (self.path,)


# Every port model, by its `type` tag; `tap` will join this union.
from vswitch.config_tap import TapPort  # noqa: E402  (it builds on the models above)

PORT_TYPES: dict[str, type[BaseModel]] = {"vhost-user": VhostUserPort, "tap": TapPort}
Port = Annotated[VhostUserPort | TapPort, Field(discriminator="type")]


class _Problems(ValueError):
    """Several cross-field problems, each with its own location (see _convert)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("\n".join(f"{_loc_text(loc, None)}: {msg}" for loc, msg in problems))
        self.problems = problems


def _check_ports(ports: Any) -> Any:
    if not ports:
        raise ValueError("no ports (add at least one; see configs/minimal.yaml)")
    if len(ports) > MAX_PORTS:
        raise ValueError(f"{len(ports)} ports given (at most {MAX_PORTS} are supported)")
    return ports


class Config(_Model):
    """The whole configuration file."""

    control: SocketPath = Field(default_factory=default_control_path)
    control_mode: FileMode = 0o600
    switch: SwitchConfig = SwitchConfig()
    metrics: MetricsConfig | None = None
    ports: Annotated[tuple[Port, ...], AfterValidator(_check_ports)] = Field(
        examples=["[{name: vm1, type: vhost-user, path: vm1.sock}]"]
    )

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
            fix = "a MAC can be static on one port only"
            checks += [
                (("ports", i, "static_macs", j), ("mac", mac), format_mac(mac), fix)
                for j, mac in enumerate(port.static_macs)
            ]
            for loc, key, what, fix in checks:
                if key in seen:
                    problems.append((loc, f"{what} is already used by {seen[key]} ({fix})"))
                seen.setdefault(key, here if loc[2] == "name" else f"{here}.{loc[2]}")
        if problems:
            raise _Problems(problems)
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

    def port(self, name: str) -> VhostUserPort:
        for p in self.ports:
            if p.name == name:
                return p
        raise KeyError(name)


# --------------------------------------------------------------------------- YAML


class _DuplicateKey(yaml.constructor.ConstructorError):
    pass


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and reads 52:54:00:00:00:01 as a string."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, list | dict):
                continue  # SafeConstructor reports unhashable keys itself
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise _DuplicateKey(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first}; keep only one)",
                    key_node.start_mark,
                )
            seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def _no_base60(base: Callable[[yaml.SafeLoader, yaml.ScalarNode], Any]) -> Any:
    """YAML 1.1 reads 52:54:00:00:00:01 as a base-60 number: keep such scalars as strings."""

    def construct(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> Any:
        return node.value if ":" in node.value else base(loader, node)

    return construct


_Loader.add_constructor("tag:yaml.org,2002:int", _no_base60(yaml.SafeLoader.construct_yaml_int))
_Loader.add_constructor("tag:yaml.org,2002:float", _no_base60(yaml.SafeLoader.construct_yaml_float))


# --------------------------------------------------------------------------- errors


def _loc_text(loc: Loc, data: Any) -> str:
    """("ports", 1, "path") -> "ports[1] (vm2).path", naming the port when the data has it."""
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
        if i == 1 and loc[0] == "ports" and isinstance(part, int) and isinstance(data, dict):
            ports = data.get("ports")
            port = ports[part] if isinstance(ports, list) and part < len(ports) else None
            name = port.get("name") if isinstance(port, dict) else None
            if isinstance(name, str) and name:
                out += f" ({name})"
    return out


def _strip_tags(loc: Loc) -> tuple[Loc, type[_Model] | None]:
    """Drop the union tag pydantic puts after ports[i]; find the model owning the last key."""
    out: list[int | str] = []
    model: type[_Model] | None = Config
    for part in loc:
        if isinstance(part, str) and part in PORT_TYPES and out and isinstance(out[-1], int):
            model = PORT_TYPES[part]
            continue
        out.append(part)
    parent = out[:-1]
    if parent == ["switch"]:
        model = SwitchConfig
    elif parent == ["metrics"]:
        model = MetricsConfig
    elif not parent:
        model = Config
    elif not (len(parent) == 2 and parent[0] == "ports" and isinstance(parent[1], int)):
        model = None
    return tuple(out), model


def _example(model: type[_Model] | None, key: str) -> str:
    field = model.model_fields.get(key) if model else None
    if field is None or not field.examples:
        return f"{key}: ..."
    return f"{key}: {field.examples[0]}"


def _problem(err: dict[str, Any], model: type[_Model] | None, key: str) -> str:
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        known = sorted(model.model_fields) if model else []
        close = difflib.get_close_matches(str(key), known, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}known keys here: {', '.join(known)})"
    if kind == "missing":
        return f"required key is missing (add `{_example(model, key)}`)"
    if kind == "union_tag_invalid":
        return f"unknown port type {ctx.get('tag')!r} (known types: {', '.join(PORT_TYPES)})"
    if kind == "union_tag_not_found":
        known = ", ".join(PORT_TYPES)
        return f"required key is missing (add `type: vhost-user`; known types: {known})"
    if kind == "literal_error":
        return f"{_describe(value)} is not allowed (use one of {ctx.get('expected')})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return (
            f"expected a mapping of `key: value` lines, got {_describe(value)} (see docs/config.md)"
        )
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {_describe(value)} (write `- item` lines or [a, b])"
    return f"{err['msg']} (see docs/config.md)"


def _convert(exc: ValidationError, data: Any) -> list[str]:
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        problems = (err.get("ctx") or {}).get("error")
        if isinstance(problems, _Problems):
            lines += [f"{_loc_text(loc, data)}: {msg}" for loc, msg in problems.problems]
            continue
        loc, model = _strip_tags(tuple(err["loc"]))
        if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
            loc, model = (*loc, "type"), PORT_TYPES["vhost-user"]
        key = str(loc[-1]) if loc else ""
        text = _problem(err, model, key)
        lines.append(f"{_loc_text(loc, data)}: {text}" if loc else text)
    return list(dict.fromkeys(lines))


def parse_config(data: Any, *, name: str = "config", base_dir: Path | None = None) -> Config:
    """Validate already-parsed YAML data (a dict) into a Config; ConfigError on problems."""
    if data is None:
        raise ConfigError(
            f"{name}: the file is empty (add a `ports:` list; see configs/minimal.yaml)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: the top level is {_describe(data)}, not a mapping "
            "(start with `ports:`; see configs/minimal.yaml)"
        )
    try:
        return Config.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{name}: {line}" for line in _convert(exc, data))) from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file.  Blocking: use asyncio.to_thread on the loop."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{name}: cannot read the file: {exc.strerror} (check the path)"
        ) from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: byte {exc.start}: not valid UTF-8 (save it as UTF-8)") from None
    try:
        data = yaml.load(text, Loader=_Loader)  # _Loader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = (
            exc.problem if isinstance(exc, _DuplicateKey) else f"YAML syntax error: {exc.problem}"
        )
        fix = "" if isinstance(exc, _DuplicateKey) else " (fix the YAML there)"
        raise ConfigError(f"{name}: {where}{what}{fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: YAML error: {exc} (fix the YAML)") from None
    cfg = parse_config(data, name=name, base_dir=Path(path).absolute().parent)
    cfg._source = Path(path).absolute()
    return cfg
