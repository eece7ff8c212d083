"""The PVP benchmark of issue 5: vswitch against DPDK testpmd and OVS-DPDK.

Run through scripts/bench (as root), which installs what is missing first.

The loop (PVP, "physical-virtual-physical" with virtio-user standing in for
the NICs): DPDK testpmd, the generator, has two virtio-user ports attached to
the switch under test and forwards in `mac` mode with each port addressed to
the other, so frames go round virtio0 -> switch -> virtio1 -> testpmd ->
virtio0 ...; `start tx_first 32` puts 32 bursts per port into the loop, and
the aggregate RX rate at testpmd is the switch's forwarding rate.  Each
switch gets one core (core 1), the generator's forwarding lcore the other
(core 0); its main lcore sleeps on core 1.

Systems: vswitch (`vswitch run`, `datapath: thread`), testpmd as the switch
(two net_vhost ports, io forwarding: DPDK's vhost library and no switching),
OVS-DPDK (bridge datapath_type=netdev, two dpdkvhostuser ports, NORMAL), and
two vswitch scale points (100k learned MACs; 64 ports of which 62 idle).
Rounds are interleaved (round 1: every system, round 2: every system, ...;
the order rotates each round), the rate is taken every second, and a probe
beside the loop tells which seconds the host had both vCPUs in one core
complex (benchlib/placement.py): this machine's loop runs ~2.5x faster then,
for every system, so systems are compared on the seconds of one placement.
Compare ratios within a run, never numbers across runs.

Everything it starts (processes, OVS run dir and database, sockets, hugepage
files, a hugetlbfs mount, extra hugepages) is undone on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchlib import config
from benchlib.config import ROOT, SCALE, SYSTEMS
from benchlib.procs import log
from benchlib.report import render, summarize, update_readme
from benchlib.runner import Bench, Hugepages, Options, machine_info

# --------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> Options:
    ap = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 1)")
    ap.add_argument(
        "--seconds", type=float, help="measured seconds per point (default 10; --quick 5)"
    )
    ap.add_argument(
        "--warmup", type=float, help="seconds of traffic before measuring (default 3; --quick 2)"
    )
    ap.add_argument(
        "--idle", type=float, help="seconds of idle-CPU measurement (default 10; --quick 3)"
    )
    ap.add_argument(
        "--sizes", help="frame sizes in bytes with FCS (default 64,512,1518; --quick 64)"
    )
    ap.add_argument("--only", help=f"systems, comma-separated, of: {','.join(SYSTEMS)}, "
                    "or 'scale' for the two scale points (default: all)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="a smoke check: 1 round, 5 s, 64 B, "
                    "OVS skipped if it fails to come up")  # fmt: skip
    ap.add_argument(
        "--nice",
        type=int,
        default=-10,
        help="niceness of the switches and the generator, and of their scheduler "
        "autogroups (default -10; 0 = leave alone): on a shared machine the loop then gets "
        "most of its two cores instead of an equal share with every other session; it "
        "changes nothing on an idle machine",
    )
    ap.add_argument("--no-ping", action="store_true", help="skip the QEMU ping RTT")
    ap.add_argument(
        "--no-flood",
        action="store_true",
        help="skip the flooding-cost scale (scripts/bench_flood.py)",
    )
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where bench.md/bench.json go")
    ap.add_argument(
        "--render",
        metavar="JSON",
        help="run nothing: rewrite bench.md (in --out) from a bench.json this script wrote",
    )
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs) afterwards")
    a = ap.parse_args(argv)
    q = a.quick
    systems = list(SYSTEMS)
    if a.only:
        systems = []
        for s in a.only.split(","):
            s = s.strip()
            add = list(SCALE) if s == "scale" else [s]
            for x in add:
                if x not in SYSTEMS:
                    ap.error(f"--only: unknown system {x!r} (known: {', '.join(SYSTEMS)}, scale)")
                if x not in systems:
                    systems.append(x)
    sizes = [int(x) for x in (a.sizes or ("64" if q else "64,512,1518")).split(",")]
    for s in sizes:
        if not 64 <= s <= 1518:
            ap.error(f"--sizes: {s} is not a frame size from 64 to 1518 bytes")
    return Options(
        rounds=a.rounds or (1 if q else 5),
        seconds=a.seconds or (5 if q else 10),
        warmup=a.warmup if a.warmup is not None else (2 if q else 3),
        idle=a.idle or (3 if q else 10),
        sizes=sizes,
        systems=systems,
        quick=q,
        out=Path(a.out),
        keep=a.keep,
        ping=not a.no_ping,
        flood=not a.no_flood and not a.quick,
        nice=a.nice,
        render=a.render,
    )


async def amain(opts: Options, argv_text: str) -> int:
    if os.geteuid() != 0:
        print("scripts/bench: run as root (hugepages, DPDK, OVS)", file=sys.stderr)
        return 2
    for tool in ("dpdk-testpmd", "stdbuf", "taskset"):
        if shutil.which(tool) is None:
            print(f"scripts/bench: {tool} not found (scripts/bench installs it)", file=sys.stderr)
            return 2
    config.NICE[0] = opts.nice  # the one list procs.Children reads
    machine = machine_info()
    if machine["fastpath_older_than_csrc"]:
        log(f"warning: {machine['fastpath']} is older than csrc/ (scripts/build-inplace)")
    work = Path(tempfile.mkdtemp(prefix="vsbench-"))
    bench = Bench(opts, work)
    huge = Hugepages()
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    import atexit

    atexit.register(bench.kids.kill_all_now)
    t_start = time.monotonic()
    try:
        machine["hugepages"] = huge.setup()
        log(f"work dir {work}; systems {', '.join(opts.systems)}; sizes {opts.sizes}; "
            f"{opts.rounds} round(s) of {opts.seconds:g} s")  # fmt: skip
        await bench.main()
    finally:
        await bench.kids.stop_all()
        huge.teardown([f"vsbench-{w}-{os.getpid()}" for w in ("gen", "tp", "ovs")])
        if opts.keep:
            log(f"logs kept in {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    machine["duration_s"] = round(time.monotonic() - t_start)
    summary = summarize(bench)
    md = render(bench, machine, summary, argv_text)
    opts.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": argv_text,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(opts).items()},
        "machine": machine,
        "summary": summary,
        "idle": bench.idle,
        "ping": getattr(bench, "ping_result", None),
        "flood": getattr(bench, "flood_result", None),
        "placement": getattr(bench, "placement_summary", None),
        "rounds": bench.results,
    }
    (opts.out / "bench.json").write_text(json.dumps(doc, indent=1) + "\n")
    (opts.out / "bench.md").write_text(md)
    update_readme(md, opts.out)
    print()
    print(md)
    log(f"wrote {opts.out / 'bench.md'} and {opts.out / 'bench.json'} "
        f"in {machine['duration_s']} s")  # fmt: skip
    bad = [r for r in bench.results if "error" in r and not (opts.quick and r["system"] == "ovs")]
    return 1 if bad else 0


def rerender(opts: Options) -> int:
    """--render: bench.md again from bench.json, e.g. after the report's layout changed."""
    assert opts.render is not None
    doc = json.loads(Path(opts.render).read_text())
    o = doc["options"]
    saved = Options(**{**o, "out": Path(o["out"]), "render": None})
    bench = Bench(saved, Path(tempfile.gettempdir()))
    bench.results = doc["rounds"]
    bench.idle = doc["idle"]
    if doc.get("ping") is not None:
        bench.ping_result = doc["ping"]
    if doc.get("flood") is not None:
        bench.flood_result = doc["flood"]
    if doc.get("placement") is not None:
        bench.placement_summary = doc["placement"]
    summary = summarize(bench)
    md = render(bench, doc["machine"], summary, doc["command"])
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / "bench.md").write_text(md)
    update_readme(md, opts.out)
    print(md)
    return 0


def main() -> int:
    opts = parse_args(sys.argv[1:])
    if opts.render:
        return rerender(opts)
    argv_text = " ".join(["scripts/bench", *sys.argv[1:]])
    try:
        return asyncio.run(amain(opts, argv_text))
    except KeyboardInterrupt:
        print("scripts/bench: interrupted; everything it started is stopped", file=sys.stderr)
        return 130
    except asyncio.CancelledError:
        print("scripts/bench: terminated; everything it started is stopped", file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
