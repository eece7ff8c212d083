"""`vswitch run`: the daemon in the foreground, until SIGINT or SIGTERM; SIGHUP reloads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

import click

from vswitch.cli.output import EXIT_RUNTIME, EXIT_USAGE
from vswitch.cli.output import fail as _fail
from vswitch.config import Config, load_config
from vswitch.daemon.notify import Notifier
from vswitch.errors import ConfigError, ControlError, StartupError
from vswitch.logs import FORMATS, LEVELS, setup_logging
from vswitch.netsys.unix import check_socket_dir, ensure_socket_dir
from vswitch.text import plural

log = logging.getLogger("vswitch")


DEFAULT_CONFIG = Path("/etc/vswitch/vswitch.yaml")


@click.command()
@click.argument(
    "config", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_CONFIG
)
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
@click.option(
    "--check",
    is_flag=True,
    help="Validate CONFIG (and the directories of its sockets) and exit: 0 if it would "
    "start, 2 with one line per problem if not.",
)
def run(config: Path, log_level: str | None, log_format: str, check: bool) -> None:
    """Run the switch described by CONFIG (a YAML file, by default
    /etc/vswitch/vswitch.yaml) until SIGINT or SIGTERM.

    SIGHUP (or `vswitch reload`) re-reads CONFIG and applies what changed.  Under systemd
    (Type=notify) it reports READY=1 once every port listens, and RELOADING=1 around reloads."""
    try:
        cfg = load_config(config)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    if check:
        _check(config, cfg)
        return
    setup_logging(log_level or cfg.switch.log_level, log_format, pinned=log_level is not None)
    import uvloop

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_serve(cfg))
    except StartupError as exc:
        _fail(str(exc), EXIT_RUNTIME)
    except KeyboardInterrupt:  # before the signal handlers were in place
        sys.exit(130)


def _check(path: Path, cfg: Config) -> None:
    """--check: what load_config cannot see, the places the switch would listen."""
    problems = []
    listening = [cfg.control] + [p for pc in cfg.ports if pc.listens for p in pc.socket_paths]
    for sock in listening:
        if sock == cfg.control and cfg.control_is_default:
            continue  # the daemon creates the default directory itself
        try:
            check_socket_dir(sock)
        except StartupError as exc:
            problems.append(f"{path}: {exc}")
    if problems:
        _fail("\n".join(problems), EXIT_USAGE)
    click.echo(f"{path}: OK ({plural(len(cfg.ports), 'port', 'ports')})")


async def _serve(cfg: Config) -> None:
    from vswitch.daemon.switch import (
        Switch,  # imported late: the data plane is not needed to fail fast
    )

    if cfg.control_is_default:
        ensure_socket_dir(cfg.control)
    loop = asyncio.get_running_loop()
    notify = Notifier.from_env()
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
        async with Switch(cfg, notify) as switch:
            if stopping:
                switch.stop()
            await switch.serve_forever()
            for task in list(reloads):
                task.cancel()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            loop.remove_signal_handler(sig)
        notify.close()
    log.info("stopped")
