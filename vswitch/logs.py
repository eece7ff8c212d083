"""Logging setup: one human-readable line per event on stderr.

2026-11-23T20:00:00 INFO port vm1: connected
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

LEVELS = ("debug", "info", "warning", "error")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (test runners swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def setup_logging(level: str = "info", fmt: Literal["text"] = "text") -> None:
    """Send vswitch's log records (and everyone else's) to stderr at `level`.

    Calling it again replaces the handler it installed before.  `fmt` is "text" only for now.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(LEVELS)})")
    if fmt != "text":
        raise ValueError(f"unknown log format {fmt!r} (use text)")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(TEXT_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    root.setLevel(level.upper())
    # asyncio's debug chatter is about the loop, not the switch.
    logging.getLogger("asyncio").setLevel(max(logging.INFO, root.level))
