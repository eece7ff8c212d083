"""The bench itself: Options, Bench (rounds, measurements, flooding, ping),
and the machine (Hugepages, meminfo, machine_info)."""

# A harness, not the daemon: small blocking file reads in coroutines are fine
# here (as in tests/).
# ruff: noqa: ASYNC240

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import platform
import re
import socket
import statistics
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import LABEL, ROOT, SCALE
from .placement import Placement
from .procs import BenchError, Children, CpuMeter, MachineMeter, log, run, sh
from .systems import SYSTEM_CLASSES, Generator, System, Vswitch

# --------------------------------------------------------------------------- the bench


@dataclass
class Options:
    rounds: int
    seconds: float
    warmup: float
    idle: float
    sizes: list[int]
    systems: list[str]
    quick: bool
    out: Path
    keep: bool
    ping: bool
    nice: int
    flood: bool = True
    render: str | None = None


@dataclass
class Bench:
    opts: Options
    work: Path
    kids: Children = field(init=False)
    results: list[dict[str, Any]] = field(default_factory=list)
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.kids = Children(self.work)
        self.placement = Placement(self.work)

    def prefix(self, what: str) -> str:
        return f"vsbench-{what}-{os.getpid()}"

    async def measure(self, sut: System, size: int, rnd: int, with_idle: bool) -> dict[str, Any]:
        o = self.opts
        loadavg = Path("/proc/loadavg").read_text().split()[:3]
        rec: dict[str, Any] = {"round": rnd, "system": sut.name, "size": size, "loadavg": loadavg}
        gen = Generator(self.kids, sut.socks, size, self.prefix("gen"))
        try:
            sut.mark()
            await gen.start()
            await sut.wait_ready(gen)
            if with_idle:
                await asyncio.sleep(1.0)
                before = await sut.snapshot()
                m = CpuMeter(sut.pid)
                await asyncio.sleep(o.idle)
                rec["idle_cpu"] = m.percent()
                rec["idle_switch"] = _switch_delta(before, await sut.snapshot())
            for cmd in sut.generator_commands:
                await gen.cmd(cmd)
            rec["tx_first_attempts"] = await gen.kickoff()
            await asyncio.sleep(o.warmup)
            snap0 = await sut.snapshot()
            m, mg, mm = CpuMeter(sut.pid), CpuMeter(gen.pid), MachineMeter()
            # The rate every second as well as over the interval: the host
            # moves the vCPUs mid-measurement (placement.py), and each second
            # is compared with the other systems' seconds in the same placement.
            t0, s0 = await gen.stats()
            tp, sp, slices = t0, s0, []
            end = t0 + o.seconds
            while (left := end - time.monotonic()) > 0.05:
                await asyncio.sleep(min(1.0, left))
                t1, s1 = await gen.stats()
                got = sum(s1[p]["rx_packets"] - sp[p]["rx_packets"] for p in s1)
                slices.append([round(tp, 3), round(t1, 3), round(got / (t1 - tp))])
                tp, sp = t1, s1
            rec["slices"] = slices
            rec["load_cpu"] = m.percent()
            rec["generator_cpu"] = mg.percent()
            rec["machine_cpu"] = mm.percent()
            snap1 = await sut.snapshot()
            await gen.cmd("stop")
            dt = t1 - t0
            rx = {p: s1[p]["rx_packets"] - s0[p]["rx_packets"] for p in s1}
            rxb = {p: s1[p]["rx_bytes"] - s0[p]["rx_bytes"] for p in s1}
            rec["seconds"] = round(dt, 3)
            rec["pps"] = round(sum(rx.values()) / dt)
            rec["pps_per_port"] = {p: round(v / dt) for p, v in rx.items()}
            rec["frame_bytes_at_generator"] = round(sum(rxb.values()) / max(sum(rx.values()), 1), 1)
            rec["generator_stats"] = s1
            if sut.name.startswith("vswitch"):
                # The size on the wire as the switch counted it (no FCS in virtio).
                ports = {n: {k: v - snap0["ports"][n][k] for k, v in c.items()}
                         for n, c in snap1["ports"].items()}  # fmt: skip
                pk = sum(ports[n]["rx_packets"] for n in ports)
                by = sum(ports[n]["rx_bytes"] for n in ports)
                rec["frame_bytes_at_switch"] = round(by / max(pk, 1), 1)
                rec["switch_delta"] = _switch_delta(snap0, snap1)
                rec["switch_ports_delta"] = ports
                rec["switch_drops"] = {f"{n}.{k}": v for n, c in ports.items() for k, v in c.items()
                                       if "drop" in k and v}  # fmt: skip
            elif snap1:
                rec["switch_stats"] = snap1
            if with_idle:
                await asyncio.sleep(1.0)
                before = await sut.snapshot()
                m = CpuMeter(sut.pid)
                await asyncio.sleep(o.idle)
                rec["idle_after_cpu"] = m.percent()
                rec["idle_after_switch"] = _switch_delta(before, await sut.snapshot())
        finally:
            await gen.stop()
        return rec

    async def run_system(self, name: str, rnd: int, sizes: list[int]) -> None:
        sut = SYSTEM_CLASSES[name](self)
        log(f"round {rnd}: {LABEL[name]}: starting")
        try:
            await asyncio.wait_for(sut.start(), 180)
        except Exception as exc:
            why = f"{LABEL[name]} did not come up: {type(exc).__name__}: {exc}"
            log(f"  FAILED: {why}")
            self.results.append({"round": rnd, "system": name, "error": why})
            with contextlib.suppress(Exception):
                await sut.stop()
            if name == "ovs" and self.opts.quick:
                self.failed[name] = why  # --quick: skip it from now on
            return
        try:
            for size in sizes:
                # Idle CPU once per system (the scale points only in full runs).
                first = name not in self.idle and not (self.opts.quick and name in SCALE)
                try:
                    budget = 120 + self.opts.seconds + self.opts.warmup + 2 * self.opts.idle
                    rec = await asyncio.wait_for(self.measure(sut, size, rnd, first), budget)
                except Exception as exc:
                    why = f"{type(exc).__name__}: {exc}"
                    log(f"  {size} B: FAILED: {why}")
                    self.results.append({"round": rnd, "system": name, "size": size,
                                         "error": why[-3000:]})  # fmt: skip
                    continue
                rec["system_info"] = sut.info
                self.results.append(rec)
                if first:
                    self.idle[name] = {k: rec[k] for k in rec if k.startswith("idle")}
                    self.idle[name]["load_cpu"] = rec["load_cpu"]
                extra = ""
                if "idle_cpu" in rec:
                    extra = (f", idle CPU {rec['idle_cpu']['stat']:.1f} % before, "
                             f"{rec['idle_after_cpu']['stat']:.1f} % after traffic")  # fmt: skip
                log(f"  {size} B: {rec['pps'] / 1e6:.2f} Mpps (frames of "
                    f"{rec['frame_bytes_at_generator']:.0f} B + FCS); CPU: switch "
                    f"{rec['load_cpu']['stat']:.0f} %, generator "
                    f"{rec['generator_cpu']['stat']:.0f} %, machine {rec['machine_cpu']:.0f} % "
                    f"of {100 * (os.cpu_count() or 1)} %{extra}")  # fmt: skip
        finally:
            await sut.stop()

    async def ping(self) -> dict[str, Any]:
        """RTT between two QEMU guests through vswitch (event-driven latency)."""
        from vswitch.lab.guest import Guest, Nic

        await run([str(ROOT / "scripts/build-guest-image")], 900)
        sut = Vswitch(self)
        sut.name = "ping"
        sut.dir = self.work / "ping"
        sut.port_names = ("vm1", "vm2")
        await sut.start()
        guests = [
            Guest(f"vm{i}", self.work / "ping", nics=[Nic(str(sut.dir / f"vm{i}.sock"),
                  f"52:54:00:00:00:0{i}")], ips={0: [f"10.0.0.{i}/24"]})
            for i in (1, 2)
        ]  # fmt: skip
        try:
            await asyncio.gather(*(g.start() for g in guests))
            await asyncio.gather(*(g.wait_ready(timeout=240) for g in guests))
            await sut.wait_ready(None)  # type: ignore[arg-type]
            for _ in range(10):  # ARP, and the switch learning both guests
                if (await guests[0].exec("ping -c 1 -W 2 10.0.0.2", timeout=10)).rc == 0:
                    break
            m = CpuMeter(sut.pid)
            r = await guests[0].exec("ping -c 20 -i 0.2 10.0.0.2", timeout=60)
            cpu = m.percent()
            rtts = [float(x) for x in re.findall(r"time=([\d.]+) ms", r.stdout)]
            if not rtts:
                raise BenchError(f"ping gave no replies: {r.stdout} {r.stderr}")
            return {
                "count": len(rtts),
                "median_ms": round(statistics.median(rtts), 3),
                "min_ms": min(rtts),
                "max_ms": max(rtts),
                "rtts_ms": rtts,
                "switch_cpu_during_ping": cpu,
            }
        finally:
            await asyncio.gather(*(g.stop() for g in guests), return_exceptions=True)
            await sut.stop()

    async def main(self) -> None:
        o = self.opts
        small = min(o.sizes)
        self.placement.build()
        # Until stopped below (a day is only the bound: Children kills it on exit).
        await self.placement.start(self.kids, 86400)
        try:
            for rnd in range(1, o.rounds + 1):
                k = (rnd - 1) % len(o.systems)
                for name in o.systems[k:] + o.systems[:k]:
                    if name in self.failed:
                        continue
                    sizes = [small] if name in SCALE else o.sizes
                    await self.run_system(name, rnd, sizes)
        finally:
            await self.placement.stop(self.kids)
        self.placement.tag(self.results)
        self.placement_summary = self.placement.summary()
        p = self.placement_summary
        log(f"placement: {p['near_samples']} samples near ({p['near_ns']} ns), "
            f"{p['far_samples']} far ({p['far_ns']} ns), {p['timed_out']} timed out"
            + (f"; {p['error']}" if p["error"] else ""))  # fmt: skip
        if o.flood:
            log("flooding cost against the number of ports (fast path driven directly)")
            try:
                import bench_flood

                self.flood_result = await asyncio.to_thread(bench_flood.measure)
                pts = self.flood_result["points"]
                per = [f"{p['ports']} ports {p['ns_per_copy']['median']:.0f}" for p in pts]
                log("  ns per copy: " + ", ".join(per))
            except Exception as exc:
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                self.flood_result = {"error": str(exc)[-3000:]}
        if o.ping:
            log("ping RTT between two QEMU guests through vswitch")
            try:
                self.ping_result = await asyncio.wait_for(self.ping(), 600)
                log(f"  median {self.ping_result['median_ms']} ms over "
                    f"{self.ping_result['count']} pings")  # fmt: skip
            except Exception as exc:
                log(f"  FAILED: {type(exc).__name__}: {exc}")
                self.ping_result = {"error": str(exc)[-3000:]}


def _switch_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, int]:
    """How vswitch's poll thread spent the interval (poll_loops, poll_sleeps)."""
    if "switch" not in a or "switch" not in b:
        return {}
    return {k: b["switch"][k] - a["switch"][k] for k in ("poll_loops", "poll_sleeps", "flooded")
            if k in b["switch"]}  # fmt: skip


# --------------------------------------------------------------------------- machine


class Hugepages:
    """Reserves what the run needs and gives back what it reserved."""

    def __init__(self, want: int = 1024) -> None:
        self.want = want
        self.before: int | None = None
        self.mounted = False

    def setup(self) -> dict[str, Any]:
        nr = Path("/proc/sys/vm/nr_hugepages")
        cur = int(nr.read_text())
        if cur < self.want:
            self.before = cur
            nr.write_text(str(self.want))
        if not os.path.ismount("/dev/hugepages"):
            os.makedirs("/dev/hugepages", exist_ok=True)
            subprocess.run(["mount", "-t", "hugetlbfs", "nodev", "/dev/hugepages"], check=True)
            self.mounted = True
        info = meminfo()
        if info["HugePages_Free"] < 600:
            raise BenchError(
                f"only {info['HugePages_Free']} of {info['HugePages_Total']} hugepages free "
                "(the generator and testpmd need 256 each, OVS 150): is another DPDK running?"
            )
        return {"total": info["HugePages_Total"], "free": info["HugePages_Free"]}

    def teardown(self, prefixes: Iterable[str]) -> None:
        for f in Path("/dev/hugepages").glob("*"):
            if any(f.name.startswith(p) for p in prefixes):
                with contextlib.suppress(OSError):
                    f.unlink()
        if self.mounted:
            subprocess.run(["umount", "/dev/hugepages"], check=False)
        if self.before is not None:
            with contextlib.suppress(OSError):
                Path("/proc/sys/vm/nr_hugepages").write_text(str(self.before))


def meminfo() -> dict[str, int]:
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        k, v = line.split(":", 1)
        out[k] = int(v.split()[0])
    return out


def machine_info() -> dict[str, Any]:
    lscpu = {}
    for line in sh("lscpu").splitlines():
        k, _, v = line.partition(":")
        lscpu[k.strip()] = v.strip()
    pkg = {p: sh("dpkg-query", "-W", "-f=${Version}", p) or None
           for p in ("dpdk", "openvswitch-switch-dpdk", "qemu-system-x86")}  # fmt: skip
    commit = sh("git", "-C", str(ROOT), "rev-parse", "HEAD")
    dirty = bool(sh("git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"))
    import vswitch._fastpath as fp

    import vswitch

    so = Path(fp.__file__)
    newest_src = max(p.stat().st_mtime for p in (ROOT / "csrc").glob("*.[ch]"))
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "cpu_model": lscpu.get("Model name"),
        "cpus": os.cpu_count(),
        "hypervisor": lscpu.get("Hypervisor vendor"),
        "kernel": platform.release(),
        "memory_mb": meminfo()["MemTotal"] // 1024,
        "loadavg": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "python": platform.python_version(),
        "versions": {"vswitch": vswitch.__version__, **pkg},
        "commit": commit,
        "dirty": dirty,
        "fastpath": str(so),
        "fastpath_older_than_csrc": so.stat().st_mtime < newest_src,
    }
