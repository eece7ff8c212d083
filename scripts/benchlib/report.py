"""The report: the summary of the rounds (summarize), bench.md (render, targets)
and the README's copy of its latest tables (update_readme)."""

# The report's en dashes and multiplication signs are meant.
# ruff: noqa: RUF001

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import placement
from .config import IDLE_PORTS, LABEL, LEARN_MACS, ROOT, SCALE, SYSTEMS, VARIANTS
from .procs import log

if TYPE_CHECKING:
    from .runner import Bench, Options


# --------------------------------------------------------------------------- report


def _stats(vals: list[float]) -> dict[str, float] | None:
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def summarize(bench: Bench) -> dict[str, Any]:
    ok = [r for r in bench.results if "pps" in r]
    by: dict[tuple[str, int], dict[int, float]] = {}
    for r in ok:
        by.setdefault((r["system"], r["size"]), {})[r["round"]] = r["pps"]
    sizes = bench.opts.sizes
    summary: dict[str, Any] = {"pps": {}, "ratios": {}, "scale": {}, "cpu": {}}
    for (system, size), rounds in sorted(by.items()):
        summary["pps"].setdefault(str(size), {})[system] = _stats(list(rounds.values()))
    summary["frame_size_check"] = [
        f"round {r['round']}, {r['system']}, {r['size']} B: {where} saw {r[key]} B frames, "
        f"not {r['size'] - 4}"
        for r in ok
        for where, key in (
            ("testpmd", "frame_bytes_at_generator"),
            ("vswitch", "frame_bytes_at_switch"),
        )
        if key in r and abs(r[key] - (r["size"] - 4)) > 0.5
    ]
    base = "vswitch"
    for size in sizes:
        mine = by.get((base, size), {})
        for other in ("testpmd", "ovs"):
            theirs = by.get((other, size), {})
            ratios = [mine[r] / theirs[r] for r in mine if r in theirs and theirs[r] > 0]
            summary["ratios"].setdefault(str(size), {})[f"vswitch/{other}"] = _stats(ratios)
        for variant, anchor in VARIANTS.items():
            theirs, base_ = by.get((variant, size), {}), by.get((anchor, size), {})
            ratios = [theirs[r] / base_[r] for r in theirs if r in base_ and base_[r] > 0]
            summary["ratios"].setdefault(str(size), {})[f"{variant}/{anchor}"] = _stats(ratios)
    summary["by_state"] = placement.by_state(bench.results, sizes, SCALE, VARIANTS)
    small = min(sizes)
    for scale in SCALE:
        mine = by.get((base, small), {})
        theirs = by.get((scale, small), {})
        ratios = [theirs[r] / mine[r] for r in theirs if r in mine and mine[r] > 0]
        summary["scale"][scale] = {"size": small, "pps": _stats(list(theirs.values())),
                                   f"ratio_to_{base}": _stats(ratios)}  # fmt: skip
    for system in SYSTEMS:
        idle = bench.idle.get(system, {})
        mine = [r for r in ok if r["system"] == system]
        if not mine:
            continue

        def med(key: str, mine: list[dict[str, Any]] = mine) -> float:
            vals = [r[key]["stat"] if isinstance(r[key], dict) else r[key] for r in mine]
            return statistics.median(vals)

        summary["cpu"][system] = {
            "idle": idle.get("idle_cpu"),
            "idle_after_traffic": idle.get("idle_after_cpu"),
            "idle_poll": idle.get("idle_switch"),
            "idle_after_poll": idle.get("idle_after_switch"),
            "load_median": med("load_cpu"),
            "generator_median": med("generator_cpu"),
            "machine_median": med("machine_cpu"),
        }
    return summary


def _mpps(s: dict[str, float] | None, seconds: bool = False) -> str:
    if not s:
        return "—"
    n = f" [{s['n']} s]" if seconds else ""
    return f"{s['median'] / 1e6:.2f} ({s['min'] / 1e6:.2f}–{s['max'] / 1e6:.2f}){n}"


def _ratio(s: dict[str, float] | None, rounds: bool = False) -> str:
    if not s:
        return "—"
    if rounds:  # by placement: the spread is over the rounds that had enough seconds
        n = int(s["n"])
        if n == 0:
            return f"{s['median']:.2f}× (no round with both)"
        return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f}, {n} round{'s' * (n > 1)})"
    return f"{s['median']:.2f}× ({s['min']:.2f}–{s['max']:.2f})"


def _variants(summary: dict[str, Any], sizes: list[int]) -> list[str]:
    """The VLAN access/trunk pair against plain vswitch, per frame size."""
    near = (summary.get("by_state") or {}).get("near", {})
    rows = []
    for size in sizes:
        for variant, anchor in VARIANTS.items():
            for system in (anchor, variant):
                pps = summary["pps"].get(str(size), {}).get(system)
                if not pps:
                    continue
                key = f"{variant}/{anchor}" if system == variant else ""
                nr = near.get("ratios", {}).get(str(size), {}).get(key)
                whole = summary["ratios"].get(str(size), {}).get(key)
                rows.append(f"| {size} B | {LABEL[system]} | {_mpps(pps)} | "
                            f"{_ratio(nr, True) if nr else '—'} | "
                            f"{_ratio(whole) if whole else '—'} |")  # fmt: skip
    if not rows:
        return []
    return [
        "",
        "## VLANs",
        "",
        "| Frame | Case | Mpps | ratio to no VLANs, near seconds | same, whole "
        "measurements |",
        "|---|---|---|---|---|",
        *rows,
        "",
        "- Port a is an access port of VLAN 10, port b a trunk of VLAN 10: the generator's "
        "frames from a leave b tagged (the tag pushed while the frame is copied), and come "
        "back into b tagged (popped on the way to a). testpmd strips the tag of what its port "
        "1 receives and puts one on what it sends, in software; the anchor has the same "
        "generator and ports without VLANs, which pass the tagged frames untouched, so the "
        "ratio is the switch's own cost of pushing and popping.",
    ]


def _rates_by_state(summary: dict[str, Any], sizes: list[int], probe: dict[str, Any] | None
                    ) -> list[str]:  # fmt: skip
    """The forwarding tables of the near seconds and of the far ones."""
    states = summary.get("by_state") or {}
    if not states or not probe or (probe.get("error") and not probe.get("samples")):
        why = (probe or {}).get("error") or "no placement samples"
        return ["", f"(No per-placement tables: {why}.)"]
    lines = []
    for state, title in (
        ("near", f"both vCPUs in one core complex (near, ~{probe.get('near_ns') or '?'} ns "
                 "round trip)"),
        ("far", f"the vCPUs in different core complexes (far, ~{probe.get('far_ns') or '?'} ns "
                "round trip)"),
    ):  # fmt: skip
        st = states[state]
        lines += ["", f"### Seconds with {title}", "", _HEAD, _RULE]
        for size in sizes:
            p, r = st["pps"].get(str(size), {}), st["ratios"].get(str(size), {})
            lines.append(
                f"| {size} B | {_mpps(p.get('vswitch'), True)} | {_mpps(p.get('testpmd'), True)} | "
                f"{_mpps(p.get('ovs'), True)} | {_ratio(r.get('vswitch/testpmd'), True)} | "
                f"{_ratio(r.get('vswitch/ovs'), True)} |"
            )
    return lines


_HEAD = "| Frame | vswitch | testpmd io-fwd | OVS-DPDK | vswitch/testpmd | vswitch/OVS |"
_RULE = "|---|---|---|---|---|---|"


def targets(o: Options, summary: dict[str, Any], flood: dict[str, Any] | None = None) -> list[str]:
    """Issue 5's targets against this run: judged on the seconds in which the
    host had both vCPUs in one core complex, every system alike (placement.py),
    with the far seconds and the whole measurements beside them."""
    rows = []
    states = summary.get("by_state") or {}

    def ratio(where: dict[str, Any] | None, size: int, key: str) -> float | None:
        r = (where or {}).get("ratios", {}).get(str(size), {}).get(key)
        return r["median"] if r else None

    def scale(where: dict[str, Any] | None, name: str) -> float | None:
        r = (where or {}).get("scale", {}).get(name)
        if r and "ratio_to_vswitch" in r:  # the whole-measurement summary
            r = r["ratio_to_vswitch"]
        return r["median"] if r else None

    def cell(v: float | None) -> str:
        return "—" if v is None else f"{v:.2f}×"

    near, far = states.get("near"), states.get("far")
    checks: list[tuple[str, Any, float]] = [
        ("64 B: vswitch/OVS-DPDK ≥ 1.0×", lambda w: ratio(w, 64, "vswitch/ovs"), 1.0),
        ("64 B: vswitch/testpmd ≥ 0.9× (aim 1.1×)", lambda w: ratio(w, 64, "vswitch/testpmd"),
         0.9),
        ("1518 B: vswitch/testpmd ≥ 0.9×", lambda w: ratio(w, 1518, "vswitch/testpmd"), 0.9),
        ("100k learned MACs ≥ 0.9× the 2-MAC rate", lambda w: scale(w, "vswitch-100kmac"), 0.9),
        ("64 ports (62 idle) ≥ 0.9× the 2-port rate", lambda w: scale(w, "vswitch-64port"), 0.9),
        ("64 B: VLAN access/trunk ≥ 0.95× no VLANs",
         lambda w: ratio(w, 64, "vswitch-vlan/vswitch-vlan-anchor"), 0.95),
        ("1518 B: VLAN access/trunk ≥ 0.95× no VLANs",
         lambda w: ratio(w, 1518, "vswitch-vlan/vswitch-vlan-anchor"), 0.95),
    ]  # fmt: skip
    for label, get, want in checks:
        judged, whole = get(near), get(summary)
        if judged is None:  # no near seconds (or no probe): the whole measurements
            judged = whole
        if judged is not None:
            rows.append(f"| {label} | {cell(get(near))} | {cell(get(far))} | {cell(whole)} | "
                        f"{'met' if judged >= want else 'NOT met'} |")  # fmt: skip
    if flood and "error" not in flood:
        worst = max(p["ratio_to_2_ports"] for p in flood["points"])
        verdict = "met" if worst <= 1.5 else "NOT met"
        rows.append(f"| flooding: cost per copy flat in ports (≤ 1.5× the 2-port cost) | "
                    f"— | — | {worst:.2f}× at worst | {verdict} |")  # fmt: skip
    cpu = summary["cpu"].get("vswitch")
    for when, key in (("before traffic", "idle"), ("after traffic", "idle_after_traffic")):
        m = cpu and cpu.get(key)
        if m:
            ok = m["stat"] < 1.0
            rows.append(f"| vswitch idle {when} < 1 % of a core | — | — | {m['stat']:.1f} % | "
                        f"{'met' if ok else 'NOT met'} |")  # fmt: skip
    if not rows:
        return []
    return [
        "", "## Targets (issue 5), from this run", "",
        "Judged on the near seconds (the host gave every system the same machine); "
        "without any, on the whole measurements. Flooding and idle CPU do not depend on it.", "",
        "| Target | near seconds | far seconds | whole measurements | |",
        "|---|---|---|---|---|", *rows,
    ]  # fmt: skip


def render(bench: Bench, machine: dict[str, Any], summary: dict[str, Any], argv: str) -> str:
    o = bench.opts
    v = machine["versions"]
    commit = (machine["commit"] or "?")[:10] + (
        " (uncommitted changes)" if machine["dirty"] else ""
    )
    lines = [
        "# Benchmark: vswitch against DPDK testpmd and OVS-DPDK",
        "",
        "Written by `scripts/bench` (issue 5); do not edit by hand. Raw rounds: "
        "[bench.json](bench.json).",
        "",
        f"- Date: {machine['date']}; command: `{argv}`",
        f"- Machine: {machine['cpu_model']}, {machine['cpus']} cores"
        f"{' (' + machine['hypervisor'] + ' guest)' if machine.get('hypervisor') else ''}, "
        f"kernel {machine['kernel']}, {machine['memory_mb']} MB",
        f"- Versions: vswitch {v['vswitch']} at {commit}; DPDK {v['dpdk']}; "
        f"Open vSwitch {v['openvswitch-switch-dpdk']}; QEMU {v['qemu-system-x86']}",
        f"- {o.rounds} round(s), interleaved; {o.seconds:g} s measured after {o.warmup:g} s "
        "warm-up; one forwarding core per switch (core 1), the generator's on core 0"
        + (f"; switches and generator at nice {o.nice}" if o.nice else "")
        + f"; load average at the start {machine.get('loadavg', '?')}.",
        "",
        "## Forwarding rate (PVP loop), Mpps",
        "",
        "The host moves this guest's two vCPUs between core complexes every few seconds, "
        "mid-measurement, and a PVP loop's speed follows (Core placement, in docs/bench.md), so "
        "the rate is taken every second and compared within one placement: median (p10–p90) "
        "[seconds]; ratios are of the medians, their spread from the rounds in which both "
        f"systems had ≥ {placement.MIN_SECONDS} such seconds.",
    ]
    lines += _rates_by_state(summary, o.sizes, getattr(bench, "placement_summary", None))
    lines += [
        "",
        "### Whole measurements, both placements mixed: median (min–max over rounds)",
        "",
        _HEAD,
        _RULE,
    ]
    for size in o.sizes:
        p = summary["pps"].get(str(size), {})
        r = summary["ratios"].get(str(size), {})
        lines.append(
            f"| {size} B | {_mpps(p.get('vswitch'))} | {_mpps(p.get('testpmd'))} | "
            f"{_mpps(p.get('ovs'))} | {_ratio(r.get('vswitch/testpmd'))} | "
            f"{_ratio(r.get('vswitch/ovs'))} |"
        )
    lines += [
        "",
        "Ratios here are medians of per-round ratios (same round, minutes apart at most). Frame "
        "sizes include the 4-byte FCS that virtio does not carry: the generator sends "
        "SIZE-4 bytes (`--txpkts`), checked each time against testpmd's RX bytes/packets and "
        "vswitch's own counters"
        + (
            ": " + "; ".join(summary["frame_size_check"])
            if summary["frame_size_check"]
            else " (all matched)"
        )
        + ".",
    ]
    lines += targets(o, summary, getattr(bench, "flood_result", None))
    lines += placement.render_placement(
        bench.results, summary["by_state"], getattr(bench, "placement_summary", None), LABEL
    )
    lines += [
        "",
        "## CPU, % of one core",
        "",
        f"| Switch | idle: ports up, no traffic yet ({o.idle:g} s) | idle: after traffic "
        "stopped | under load | generator, under load | whole machine, under load |",
        "|---|---|---|---|---|---|",
    ]

    def pct(m: dict[str, float] | None) -> str:
        return "—" if not m else f"{m['stat']:.1f} %"

    for system in SYSTEMS:
        c = summary["cpu"].get(system)
        if not c:
            continue
        lines.append(
            f"| {LABEL[system]} | {pct(c['idle'])} | {pct(c['idle_after_traffic'])} | "
            f"{c['load_median']:.0f} % | {c['generator_median']:.0f} % | "
            f"{c['machine_median']:.0f} % of {100 * (machine['cpus'] or 1)} % |"
        )
    lines += [
        "",
        "The switch's CPU is utime+stime of its process from /proc/PID/stat over the interval "
        "(all threads; for OVS, ovs-vswitchd). Under load: medians over every measurement. "
        "The generator and whole-machine columns show how much of the machine the loop got: "
        "this machine is shared, and a starved generator caps every switch alike.",
    ]
    for system in ("vswitch", *SCALE):
        c = summary["cpu"].get(system)
        if not c:
            continue
        for when, key, m in (
            ("before traffic", "idle_poll", c["idle"]),
            ("after traffic", "idle_after_poll", c["idle_after_traffic"]),
        ):
            d = c.get(key)
            if d and m:
                sec = m["seconds"]
                lines.append(
                    f"- {LABEL[system]}, idle {when}: the poll thread went to sleep "
                    f"{d['poll_sleeps'] / sec:,.0f} times/s and ran {d['poll_loops'] / sec:,.0f} "
                    "busy-poll loops/s."
                )
    lines += [
        "",
        f"## Scale ({min(o.sizes)} B frames)",
        "",
        "| Case | near seconds: Mpps | ratio to vswitch with 2 ports | whole measurements: "
        "Mpps | ratio to vswitch with 2 ports, same round |",
        "|---|---|---|---|---|",
    ]
    near = (summary.get("by_state") or {}).get("near", {})
    for scale in SCALE:
        s = summary["scale"].get(scale)
        if not s or not s["pps"]:
            continue
        npps = near.get("pps", {}).get(str(min(o.sizes)), {}).get(scale)
        nps = "—" if not npps else f"{npps['median'] / 1e6:.2f} [{npps['n']} s]"
        nr = _ratio(near.get("scale", {}).get(scale), True)
        lines.append(f"| {LABEL[scale]} | {nps} | {nr} | {_mpps(s['pps'])} | "
                     f"{_ratio(s['ratio_to_vswitch'])} |")  # fmt: skip
    lines += [
        "",
        f"- 100k learned MACs: before the generator attaches, a third port (driven by the "
        f"test-side front end, vswitch/testkit/vhost_frontend.py) sends one frame from each of "
        f"{LEARN_MACS:,} source MACs; the fast path learns them as dynamic entries "
        "(fdb_size 262144, mac_age 300 s, so the 1 Hz aging pass walks them all during the "
        "run). The generator's two MACs carry the traffic.",
        f"- 64 ports: the generator's two plus {IDLE_PORTS} ports connected by the test-side "
        "front end, rings set up and 64 receive buffers posted, sending nothing.",
    ]
    lines += _variants(summary, o.sizes)
    flood = getattr(bench, "flood_result", None)
    if flood:
        import bench_flood

        if "error" in flood:
            lines += ["", f"Flooding cost: failed: {flood['error'][:300]}"]
        else:
            lines += bench_flood.render(flood)
    ping = getattr(bench, "ping_result", None)
    if ping:
        lines += ["", "## Latency", ""]
        if "error" in ping:
            lines.append(
                f"Ping between two QEMU guests through vswitch failed: {ping['error'][:300]}"
            )
        else:
            lines.append(
                f"Ping RTT between two QEMU guests (TCG, no KVM) through vswitch: median "
                f"{ping['median_ms']:.3f} ms (min {ping['min_ms']:.3f}, max {ping['max_ms']:.3f}) "
                f"over {ping['count']} pings (`ping -c 20 -i 0.2`); the guests' emulation "
                "dominates it."
            )
    failures = [r for r in bench.results if "error" in r]
    if failures:
        lines += ["", "## Failures", ""]
        for r in failures:
            where = f"round {r['round']}, {LABEL[r['system']]}" + (
                f", {r['size']} B" if "size" in r else "")  # fmt: skip
            first = r["error"].strip().splitlines()[0][:200] if r["error"].strip() else "?"
            lines.append(f"- {where}: {first}")
    if machine.get("fastpath_older_than_csrc"):
        lines += ["", "Note: the fast path module was older than csrc/ when this ran."]
    return "\n".join(lines) + "\n"


README = ROOT / "README.md"
README_START = "<!-- scripts/bench: latest table -->"
README_END = "<!-- end of scripts/bench table -->"


def update_readme(md: str, out: Path) -> None:
    """The README shows the latest run's forwarding and targets tables, between
    its markers, when the report went to docs/ (a run elsewhere leaves it)."""
    if out.resolve() != (ROOT / "docs").resolve() or not README.exists():
        return
    text = README.read_text()
    if README_START not in text or README_END not in text:
        log(f"README.md has no {README_START!r} marker: not updated")
        return
    keep: list[str] = []
    lines = md.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("- Date:") or line.startswith("- Machine:"):
            keep.append(line)
        if line.startswith("## Forwarding rate") or line.startswith("## Targets"):
            keep += ["", "#" + line]  # one level down in the README
            for nxt in lines[i + 1 :]:
                if nxt.startswith("## "):
                    break
                keep.append("#" + nxt if nxt.startswith("#") else nxt)
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    body = "\n".join(keep).strip()
    README.write_text(f"{head}{README_START}\n{body}\n\n{README_END}{tail}")
    log("README.md: latest table updated")
