"""Logging setup: one line per event on stderr, human-readable or JSON.

text:  2026-11-23T20:00:00 INFO port vm1: link up
json:  {"ts": "2026-11-23T20:00:00.123+00:00", "level": "info", "logger": "vswitch.vhost",
        "msg": "port vm1: link up"}

JSON lines carry the same message plus any structured fields a call site passes with
`extra=` (e.g. {"event": "reload", "port": "vm3"}), for log shippers to index.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import sys
from typing import Any, ClassVar, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(message)s"
DATE_FORMAT = "%Y-%m-%dT%H:%M:%S"

# Attributes every LogRecord has; anything else came in through `extra=`.
_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}

_pinned = False  # the command line chose the level: the config's log_level does not apply


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


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC, ms), level, logger, msg, extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        ts = _dt.datetime.fromtimestamp(record.created, _dt.UTC)
        out: dict[str, Any] = {
            "ts": ts.isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


class JournalFormatter(logging.Formatter):
    """For stderr that is the systemd journal: no timestamp (the journal keeps its own) and
    the sd-daemon(3) priority prefix, so `journalctl -p warning` finds the warnings."""

    PRIORITY: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3
    }

    def format(self, record: logging.LogRecord) -> str:
        prio = self.PRIORITY.get(record.levelno, 2 if record.levelno > logging.ERROR else 6)
        return f"<{prio}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """True when stderr is the journal's stream: $JOURNAL_STREAM names its device:inode."""
    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


def setup_logging(level: str = "info", fmt: str = "text", *, pinned: bool = False) -> None:
    """Send vswitch's log records (and everyone else's) to stderr at `level`.

    fmt is "text" or "json"; text to the systemd journal drops the timestamp and marks each
    line with its priority (JournalFormatter).  pinned=True means the level came from the
    command line: set_config_level() (a reloaded config's switch.log_level) then leaves it
    alone.
    Calling it again replaces the handler it installed before.
    """
    global _pinned
    if level.lower() not in LEVELS:
        raise ValueError(f"unknown log level {level!r} (use one of {', '.join(LEVELS)})")
    if fmt not in FORMATS:
        raise ValueError(f"unknown log format {fmt!r} (use one of {', '.join(FORMATS)})")
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    handler = _StderrHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif stderr_is_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter(TEXT_FORMAT, DATE_FORMAT))
    root.addHandler(handler)
    _pinned = pinned
    _set_level(level)


def _set_level(level: str) -> None:
    root = logging.getLogger()
    root.setLevel(level.upper())
    # asyncio's debug chatter is about the loop, not the switch.
    logging.getLogger("asyncio").setLevel(max(logging.INFO, root.level))


def set_config_level(level: str) -> bool:
    """Apply a (reloaded) config's log level unless the command line pinned one.
    Returns whether it was applied."""
    if _pinned:
        return False
    _set_level(level)
    return True


def current_level() -> str:
    return logging.getLevelName(logging.getLogger().level).lower()
