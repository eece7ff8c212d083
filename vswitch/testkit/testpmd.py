"""DPDK's testpmd as an independent vhost-user front end (virtio-user).

It shares no code with QEMU or with us, so a frame it counts is a frame the
switch really delivered.  Driven interactively over a pipe."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
from pathlib import Path

PROMPT = b"testpmd> "
_COUNTERS = (
    ("RX-packets", "rx_packets"),
    ("RX-missed", "rx_missed"),
    ("RX-bytes", "rx_bytes"),
    ("RX-errors", "rx_errors"),
    ("RX-nombuf", "rx_nombuf"),
    ("TX-packets", "tx_packets"),
    ("TX-errors", "tx_errors"),
    ("TX-bytes", "tx_bytes"),
)


def parse_port_stats(text: str) -> dict[int, dict[str, int]]:
    """`show port stats all` -> {port: {rx_packets: ..., tx_bytes: ...}}."""
    out: dict[int, dict[str, int]] = {}
    for block in re.split(r"#+ NIC statistics for port", text)[1:]:
        m = re.match(r"\s*(\d+)", block)
        if not m:
            continue
        vals = {}
        for key, name in _COUNTERS:
            v = re.search(re.escape(key) + r":\s+(\d+)", block)
            vals[name] = int(v.group(1)) if v else 0
        out[int(m.group(1))] = vals
    return out


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


class TestpmdConsole:
    """testpmd's interactive console over a pipe: its output is kept (and
    copied to a log file) as it comes, and each command waits for the next
    prompt.  Who starts and stops the process is up to the subclass (the
    tests' DpdkTestpmd here, the benchmark's TestPmd in scripts/bench.py)."""

    error: type[Exception] = AssertionError

    def __init__(self, name: str, log: Path) -> None:
        self.name = name
        self.log = log
        self.proc: asyncio.subprocess.Process | None = None
        self.out = bytearray()
        self._reader: asyncio.Task[None] | None = None

    def attach(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self._reader = asyncio.create_task(self._read())

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
            if self.proc is None or self.proc.returncode is not None:
                raise self.error(f"{self.name} exited:\n{self.tail()}")
            if loop.time() > deadline:
                raise self.error(f"{self.name}: no {marker!r} within {timeout}s:\n{self.tail()}")
            await asyncio.sleep(0.02)
        return i + len(marker)

    async def cmd(self, line: str, timeout: float = 30.0) -> str:
        assert self.proc is not None and self.proc.stdin is not None
        start = len(self.out)
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        end = await self.wait_for(PROMPT, timeout, start)
        return self.out[start:end].decode(errors="replace")

    async def port_stats(self) -> dict[int, dict[str, int]]:
        return parse_port_stats(await self.cmd("show port stats all"))

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.out.decode(errors="replace").splitlines()[-n:])

    async def quit(self, timeout: float) -> bool:
        """Asks testpmd to quit; whether it did within timeout."""
        if self.proc is None or self.proc.returncode is not None:
            return True
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(b"quit\n")
            await self.proc.stdin.drain()
            await asyncio.wait_for(self.proc.wait(), timeout)
            return True
        except (TimeoutError, BrokenPipeError, ConnectionResetError):
            return False

    async def reader_done(self) -> None:
        if self._reader is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader, 5)


class DpdkTestpmd(TestpmdConsole):
    def __init__(self, vdevs: list[str], args: list[str], log: Path, prefix: str) -> None:
        super().__init__("testpmd", log)
        self.vdevs = vdevs
        self.args = args
        self.prefix = prefix

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
        self.attach(
            await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
        )
        await self.wait_for(PROMPT, timeout)

    async def stop(self) -> None:
        if self.proc is None:
            return
        if not await self.quit(15):
            self.proc.kill()
            await self.proc.wait()
        await self.reader_done()

    async def __aenter__(self) -> DpdkTestpmd:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
