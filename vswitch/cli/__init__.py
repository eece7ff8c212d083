"""The `vswitch` command, one module per command group: run.py (the daemon), ops.py
(ports, fdb, stats, reload), port.py (port add/del), capture.py, top.py, and the lab group
(cli/lab.py); output.py formats what they print, ask.py reaches a running daemon."""

from __future__ import annotations

import click

from vswitch import __version__
from vswitch.cli.capture import capture
from vswitch.cli.lab import lab
from vswitch.cli.ops import fdb, ports, reload, stats
from vswitch.cli.port import port
from vswitch.cli.run import run
from vswitch.cli.top import top


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", "-V", prog_name="vswitch")
def main() -> None:
    """A userspace virtual switch for QEMU vhost-user guests."""


for command in (run, ports, port, fdb, stats, reload, capture, top, lab):
    main.add_command(command)
