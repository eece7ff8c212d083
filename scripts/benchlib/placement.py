"""Where the host has put our two vCPUs: the core-to-core round trip.

On this machine (a 2-vCPU KVM guest on an AMD EPYC host) a cache line
bouncing between CPU 0 and CPU 1 takes either about 55 ns or about 320 ns,
and the host moves the vCPUs between the two every few seconds.  A PVP loop
is one long exchange of cache lines between the generator's core and the
switch's, so the bench samples the placement before and after each system's
block and reports the rates by it.  (On 2026-12-01 it did not explain the
runs' 2x swings by itself: every system had fast and slow blocks in both
placements.)
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
from pathlib import Path
from typing import Any

# Above this a round trip crossed core complexes (the two modes are ~55 and ~320 ns).
FAR_NS = 150.0

_SOURCE = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static volatile uint64_t flag __attribute__((aligned(64)));
static void pin(int c) { cpu_set_t s; CPU_ZERO(&s); CPU_SET(c, &s);
    pthread_setaffinity_np(pthread_self(), sizeof s, &s); }
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9; }
static void *pong(void *a) { (void)a; pin(1); uint64_t v = 1;
    for (;;) { while (flag != v) ; if (v == UINT64_MAX) break; flag = v + 1; v += 2; }
    return NULL; }
int main(int argc, char **argv) {
    double secs = argc > 1 ? atof(argv[1]) : 1.0;
    pthread_t t; pin(0); pthread_create(&t, NULL, pong, NULL);
    uint64_t v = 0; double end = now() + secs;
    while (now() < end) {
        double t0 = now(); int n = 20000;
        for (int i = 0; i < n; i++) { flag = v + 1; v += 2; while (flag != v) ; }
        printf("%.1f\n", (now() - t0) / n * 1e9); fflush(stdout);
    }
    return 0;
}
"""


class Placement:
    def __init__(self, work: Path) -> None:
        self.exe = work / "pingpong"
        self.samples: list[dict[str, Any]] = []
        self.error: str | None = None

    def build(self) -> None:
        src = self.exe.with_suffix(".c")
        src.write_text(_SOURCE)
        r = subprocess.run(
            ["gcc", "-O2", "-pthread", "-o", str(self.exe), str(src)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            self.error = r.stderr[-2000:]

    async def probe(self, label: str, seconds: float = 1.0) -> dict[str, Any] | None:
        """Round trips over `seconds`, taken while no system under test runs."""
        if self.error is not None or not self.exe.exists():
            return None
        proc = await asyncio.create_subprocess_exec(
            str(self.exe), str(seconds), stdout=asyncio.subprocess.PIPE
        )
        out, _ = await asyncio.wait_for(proc.communicate(), seconds + 10)
        ns = [float(x) for x in out.split()]
        if not ns:
            return None
        far = sum(1 for x in ns if x > FAR_NS) / len(ns)
        rec = {"label": label, "median_ns": round(statistics.median(ns), 1),
               "far_fraction": round(far, 3), "far": far > 0.5}  # fmt: skip
        self.samples.append(rec)
        return rec

    def summary(self) -> dict[str, Any]:
        if not self.samples:
            return {"error": self.error or "no samples"}
        near = [s["median_ns"] for s in self.samples if not s["far"]]
        far = [s["median_ns"] for s in self.samples if s["far"]]
        return {
            "samples": len(self.samples),
            "far_samples": len(far),
            "near_ns": round(statistics.median(near), 0) if near else None,
            "far_ns": round(statistics.median(far), 0) if far else None,
        }


def _where(rec: dict[str, Any]) -> str:
    b, a = rec.get("placement_before"), rec.get("placement_after")
    if not b or not a:
        return "unknown"
    if b["far"] == a["far"]:
        return "far" if b["far"] else "near"
    return "mixed"


def render(results: list[dict[str, Any]], labels: dict[str, str]) -> list[str]:
    """The forwarding rates again, split by where the vCPUs were around each
    system's block (both probes near, both far, or they differed)."""
    ok = [r for r in results if "pps" in r and r.get("placement_before")]
    if not ok:
        return []
    probes = [p for r in ok for p in (r.get("placement_before"), r.get("placement_after")) if p]
    near = [p["median_ns"] for p in probes if not p["far"]]
    far = [p["median_ns"] for p in probes if p["far"]]
    def ns(vals: list[float]) -> str:
        return f"{statistics.median(vals):.0f} ns" if vals else "—"

    lines = [
        "",
        "## Core placement",
        "",
        "A cache-line round trip between CPU 0 (the generator's) and CPU 1 (the switch's), "
        "probed for 1 s before and after each system's block with nothing else running "
        f"(`scripts/benchlib/placement.py`): {ns(near)} in {len(near)} of {len(probes)} "
        f"probes, {ns(far)} in {len(far)}: the host moves this guest's vCPUs between "
        "placements every few seconds. The rates by the placement seen around each block "
        "(mixed: the two probes differed) show whether it explains a run's spread; what "
        "else runs on the host's cores stays invisible from here:",
        "",
        "| Frame | System | near: Mpps (blocks) | far: Mpps (blocks) | mixed (blocks) |",
        "|---|---|---|---|---|",
    ]
    sizes = sorted({r["size"] for r in ok})
    systems = list(dict.fromkeys(r["system"] for r in ok))
    for size in sizes:
        for system in systems:
            mine = [r for r in ok if r["system"] == system and r["size"] == size]
            if not mine:
                continue
            cells = []
            for mode in ("near", "far", "mixed"):
                pps = [r["pps"] / 1e6 for r in mine if _where(r) == mode]
                cells.append(f"{statistics.median(pps):.2f} ({len(pps)})" if pps else "—")
            lines.append(f"| {size} B | {labels.get(system, system)} | " + " | ".join(cells) + " |")
    return lines
