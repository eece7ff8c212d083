"""The `vswitch` command: run the switch, and ask a running one about its ports, MAC table
and counters, change its MAC table, reload it, capture its frames and watch it live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import click

from vswitch import __version__
from vswitch.cli.output import (
    EXIT_RUNTIME,
    EXIT_USAGE,
    format_fdb,
    format_ports,
    format_reload,
    format_stats,
)
from vswitch.cli.output import fail as _fail
from vswitch.config import Config, default_control_path, load_config
from vswitch.control import request
from vswitch.errors import ConfigError, ControlError, StartupError
from vswitch.logs import FORMATS, LEVELS, setup_logging
from vswitch.netsys.unix import ensure_socket_dir
from vswitch.text import plural

log = logging.getLogger("vswitch")



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
    help="Override switch.log_level from the config (a reload then keeps this level).",
)
@click.option(
    "--log-format",
    type=click.Choice(FORMATS),
    default="text",
    show_default=True,
    help="text: one human-readable line per event; json: one JSON object per line.",
)
def run(config: Path, log_level: str | None, log_format: str) -> None:
    """Run the switch described by CONFIG (a YAML file) until SIGINT or SIGTERM.

    SIGHUP (or `vswitch reload`) re-reads CONFIG and applies what changed."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    setup_logging(log_level or cfg.switch.log_level, log_format, pinned=log_level is not None)
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(cfg))
    except StartupError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    except KeyboardInterrupt:  # before the signal handlers were in place
        sys.exit(130)


async def _serve(cfg: Config) -> None:
    from vswitch.daemon.switch import (
        Switch,  # imported late: the data plane is not needed to fail fast
    )

    if cfg.control_is_default:
        ensure_socket_dir(cfg.control)
    loop = asyncio.get_running_loop()
    switch: Switch | None = None
    stopping = False
    reloads: set[asyncio.Task[None]] = set()

    def on_signal(signum: signal.Signals) -> None:
        nonlocal stopping
        log.info("%s received, stopping", signum.name)
        stopping = True
        if switch is not None:
            switch.stop()

    async def reload(sw: Switch) -> None:
        with contextlib.suppress(ControlError):  # the switch logged why
            await sw.reload()

    def on_hup() -> None:
        if switch is None or stopping:
            log.warning("SIGHUP received while starting or stopping; not reloading")
            return
        log.info("SIGHUP received, reloading %s", switch.config.source)
        task = asyncio.create_task(reload(switch), name="reload")
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    # Installed before startup, so a signal during it still ends in a clean shutdown.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    try:
        async with Switch(cfg) as switch:
            if stopping:
                switch.stop()
            await switch.serve_forever()
            for task in list(reloads):
                task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
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


def _control_path(control: Path | None, config: Path | None) -> Path:
    if control is not None and config is not None:
        _fail("give --control or --config, not both", EXIT_USAGE)
    if config is not None:
        try:
            return load_config(config).control
        except ConfigError as exc:
            _fail(str(exc), EXIT_USAGE)
    return control if control is not None else default_control_path()


def _ask(cmd: str, control: Path | None, config: Path | None, **args: Any) -> Any:
    path = _control_path(control, config)
    try:
        return asyncio.run(request(path, cmd, **args))
    except ControlError as exc:
        _fail(str(exc), EXIT_RUNTIME)


def _show(result: Any, as_json: bool, fmt: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(fmt(result))


@main.command()
@click.argument("port", required=False)
@_control_options
def ports(port: str | None, control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the ports of a running switch (or only PORT): state, counters, features."""
    args = {"port": port} if port else {}
    _show(_ask("ports", control, config, **args), as_json, format_ports)


@main.group(invoke_without_command=True)
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
@_control_options
def fdb_flush(
    port: str | None, static: bool, control: Path | None, config: Path | None, as_json: bool
) -> None:
    """Forget the learned addresses of PORT, or of every port."""
    r = _fdb_ask("fdb-flush", control, config, port=port, static=static or None)
    what = "dynamic and static" if static else "dynamic"
    where = port or "all ports"

    def human(r: dict[str, Any]) -> str:
        return f"flushed {plural(r['flushed'], 'entry', 'entries')} ({what}) on {where}"

    _show(r, _fdb_json(as_json), human)


@fdb.command("add")
@click.argument("mac")
@click.argument("port")
@click.option("--vlan", type=int, default=None, help="VLAN id (0, the default, is untagged).")
@_control_options
def fdb_add(
    mac: str, port: str, vlan: int | None, control: Path | None, config: Path | None, as_json: bool
) -> None:
    """Pin MAC to PORT as a static entry (until deleted, flushed with --static, or restart)."""
    r = _fdb_ask("fdb-add", control, config, mac=mac, port=port, vlan=vlan)
    _show(r, _fdb_json(as_json), lambda r: f"added static {r['mac']} on {r['port']}")


@fdb.command("del")
@click.argument("mac")
@click.option("--vlan", type=int, default=None, help="VLAN id (0, the default, is untagged).")
@_control_options
def fdb_del(
    mac: str, vlan: int | None, control: Path | None, config: Path | None, as_json: bool
) -> None:
    """Remove MAC (static or learned) from the MAC table."""
    r = _fdb_ask("fdb-del", control, config, mac=mac, vlan=vlan)
    _show(r, _fdb_json(as_json), lambda r: f"removed {r['mac']} (was on {r['port']})")


@main.command()
@_control_options
def stats(control: Path | None, config: Path | None, as_json: bool) -> None:
    """Show the switch's counters: MAC table, flooding, and every port counter."""
    _show(_ask("stats", control, config), as_json, format_stats)


@main.command()
@_control_options
def reload(control: Path | None, config: Path | None, as_json: bool) -> None:
    """Make the daemon re-read its config file and apply what changed (like SIGHUP).

    An invalid file is refused and the running configuration stays (exit status 1)."""
    _show(_ask("reload", control, config), as_json, format_reload)


# --------------------------------------------------------------------------- live


@main.command()
@click.argument("port")
@click.option(
    "-w",
    "--write",
    "out",
    metavar="FILE",
    help="Write the frames to FILE; `-` streams to stdout (e.g. `| tshark -r -`). "
    "Without -w, print one line per frame.",
)
@click.option("-c", "--count", type=click.IntRange(min=1), help="Stop after N frames.")
@click.option(
    "--direction",
    type=click.Choice(["rx", "tx", "both"]),
    default="both",
    show_default=True,
    help="rx: frames the switch takes from the port (the guest sends); tx: frames it gives.",
)
@click.option(
    "-F",
    "--format",
    "fmt",
    type=click.Choice(["pcapng", "pcap"]),
    default="pcapng",
    show_default=True,
    help="pcapng keeps each frame's direction and the drop count; pcap is the classic format.",
)
@click.option(
    "-s", "--snaplen", type=click.IntRange(1, 65535), default=65535, show_default=True,
    help="Bytes kept of each frame.",
)  # fmt: skip
@click.option(
    "-B", "--buffer-size", type=click.IntRange(64, 262144), default=4096, show_default=True,
    help="Capture buffer in KiB: what a slow reader may fall behind before frames are dropped.",
)  # fmt: skip
@click.option(
    "--duration", type=click.FloatRange(min=0, min_open=True), help="Stop after S seconds."
)
@click.option("-q", "--quiet", is_flag=True, help="No start and summary lines on stderr.")
@click.option("--control", type=click.Path(path_type=Path), help="The daemon's control socket.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="Config file.")
def capture(
    port: str,
    out: str | None,
    count: int | None,
    direction: str,
    fmt: str,
    snaplen: int,
    buffer_size: int,
    duration: float | None,
    quiet: bool,
    control: Path | None,
    config: Path | None,
) -> None:
    """Capture the frames of PORT, like tcpdump -i.

    Stops after --count frames, --duration seconds, or Ctrl-C; a slow reader makes the
    capture drop frames (reported at the end), never the port."""
    from vswitch.cli.capture import run_client
    from vswitch.daemon.capture import CaptureArgs

    path = _control_path(control, config)
    if out == "-" and sys.stdout.isatty():
        _fail("refusing to write a capture file to a terminal (redirect it, or pipe it "
              "to `tshark -r -`)", EXIT_USAGE)  # fmt: skip
    files: list[IO[bytes]] = []

    def open_output() -> IO[bytes]:  # called once the daemon accepted the capture
        assert out is not None
        f = sys.stdout.buffer if out == "-" else open(out, "wb")  # closed below
        files.append(f)
        return f

    # Without -w, frame lines need each frame's direction: pcapng.
    args = CaptureArgs(port, direction, count, snaplen, fmt if out else "pcapng",
                       buffer_size << 10, duration)  # fmt: skip
    try:
        summary = asyncio.run(
            run_client(path, args, open_output if out else None, sys.stdout, sys.stderr, quiet)
        )
    except ControlError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    except OSError as exc:
        _fail(f"{out}: {exc.strerror or exc}", EXIT_RUNTIME)
    except KeyboardInterrupt:
        sys.exit(130)
    finally:
        for f in files:
            with contextlib.suppress(OSError):
                f.flush() if f is sys.stdout.buffer else f.close()
    if summary.reader_gone:
        # Whoever read our output (tshark) quit: keep Python's flush at exit quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@main.command()
@click.option("-i", "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")  # fmt: skip
@click.option("-n", "--iterations", type=click.IntRange(min=1), help="Stop after N refreshes.")
@click.option("--control", type=click.Path(path_type=Path), help="The daemon's control socket.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="Config file.")
def top(interval: float, iterations: int | None, control: Path | None, config: Path | None) -> None:
    """Live per-port rates: rx/tx packets and bits per second, drops, MACs (Ctrl-C quits)."""
    from vswitch.cli.top import run_top

    path = _control_path(control, config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_top(path, interval, iterations))


from vswitch.cli.lab import lab  # noqa: E402  (the lab commands build on the ones above)

main.add_command(lab)
