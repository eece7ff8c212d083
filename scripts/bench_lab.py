"""Lab bring-up benchmark (issue 3): how long each example lab takes to come
up on this machine and how much memory it holds once up.

Run through scripts/bench-lab (as root).  Each round brings up, in turn, the
anchor (one VM alone on a switch, the unit every lab is made of) and every
example lab in configs/labs/, the order rotating each round, and measures:

- bring-up: from `Lab.up` to "every node answers and every link is up";
- memory: the proportional set size (PSS, so guest memory that QEMU and the
  switch both map counts once) of every process of the lab, QEMU guests and
  `vswitch run` switches, read from /proc/PID/smaps_rollup once the lab is
  up; and the drop in the machine's MemAvailable;
- tear-down: `Lab.down` until nothing is left.

The machine's speed swings (other work, CPU steal): each lab's bring-up is
also given as a ratio to the one-VM anchor of the same round.  Writes
docs/bench-lab.md and docs/bench-lab.json and the table in docs/lab.md
between its markers.
"""

# The tables' en dashes and multiplication signs are meant.
# ruff: noqa: RUF001
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from vswitch.lab import Lab, load_lab

ROOT = Path(__file__).resolve().parent.parent

LABS = ROOT / "configs" / "labs"
DOCS = ROOT / "docs"
BEGIN = "<!-- scripts/bench-lab: bring-up table -->"
END = "<!-- end of scripts/bench-lab table -->"

ONE_VM = """\
name: bench-one-vm
switches:
  sw1: {}
nodes:
  vm1:
    type: vm
    interfaces:
      eth0: {addresses: [10.0.0.1/24]}
links:
  - [vm1:eth0, sw1]
"""


def log(msg: str) -> None:
    print(f"bench-lab: {msg}", file=sys.stderr, flush=True)


def pss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def mem_available_kib() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1])
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def measure(file: Path, boot_timeout: float) -> dict[str, Any]:
    spec = load_lab(file)
    avail0 = mem_available_kib()
    load = os.getloadavg()[0]
    lab = Lab(spec, boot_timeout=boot_timeout)
    t0 = time.monotonic()
    lab.up()
    try:
        up = time.monotonic() - t0
        time.sleep(2.0)  # let the guests' first seconds of activity settle
        st = lab.status()
        vm_pids = [n["pid"] for n in st["nodes"] if n["type"] == "vm" and n["pid"]]
        sw_pids = [s["pid"] for s in st["switches"] if s["pid"]]
        qemu = sum(pss_kib(p) for p in vm_pids)
        switches = sum(pss_kib(p) for p in sw_pids)
        used = avail0 - mem_available_kib()
    finally:
        t1 = time.monotonic()
        lab.down()
        down = time.monotonic() - t1
    return {
        "lab": spec.name,
        "vms": len(spec.vms),
        "hosts": len(spec.hosts),
        "switches": len(spec.switches),
        "up_s": round(up, 2),
        "down_s": round(down, 2),
        "pss_qemu_mib": round(qemu / 1024, 1),
        "pss_switches_mib": round(switches / 1024, 1),
        "mem_available_drop_mib": round(used / 1024, 1),
        "vm_memory_mib": sum(n.memory for n in spec.vms),
        "load_at_start": round(load, 2),
    }


def summarize(rounds: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    by_lab: dict[str, list[dict[str, Any]]] = {}
    ratios: dict[str, list[float]] = {}
    for rnd in rounds:
        anchor = next(r for r in rnd if r["lab"] == "bench-one-vm")
        for r in rnd:
            by_lab.setdefault(r["lab"], []).append(r)
            ratios.setdefault(r["lab"], []).append(r["up_s"] / anchor["up_s"])
    out = []
    for name, rs in by_lab.items():
        ups = [r["up_s"] for r in rs]
        out.append(
            {
                "lab": name,
                "vms": rs[0]["vms"],
                "hosts": rs[0]["hosts"],
                "switches": rs[0]["switches"],
                "up_median_s": round(statistics.median(ups), 1),
                "up_min_s": min(ups),
                "up_max_s": max(ups),
                "ratio_to_one_vm": round(statistics.median(ratios[name]), 2),
                "down_median_s": round(statistics.median(r["down_s"] for r in rs), 1),
                "pss_mib": round(
                    statistics.median(r["pss_qemu_mib"] + r["pss_switches_mib"] for r in rs)
                ),
                "pss_per_vm_mib": round(
                    statistics.median(r["pss_qemu_mib"] for r in rs) / max(rs[0]["vms"], 1)
                ),
                "mem_available_drop_mib": round(
                    statistics.median(r["mem_available_drop_mib"] for r in rs)
                ),
            }
        )
    return out


def _describe(s: dict[str, Any]) -> str:
    parts = [f"{s['vms']} VM{'s' if s['vms'] != 1 else ''}"]
    if s["hosts"]:
        parts.append(f"{s['hosts']} host{'s' if s['hosts'] != 1 else ''}")
    if s["switches"] > 1:
        parts.append(f"{s['switches']} switches")
    return ", ".join(parts)


def table(summary: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| lab | nodes | up in: median (min–max) | ÷ one VM, same round | down in | "
        "memory held (PSS: QEMU + switches) | per VM | MemAvailable drop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        name = "one VM (anchor)" if s["lab"] == "bench-one-vm" else s["lab"]
        rows.append(
            f"| {name} | {_describe(s)} | {s['up_median_s']:.1f} s "
            f"({s['up_min_s']:.1f}–{s['up_max_s']:.1f}) | {s['ratio_to_one_vm']:.2f}× | "
            f"{s['down_median_s']:.1f} s | {s['pss_mib']} MiB | {s['pss_per_vm_mib']} MiB | "
            f"{s['mem_available_drop_mib']} MiB |"
        )
    return rows


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = mem_available_kib() // 1024
    kern = os.uname().release
    return f"{cpu}, {os.cpu_count()} cores, kernel {kern}, {mem} MB available at the start"


def render(summary: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    return [
        f"- Date: {meta['date']}; command: `{meta['command']}`",
        f"- Machine: {meta['machine']}; {meta['rounds']} round(s), order rotating; "
        f"QEMU under TCG (no KVM), one vCPU and {meta['vm_memory']} MiB per guest",
        "",
        *table(summary),
        "",
        "Up in: from `lab up` to every node answering and every link up, all guests booting "
        "at once. ÷ one VM: the lab's bring-up over a lone VM's in the same round (the "
        "machine's speed swings; the ratio does not). Memory: PSS of the lab's QEMU and "
        "`vswitch run` processes once up (guest pages the switch also maps count once), and "
        "how much MemAvailable fell.",
    ]


def write(
    summary: list[dict[str, Any]], rounds: list[list[dict[str, Any]]], meta: dict[str, Any]
) -> None:
    DOCS.mkdir(exist_ok=True)
    (DOCS / "bench-lab.json").write_text(
        json.dumps({"meta": meta, "summary": summary, "rounds": rounds}, indent=1) + "\n"
    )
    body = render(summary, meta)
    (DOCS / "bench-lab.md").write_text(
        "# Benchmark: lab bring-up time and memory\n\n"
        "Written by `scripts/bench-lab` (issue 3); do not edit by hand. Raw rounds: "
        "[bench-lab.json](bench-lab.json).\n\n" + "\n".join(body) + "\n"
    )
    lab_md = DOCS / "lab.md"
    text = lab_md.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        lab_md.write_text(head + BEGIN + "\n" + "\n".join(body) + "\n" + END + tail)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="scripts/bench-lab", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--labs",
        default="two-vms,star,two-switches,ten-vms",
        help="example labs in configs/labs (comma-separated names)",
    )
    ap.add_argument("--boot-timeout", type=float, default=300)
    ap.add_argument("--no-write", action="store_true", help="print, write nothing to docs/")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        log("run as root (namespaces, TAP devices)")
        return 2
    files = [LABS / f"{n}.yaml" for n in a.labs.split(",") if n]
    for f in files:
        if not f.exists():
            log(f"no lab {f}")
            return 2
    host = machine()
    with tempfile.TemporaryDirectory(prefix="vswitch-bench-lab-") as tmp:
        anchor = Path(tmp) / "bench-one-vm.yaml"
        anchor.write_text(ONE_VM)
        files = [anchor, *files]
        rounds: list[list[dict[str, Any]]] = []
        for i in range(a.rounds):
            order = files[i % len(files):] + files[: i % len(files)]
            rnd = []
            for f in order:
                log(f"round {i + 1}/{a.rounds}: {f.stem}")
                r = measure(f, a.boot_timeout)
                log(f"  up in {r['up_s']:.1f}s, {r['pss_qemu_mib'] + r['pss_switches_mib']:.0f} "
                    f"MiB PSS, down in {r['down_s']:.1f}s")  # fmt: skip
                rnd.append(r)
            rounds.append(rnd)
    summary = summarize(rounds)
    meta = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": "scripts/bench-lab " + " ".join(argv) if argv else "scripts/bench-lab",
        "machine": host,
        "rounds": a.rounds,
        "vm_memory": load_lab(LABS / "two-vms.yaml").vms[0].memory,
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=10", "HEAD"],
            capture_output=True, text=True, check=False,
        ).stdout.strip(),
    }
    print("\n".join(render(summary, meta)))
    if not a.no_write:
        write(summary, rounds, meta)
        log("wrote docs/bench-lab.md, docs/bench-lab.json and the table in docs/lab.md")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
