"""The `vswitch` command: run the switch, and ask a running one about its ports and MACs."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from vswitch import __version__
from vswitch.config import Config, default_control_path, load_config
from vswitch.control import ensure_socket_dir, request
from vswitch.errors import ConfigError, ControlError, StartupError
from vswitch.logs import LEVELS, setup_logging

log = logging.getLogger("vswitch")

EXIT_RUNTIME = 1  # startup failed, daemon unreachable
EXIT_USAGE = 2  # bad config or command line (click uses 2 too)


def _fail(msg: str, code: int) -> NoReturn:
    for line in msg.splitlines() or [""]:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="vswitch")
def main() -> None:
    """A userspace virtual switch for QEMU vhost-user guests."""


# --------------------------------------------------------------------------- run


@main.command()
@click.argument("config", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--log-level",
    type=click.Choice(LEVELS, case_sensitive=False),
    help="Override switch.log_level from the config.",
)
def run(config: Path, log_level: str | None) -> None:
    """Run the switch described by CONFIG (a YAML file) until SIGINT or SIGTERM."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    setup_logging(log_level or cfg.switch.log_level)
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(cfg))
    except StartupError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    except KeyboardInterrupt:  # before the signal handlers were in place
        sys.exit(130)


async def _serve(cfg: Config) -> None:
    from vswitch.switch import Switch  # imported late: the data plane is not needed to fail fast

    if cfg.control_is_default:
        ensure_socket_dir(cfg.control)
    loop = asyncio.get_running_loop()
    switch: Switch | None = None
    stopping = False

    def on_signal(signum: signal.Signals) -> None:
        nonlocal stopping
        log.info("%s received, stopping", signum.name)
        stopping = True
        if switch is not None:
            switch.stop()

    # Installed before startup, so a signal during it still ends in a clean shutdown.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        async with Switch(cfg) as switch:
            if stopping:
                switch.stop()
            await switch.serve_forever()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    log.info("stopped")


# --------------------------------------------------------------------------- queries


def _control_options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON result.")(fn)
    fn = click.option(
        "--config",
        "config",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Read the control socket path from this config file.",
    )(fn)
    return click.option(
        "--control",
        "control",
        type=click.Path(path_type=Path),
        help=f"The daemon's control socket [default: {default_control_path()}].",
    )(fn)


def _ask(cmd: str, control: Path | None, config: Path | None) -> Any:
    if control is not None and config is not None:
        _fail("give --control or --config, not both", EXIT_USAGE)
    if config is not None:
        try:
            control = load_config(config).control
        except ConfigError as exc:
            _fail(str(exc), EXIT_USAGE)
    path = control if control is not None else default_control_path()
    try:
        return asyncio.run(request(path, cmd))
    except ControlError as exc:
        _fail(str(exc), EXIT_RUNTIME)


def _table(header: Sequence[str], rows: list[list[str]], right: set[int]) -> list[str]:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


def format_ports(ports: list[dict[str, Any]]) -> str:
    """The human table for `vswitch ports`."""
    header = ["NAME", "TYPE", "STATE", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPS"]
    rows, details = [], []
    for p in ports:
        c = p.get("counters") or {}
        drops = sum(v for k, v in c.items() if "drop" in k and isinstance(v, int))
        nums = [c.get("rx_packets", 0), c.get("rx_bytes", 0), c.get("tx_packets", 0)]
        nums += [c.get("tx_bytes", 0), drops]
        rows.append(
            [str(p.get("name", "?")), str(p.get("type", "?")), str(p.get("state", "?"))]
            + [str(n) for n in nums]
        )
        name = p.get("name", "?")
        feats = " ".join(p.get("features") or []) or "-"
        proto = " ".join(p.get("protocol_features") or []) or "-"
        peer = p.get("peer") or "none"
        details.append(
            f"{name}: peer {peer}, mtu {p.get('mtu', '?')}, features {feats}, "
            f"protocol features {proto}"
        )
        queues = p.get("queues") or []
        if queues:
            qs = ", ".join(
                f"{q.get('index')} (size {q.get('size')}"
                + (", enabled" if q.get("enabled") else "")
                + (", ready" if q.get("ready") else "")
                + ")"
                for q in queues
            )
            details.append(f"{' ' * len(str(name))}  queues {qs}")
        if p.get("error"):
            details.append(f"{' ' * len(str(name))}  error: {p['error']}")
    lines = _table(header, rows, right=set(range(3, 8)))
    return "\n".join(lines + (["", *details] if details else []))


def format_fdb(entries: list[dict[str, Any]]) -> str:
    """The human table for `vswitch fdb`."""
    header = ["MAC", "VLAN", "PORT", "TYPE", "AGE"]
    ordered = sorted(entries, key=lambda e: (e.get("vlan", 0), str(e.get("mac", ""))))
    rows = [
        [
            str(e.get("mac", "?")),
            str(e.get("vlan", 0)),
            str(e.get("port", "?")),
            str(e.get("type", "?")),
            "-" if e.get("type") == "static" else str(e.get("age", "?")),
        ]
        for e in ordered
    ]
    return "\n".join(_table(header, rows, right={1, 4}))


def _show(result: Any, as_json: bool, fmt: Any) -> None:
    if as_json or not isinstance(result, list):
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(fmt(result))


@main.command()
@_control_options
def ports(control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the ports of a running switch: state, counters, negotiated features."""
    _show(_ask("ports", control, config), as_json, format_ports)


@main.command()
@_control_options
def fdb(control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the MAC table (forwarding database) of a running switch."""
    _show(_ask("fdb", control, config), as_json, format_fdb)
