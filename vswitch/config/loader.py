"""Reading a configuration file: a strict YAML loader, and pydantic's errors turned
into one line per problem, `FILE: FIELD: problem (what to do)`.

`read_yaml` and `render_errors` serve every file (the lab's too): the renderer takes a
`locate` that names the model owning each location, and hooks for a file's own kinds.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from vswitch.config.fields import describe
from vswitch.config.model import Config, Loc, MetricsConfig, Problems, SwitchConfig
from vswitch.config.ports import PORT_TYPES, MirrorConfig
from vswitch.errors import ConfigError

# Bounds on what one file may cost to read.  A real configuration (256 ports, a lab of
# 64 VMs) is a few thousand nodes; YAML aliases and merge keys can make a file of a few
# hundred bytes expand exponentially (each level merging the one before twice), so the
# loader counts nodes as it builds them, merged pairs included, and stops early.
MAX_FILE_BYTES = 4 << 20
MAX_NODES = 100_000
MAX_DEPTH = 64


class Refused(yaml.constructor.ConstructorError):
    """A document the loader will not build; its `problem` says why and what to do."""


class DuplicateKey(Refused):
    pass


class TooLarge(Refused):
    pass


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and documents too large or too deep to be a
    configuration, and reads 52:54:00:00:00:01 as a string."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise TooLarge(
                None,
                None,
                f"the document expands to more than {MAX_NODES} values (through aliases or "
                "`<<` merges?): a configuration needs far fewer (write it out plainly)",
                mark,
            )

    def compose_node(self, parent: Any, index: Any) -> Any:
        mark = self.peek_event().start_mark
        self._count(1, mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise TooLarge(
                    None, None, f"nested more than {MAX_DEPTH} levels deep (flatten it)", mark
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)
        self._count(len(node.value), node.start_mark)  # the pairs `<<` merged in

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
                raise DuplicateKey(
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


_SL = yaml.SafeLoader
StrictLoader.add_constructor("tag:yaml.org,2002:int", _no_base60(_SL.construct_yaml_int))
StrictLoader.add_constructor("tag:yaml.org,2002:float", _no_base60(_SL.construct_yaml_float))


# --------------------------------------------------------------------------- errors

Locate = Callable[[dict[str, Any]], tuple[Loc, type[BaseModel] | None]]
Special = Callable[[dict[str, Any], type[BaseModel] | None, str], str | None]


def loc_text(loc: Loc) -> str:
    """("ports", 1, "path") -> "ports[1].path"."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _keys(model: type[BaseModel]) -> dict[str, Any]:
    """A model's fields by the key a file writes (its alias, if it has one: `from`)."""
    return {f.alias or name: f for name, f in model.model_fields.items()}


def _example(model: type[BaseModel] | None, key: str) -> str:
    field = _keys(model).get(key) if model else None
    if field is None or not field.examples:
        return f"{key}: ..."
    return f"{key}: {field.examples[0]}"


def _problem(
    err: dict[str, Any], model: type[BaseModel] | None, key: str, *, docs: str, suggest: bool
) -> str:
    """The text of one pydantic error, for the kinds every model shares."""
    kind, value = err["type"], err.get("input")
    ctx = err.get("ctx") or {}
    if kind == "value_error":
        return str(ctx.get("error", err["msg"])).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        known = sorted(_keys(model)) if model else []
        close = difflib.get_close_matches(str(key), known, n=1) if suggest else []
        hint = f"did you mean {close[0]!r}? " if close else ""
        return f"unknown key ({hint}known keys here: {', '.join(known)})"
    if kind == "missing":
        return f"required key is missing (add `{_example(model, key)}`)"
    if kind == "literal_error":
        return f"{describe(value)} is not allowed (use one of {ctx.get('expected')})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a mapping of `key: value` lines, got {describe(value)} (see {docs})"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {describe(value)} (write `- item` lines or [a, b])"
    return f"{err['msg']} (see {docs})"


def render_errors(
    exc: ValidationError,
    *,
    locate: Locate,
    docs: str,
    where: Callable[[Loc], str] = loc_text,
    special: Special | None = None,
    suggest: bool = True,
) -> list[str]:
    """pydantic's errors as `FIELD: problem (fix)` lines, each once, in order.

    - locate(err): the error's location as a person reads it (pydantic's union tags and
      validator names dropped) and the model owning its last key (for `unknown key` and
      `missing` hints), or None;
    - docs: the page a generic message points to; where(loc): the location's text;
    - special(err, model, key): the text for kinds only this file has (None: the shared one);
    - suggest: `did you mean` for an unknown key close to a known one.
    A model validator raising `Problems` gives one line per problem, at its own location."""
    lines: list[str] = []
    for err in exc.errors(include_url=False):
        problems = (err.get("ctx") or {}).get("error")
        if isinstance(problems, Problems):
            lines += [f"{where(loc)}: {msg}" for loc, msg in problems.problems]
            continue
        loc, model = locate(err)
        key = str(loc[-1]) if loc else ""
        text = special(err, model, key) if special else None
        if text is None:
            text = _problem(err, model, key, docs=docs, suggest=suggest)
        lines.append(f"{where(loc)}: {text}" if loc else text)
    return list(dict.fromkeys(lines))


# The switch config's own: port names in locations, and the port-type union.


def _config_loc_text(loc: Loc, data: Any) -> str:
    """("ports", 1, "path") -> "ports[1] (vm2).path", naming the port when the data has it."""
    text = loc_text(loc)
    if len(loc) < 2 or loc[0] != "ports" or not isinstance(loc[1], int):
        return text
    ports = data.get("ports") if isinstance(data, dict) else None
    port = ports[loc[1]] if isinstance(ports, list) and loc[1] < len(ports) else None
    name = port.get("name") if isinstance(port, dict) else None
    if not isinstance(name, str) or not name:
        return text
    head = loc_text(loc[:2])  # a prefix of text
    return f"{head} ({name}){text[len(head) :]}"


def _config_locate(err: dict[str, Any]) -> tuple[Loc, type[BaseModel] | None]:
    """Drop the union tag pydantic puts after ports[i]; find the model owning the last key."""
    out: list[int | str] = []
    model: type[BaseModel] | None = Config
    for part in err["loc"]:
        if isinstance(part, str) and part in PORT_TYPES and out and isinstance(out[-1], int):
            model = PORT_TYPES[part]
            continue
        out.append(part)
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        return (*out, "type"), PORT_TYPES["vhost-user"]
    parent = out[:-1]
    if parent == ["switch"]:
        model = SwitchConfig
    elif parent == ["metrics"]:
        model = MetricsConfig
    elif not parent:
        model = Config
    elif len(parent) == 3 and parent[0] == "ports" and parent[2] == "mirror":
        model = MirrorConfig
    elif not (len(parent) == 2 and parent[0] == "ports" and isinstance(parent[1], int)):
        model = None
    return tuple(out), model


def _config_special(err: dict[str, Any], model: type[BaseModel] | None, key: str) -> str | None:
    if err["type"] == "union_tag_invalid":
        tag = (err.get("ctx") or {}).get("tag")
        return f"unknown port type {tag!r} (known types: {', '.join(PORT_TYPES)})"
    if err["type"] == "union_tag_not_found":
        known = ", ".join(PORT_TYPES)
        return f"required key is missing (add `type: vhost-user`; known types: {known})"
    return None


def _convert(exc: ValidationError, data: Any) -> list[str]:
    return render_errors(
        exc,
        locate=_config_locate,
        docs="docs/config.md",
        where=lambda loc: _config_loc_text(loc, data),
        special=_config_special,
    )


def parse_config(data: Any, *, name: str = "config", base_dir: Path | None = None) -> Config:
    """Validate already-parsed YAML data (a dict) into a Config; ConfigError on problems."""
    if data is None:
        raise ConfigError(
            f"{name}: the file is empty (add a `ports:` list; see configs/minimal.yaml)"
        )
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: the top level is {describe(data)}, not a mapping "
            "(start with `ports:`; see configs/minimal.yaml)"
        )
    try:
        return Config.model_validate(data, context={"base_dir": base_dir or Path.cwd()})
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{name}: {line}" for line in _convert(exc, data))) from None


def read_yaml(path: str | Path, *, syntax: str = "YAML syntax error: ") -> Any:
    """A YAML file's data, read with StrictLoader; ConfigError `FILE: problem (fix)` when it
    cannot be read, is not UTF-8 or is not YAML.  `syntax` precedes a syntax error's text
    (lab files say nothing there).  Blocking."""
    name = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{name}: cannot read the file: {exc.strerror} (check the path)"
        ) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError(
            f"{name}: {len(raw)} bytes, more than the {MAX_FILE_BYTES} a configuration may "
            "have (is it the right file?)"
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{name}: byte {exc.start}: not valid UTF-8 (save it as UTF-8)") from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        what = exc.problem if isinstance(exc, Refused) else f"{syntax}{exc.problem}"
        fix = "" if isinstance(exc, Refused) else " (fix the YAML there)"
        raise ConfigError(f"{name}: {where}{what}{fix}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: YAML error: {exc} (fix the YAML)") from None


def load_config(path: str | Path) -> Config:
    """Read and validate a YAML config file.  Blocking: use asyncio.to_thread on the loop."""
    data = read_yaml(path)
    cfg = parse_config(data, name=str(path), base_dir=Path(path).absolute().parent)
    cfg._source = Path(path).absolute()
    return cfg
