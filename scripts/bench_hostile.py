#!/usr/bin/env python3
"""What a hostile guest's rings cost the switch (issue 12, "Denial of service
from guest memory").

The fast path is driven directly through the test-side virtio driver
(vswitch/testkit/virtio_driver.py), with no thread, guest or generator, as in
tests/fastpath/: the figures are the switch's own work.  Three ports: an
honest pair A and B (rings of 256, room for everything) and a hostile port H
with rings of 32768 whose every descriptor is built to cost work and give
nothing:

- H's RX ring: every avail slot names the same head, a chain of 32767
  zero-length writable descriptors ending in an indirect table of 32768 more,
  so each head walked adds no room (the ring never has room for a frame);
- H's TX ring: the same chain, readable, in every avail slot, and the ring
  kept full (refilled after every call, outside the timings).

A and B are measured alone first, then H is attached to the same switch
(same memory, already faulted in) and the same measurements run again.

Reported: the time per broadcast frame delivered to H (A sends one frame,
flooded to B and H, through vs_port_kick); per 32-frame burst; per kick of
H's TX ring; and the honest pair's forwarding rate with H attached, as a
share of its rate without H (broadcast frames from A to B through vs_poll,
which also serves H's TX ring, so both H's rings are in the way).  Before a
fix the hostile cases take seconds: every measurement is bounded in time
(--max-seconds) and reports how many repetitions it managed.

    .venv/bin/python scripts/bench_hostile.py [--rounds N] [--max-seconds S] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import struct
import sys
import time
from typing import Any

from vswitch.testkit.virtio_driver import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    MODERN,
    GuestMemory,
    Port,
    SplitRing,
    Switch,
    eth,
    lib,
    net_hdr,
)

NUM = 32768
HONEST_NUM = 4096
MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
BCAST = "ff:ff:ff:ff:ff:ff"
_DESC = struct.Struct("<QIHH")


def _hostile_chain(ring: SplitRing, flags: int) -> None:
    """Descriptors 0..NUM-2: zero-length, each naming the next; NUM-1: an
    indirect table of NUM zero-length entries chained the same way.  Every
    avail slot names head 0 and the avail index is a whole ring ahead."""
    mem = ring.mem
    buf = mem.alloc(64, 16)
    table = mem.alloc(16 * NUM, 16)
    direct = b"".join(_DESC.pack(buf, 0, flags | DESC_F_NEXT, i + 1) for i in range(NUM - 1))
    direct += _DESC.pack(table, 16 * NUM, DESC_F_INDIRECT, 0)
    mem.write(ring.desc, direct)
    entries = b"".join(_DESC.pack(buf, 0, flags | DESC_F_NEXT, i + 1) for i in range(NUM - 1))
    entries += _DESC.pack(buf, 0, flags, 0)
    mem.write(table, entries)
    mem.write(ring.avail + 4, bytes(2 * NUM))  # every slot: head 0
    ring.set_avail_idx(NUM)


def _refill(ring: SplitRing) -> None:
    """Keep a hostile TX ring full: the avail index a whole ring past the
    used index the switch published."""
    ring.set_avail_idx(ring.used_idx + NUM)


def _timed(fn: Any, reps: int, max_seconds: float) -> tuple[list[float], int]:
    """What fn returns (the seconds its fast path call took, without the
    driver's own work), up to reps calls or max_seconds in all."""
    out: list[float] = []
    start = time.perf_counter()
    for _ in range(reps):
        out.append(fn())
        if time.perf_counter() - start > max_seconds:
            break
    return out, len(out)


class Bench:
    """A and B alone first; attach() adds H to the same switch, so both
    halves of a comparison use the same memory, already faulted in."""

    def __init__(self) -> None:
        self.sw = Switch()
        self.mems = [GuestMemory.single(size=32 << 20) for _ in range(2)]
        self.a = self.sw.port(mem=self.mems[0], num=HONEST_NUM)
        self.b = self.sw.port(mem=self.mems[1], num=HONEST_NUM)
        self.h: Port | None = None
        self.hmem = GuestMemory.single(size=16 << 20)

    def attach(self) -> None:
        self.h = self.sw.port(mem=self.hmem, num=NUM, features=MODERN)
        _hostile_chain(self.h.rx, DESC_F_WRITE)
        _hostile_chain(self.h.tx, 0)

    def close(self) -> None:
        self.sw.close()
        for m in self.mems:
            m.close()
        self.hmem.close()

    def _reset_honest(self) -> None:
        """Reclaim what the switch used, so the next round starts empty."""
        self.a.tx.reclaim()
        self.b.rx.reclaim()

    def kick_a(self, frames: int) -> float:
        """A sends `frames` broadcast frames; the seconds vs_port_kick took."""
        self._reset_honest()
        self.b.post_rx(frames, 2048)
        f = eth(BCAST, MA, 60)
        hdr = net_hdr(12)
        for _ in range(frames):
            self.a.tx.add_tx(f, hdr)
        t = time.perf_counter()
        lib.vs_port_kick(self.sw.sw, self.a.id, 1)
        return time.perf_counter() - t

    def kick_h(self) -> float:
        assert self.h is not None
        _refill(self.h.tx)
        t = time.perf_counter()
        lib.vs_port_kick(self.sw.sw, self.h.id, 1)
        return time.perf_counter() - t

    def honest_rate(self, frames: int, max_seconds: float) -> tuple[float, int]:
        """Broadcast frames A -> B through vs_poll (which serves every port,
        H's TX ring included): frames per second delivered to B.  A round
        cut short by max_seconds leaves frames behind: the next one sends
        only as many as there are free descriptors for."""
        self._reset_honest()
        frames = min(frames, len(self.a.tx.free_ids), len(self.b.rx.free_ids))
        self.b.post_rx(frames, 2048)
        f = eth(BCAST, MA, 60)
        hdr = net_hdr(12)
        for _ in range(frames):
            self.a.tx.add_tx(f, hdr, publish=False)
        self.a.tx.publish(*sorted(self.a.tx.chains))
        start_b = self.b.rx.used_idx
        start = time.perf_counter()
        got = 0
        while got < frames:
            if self.h is not None:
                _refill(self.h.tx)
            lib.vs_poll(self.sw.sw, 4 * lib.VS_BURST)
            got = (self.b.rx.used_idx - start_b) & 0xFFFF
            if time.perf_counter() - start > max_seconds:
                break
        dt = time.perf_counter() - start
        return got / dt, got


def _stat(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=20, help="repetitions per measurement")
    ap.add_argument("--max-seconds", type=float, default=10.0,
                    help="time bound for each measurement")
    ap.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = ap.parse_args()

    res: dict[str, Any] = {}
    hb = Bench()
    try:
        # Warm-up: faults in the mappings of what the rounds below use.
        hb.kick_a(32)
        hb.honest_rate(HONEST_NUM - 64, args.max_seconds)
        res["alone_frame_s"] = _stat(_timed(lambda: hb.kick_a(1), args.rounds,
                                            args.max_seconds)[0])
        res["alone_burst_s"] = _stat(_timed(lambda: hb.kick_a(32), args.rounds,
                                            args.max_seconds)[0])
        rates = [hb.honest_rate(HONEST_NUM - 64, args.max_seconds)[0] for _ in range(3)]
        res["alone_rate_fps"] = statistics.median(rates)

        hb.attach()
        assert hb.h is not None
        hb.kick_a(1)
        xs, n = _timed(lambda: hb.kick_a(1), args.rounds, args.max_seconds)
        res["hostile_frame_s"] = {**_stat(xs), "reps": n}
        xs, n = _timed(lambda: hb.kick_a(32), args.rounds, args.max_seconds)
        res["hostile_burst_s"] = {**_stat(xs), "reps": n}
        xs, n = _timed(hb.kick_h, args.rounds, args.max_seconds)
        res["hostile_tx_kick_s"] = {**_stat(xs), "reps": n}
        runs = [hb.honest_rate(HONEST_NUM - 64, args.max_seconds)]
        if runs[0][1] == HONEST_NUM - 64:   # not cut short: two more, and the median
            runs += [hb.honest_rate(HONEST_NUM - 64, args.max_seconds) for _ in range(2)]
        rate, got = sorted(runs)[len(runs) // 2]
        res["hostile_rate_fps"] = rate
        res["hostile_rate_frames"] = got
        res["share_of_alone"] = rate / res["alone_rate_fps"]
        res["h_counters"] = {k: v for k, v in hb.h.stats().items() if v}
        res["h_error"] = hb.h.error
    finally:
        hb.close()

    if args.json:
        print(json.dumps(res, indent=2))
        return 0

    def ms(d: dict[str, float]) -> str:
        reps = f", {int(d['reps'])} reps" if "reps" in d else ""
        return (f"{d['median'] * 1e6:,.1f} us (min {d['min'] * 1e6:,.1f}, "
                f"max {d['max'] * 1e6:,.1f}{reps})")

    print(f"ring size of the hostile port: {NUM}")
    print(f"broadcast frame, A alone with B:            {ms(res['alone_frame_s'])}")
    print(f"broadcast frame delivered to the hostile H: {ms(res['hostile_frame_s'])}")
    print(f"32-frame burst, A alone with B:             {ms(res['alone_burst_s'])}")
    print(f"32-frame burst, H attached:                 {ms(res['hostile_burst_s'])}")
    print(f"kick of H's TX ring:                        {ms(res['hostile_tx_kick_s'])}")
    print(f"honest pair alone:      {res['alone_rate_fps']:,.0f} frames/s")
    print(f"honest pair, H attached: {res['hostile_rate_fps']:,.0f} frames/s "
          f"({res['hostile_rate_frames']} frames), "
          f"{100 * res['share_of_alone']:.1f} % of alone")
    print(f"H's counters: {res['h_counters']}")
    print(f"H's state: {'broken: ' + res['h_error'] if res['h_error'] else 'not broken'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
