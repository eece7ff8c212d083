"""`vswitch port add|del`: change the ports of a running switch without editing its file,
optionally writing the change to the file too (--save)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import yaml

from vswitch.cli.ask import control_options as _control_options
from vswitch.cli.ask import control_path
from vswitch.cli.ask import show as _show
from vswitch.cli.output import EXIT_RUNTIME, EXIT_USAGE
from vswitch.cli.output import fail as _fail
from vswitch.client import Client, PortChanged
from vswitch.config import PORT_TYPES, StrictLoader
from vswitch.errors import ControlError

_SAVE_HELP = (
    "Also write the change to the daemon's config file (with your permissions: the daemon "
    "never writes it), so that a restart or reload keeps it."
)


@click.group()
def port() -> None:
    """Add or remove a port of a running switch (applied like a reload of that port)."""


def _value(text: str) -> Any:
    """A --key value as YAML reads it (numbers, true/false, [a, b] lists), except that an
    octal-looking number (0660, a socket mode) stays the string it is in a config file."""
    try:
        v = yaml.load(text, Loader=StrictLoader)  # a SafeLoader
    except yaml.YAMLError:
        return text
    digits = text.strip().lstrip("+-")
    if isinstance(v, int) and not isinstance(v, bool) and len(digits) > 1 and digits[0] == "0":
        return text.strip()
    return text if v is None else v


def _keys(extra: list[str]) -> dict[str, Any]:
    keys: dict[str, Any] = {}
    it = iter(extra)
    for word in it:
        if not word.startswith("--") or len(word) < 3:
            _fail(f"unexpected argument {word!r} (other keys go as --key value)", EXIT_USAGE)
        key, eq, value = word[2:].partition("=")
        if not eq:
            value = next(it, None)  # type: ignore[assignment]
            if value is None:
                _fail(f"--{key} needs a value", EXIT_USAGE)
        keys[key.replace("-", "_")] = _value(value)
    return keys


def _human(r: PortChanged) -> str:
    lines = list(r.get("changes") or []) + [f"warning: {w}" for w in r.get("warnings") or []]
    if r.get("saved"):
        lines.append(f"saved to {r['saved']}")
    return "\n".join(lines) or "no changes"


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except ControlError as exc:
        _fail(str(exc), EXIT_RUNTIME)


@port.command("add", context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.argument("name")
@click.option(
    "--type", "kind", type=click.Choice(list(PORT_TYPES)), default="vhost-user",
    show_default=True, help="The port's type, as `type:` in the file.",
)  # fmt: skip
@click.option("--path", help="vhost-user: the socket (relative to this directory).")
@click.option("--mode", type=click.Choice(["server", "client"]), help="vhost-user: socket role.")
@click.option("--save", is_flag=True, help=_SAVE_HELP)
@_control_options
@click.pass_context
def port_add(
    ctx: click.Context,
    name: str,
    kind: str,
    path: str | None,
    mode: str | None,
    save: bool,
    control: Path | None,
    config: Path | None,
    as_json: bool,
) -> None:
    """Add port NAME; any other key of a port in the config file goes as --key value
    (e.g. --mtu 9000 --socket-mode 0660 --group kvm --static-macs '[52:54:00:00:00:01]').

    Validated like the file with the port in it; without --save, a reload of the file or
    a restart forgets it."""
    keys = _keys(list(ctx.args))
    for k, v in (("path", path), ("mode", mode)):
        if v is not None:
            keys[k] = v
    sock = control_path(control, config)

    async def go() -> PortChanged:
        async with Client(sock) as c:
            return await c.add_port(name, kind, save=save, **keys)

    _show(_run(go()), as_json, _human)


@port.command("del")
@click.argument("name")
@click.option("--save", is_flag=True, help=_SAVE_HELP)
@_control_options
def port_del(
    name: str, save: bool, control: Path | None, config: Path | None, as_json: bool
) -> None:
    """Remove port NAME (its guest is disconnected, its MAC addresses forgotten)."""
    sock = control_path(control, config)

    async def go() -> PortChanged:
        async with Client(sock) as c:
            return await c.del_port(name, save=save)

    _show(_run(go()), as_json, _human)
