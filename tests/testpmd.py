"""DPDK's testpmd as an independent vhost-user front end (virtio-user).

It shares no code with QEMU or with us, so a frame it counts is a frame the
switch really delivered.  Driven interactively over a pipe."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from pathlib import Path

PROMPT = b"testpmd> "
_STATS = re.compile(
    r"NIC statistics for port (\d+).*?RX-packets:\s+(\d+).*?RX-bytes:\s+(\d+)"
    r".*?TX-packets:\s+(\d+).*?TX-bytes:\s+(\d+)",
    re.S,
)


def hugepages_ready() -> tuple[bool, str]:
    try:
        pages = int(Path("/proc/sys/vm/nr_hugepages").read_text())
    except OSError:
        return False, "no hugepage support"
    if pages < 256:
        return False, f"{pages} hugepages reserved, testpmd needs 256 (scripts/setup reserves them)"
    if not os.path.ismount("/dev/hugepages"):
        return False, "hugetlbfs is not mounted on /dev/hugepages (scripts/setup mounts it)"
    return True, ""


class DpdkTestpmd:
    def __init__(self, vdevs: list[str], args: list[str], log: Path, prefix: str) -> None:
        self.vdevs = vdevs
        self.args = args
        self.log = log
        self.prefix = prefix
        self.proc: asyncio.subprocess.Process | None = None
        self.out = bytearray()
        self._reader: asyncio.Task[None] | None = None

    async def start(self, timeout: float = 60.0) -> None:
        eal = [
            "-l", "0,1", "--main-lcore", "0", "--in-memory", "--single-file-segments",
            "-m", "512", "--no-pci", f"--file-prefix={self.prefix}",
        ]  # fmt: skip
        for v in self.vdevs:
            eal += ["--vdev", v]
        argv = ["dpdk-testpmd", *eal, "--", "-i", *self.args]
        stdbuf = shutil.which("stdbuf")
        if stdbuf:
            argv = [stdbuf, "-oL", *argv]
        self.proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        await self.wait_for(PROMPT, timeout)

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        with open(self.log, "ab") as f:
            while chunk := await self.proc.stdout.read(65536):
                self.out += chunk
                f.write(chunk)
                f.flush()

    async def wait_for(self, marker: bytes, timeout: float, start: int = 0) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (i := self.out.find(marker, start)) < 0:
            if self.proc is None or self.proc.returncode is not None or loop.time() > deadline:
                raise AssertionError(f"testpmd: no {marker!r}; output:\n{self.tail()}")
            await asyncio.sleep(0.05)
        return i + len(marker)

    async def cmd(self, line: str, timeout: float = 30.0) -> str:
        assert self.proc is not None and self.proc.stdin is not None
        start = len(self.out)
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        end = await self.wait_for(PROMPT, timeout, start)
        return self.out[start:end].decode(errors="replace")

    async def port_stats(self) -> dict[int, dict[str, int]]:
        text = await self.cmd("show port stats all")
        stats = {}
        for port, rxp, rxb, txp, txb in _STATS.findall(text):
            stats[int(port)] = {
                "rx_packets": int(rxp),
                "rx_bytes": int(rxb),
                "tx_packets": int(txp),
                "tx_bytes": int(txb),
            }
        return stats

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.out.decode(errors="replace").splitlines()[-n:])

    async def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"quit\n")
                await self.proc.stdin.drain()
                await asyncio.wait_for(self.proc.wait(), 15)
            except (TimeoutError, BrokenPipeError, ConnectionResetError):
                self.proc.kill()
                await self.proc.wait()
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> DpdkTestpmd:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
