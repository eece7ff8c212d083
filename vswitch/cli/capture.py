"""`vswitch capture`, the client side of a packet capture (vswitch.daemon.capture is the
daemon's): it copies the stream to a file or stdout, or prints one line per frame, and
reports frames and drops on stderr."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as _dt
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from vswitch.cli.ask import control_path
from vswitch.cli.output import EXIT_RUNTIME, EXIT_USAGE
from vswitch.cli.output import fail as _fail
from vswitch.control import Client, request
from vswitch.daemon.capture import CaptureArgs
from vswitch.errors import ControlError
from vswitch.pcap import DIR_RX, Reader, describe


@click.command()
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
    path = control_path(control, config)
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
