"""The commands that ask a running daemon: ports, fdb (show, add, del, flush), stats,
reload."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from vswitch.cli.ask import ask as _ask
from vswitch.cli.ask import control_options as _control_options
from vswitch.cli.ask import show as _show
from vswitch.cli.output import format_fdb, format_ports, format_reload, format_stats
from vswitch.text import plural


@click.command()
@click.argument("port", required=False)
@_control_options
def ports(port: str | None, control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the ports of a running switch (or only PORT): state, counters, features."""
    args = {"port": port} if port else {}
    _show(_ask("ports", control, config, **args), as_json, format_ports)


@click.group(invoke_without_command=True)
@_control_options
@click.pass_context
def fdb(ctx: click.Context, control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the MAC table (forwarding database), or change it (see the subcommands).

    `vswitch fdb` alone is `vswitch fdb show`."""
    ctx.obj = {"control": control, "config": config, "as_json": as_json}
    if ctx.invoked_subcommand is None:
        _show(_ask("fdb", control, config), as_json, format_fdb)


def _fdb_ask(cmd: str, control: Path | None, config: Path | None, **args: Any) -> Any:
    group = click.get_current_context().obj or {}
    control = control or group.get("control")
    config = config or group.get("config")
    return _ask(cmd, control, config, **{k: v for k, v in args.items() if v is not None})


def _fdb_json(as_json: bool) -> bool:
    return as_json or bool((click.get_current_context().obj or {}).get("as_json"))


@fdb.command("show")
@click.option("--port", help="Only the addresses on this port.")
@_control_options
def fdb_show(port: str | None, control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the MAC table: mac, vlan, port, static/dynamic, age in seconds."""
    _show(_fdb_ask("fdb", control, config, port=port), _fdb_json(as_json), format_fdb)


@fdb.command("flush")
@click.argument("port", required=False)
@click.option("--static", is_flag=True, help="Also remove static entries.")
@click.option("--vlan", type=int, default=None, help="Only the addresses on this VLAN.")
@_control_options
def fdb_flush(
    port: str | None,
    static: bool,
    vlan: int | None,
    control: Path | None,
    config: Path | None,
    as_json: bool,
) -> None:
    """Forget the learned addresses of PORT, or of every port."""
    r = _fdb_ask("fdb-flush", control, config, port=port, static=static or None, vlan=vlan)
    what = "dynamic and static" if static else "dynamic"
    where = (port or "all ports") + ("" if vlan is None else f", VLAN {vlan}")

    def human(r: dict[str, Any]) -> str:
        return f"flushed {plural(r['flushed'], 'entry', 'entries')} ({what}) on {where}"

    _show(r, _fdb_json(as_json), human)


@fdb.command("add")
@click.argument("mac")
@click.argument("port")
@click.option(
    "--vlan", type=int, default=None, help="VLAN id (default: the port's untagged VLAN)."
)
@_control_options
def fdb_add(
    mac: str, port: str, vlan: int | None, control: Path | None, config: Path | None, as_json: bool
) -> None:
    """Pin MAC to PORT as a static entry (until deleted, flushed with --static, or restart)."""
    r = _fdb_ask("fdb-add", control, config, mac=mac, port=port, vlan=vlan)
    def human(r: dict[str, Any]) -> str:
        on = f" vlan {r['vlan']}" if r.get("vlan") else ""
        return f"added static {r['mac']}{on} on {r['port']}"

    _show(r, _fdb_json(as_json), human)


@fdb.command("del")
@click.argument("mac")
@click.option(
    "--vlan", type=int, default=None, help="VLAN id (0, the default: ports without VLANs)."
)
@_control_options
def fdb_del(
    mac: str, vlan: int | None, control: Path | None, config: Path | None, as_json: bool
) -> None:
    """Remove MAC (static or learned) from the MAC table."""
    r = _fdb_ask("fdb-del", control, config, mac=mac, vlan=vlan)
    _show(r, _fdb_json(as_json), lambda r: f"removed {r['mac']} (was on {r['port']})")


@click.command()
@_control_options
def stats(control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the switch's counters: MAC table, flooding, and every port counter."""
    _show(_ask("stats", control, config), as_json, format_stats)


@click.command()
@_control_options
def reload(control: Path | None, config: Path | None, as_json: bool) -> None:
    """Make the daemon re-read its config file and apply what changed (like SIGHUP).

    An invalid file is refused and the running configuration stays (exit status 1)."""
    _show(_ask("reload", control, config), as_json, format_reload)
