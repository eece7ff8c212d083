"""`vswitch capture`, the client side of a packet capture (vswitch.daemon.capture is the
daemon's): it copies the stream to a file or stdout, or prints one line per frame, and
reports frames and drops on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from vswitch.control import Client, request
from vswitch.daemon.capture import CaptureArgs
from vswitch.errors import ControlError
from vswitch.pcap import DIR_RX, Reader, describe


@dataclass
class Summary:
    frames: int
    dropped: int | None
    reader_gone: bool = False  # whoever read our output went away (a broken pipe)


async def run_client(
    path: str | Path,
    args: CaptureArgs,
    open_output: Callable[[], IO[bytes]] | None,
    lines: IO[str],
    err: IO[str],
    quiet: bool = False,
) -> Summary:
    """`vswitch capture`: stream to open_output() (a file or stdout), or print frame lines.

    SIGINT/SIGTERM half-close the connection: the daemon sends what it still has and the
    statistics block, then closes.  A reader that goes away (tshark quits) ends it too."""
    loop = asyncio.get_running_loop()
    client = Client(path)
    req = {k: v for k, v in vars(args).items() if v is not None}
    result = await client.call("capture", **req)
    assert client.reader is not None and client.writer is not None
    reader, writer = client.reader, client.writer
    out = open_output() if open_output is not None else None
    parser = Reader()
    stopping = asyncio.Event()
    reader_gone = False

    def on_signal() -> None:
        if not stopping.is_set():
            stopping.set()
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

    sigs = (signal.SIGINT, signal.SIGTERM)
    for s in sigs:
        loop.add_signal_handler(s, on_signal)
    if not quiet:
        dest = "frame summaries" if out is None else args.format
        print(
            f"capturing on {args.port} ({result.get('direction')}), {dest}; Ctrl-C to stop",
            file=err,
            flush=True,
        )
    try:
        while True:
            try:
                timeout = 5.0 if stopping.is_set() else None
                data = await asyncio.wait_for(reader.read(1 << 16), timeout)
            except (TimeoutError, ConnectionError):
                break
            if not data:
                break
            frames = parser.feed(data)
            try:
                if out is not None:
                    for _ in frames:  # counted by the parser
                        pass
                    out.write(data)
                    out.flush()
                else:
                    for f in frames:
                        print(_line(f, args.port), file=lines, flush=True)
            except BrokenPipeError:  # the reader of our output went away
                reader_gone = True
                break
    finally:
        for s in sigs:
            loop.remove_signal_handler(s)
        await client.close()
    summary = Summary(parser.frames, parser.dropped, reader_gone)
    if summary.dropped is None:
        with contextlib.suppress(ControlError):
            summary.dropped = await _dropped_since(path, args.port, result)
    if not quiet:
        dropped = "?" if summary.dropped is None else summary.dropped
        print(
            f"{args.port}: {summary.frames} frame(s) captured, {dropped} dropped by the capture",
            file=err,
            flush=True,
        )
    return summary


async def _dropped_since(path: str | Path, port: str, result: dict[str, Any]) -> int | None:
    base = result.get("cap_drops")
    if not isinstance(base, int):
        return None
    ports = await request(path, "ports", port=port)
    return ports[0]["counters"]["cap_drops"] - base if ports else None


def _line(f: Any, port: str) -> str:
    t = _dt.datetime.fromtimestamp(f.ts_ns / 1e9).strftime("%H:%M:%S.%f")
    d = {0: "", DIR_RX: " rx", 2: " tx"}.get(f.direction, "")
    return f"{t} {port}{d} {describe(f)}"
