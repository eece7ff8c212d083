"""Flooding cost against the number of ports, for scripts/bench (issue 5:
"flooding cost linear in ports").

Not a PVP loop: the fast path is driven directly through the test-side
virtio driver (vswitch/testkit/virtio_driver.py), with no thread, guest or generator,
so the figure is the switch's own cost and nothing else's.  One port sends
broadcast frames; every other port has room for all of them, so each frame
is copied once to each of the N-1 others.  Linear cost means the time per
copy stays flat as N grows: the report gives it per N and as a ratio to N=2.
"""

# The report's en dashes and multiplication signs are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import statistics
import time
from typing import Any

PORTS = (2, 4, 8, 16, 32, 64)
FRAMES = 512
MA = "02:00:00:00:00:0a"
BCAST = "ff:ff:ff:ff:ff:ff"


def _rounds(nports: int, frames: int, size: int, rounds: int) -> list[float]:
    """Seconds the fast path took, per round, to flood `frames` frames of
    `size` bytes (FCS included) from one port to nports-1 others.  The same
    switch and memory serve every round, and the first is a warm-up: it
    faults in the switch's mappings of guest memory, a one-time cost."""
    from vswitch.testkit.virtio_driver import Q_TX, Switch, eth, lib, net_hdr

    frame = eth(BCAST, MA, size - 4)
    out = []
    with Switch() as sw:
        src = sw.port(num=1024)
        sinks = [sw.port(num=1024) for _ in range(nports - 1)]
        for r in range(rounds + 1):
            for s in sinks:
                s.rx.reclaim()
                s.post_rx(frames, 2048)
            src.tx.reclaim()
            heads = [src.tx.add_tx(frame, net_hdr(12), publish=False) for _ in range(frames)]
            src.tx.publish(*heads)
            before = [s.stats()["tx_packets"] for s in sinks]
            taken = 0
            t0 = time.perf_counter()
            while taken < frames:
                n = lib.vs_port_kick(sw.sw, src.id, Q_TX)
                if n <= 0:
                    raise RuntimeError(f"flood bench: the switch stopped after {taken} frames")
                taken += n
            elapsed = time.perf_counter() - t0
            short = [s.id for s, b in zip(sinks, before, strict=True)
                     if s.stats()["tx_packets"] - b != frames]  # fmt: skip
            if short:
                raise RuntimeError(f"flood bench: ports {short} did not get all {frames} frames")
            if r > 0:
                out.append(elapsed)
    return out


def measure(
    rounds: int = 5, size: int = 64, ports: tuple[int, ...] = PORTS, frames: int = FRAMES
) -> dict[str, Any]:
    """Per port count: nanoseconds per copy, median and spread over rounds."""
    out: dict[str, Any] = {"size": size, "frames": frames, "rounds": rounds, "points": []}
    for n in ports:
        per_copy = [t / (frames * (n - 1)) * 1e9 for t in _rounds(n, frames, size, rounds)]
        out["points"].append({
            "ports": n,
            "ns_per_copy": {"median": statistics.median(per_copy), "min": min(per_copy),
                            "max": max(per_copy)},
        })  # fmt: skip
    base = out["points"][0]["ns_per_copy"]["median"]
    for p in out["points"]:
        p["ratio_to_2_ports"] = p["ns_per_copy"]["median"] / base
    return out


def render(flood: dict[str, Any]) -> list[str]:
    """The report's section (markdown lines)."""
    rows = [
        "",
        f"## Flooding cost ({flood['size']} B broadcast frames, one sender)",
        "",
        "| Ports | ns per copy: median (min–max) | ratio to 2 ports |",
        "|---|---|---|",
    ]
    for p in flood["points"]:
        s = p["ns_per_copy"]
        rows.append(f"| {p['ports']} | {s['median']:.0f} ({s['min']:.0f}–{s['max']:.0f}) | "
                    f"{p['ratio_to_2_ports']:.2f}× |")  # fmt: skip
    rows += [
        "",
        f"- {flood['frames']} frames per measurement, {flood['rounds']} rounds after a warm-up, "
        "driven through the fast path's C API from the test-side virtio driver (no thread, no "
        "guest): each frame is copied to every other port, and a flat cost per copy is a total "
        "cost linear in ports.",
    ]
    return rows
