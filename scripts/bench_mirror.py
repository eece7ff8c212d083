"""What mirror ports cost the fast path: 64 B unicast frames from port a to port b,
driven through the C API from the test-side virtio driver (no thread, no guest), with
no mirror configured (the cost that must not change), and with a mirror port m taking
a copy of a's frames (m with room, and m with a full RX ring: copies dropped).

    .venv/bin/python scripts/bench_mirror.py [--rounds N] [--frames N] [--modes none,rx,full]

Prints one line per mode: nanoseconds per frame a -> b, median and p10-p90 over the
rounds (after a warm-up).  VSWITCH_FASTPATH_DIR=OUTDIR measures another build of the
module (scripts/build-inplace OUTDIR), so a build without mirrors can be compared with
one that has them, in alternating runs on the same machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def run(mode: str, rounds: int, frames: int, size: int = 64) -> list[float]:
    from vswitch.testkit.virtio_driver import Q_TX, Switch, eth, lib, mac_int, net_hdr

    frame = eth(MB, MA, size - 4)
    out = []
    with Switch() as sw:
        a, b, m = (sw.port(num=1024) for _ in range(3))
        assert lib.vs_fdb_add(sw.sw, mac_int(MB), 0, b.id, 1) == 0
        if mode != "none":
            if not hasattr(lib, "vs_port_set_mirror"):
                raise SystemExit(f"mode {mode}: this build has no mirror ports")
            from vswitch.testkit.virtio_driver import ffi

            src = ffi.new("uint32_t[]", [a.id])
            assert lib.vs_port_set_mirror(sw.sw, m.id, src, 1, lib.VS_MIRROR_RX) == 0
        for r in range(rounds + 1):
            b.rx.reclaim()
            b.post_rx(frames, 2048)
            m.rx.reclaim()
            if mode == "rx":
                m.post_rx(frames, 2048)
            a.tx.reclaim()
            heads = [a.tx.add_tx(frame, net_hdr(12), publish=False) for _ in range(frames)]
            a.tx.publish(*heads)
            before = b.stats()["tx_packets"]
            taken = 0
            t0 = time.perf_counter()
            while taken < frames:
                n = lib.vs_port_kick(sw.sw, a.id, Q_TX)
                if n <= 0:
                    raise RuntimeError(f"mirror bench: the switch stopped after {taken} frames")
                taken += n
            elapsed = time.perf_counter() - t0
            if b.stats()["tx_packets"] - before != frames:
                raise RuntimeError("mirror bench: b did not get every frame")
            if r > 0:
                out.append(elapsed / frames * 1e9)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--frames", type=int, default=512)
    ap.add_argument("--modes", default="none")
    args = ap.parse_args()
    for mode in args.modes.split(","):
        ns = sorted(run(mode, args.rounds, args.frames))
        p10, p90 = ns[len(ns) // 10], ns[len(ns) * 9 // 10]
        print(f"{mode:5} {statistics.median(ns):7.1f} ns/frame (p10 {p10:.1f}, p90 {p90:.1f}, "
              f"{len(ns)} rounds of {args.frames})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
