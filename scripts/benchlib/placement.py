"""Where the host has put our two vCPUs, second by second, and the forwarding
rates split by it.

On this machine (a 2-vCPU KVM guest on an AMD EPYC host) a cache line
bouncing between CPU 0 and CPU 1 takes either ~50-80 ns (both vCPUs in one
core complex: "near") or ~300-350 ns ("far"), and the host moves the vCPUs
between the two every few seconds to tens of seconds, in the middle of a
measurement.  A PVP loop is one long exchange of cache lines between the
generator's core and the switch's, so the placement sets the loop's speed:
on 2026-12-01 every system ran at ~5 Mpps (64 B) whenever the vCPUs were far
and at 12-16 Mpps when near, and which system got how many far seconds was
luck.  So the bench runs placement_probe.c for the whole run (about 0.1-0.6
ms of each CPU per second), takes the forwarding rate every second, and
compares systems within one placement.
"""

# The report's en dashes are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import asyncio
import bisect
import contextlib
import statistics
import subprocess
from pathlib import Path
from typing import Any

from .procs import Children

# Above this a round trip crossed core complexes (the two modes are ~50-80 and ~300-350 ns).
FAR_NS = 150.0
ROUNDS = 2000  # placement_probe.c's round trips per sample: fewer means it timed out
SOURCE = Path(__file__).with_name("placement_probe.c")
STATES = ("near", "far")


class Placement:
    """placement_probe running beside the bench; its samples, and each
    measured second's placement from them."""

    def __init__(self, work: Path) -> None:
        self.exe = work / "placement_probe"
        self.samples: list[tuple[float, float, int]] = []  # (monotonic s, ns, round trips)
        self.error: str | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.reader: asyncio.Task[None] | None = None

    def build(self) -> None:
        r = subprocess.run(
            ["gcc", "-O2", "-Wall", "-Wextra", "-Werror", "-pthread", "-o", str(self.exe),
             str(SOURCE)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if r.returncode != 0:
            self.error = f"placement_probe.c did not build: {r.stderr[-2000:]}"

    async def start(self, kids: Children, seconds: float) -> None:
        if self.error is not None:
            return
        self.proc = await kids.spawn("placement", [str(self.exe), str(seconds)], pipe=True)
        self.reader = asyncio.create_task(self._read(self.proc))

    async def _read(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            t, ns, n = raw.split()
            self.samples.append((float(t), float(ns), int(n)))

    async def stop(self, kids: Children) -> None:
        if self.proc is not None:
            await kids.stop(self.proc, timeout=5)
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.reader, 5)
        if self.proc is not None and not self.samples:
            self.error = f"placement_probe gave no samples: {kids.tail('placement', 5)}"

    def state(self, t0: float, t1: float) -> str:
        """near or far if every sample from a second before t0 to a second
        after t1 says so; mixed if they differ or one timed out; unknown
        without samples there."""
        ts = [s[0] for s in self.samples]
        lo, hi = bisect.bisect_left(ts, t0 - 1.0), bisect.bisect_right(ts, t1 + 1.0)
        around = self.samples[lo:hi]
        if not around:
            return "unknown"
        if any(n < ROUNDS or ns < 0 for _, ns, n in around):
            return "mixed"
        far = {ns > FAR_NS for _, ns, _ in around}
        if len(far) > 1:
            return "mixed"
        return "far" if far.pop() else "near"

    def tag(self, results: list[dict[str, Any]]) -> None:
        """Each measured second gets its placement (rec["slices"][i][3])."""
        for rec in results:
            for sl in rec.get("slices", []):
                del sl[3:]
                sl.append(self.state(sl[0], sl[1]))

    def summary(self) -> dict[str, Any]:
        good = [ns for _, ns, n in self.samples if n == ROUNDS and ns >= 0]
        near = [ns for ns in good if ns <= FAR_NS]
        far = [ns for ns in good if ns > FAR_NS]
        return {
            "error": self.error,
            "samples": len(self.samples),
            "timed_out": len(self.samples) - len(good),
            "near_samples": len(near),
            "far_samples": len(far),
            "near_ns": round(statistics.median(near), 1) if near else None,
            "far_ns": round(statistics.median(far), 1) if far else None,
        }


def seconds_by_state(rec: dict[str, Any], state: str) -> list[float]:
    """The per-second rates (pps) of one measurement in one placement."""
    return [sl[2] for sl in rec.get("slices", []) if len(sl) > 3 and sl[3] == state]


# --------------------------------------------------------------------------- rates by placement

MIN_SECONDS = 3  # a round's system counts towards a ratio's spread with this many seconds


def _spread(vals: list[float]) -> dict[str, float] | None:
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    if len(vals) >= 5:  # p10-p90: one odd second is not the spread
        q = statistics.quantiles(vals, n=10, method="inclusive")
        lo, hi = q[0], q[-1]
    return {"median": statistics.median(vals), "min": lo, "max": hi, "n": len(vals)}


def _ratio(
    mine: list[dict[str, Any]], theirs: list[dict[str, Any]], state: str
) -> dict[str, float] | None:
    """median(my seconds) / median(their seconds), both in `state`; the spread
    from the rounds in which both had MIN_SECONDS there."""
    a = [x for r in mine for x in seconds_by_state(r, state)]
    b = [x for r in theirs for x in seconds_by_state(r, state)]
    if not a or not b or statistics.median(b) <= 0:
        return None
    per_round = []
    for r in mine:
        o = [t for t in theirs if t["round"] == r["round"]]
        ra, rb = seconds_by_state(r, state), [x for t in o for x in seconds_by_state(t, state)]
        if len(ra) >= MIN_SECONDS and len(rb) >= MIN_SECONDS:
            per_round.append(statistics.median(ra) / statistics.median(rb))
    value = statistics.median(a) / statistics.median(b)
    return {"median": value, "min": min(per_round, default=value),
            "max": max(per_round, default=value), "n": len(per_round)}  # fmt: skip


def by_state(
    results: list[dict[str, Any]],
    sizes: list[int],
    scale: tuple[str, ...],
    variants: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Per placement: each system's per-second rates, and the ratios the
    report and the targets use."""
    ok = [r for r in results if "slices" in r]
    out: dict[str, Any] = {}
    for state in STATES:
        st: dict[str, Any] = {"pps": {}, "ratios": {}, "scale": {}, "seconds": {}}
        for r in ok:
            key = str(r["size"])
            st["seconds"].setdefault(key, {}).setdefault(r["system"], 0)
            st["seconds"][key][r["system"]] += len(seconds_by_state(r, state))
        for size in sizes:
            mine = [r for r in ok if r["size"] == size and r["system"] == "vswitch"]
            systems = dict.fromkeys(r["system"] for r in ok if r["size"] == size)
            for system in systems:
                secs = [x for r in ok if r["size"] == size and r["system"] == system
                        for x in seconds_by_state(r, state)]  # fmt: skip
                st["pps"].setdefault(str(size), {})[system] = _spread(secs)
            for other in ("testpmd", "ovs"):
                theirs = [r for r in ok if r["size"] == size and r["system"] == other]
                st["ratios"].setdefault(str(size), {})[f"vswitch/{other}"] = _ratio(
                    mine, theirs, state
                )
            for variant, anchor in (variants or {}).items():
                them = [r for r in ok if r["size"] == size and r["system"] == variant]
                base = [r for r in ok if r["size"] == size and r["system"] == anchor]
                st["ratios"][str(size)][f"{variant}/{anchor}"] = _ratio(them, base, state)
        small = min(sizes)
        base = [r for r in ok if r["size"] == small and r["system"] == "vswitch"]
        for name in scale:
            them = [r for r in ok if r["size"] == small and r["system"] == name]
            st["scale"][name] = _ratio(them, base, state)
        out[state] = st
    return out


def render_placement(
    results: list[dict[str, Any]],
    states: dict[str, Any],
    probe: dict[str, Any] | None,
    labels: dict[str, str],
) -> list[str]:
    """How the measured seconds fell between the placements, per system."""
    if not probe:
        return []
    lines = ["", "## Core placement", ""]
    if probe.get("error") and not probe.get("samples"):
        return [*lines, f"No placement samples: {probe['error'][:300]}"]
    lines += [
        "A cache line bounced between CPU 0 (the generator's) and CPU 1 (the switch's) 2000 "
        "times each second for the whole run, at real-time priority so that it preempts "
        "both at once, about 0.1–0.6 ms of each CPU a second (`scripts/benchlib/"
        f"placement_probe.c`): {probe['near_samples']} samples near "
        f"(median {probe['near_ns']} ns a round trip), {probe['far_samples']} far "
        f"({probe['far_ns']} ns), {probe['timed_out']} timed out. A measured second is near "
        "or far when every sample from a second before it to a second after it says so, "
        "mixed otherwise. Far, every switch's loop waits on the link between core "
        "complexes; which system drew how many far seconds is luck, which is why the whole "
        "measurements' medians swing from run to run.",
        "",
        "| Frame | System | near seconds | far seconds | mixed seconds |",
        "|---|---|---|---|---|",
    ]
    ok = [r for r in results if "slices" in r]
    for size in sorted({r["size"] for r in ok}):
        for system in dict.fromkeys(r["system"] for r in ok if r["size"] == size):
            total = sum(len(r["slices"]) for r in ok if r["size"] == size
                        and r["system"] == system)  # fmt: skip
            n = {k: states[k]["seconds"][str(size)][system] for k in STATES}
            rest = total - n["near"] - n["far"]
            lines.append(f"| {size} B | {labels.get(system, system)} | {n['near']} | "
                         f"{n['far']} | {rest} |")  # fmt: skip
    return lines
