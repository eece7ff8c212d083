"""Packet capture over the control socket.

Daemon side: the `capture` command starts the fast path's capture ring on each of its ports
(Fastpath.capture_start, with the filter libpcap compiled, run in C before a frame is
copied), answers ok, and the connection then carries a pcapng (or pcap) stream made from the
records it drains every READ_INTERVAL, until --count frames, the --duration, the client
closing (or half-closing) its end, or its last port going away.  Then the C captures stop
and, for pcapng, an Interface Statistics Block per port ends the stream.  A slow reader
never holds a port back: the C ring fills, and the fast path counts what did not fit in
cap_drops.  One capture per port at a time.

Several ports go into one pcapng, one Interface Description Block each, merged here in
time order: each drain reads every port's ring and sends the frames older than MERGE_HOLD
before the drain began, sorted, keeping the younger ones for the next drain (a frame
stamped earlier may still be on its way into another port's ring).  The daemon merges,
not the client, because only it knows when every ring was last read: a client merging
separate streams could not tell an idle port from a late one.

The client side, `vswitch capture`, is vswitch.cli.capture.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vswitch import __version__
from vswitch.bpf import Filter, FilterError, compile_filter
from vswitch.control import Stream
from vswitch.errors import ControlError
from vswitch.fastpath import CAP_RX, CAP_TX, Fastpath
from vswitch.limits import CAP_MAX_RING, CAP_MIN_RING, MAX_PORTS
from vswitch.pcap import FORMATS, Encoder, IfStats, Interface, Record, split

log = logging.getLogger("vswitch.capture")

DIRECTIONS = {"rx": CAP_RX, "tx": CAP_TX, "both": CAP_RX | CAP_TX}
READ_INTERVAL = 0.02  # seconds between drains of the C ring
CHUNK = 256 << 10  # bytes drained per read: bounds the time one read holds the loop
DEFAULT_BUFFER = 4 << 20
MAX_SNAPLEN = 65535
TRAILER_TIMEOUT = 2.0
MAX_DURATION = 366 * 86400.0  # a year: longer is a mistake (or Infinity)
MERGE_HOLD_NS = 10_000_000  # several ports: frames this young wait for the next drain
COUNTERS = ("cap_packets", "cap_drops", "cap_filtered")


@dataclass(frozen=True)
class CaptureArgs:
    port: str | tuple[str, ...]  # one port, or several into one pcapng
    direction: str = "both"
    count: int | None = None
    snaplen: int = MAX_SNAPLEN
    format: str = "pcapng"
    buffer: int = DEFAULT_BUFFER
    duration: float | None = None
    filter: str | None = None  # a pcap filter expression (pcap-filter(7))

    @property
    def ports(self) -> tuple[str, ...]:
        return (self.port,) if isinstance(self.port, str) else self.port

    @property
    def label(self) -> str:
        """'vm1' or 'vm1+vm2', for messages."""
        return "+".join(self.ports)


def _int(name: str, v: Any, lo: int, hi: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise ControlError(f"capture: {name} must be a whole number in {lo}..{hi}, got {v!r}")
    return v


def parse_args(
    port: Any,
    direction: Any = "both",
    count: Any = None,
    snaplen: Any = MAX_SNAPLEN,
    format: Any = "pcapng",
    buffer: Any = DEFAULT_BUFFER,
    duration: Any = None,
    filter: Any = None,
) -> CaptureArgs:
    """Check the capture command's arguments; ControlError names the bad one.  The filter
    is only checked for its type here: parse_filter() compiles it."""
    if isinstance(port, list):
        if not port or len(port) > MAX_PORTS or not all(isinstance(p, str) and p for p in port):
            raise ControlError("capture: port must be a port name or a list of port names")
        if len(set(port)) != len(port):
            raise ControlError(f"capture: a port is named twice in {port!r}")
        port = port[0] if len(port) == 1 else tuple(port)
    elif not isinstance(port, str) or not port:
        raise ControlError("capture: port must be a port name or a list of port names")
    if filter is not None and not isinstance(filter, str):
        raise ControlError(f"capture: filter must be a pcap filter expression, got {filter!r}")
    if direction not in DIRECTIONS:
        raise ControlError(f"capture: direction must be rx, tx or both, got {direction!r}")
    if format not in FORMATS:
        raise ControlError(f"capture: format must be pcapng or pcap, got {format!r}")
    if format == "pcap" and not isinstance(port, str):
        raise ControlError(
            "capture: format pcap holds one interface: capture several ports as pcapng"
        )
    if count is not None:
        count = _int("count", count, 1, 2**63 - 1)
    if duration is not None and (
        isinstance(duration, bool)
        or not isinstance(duration, int | float)
        or not 0 < duration <= MAX_DURATION  # also refuses NaN, which compares false
    ):
        raise ControlError(
            f"capture: duration must be a number of seconds in (0, {MAX_DURATION:.0f}], "
            f"got {duration!r}"
        )
    return CaptureArgs(
        port=port,
        direction=direction,
        count=count,
        snaplen=_int("snaplen", snaplen, 1, MAX_SNAPLEN),
        format=format,
        buffer=_int("buffer", buffer, CAP_MIN_RING, CAP_MAX_RING),
        duration=float(duration) if duration is not None else None,
        filter=filter.strip() or None if filter is not None else None,
    )


def parse_filter(expression: str | None) -> Filter | None:
    """libpcap's program for the expression, or ControlError with libpcap's message."""
    if not expression:
        return None
    try:
        return compile_filter(expression)
    except FilterError as exc:
        raise ControlError(f"capture: bad filter {expression!r}: {exc}") from None


class Capture:
    """One running capture on one or more ports; also the Stream the control server runs."""

    def __init__(
        self,
        dp: Fastpath,
        port_ids: int | list[int],
        args: CaptureArgs,
        on_end: Callable[[Capture], None],
        program: Filter | None = None,
    ) -> None:
        self.dp = dp
        self.port_ids = [port_ids] if isinstance(port_ids, int) else list(port_ids)
        self.args = args
        self.on_end = on_end
        self.program = program
        self.enc = Encoder(
            args.format,
            snaplen=args.snaplen,
            application=f"vswitch {__version__}",
            interfaces=[
                Interface(name, pid, f"vswitch port {name} ({args.direction})", args.filter or "")
                for name, pid in zip(args.ports, self.port_ids, strict=True)
            ],
        )
        self.frames = 0
        self.reason = "client closed the connection"
        self._active: dict[str, int] = {}  # port -> id, while its C capture runs
        self._stop = asyncio.Event()
        self._start_ns = 0
        self._base: dict[str, dict[str, int]] = {}
        self._final: dict[str, dict[str, int]] = {}
        self._pending: list[Record] = []
        self._logged = False

    @property
    def _running(self) -> bool:
        return bool(self._active)

    def start(self) -> Stream:
        a = self.args
        insns = self.program.insns if self.program else b""
        for name, pid in zip(a.ports, self.port_ids, strict=True):
            try:
                self.dp.capture_start(pid, DIRECTIONS[a.direction], a.snaplen, a.buffer, insns)
            except OSError as exc:
                self._halt()
                raise ControlError(f"capture on {name}: {exc.strerror or exc}") from None
            self._active[name] = pid
            self._base[name] = self.dp.port_stats(pid)
        self._start_ns = time.time_ns()
        log.info(
            "capture on %s started: %s, %s, snaplen %d, buffer %d KiB%s%s",
            a.label,
            a.direction,
            a.format,
            a.snaplen,
            a.buffer >> 10,
            f", {a.count} frame(s)" if a.count else "",
            f", filter {a.filter!r}" if a.filter else "",
            extra={"event": "capture-start", "port": a.label},
        )
        result = {
            "port": a.port if isinstance(a.port, str) else list(a.port),
            "ports": list(a.ports),
            "direction": a.direction,
            "format": a.format,
            "snaplen": a.snaplen,
            "buffer": a.buffer,
            "count": a.count,
            "duration": a.duration,
            "filter": a.filter,
            "cap_drops": sum(b.get("cap_drops", 0) for b in self._base.values()),
        }
        return Stream(result, self.run, self.close)

    def _now(self, name: str) -> dict[str, int]:
        if name in self._final:
            return self._final[name]
        pid = self._active.get(name)
        return self.dp.port_stats(pid) if pid is not None else self._base.get(name, {})

    def _delta(self, name: str, key: str) -> int:
        return self._now(name).get(key, 0) - self._base.get(name, {}).get(key, 0)

    @property
    def dropped(self) -> int:
        return sum(self._delta(n, "cap_drops") for n in self._base)

    @property
    def filtered(self) -> int:
        return sum(self._delta(n, "cap_filtered") for n in self._base)

    def _stats(self) -> list[IfStats]:
        out = []
        for name in self.args.ports:
            if name not in self._base:
                out.append(IfStats(0, 0))
                continue
            got, dropped, filtered = (self._delta(name, k) for k in COUNTERS)
            accepted = got + dropped if self.program else None
            out.append(IfStats(got + dropped + filtered, dropped, accepted))
        return out

    def abort(self, reason: str, port: str | None = None) -> None:
        """A port is going away (all of them without `port`): its C capture stops now; the
        stream ends when no port is left."""
        if port is None or set(self._active) <= {port}:
            self.reason = reason
            self._halt()
            self._stop.set()
        else:
            self._halt_port(port)
            log.info("capture on %s: port %s left it (%s)", self.args.label, port, reason)

    def _halt_port(self, name: str) -> None:
        pid = self._active.pop(name, None)
        if pid is not None:
            self._final[name] = self.dp.port_stats(pid)
            self.dp.capture_stop(pid)

    def _halt(self) -> None:
        for name in list(self._active):
            self._halt_port(name)

    async def close(self) -> None:
        """Always called by the control server; no awaits, so a cancellation cannot cut it."""
        self._halt()
        if not self._logged:
            self._logged = True
            log.info(
                "capture on %s ended (%s): %d frame(s) sent, %d dropped%s",
                self.args.label,
                self.reason,
                self.frames,
                self.dropped,
                f", {self.filtered} filtered out" if self.program else "",
                extra={"event": "capture-end", "port": self.args.label},
            )
        self.on_end(self)

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        watcher = asyncio.create_task(self._watch_client(reader))
        try:
            writer.write(self.enc.header())
            await writer.drain()
            await self._pump(writer)
        except (ConnectionError, OSError):
            self.reason = "client went away"
            return
        finally:
            watcher.cancel()
            self._halt()
        end = time.time_ns()
        try:
            writer.write(self.enc.trailer(self._start_ns, end, stats=self._stats()))
            await asyncio.wait_for(writer.drain(), TRAILER_TIMEOUT)
        except (ConnectionError, OSError, TimeoutError):
            pass

    async def _watch_client(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(4096):
                pass  # nothing is expected from the client; EOF ends the capture
        self._stop.set()

    def _drain(self, buf: bytearray, final: bool) -> tuple[list[Record], int]:
        """Read every port's ring once: (the records to send now, bytes read)."""
        view = memoryview(buf)
        if len(self.port_ids) == 1:
            pid = next(iter(self._active.values()), None)
            n = self.dp.capture_read(pid, buf) if pid is not None else 0
            return split(view[:n]), n
        horizon = time.time_ns() - MERGE_HOLD_NS
        total = 0
        for pid in self._active.values():
            n = self.dp.capture_read(pid, buf)
            total += n
            self._pending += split(view[:n])
        self._pending.sort(key=lambda r: r.ts_ns)
        if final:
            out, self._pending = self._pending, []
        else:
            k = next((i for i, r in enumerate(self._pending) if r.ts_ns >= horizon), None)
            k = len(self._pending) if k is None else k
            out, self._pending = self._pending[:k], self._pending[k:]
        return out, total

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray(CHUNK)
        a = self.args
        deadline = loop.time() + a.duration if a.duration else None
        final_budget = a.buffer * len(self.port_ids)  # after a stop, drain one ring's worth
        while True:
            stopping = (
                self._stop.is_set()
                or not self._running
                or (deadline is not None and loop.time() >= deadline)
            )
            recs, n = self._drain(buf, final=False) if self._running else ([], 0)
            if stopping and (n == 0 or final_budget - n <= 0):
                recs += self._drain(buf, final=True)[0]  # what was held back for the merge
            if recs:
                if a.count is not None:
                    recs = recs[: a.count - self.frames]
                self.frames += len(recs)
                writer.write(self.enc.encode(recs))
                await writer.drain()  # one write per drain: whole blocks, flushed
                if a.count is not None and self.frames >= a.count:
                    self.reason = f"{a.count} frame(s) captured"
                    return
            if stopping:
                final_budget -= n
                if n == 0 or final_budget <= 0:
                    if deadline is not None and loop.time() >= deadline:
                        self.reason = f"{a.duration:g} s elapsed"
                    return
                continue
            if n > CHUNK // 2:
                await asyncio.sleep(0)  # more is waiting: read again after a loop turn
                continue
            timeout = READ_INTERVAL
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - loop.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), timeout)
