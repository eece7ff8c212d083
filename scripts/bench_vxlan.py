"""VXLAN tunnel rate (issue 16): vswitch pair against the Linux kernel's vxlan, same run.

Three tunnels between two "hosts" (network namespaces joined by a veth underlay, MTU 1500),
built side by side and measured in interleaved rounds:

  kernel   ns A: vx0 (kernel vxlan) ----- veth ----- ns B: vx0 (kernel vxlan)
  vswitch  host A - tap - vswitch A (vxlan) - veth - vswitch B (vxlan) - tap - host B
  mixed    host A - tap - vswitch A (vxlan) - veth - ns B: vx0 (kernel vxlan)

A UDP source (scripts/benchlib/udp_blast.c, sendmmsg, one flow) in A sends to B's inner
address for --seconds; the rate is what B's inner interface received, per second, for
64-byte and 1464-byte inner frames (the largest a 1450 inner MTU carries).  Gbit/s counts
the inner frames' bytes (Ethernet header on, FCS off).

Not a PVP loop: the vswitch paths include a TAP port at each end (a read or write per
frame, in the kernel), which the kernel-only path does not have, and everything (the source,
two poll threads, the kernel's softirqs) shares the machine's cores.  So the switch's own
cost is measured too, alone (--fastpath): datagrams queued on a VXLAN port's socket
beforehand are drained by the fast path (recvmmsg, decapsulation, learning, flooding to a
second VXLAN port, encapsulation, sendmmsg to a loopback sink), one core, no thread.
Run as root:

  flock /tmp/vswitch-heavy.lock timeout 900 .venv/bin/python scripts/bench_vxlan.py
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
SIZES = {64: 22, 1464: 1422}  # inner frame bytes -> UDP payload (frame - 14 - 20 - 8)
SYSTEMS = ("kernel", "vswitch", "mixed")


def sh(*argv: str, ns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r.stdout


class Bench:
    def __init__(self, tmp: Path, datapath: str) -> None:
        self.tmp = tmp
        self.datapath = datapath
        self.tag = uuid.uuid4().hex[:4]
        self.ns: list[str] = []
        self.procs: list[subprocess.Popen[bytes]] = []

    def netns(self, name: str) -> str:
        full = f"vsb-{self.tag}-{name}"
        sh("ip", "netns", "add", full)
        sh("ip", "link", "set", "lo", "up", ns=full)
        self.ns.append(full)
        return full

    def veth(self, a: str, b: str) -> None:
        sh("ip", "link", "add", "u0", "netns", a, "type", "veth", "peer", "name", "u0",
           "netns", b)  # fmt: skip
        for n, addr in ((a, "192.0.2.1/24"), (b, "192.0.2.2/24")):
            sh("ip", "addr", "add", addr, "dev", "u0", ns=n)
            sh("ip", "link", "set", "u0", "up", ns=n)

    def kernel_vxlan(self, ns: str, local: str, remote: str, inner: str) -> None:
        sh("ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local",
           local, "remote", remote, "dev", "u0", ns=ns)  # fmt: skip
        sh("ip", "addr", "add", inner, "dev", "vx0", ns=ns)
        sh("ip", "link", "set", "vx0", "up", ns=ns)

    def switch(self, name: str, host_ns: str, inner: str, underlay: str, local: str,
               remote: str) -> None:  # fmt: skip
        d = self.tmp / name
        d.mkdir()
        doc = {
            "control": str(d / "ctl.sock"),
            "switch": {"datapath": self.datapath},
            "ports": [
                {"name": "h", "type": "tap", "ifname": "eth0", "netns": host_ns, "mtu": 1450,
                 "addresses": [inner]},
                {"name": "vx", "type": "vxlan", "vni": 42, "local": local, "remotes": [remote],
                 "netns": underlay},
            ],
        }  # fmt: skip
        (d / "vswitch.yaml").write_text(yaml.safe_dump(doc))
        log = open(d / "vswitch.log", "wb")
        p = subprocess.Popen(
            ["timeout", "900", sys.executable, "-m", "vswitch", "run", str(d / "vswitch.yaml")],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        self.procs.append(p)
        deadline = time.monotonic() + 30
        while not (d / "ctl.sock").exists() or not Path(f"/run/netns/{host_ns}").exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((d / "vswitch.log").read_text())
            time.sleep(0.1)
        time.sleep(0.5)  # the tap comes up with its address
        self.ns.append(host_ns)  # the switch made it; we make sure it goes

    def drops(self) -> dict[str, dict[str, int]]:
        """Each switch's non-zero drop counters, per port: where the frames went."""
        out: dict[str, dict[str, int]] = {}
        for d in sorted(self.tmp.glob("sw*")):
            r = subprocess.run(
                [sys.executable, "-m", "vswitch", "ports", "--json", "--control",
                 str(d / "ctl.sock")], capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            for port in json.loads(r.stdout or "[]"):
                c = port.get("counters") or {}
                for k, v in c.items():
                    if "drop" in k and v:
                        out.setdefault(f"{d.name}.{port['name']}", {})[k] = v
        return out

    def close(self) -> None:
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for n in self.ns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)


def build(b: Bench) -> dict[str, tuple[str, str, str]]:
    """Each system: (source namespace, sink namespace, sink interface)."""
    out = {}
    ka, kb = b.netns("ka"), b.netns("kb")
    b.veth(ka, kb)
    b.kernel_vxlan(ka, "192.0.2.1", "192.0.2.2", "10.50.0.1/24")
    b.kernel_vxlan(kb, "192.0.2.2", "192.0.2.1", "10.50.0.2/24")
    sh("ip", "link", "set", "vx0", "mtu", "1450", ns=ka)
    out["kernel"] = (ka, kb, "vx0")
    ua, ub = b.netns("ua"), b.netns("ub")
    b.veth(ua, ub)
    ha, hb = f"vsb-{b.tag}-ha", f"vsb-{b.tag}-hb"
    b.switch("swa", ha, "10.50.0.1/24", ua, "192.0.2.1", "192.0.2.2")
    b.switch("swb", hb, "10.50.0.2/24", ub, "192.0.2.2", "192.0.2.1")
    out["vswitch"] = (ha, hb, "eth0")
    ma, mb = b.netns("ma"), b.netns("mb")
    b.veth(ma, mb)
    hm = f"vsb-{b.tag}-hm"
    b.switch("swm", hm, "10.50.0.1/24", ma, "192.0.2.1", "192.0.2.2")
    b.kernel_vxlan(mb, "192.0.2.2", "192.0.2.1", "10.50.0.2/24")
    out["mixed"] = (hm, mb, "vx0")
    for src, _, _ in out.values():
        sh("ping", "-c", "2", "-W", "3", "10.50.0.2", ns=src)  # ARP, MAC learning
    return out


def rx_packets(ns: str, dev: str) -> int:
    line = sh("ip", "-s", "-o", "link", "show", dev, ns=ns)
    # "... RX: bytes packets errors ... \    N  N  ..." : the numbers after "RX:"
    parts = line.replace("\\", " ").split()
    i = parts.index("RX:")
    nums = [p for p in parts[i + 1 :] if p.isdigit()]
    return int(nums[1])


def measure(
    blast: Path, system: tuple[str, str, str], payload: int, seconds: float
) -> dict[str, float]:
    src, sink, dev = system
    before = rx_packets(sink, dev)
    out = sh(str(blast), "10.50.0.2", "9", str(payload), str(seconds), ns=src)
    time.sleep(0.3)  # the tail of the queues
    got = rx_packets(sink, dev) - before
    return {"sent_pps": int(out.strip()) / seconds, "rx_pps": got / seconds}


def fastpath_rate(frame_size: int, n: int = 4000, rounds: int = 5) -> list[float]:
    """Frames per second the fast path alone forwards VXLAN to VXLAN (see the top)."""
    import socket

    from vswitch.fastpath import PORT_VXLAN, Fastpath
    from vswitch.netsys.vxlan import open_vxlan_sockets

    def free_port() -> int:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]

    pa, pb = free_port(), free_port()
    dp = Fastpath(1024)
    fds: list[int] = []
    socks: list[socket.socket] = []
    try:
        for port, remote in ((pa, "127.0.0.2"), (pb, "127.0.0.3")):
            rx, tx = open_vxlan_sockets("127.0.0.1", port)
            fds += [rx, tx]
            p = dp.open_port(1500, PORT_VXLAN)
            dp.vxlan_configure(p, vni=42, local="127.0.0.1", remotes=[remote], dstport=port,
                               learn_remotes=False, tx_fd=tx)  # fmt: skip
            dp.set_fd(p, rx)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.3", pb))  # takes what it can, drops the rest: no ICMP
        src = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        src.bind(("127.0.0.2", 0))
        socks += [sink, src]
        frame = b"\xff" * 6 + bytes.fromhex("525400420001") + b"\x88\xb5"
        datagram = b"\x08\0\0\0\0\0\x2a\0" + frame + bytes(frame_size - len(frame))
        out = []
        for _ in range(rounds):
            for _ in range(n):
                src.sendto(datagram, ("127.0.0.1", pa))
            t0 = time.perf_counter()
            got = 0
            while (k := dp.poll(4096)) > 0:
                got += k
            dt = time.perf_counter() - t0
            out.append(got / dt)
            while True:  # empty the sink for the next round
                try:
                    sink.recv(65536, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
        return out
    finally:
        dp.close()
        for fd in fds:
            os.close(fd)
        for s in socks:
            s.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--json", type=Path, help="write the results here too")
    ap.add_argument("--datapath", choices=("thread", "loop"), default="thread",
                    help="the switches' switch.datapath")  # fmt: skip
    ap.add_argument("--fastpath", action="store_true",
                    help="only the fast path's own VXLAN-to-VXLAN rate")  # fmt: skip
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_vxlan: run as root (namespaces, raw sockets)", file=sys.stderr)
        return 2
    if args.fastpath:
        print("fast path alone, VXLAN port to VXLAN port over loopback, one core, no thread:")
        for size in SIZES:
            r = fastpath_rate(size)
            print(f"  {size:5d} B frames: {statistics.median(r) / 1e6:.3f} Mpps median "
                  f"({min(r) / 1e6:.3f}-{max(r) / 1e6:.3f}), "
                  f"{statistics.median(r) * size * 8 / 1e9:.2f} Gbit/s")  # fmt: skip
        return 0
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        print("bench_vxlan: needs a C compiler for the traffic source", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vsb-") as t:
        tmp = Path(t)
        blast = tmp / "udp_blast"
        subprocess.run([cc, "-O2", "-o", str(blast), str(ROOT / "scripts/benchlib/udp_blast.c")],
                       check=True)  # fmt: skip
        b = Bench(tmp, args.datapath)
        try:
            systems = build(b)
            res: dict[str, dict[int, list[dict[str, float]]]] = {
                s: {size: [] for size in SIZES} for s in SYSTEMS
            }
            for r in range(args.rounds):
                for size, payload in SIZES.items():
                    for s in SYSTEMS if r % 2 == 0 else reversed(SYSTEMS):
                        res[s][size].append(measure(blast, systems[s], payload, args.seconds))
            drops = b.drops()
        finally:
            b.close()
    report(res, args)
    print("switch drops over the whole run:", json.dumps(drops) if drops else "none")
    return 0


def report(res: dict[str, dict[int, list[dict[str, float]]]], args: Any) -> None:
    print(f"VXLAN tunnel rate, {args.rounds} interleaved rounds of {args.seconds:g} s, "
          f"datapath {args.datapath}, {os.cpu_count()} CPUs: median (min-max) of what the far "
          "side received")  # fmt: skip
    print(f"{'system':8} {'frame':>6} {'Mpps':>22} {'Gbit/s':>8} {'vs kernel':>9} {'sent Mpps':>9}")
    summary: dict[str, Any] = {}
    for size in SIZES:
        kmed = statistics.median(m["rx_pps"] for m in res["kernel"][size])
        for s in SYSTEMS:
            rx = [m["rx_pps"] for m in res[s][size]]
            med = statistics.median(rx)
            sent = statistics.median(m["sent_pps"] for m in res[s][size])
            gbit = med * size * 8 / 1e9
            ratio = med / kmed if kmed else 0.0
            print(f"{s:8} {size:6d} {med / 1e6:8.3f} ({min(rx) / 1e6:.3f}-{max(rx) / 1e6:.3f})"
                  f" {gbit:8.2f} {ratio:9.2f} {sent / 1e6:9.3f}")  # fmt: skip
            summary.setdefault(s, {})[size] = {"mpps": med / 1e6, "gbit": gbit, "ratio": ratio,
                                               "rounds": rx}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    sys.exit(main())
