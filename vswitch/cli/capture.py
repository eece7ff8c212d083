"""`vswitch capture`, the client side of a packet capture (vswitch.daemon.capture is the
daemon's): it copies the stream to a file or stdout, or prints one line per frame, and
reports frames and drops on stderr.

Its words are read like tcpdump's: `vswitch capture vm1 vm2 icmp or arp` is the ports vm1
and vm2 (the leading words that name ports of the switch) with the filter `icmp or arp`
(the rest, joined by spaces); `--filter` says it explicitly."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as _dt
import os
import select
import signal
import stat
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

READER_CHECK = 0.2  # seconds between looks at whether our pipe's reader is still there


@click.command()
@click.argument("words", metavar="PORT [PORT...] [FILTER...]", nargs=-1, required=True)
@click.option(
    "-f",
    "--filter",
    "expression",
    metavar="EXPR",
    help="A pcap filter expression (pcap-filter(7)), instead of FILTER words.",
)
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
    words: tuple[str, ...],
    expression: str | None,
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
    """Capture the frames of PORT (or several, into one pcapng), like tcpdump -i.

    The leading words that name ports are the ports; the rest is a pcap filter
    expression, as tcpdump takes it (`vswitch capture vm1 icmp or arp`), run in the fast
    path before a frame is copied.  Stops after --count frames, --duration seconds, or
    Ctrl-C; a slow reader makes the capture drop frames (reported at the end), never the
    port.  `-w - | tshark -i -` (or `wireshark -k -i -`) reads it live."""
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
    args = CaptureArgs(words[0], direction, count, snaplen, fmt if out else "pcapng",
                       buffer_size << 10, duration, expression)  # fmt: skip
    try:
        summary = asyncio.run(
            run_client(path, args, open_output if out else None, sys.stdout, sys.stderr, quiet,
                       words=words)
        )  # fmt: skip
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
    filtered: int | None = None  # frames the capture filter left out (pcapng with a filter)


async def run_client(
    path: str | Path,
    args: CaptureArgs,
    open_output: Callable[[], IO[bytes]] | None,
    lines: IO[str],
    err: IO[str],
    quiet: bool = False,
    words: tuple[str, ...] = (),
) -> Summary:
    """`vswitch capture`: stream to open_output() (a file or stdout), or print frame lines.

    `words` (the command line's): the ports, then filter words (see resolve()); they
    replace args.port and, when there are filter words, args.filter.
    SIGINT/SIGTERM half-close the connection: the daemon sends what it still has and the
    statistics block, then closes.  A reader that goes away (tshark quits) ends it too."""
    loop = asyncio.get_running_loop()
    client = Client(path)
    if words:
        names = [p["name"] for p in await client.call("ports")]
        ports, expression = resolve(words, names)
        if expression and args.filter:
            await client.close()
            raise ControlError(f"a filter twice: --filter {args.filter!r} and {expression!r}")
        args = dataclasses.replace(
            args, port=ports[0] if len(ports) == 1 else ports, filter=args.filter or expression
        )
    req = {k: v for k, v in vars(args).items() if v is not None}
    if isinstance(args.port, tuple):
        req["port"] = list(args.port)
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

    def on_reader_gone() -> None:
        nonlocal reader_gone
        reader_gone = True
        on_signal()

    sigs = (signal.SIGINT, signal.SIGTERM)
    for s in sigs:
        loop.add_signal_handler(s, on_signal)
    watch = None
    if out is not None and _is_pipe(out):
        watch = asyncio.create_task(_watch_reader(out.fileno(), on_reader_gone))
    if not quiet:
        dest = "frame summaries" if out is None else args.format
        filt = f", filter {args.filter!r}" if args.filter else ""
        print(
            f"capturing on {', '.join(args.ports)} ({result.get('direction')}{filt}), {dest}; "
            "Ctrl-C to stop",
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
                        print(_line(f, f.name or args.label), file=lines, flush=True)
            except BrokenPipeError:  # the reader of our output went away
                reader_gone = True
                break
    finally:
        if watch is not None:
            watch.cancel()
        for s in sigs:
            loop.remove_signal_handler(s)
        await client.close()
    summary = Summary(parser.frames, parser.dropped, reader_gone, parser.filtered)
    if summary.dropped is None and isinstance(args.port, str):
        with contextlib.suppress(ControlError):
            summary.dropped = await _dropped_since(path, args.port, result)
    if not quiet:
        dropped = "?" if summary.dropped is None else summary.dropped
        filtered = "" if summary.filtered is None else f", {summary.filtered} filtered out"
        print(
            f"{args.label}: {summary.frames} frame(s) captured, {dropped} dropped by the "
            f"capture{filtered}",
            file=err,
            flush=True,
        )
    return summary


def _is_pipe(f: IO[bytes]) -> bool:
    try:
        mode = os.fstat(f.fileno()).st_mode
    except (OSError, ValueError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


async def _watch_reader(fd: int, gone: Callable[[], None]) -> None:
    """Calls gone() once the reader of the pipe fd (tshark -i -, wireshark -k -i -) has
    closed it: a capture with no frames to write would otherwise never notice."""
    p = select.poll()
    p.register(fd, 0)  # POLLERR and POLLHUP are always reported
    while True:
        await asyncio.sleep(READER_CHECK)
        if p.poll(0):
            gone()
            return


def resolve(words: tuple[str, ...] | list[str], names: list[str]) -> tuple[list[str], str]:
    """(ports, filter expression) from `vswitch capture`'s words: the first word is a port
    (the daemon refuses it if not), so are the next ones while they name ports of the
    switch; the rest, joined by spaces as tcpdump does, is the filter ("" for none)."""
    known = set(names)
    ports = [words[0]]
    rest = list(words[1:])
    while rest and rest[0] in known and rest[0] not in ports:
        ports.append(rest.pop(0))
    return ports, " ".join(rest).strip()


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
