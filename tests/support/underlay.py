"""Underlays for VXLAN tests: network namespaces joined by veth pairs, a Linux kernel vxlan
device as the peer, tshark on an underlay interface, and crafted VXLAN datagrams.

Everything an Underlay creates lives in its namespaces, so leaving the `with` block (which
deletes them) removes it all: veths, vxlan devices, addresses.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import TracebackType

from vswitch.netsys.netns import delete_netns, netns_preexec, run_in_netns

PREFIX = "vsx-"


def ns_name(tag: str) -> str:
    return f"{PREFIX}{tag}-{uuid.uuid4().hex[:6]}"


def run(*argv: str, ns: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(argv),
        preexec_fn=netns_preexec(ns) if ns else None,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ip(*args: str) -> None:
    r = run("ip", *args)
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"


def ping(ns: str, target: str, count: int = 3, size: int | None = None, df: bool = True,
         wait: float = 3) -> subprocess.CompletedProcess[str]:  # fmt: skip
    argv = ["ping", "-c", str(count), "-i", "0.2", "-W", str(wait)]
    if size is not None:
        argv += ["-s", str(size), "-M", "do" if df else "dont"]
    return run(*argv, target, ns=ns, timeout=30 + count * wait)


def _addr(a: str) -> list[str]:
    return [a, "nodad"] if ":" in a else [a]  # no duplicate address detection wait on v6


class Underlay:
    """Namespaces created on demand by name (tags), all deleted on exit."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def ns(self, tag: str) -> str:
        if tag not in self.names:
            name = ns_name(tag)
            ip("netns", "add", name)
            self.names[tag] = name
            ip("-n", name, "link", "set", "lo", "up")
        return self.names[tag]

    def veth(self, a: str, a_if: str, a_addr: str, b: str, b_if: str, b_addr: str,
             mtu: int = 1500) -> None:  # fmt: skip
        """A veth pair between namespaces (tags) a and b, addressed and up."""
        na, nb = self.ns(a), self.ns(b)
        ip("link", "add", a_if, "netns", na, "mtu", str(mtu), "type", "veth",
           "peer", "name", b_if, "netns", nb, "mtu", str(mtu))  # fmt: skip
        for n, dev, addr in ((na, a_if, a_addr), (nb, b_if, b_addr)):
            ip("-n", n, "addr", "add", *_addr(addr), "dev", dev)
            ip("-n", n, "link", "set", dev, "up")

    def kernel_vxlan(self, tag: str, dev: str, local: str, remote: str, inner: str,
                     vni: int = 42, name: str = "vx0", dstport: int = 4789) -> str:  # fmt: skip
        """`ip link add vx0 type vxlan id VNI dstport 4789 local L remote R dev DEV` with the
        inner address; returns its MAC."""
        n = self.ns(tag)
        ip("-n", n, "link", "add", name, "type", "vxlan", "id", str(vni), "dstport",
           str(dstport), "local", local, "remote", remote, "dev", dev)  # fmt: skip
        ip("-n", n, "addr", "add", *_addr(inner), "dev", name)
        ip("-n", n, "link", "set", name, "up")
        return run("cat", f"/sys/class/net/{name}/address", ns=n).stdout.strip()

    def close(self) -> None:
        for name in self.names.values():
            delete_netns(name)
        self.names.clear()

    def __enter__(self) -> Underlay:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:  # fmt: skip
        self.close()


class Capture:
    """tshark on one interface of a namespace, UDP to the VXLAN port only, into a file."""

    def __init__(self, ns: str, dev: str, out: Path, dstport: int = 4789) -> None:
        self.out = out
        self.proc = subprocess.Popen(
            ["tshark", "-i", dev, "-f", f"udp port {dstport} or ip[6:2] & 0x3fff != 0 or ip6",
             "-a", "duration:300", "-w", str(out)],
            preexec_fn=netns_preexec(ns), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._wait_capturing()

    def _wait_capturing(self, timeout: float = 60) -> None:
        assert self.proc.stderr is not None
        os.set_blocking(self.proc.stderr.fileno(), False)
        seen = b""
        deadline = time.monotonic() + timeout
        while b"Capturing on" not in seen:
            assert self.proc.poll() is None, f"tshark exited: {seen.decode(errors='replace')}"
            assert time.monotonic() < deadline, f"tshark did not start: {seen!r}"
            seen += self.proc.stderr.read() or b""
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            time.sleep(0.5)  # the last frames reach the file
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def fields(self, *names: str, display: str = "") -> list[list[str]]:
        argv = ["tshark", "-r", str(self.out), "-T", "fields", "-E", "separator=|"]
        if display:
            argv += ["-Y", display]
        for n in names:
            argv += ["-e", n]
        r = run(*argv, timeout=120)
        assert r.returncode == 0, r.stderr
        return [line.split("|") for line in r.stdout.splitlines() if line]


def vxlan_header(vni: int, flags: int = 0x08, reserved: bytes = b"\0\0\0", last: int = 0) -> bytes:
    return bytes([flags]) + reserved + vni.to_bytes(3, "big") + bytes([last])


def eth_frame(dst: str, src: str, size: int = 64, ethertype: int = 0x88B5) -> bytes:
    """An Ethernet frame of `size` bytes (no FCS) of the local experimental ethertype."""
    head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", ""))
    head += ethertype.to_bytes(2, "big")
    return head + bytes(max(size - len(head), 0))


def send_datagrams(ns: str, src: str, dst: str, payloads: list[bytes], dstport: int = 4789,
                   sport: int = 0) -> None:  # fmt: skip
    """UDP datagrams from src (an address of the namespace) to dst:dstport."""
    fam = socket.AF_INET6 if ":" in src else socket.AF_INET

    def go() -> None:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            # Oversized test datagrams are fragmented by this kernel, as a peer's would be.
            if fam == socket.AF_INET:
                s.setsockopt(socket.IPPROTO_IP, 10, 0)  # IP_MTU_DISCOVER = IP_PMTUDISC_DONT
            else:
                s.setsockopt(socket.IPPROTO_IPV6, 23, 0)  # IPV6_MTU_DISCOVER, _DONT
            s.bind((src, sport))
            for p in payloads:
                s.sendto(p, (dst, dstport))

    run_in_netns(ns, go)


def udp_listener(ns: str, addr: str, port: int = 4789) -> socket.socket:
    """A UDP socket bound in the namespace (it stays there once made), non-blocking."""
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET

    def make() -> socket.socket:
        s = socket.socket(fam, socket.SOCK_DGRAM)
        s.bind((addr, port))
        s.setblocking(False)
        return s

    return run_in_netns(ns, make)


def drain(s: socket.socket, settle: float = 0.5) -> list[tuple[bytes, str]]:
    """Every datagram that arrives on s until none has for `settle` seconds."""
    out: list[tuple[bytes, str]] = []
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        try:
            data, who = s.recvfrom(65535)
        except BlockingIOError:
            time.sleep(0.02)
            continue
        out.append((data, who[0]))
        deadline = time.monotonic() + settle
    return out
