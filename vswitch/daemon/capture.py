"""Packet capture over the control socket.

Daemon side: the `capture` command starts the fast path's capture ring on a port
(Fastpath.capture_start), answers ok, and the connection then carries a pcapng (or pcap)
stream made from the records it drains every READ_INTERVAL, until --count frames, the
--duration, the client closing (or half-closing) its end, or the port going away.  Then the
C capture stops and, for pcapng, an Interface Statistics Block with the drops ends the
stream.  A slow reader never holds a port back: the C ring fills, and the fast path counts
what did not fit in cap_drops.  One capture per port at a time.

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
from vswitch.control import Stream
from vswitch.errors import ControlError
from vswitch.fastpath import CAP_RX, CAP_TX, Fastpath
from vswitch.limits import CAP_MAX_RING, CAP_MIN_RING
from vswitch.pcap import FORMATS, Encoder

log = logging.getLogger("vswitch.capture")

DIRECTIONS = {"rx": CAP_RX, "tx": CAP_TX, "both": CAP_RX | CAP_TX}
READ_INTERVAL = 0.02  # seconds between drains of the C ring
CHUNK = 256 << 10  # bytes drained per read: bounds the time one read holds the loop
DEFAULT_BUFFER = 4 << 20
MAX_SNAPLEN = 65535
TRAILER_TIMEOUT = 2.0
MAX_DURATION = 366 * 86400.0  # a year: longer is a mistake (or Infinity)


@dataclass(frozen=True)
class CaptureArgs:
    port: str
    direction: str = "both"
    count: int | None = None
    snaplen: int = MAX_SNAPLEN
    format: str = "pcapng"
    buffer: int = DEFAULT_BUFFER
    duration: float | None = None


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
) -> CaptureArgs:
    """Check the capture command's arguments; ControlError names the bad one."""
    if not isinstance(port, str) or not port:
        raise ControlError("capture: port must be a port name")
    if direction not in DIRECTIONS:
        raise ControlError(f"capture: direction must be rx, tx or both, got {direction!r}")
    if format not in FORMATS:
        raise ControlError(f"capture: format must be pcapng or pcap, got {format!r}")
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
    )


class Capture:
    """One running capture on one port; also the Stream the control server runs."""

    def __init__(
        self, dp: Fastpath, port_id: int, args: CaptureArgs, on_end: Callable[[Capture], None]
    ) -> None:
        self.dp = dp
        self.port_id = port_id
        self.args = args
        self.on_end = on_end
        self.enc = Encoder(
            args.format,
            args.port,
            args.snaplen,
            description=f"vswitch port {args.port} ({args.direction})",
            application=f"vswitch {__version__}",
        )
        self.frames = 0
        self.reason = "client closed the connection"
        self._running = False
        self._stop = asyncio.Event()
        self._start_ns = 0
        self._base: dict[str, int] = {}
        self._final: dict[str, int] = {}
        self._logged = False

    def start(self) -> Stream:
        try:
            self.dp.capture_start(
                self.port_id, DIRECTIONS[self.args.direction], self.args.snaplen, self.args.buffer
            )
        except OSError as exc:
            raise ControlError(f"capture on {self.args.port}: {exc.strerror or exc}") from None
        self._running = True
        self._start_ns = time.time_ns()
        self._base = self.dp.port_stats(self.port_id)
        a = self.args
        log.info(
            "capture on %s started: %s, %s, snaplen %d, buffer %d KiB%s",
            a.port,
            a.direction,
            a.format,
            a.snaplen,
            a.buffer >> 10,
            f", {a.count} frame(s)" if a.count else "",
            extra={"event": "capture-start", "port": a.port},
        )
        result = {
            "port": a.port,
            "direction": a.direction,
            "format": a.format,
            "snaplen": a.snaplen,
            "buffer": a.buffer,
            "count": a.count,
            "duration": a.duration,
            "cap_drops": self._base.get("cap_drops", 0),
        }
        return Stream(result, self.run, self.close)

    @property
    def dropped(self) -> int:
        st = self._final or (self.dp.port_stats(self.port_id) if self._running else self._base)
        return st.get("cap_drops", 0) - self._base.get("cap_drops", 0)

    def _seen(self) -> int:
        st = self._final or self._base
        return sum(st.get(k, 0) - self._base.get(k, 0) for k in ("cap_packets", "cap_drops"))

    def abort(self, reason: str) -> None:
        """The port is going away: stop the C capture now; the stream ends."""
        self.reason = reason
        self._halt()
        self._stop.set()

    def _halt(self) -> None:
        if self._running:
            self._final = self.dp.port_stats(self.port_id)
            self._running = False
            self.dp.capture_stop(self.port_id)

    async def close(self) -> None:
        """Always called by the control server; no awaits, so a cancellation cannot cut it."""
        self._halt()
        if not self._logged:
            self._logged = True
            log.info(
                "capture on %s ended (%s): %d frame(s) sent, %d dropped",
                self.args.port,
                self.reason,
                self.frames,
                self.dropped,
                extra={"event": "capture-end", "port": self.args.port},
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
            writer.write(self.enc.trailer(self._start_ns, end, self._seen(), self.dropped))
            await asyncio.wait_for(writer.drain(), TRAILER_TIMEOUT)
        except (ConnectionError, OSError, TimeoutError):
            pass

    async def _watch_client(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while await reader.read(4096):
                pass  # nothing is expected from the client; EOF ends the capture
        self._stop.set()

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        buf = bytearray(CHUNK)
        view = memoryview(buf)
        a = self.args
        deadline = loop.time() + a.duration if a.duration else None
        final_budget = a.buffer  # after a stop, drain at most one ring's worth
        while self._running:
            stopping = self._stop.is_set() or (deadline is not None and loop.time() >= deadline)
            n = self.dp.capture_read(self.port_id, buf)
            if n:
                left = None if a.count is None else a.count - self.frames
                data, k = self.enc.records(view[:n], left)
                self.frames += k
                writer.write(data)
                await writer.drain()
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
