#!/usr/bin/env python3
"""What dirty logging (live migration) and many memory regions (hotplug) cost the fast
path (issue 13).

The fast path is driven directly through the test-side virtio driver, as
scripts/bench_hostile.py does: no thread, guest or generator, so the figures are the
switch's own work plus a Python call per 128 frames (the same in every case).  A sends
broadcast frames to B through vs_poll; what changes between the cases is only B, the
port the switch writes into:

- `off`: B's memory is one region, no log (the usual case);
- `logging`: the same with LOG_ALL on, a dirty log mapped and both used rings logged
  (a migration under way): every RX buffer's pages, used entries and index marked;
- `regions`: no log, B's memory split into VS_MAX_MEM_REGIONS regions (hotplugged
  DIMMs) with its RX buffers spread over all of them: every descriptor's lookup is a
  binary search over the whole table.

The cases run interleaved, round by round (the machine's speed drifts); reported are
the median frame rates and the ratios to `off`, per round and their median.

    .venv/bin/python scripts/bench_log.py [--rounds N] [--frames N] [--size BYTES] [--json]
"""

from __future__ import annotations

import argparse
import fcntl
import json
import mmap
import os
import statistics
import sys
import time
from typing import Any

from vswitch.testkit.virtio_driver import (
    GuestMemory,
    Port,
    Region,
    Switch,
    eth,
    lib,
    net_hdr,
)

NUM = 4096
MA = "02:00:00:00:00:0a"
BCAST = "ff:ff:ff:ff:ff:ff"
PAGE = 4096


def many_regions(n: int, size: int) -> GuestMemory:
    """n regions of size bytes, apart in guest-physical and front-end space."""
    return GuestMemory([Region(0x100000 + i * 2 * size, size, 0x7F0000000000 + i * 2 * size,
                               i * size) for i in range(n)])  # fmt: skip


class Case:
    def __init__(self, sw: Switch, a: Port, mem: GuestMemory, log: bool) -> None:
        self.sw, self.a, self.mem = sw, a, mem
        self.b = sw.port(mem=mem, num=NUM)
        self.logmap: mmap.mmap | None = None
        if log:
            top = max(r.gpa + r.size for r in mem.regions)
            size = -(-top // PAGE // 8)
            fd = os.memfd_create("vhost-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            os.ftruncate(fd, size)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK)
            self.logmap = mmap.mmap(fd, size)
            assert lib.vs_port_set_features(sw.sw, self.b.id, self.b.features | 1 << 26) == 0
            assert lib.vs_port_set_log(sw.sw, self.b.id, fd, size, 0) == 0
            os.close(fd)
            for q, ring in enumerate(self.b.rings):
                assert lib.vs_vring_set_log(sw.sw, self.b.id, q, 1, ring.used) == 0
            assert lib.vs_port_logging(sw.sw, self.b.id) == 1

    def rate(self, frames: int, size: int) -> float:
        """Frames a second from A to B (and to every other port's B: they are down)."""
        a, b = self.a, self.b
        a.tx.reclaim()
        b.rx.reclaim()
        frames = min(frames, len(a.tx.free_ids), len(b.rx.free_ids))
        b.post_rx(frames, 2048)
        f, hdr = eth(BCAST, MA, size), net_hdr(12)
        for _ in range(frames):
            a.tx.add_tx(f, hdr, publish=False)
        if self.logmap is not None:
            self.logmap[:] = bytes(len(self.logmap))  # QEMU's sync: bits cleared
        # Only this case's B may take frames: the others' RX rings are stopped.
        start_b = b.rx.used_idx
        a.tx.publish(*sorted(a.tx.chains))
        t = time.perf_counter()
        got = 0
        while got < frames:
            lib.vs_poll(self.sw.sw, 4 * lib.VS_BURST)
            got = (b.rx.used_idx - start_b) & 0xFFFF
        return got / (time.perf_counter() - t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--frames", type=int, default=NUM - 64)
    ap.add_argument("--size", type=int, default=64, help="frame size in bytes")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    cases: dict[str, Case] = {}
    mems: list[GuestMemory] = []
    # One switch per case, each with its own A: a case's B is the only port its
    # broadcasts reach.
    for name, mem, log in (
        ("off", GuestMemory.single(size=32 << 20), False),
        ("logging", GuestMemory.single(size=32 << 20), True),
        ("regions", many_regions(lib.VS_MAX_MEM_REGIONS, 512 << 10), False),
    ):
        sw = Switch()
        amem = GuestMemory.single(size=32 << 20)
        mems += [mem, amem]
        a = sw.port(mem=amem, num=NUM)
        cases[name] = Case(sw, a, mem, log)
    assert lib.vs_port_mem_regions(cases["regions"].sw.sw, cases["regions"].b.id) == \
        lib.VS_MAX_MEM_REGIONS
    for c in cases.values():  # warm-up: faults the memory in
        c.rate(args.frames, args.size)
    rates: dict[str, list[float]] = {n: [] for n in cases}
    for _ in range(args.rounds):
        for n, c in cases.items():
            rates[n].append(c.rate(args.frames, args.size))
    ratios = {n: statistics.median(r / o for r, o in zip(rates[n], rates["off"], strict=True))
              for n in ("logging", "regions")}  # fmt: skip
    res: dict[str, Any] = {
        "frame_bytes": args.size, "rounds": args.rounds,
        "mpps": {n: round(statistics.median(r) / 1e6, 3) for n, r in rates.items()},
        "ratio_to_off": {n: round(v, 3) for n, v in ratios.items()},
        "log_pages_marked": cases["logging"].b.stats()["log_pages"],
        "regions": lib.VS_MAX_MEM_REGIONS,
    }  # fmt: skip
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{args.size} B frames, {args.rounds} rounds, medians:")
        for n, v in res["mpps"].items():
            extra = f"  ({res['ratio_to_off'][n]:.3f}x off)" if n in ratios else ""
            print(f"  {n:8} {v:7.3f} Mpps{extra}")
    for c in cases.values():
        c.sw.close()
    for m in mems:
        m.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
