"""Reaching a running daemon from a command: the --control/--config/--json options,
one request, and its result printed as JSON or as a table."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from vswitch.cli.output import EXIT_RUNTIME, EXIT_USAGE
from vswitch.cli.output import fail as _fail
from vswitch.config import default_control_path, load_config
from vswitch.control import request
from vswitch.errors import ConfigError, ControlError


def control_options(fn: Any) -> Any:
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


def control_path(control: Path | None, config: Path | None) -> Path:
    if control is not None and config is not None:
        _fail("give --control or --config, not both", EXIT_USAGE)
    if config is not None:
        try:
            return load_config(config).control
        except ConfigError as exc:
            _fail(str(exc), EXIT_USAGE)
    return control if control is not None else default_control_path()


def ask(cmd: str, control: Path | None, config: Path | None, **args: Any) -> Any:
    path = control_path(control, config)
    try:
        return asyncio.run(request(path, cmd, **args))
    except ControlError as exc:
        _fail(str(exc), EXIT_RUNTIME)


def show(result: Any, as_json: bool, fmt: Callable[[Any], str]) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        click.echo(fmt(result))
