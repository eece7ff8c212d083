"""Small text helpers shared by the daemon's messages, the CLI and the lab."""

from __future__ import annotations

import os
from pathlib import Path


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def tail(path: Path, lines: int) -> str:
    """The last lines of a log file (reading at most its last 64 KiB), or why not."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            data = f.read()
    except OSError as e:
        return f"({e.strerror or e})"
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])
