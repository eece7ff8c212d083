"""Helpers for the operations tests (tests/daemon/test_ops_*.py).

VGuest is a guest without QEMU: the test-side vhost-user front end (vswitch.testkit.vhost_frontend)
hands a real daemon a memfd with split rings laid out by the test-side virtio driver
(vswitch.testkit.virtio_driver), then sends and receives exact frames through it.  Fast and exact,
it is the traffic source for capture, metrics, top and the control API.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from vswitch.config import Config, parse_config
from vswitch.control import request
from vswitch.daemon.switch import Switch
from vswitch.errors import ControlError
from vswitch.testkit.vhost_frontend import Frontend, eventfd
from vswitch.testkit.virtio_driver import GuestMemory, SplitRing, eth, net_hdr

HDR = net_hdr(12)  # VERSION_1 and MRG_RXBUF are negotiated: 12-byte header
RING = 256


class VGuest:
    """One port's front end: `async with VGuest(path) as g: await g.send(frame)`."""

    def __init__(self, path: str | Path, mem_size: int = 8 << 20) -> None:
        self.fe = Frontend(str(path))
        self.mem = GuestMemory.single(size=mem_size)
        self.rx = SplitRing(self.mem, RING)
        self.tx = SplitRing(self.mem, RING)
        self.kick = [eventfd(), eventfd()]
        self.call = [eventfd(), eventfd()]
        self.sent = 0

    async def __aenter__(self) -> VGuest:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def start(self) -> None:
        await self.fe.connect()
        await self.fe.negotiate()
        assert await self.fe.set_mem_table(self.mem.table()) == 0
        for q, r in enumerate((self.rx, self.tx)):
            await self.fe.setup_vring(
                q, r.num, r.desc_ua, r.used_ua, r.avail_ua, self.kick[q], self.call[q]
            )

    def close(self) -> None:
        self.fe.close()
        for fd in self.kick + self.call:
            os.close(fd)
        self.kick = self.call = []
        self.mem.close()

    def post_rx(self, count: int = 128, size: int = 2048) -> None:
        """Receive buffers, so the switch can deliver frames to this guest."""
        self.rx.add_rx(size, count)

    async def send(self, *frames: bytes, timeout: float = 10.0) -> None:
        """Queue frames on the TX ring and kick; waits for ring room when it is full."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for f in frames:
            while not self.tx.free_ids:
                self.tx.reclaim()
                if self.tx.free_ids:
                    break
                assert loop.time() < deadline, "the switch does not take frames from the TX ring"
                os.eventfd_write(self.kick[1], 1)
                await asyncio.sleep(0.001)
            self.tx.add_tx(f, HDR)
            self.sent += 1
        os.eventfd_write(self.kick[1], 1)

    async def drain_tx(self, timeout: float = 10.0) -> None:
        """Wait until the switch has taken every frame sent."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.tx.chains:
            self.tx.reclaim()
            if not self.tx.chains:
                return
            assert loop.time() < deadline, f"{len(self.tx.chains)} frame(s) never taken"
            await asyncio.sleep(0.005)

    def received(self) -> list[bytes]:
        """Frames delivered so far (one buffer each: frames are smaller than buffers)."""
        return [u.data[len(HDR) :] for u in self.rx.reclaim()]


def frames(dst: str, src: str, n: int, size: int = 100) -> list[bytes]:
    """n distinct frames: the first payload bytes carry the index."""
    out = []
    for i in range(n):
        f = bytearray(eth(dst, src, size))
        f[14:18] = i.to_bytes(4, "big")
        out.append(bytes(f))
    return out


def config(tmp: Path, names: list[str], **extra: Any) -> Config:
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp / f"{n}.sock")} for n in names]
    return parse_config({"control": str(tmp / "ctl.sock"), "ports": ports, **extra})


async def wait_until(cond: Any, timeout: float = 10.0, what: str = "condition") -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        r = cond()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return
        assert loop.time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


@contextmanager
def switch_in_thread(cfg: Config) -> Iterator[tuple[Switch, asyncio.AbstractEventLoop]]:
    """A real Switch on its own event loop in a background thread, for sync tests (the CLI
    through CliRunner runs its own asyncio.run)."""
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}
    stop = asyncio.Event()

    async def serve() -> None:
        try:
            async with Switch(cfg) as sw:
                holder["sw"] = sw
                ready.set()
                await stop.wait()
        except BaseException as exc:
            holder["error"] = exc
            ready.set()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "switch did not start"
    if "error" in holder:
        raise holder["error"]
    try:
        yield holder["sw"], loop
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
        loop.close()


def run_in(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 30.0) -> Any:
    """Run a coroutine on the switch's loop (from the test's thread) and wait for it."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


class Daemon:
    """`vswitch run CONFIG ARGS...` in a subprocess, its stderr in a file."""

    def __init__(self, config: Path, control: Path, *args: str) -> None:
        self.config, self.control, self.args = config, control, args
        self.log = config.with_suffix(".log")
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self, timeout: float = 20.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vswitch", "run", str(self.config), *self.args,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.proc.returncode is None, f"vswitch exited:\n{self.lines()}"
            try:
                await request(self.control, "version")
                return
            except ControlError:
                assert loop.time() < deadline, f"vswitch did not start:\n{self.lines()}"
                await asyncio.sleep(0.05)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        assert self.proc.returncode is not None
        return self.proc.returncode

    def lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []

    async def __aenter__(self) -> Daemon:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


# `vswitch capture` as a child process, for the capture tests


CAPTURE_TIMEOUT = 30


async def capture_cli(sw: Switch, *args: str) -> asyncio.subprocess.Process:
    """`vswitch capture ARGS` against the switch's control socket, its output piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vswitch", "capture", *args, "--control", str(sw.config.control),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


async def capture_finish(proc: asyncio.subprocess.Process) -> tuple[str, str]:
    """Its stdout and stderr once it exited 0."""
    out, err = await asyncio.wait_for(proc.communicate(), CAPTURE_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return out.decode(), err.decode()


async def tshark_fields(tshark: str, path: Path, *names: str) -> list[list[str]]:
    """`tshark -r PATH -T fields` for the named fields: one list of values per frame."""
    args = [tshark, "-r", str(path), "-T", "fields", "-E", "separator=|"]
    for n in names:
        args += ["-e", n]
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), CAPTURE_TIMEOUT)
    assert proc.returncode == 0, err.decode()
    return [line.split("|") for line in out.decode().splitlines()]
