"""Boot a QEMU guest (Debian kernel + busybox initramfs) and run commands in it.

The image comes from scripts/build-guest-image. The guest's console (ttyS0) goes to
``<workdir>/<name>.console.log``; an exec agent listens on its second serial port (ttyS1),
which QEMU exposes as a unix socket server that this module connects to.

Agent protocol: ASCII lines, one message per line, fields separated by single spaces.
Every message starts with the magic ``VSW1``; anything else on the line (kernel messages,
partial lines, noise) is ignored, and each side starts its messages with a newline so
that earlier garbage can never merge with them. IDs are ``[A-Za-z0-9_-]+``.

  host -> guest  VSW1 PING <id>          agent answers  VSW1 READY <id> <boot-id>
                 VSW1 EXEC <id> <b64>    runs ``sh -c CMD`` (CMD base64 encoded) in its own
                                         session, stdin /dev/null; commands run concurrently
                 VSW1 KILL <id>          SIGKILL the session of a running EXEC
  guest -> host  VSW1 RESULT <id> <rc> <len-out> <len-err> <b64-out> <b64-err> END
                 VSW1 ERROR <id> <reason>

Boot IDs (/proc/sys/kernel/random/boot_id) tell one boot from the next: after a reboot the
host waits for a READY carrying a new one. Request IDs are unique per Guest object, so a
reply to a command that timed out (and was killed) matches no pending request and is
dropped. The byte counts guard against truncated lines. stdout/stderr are decoded as
UTF-8 with ``surrogateescape``: ``s.encode("utf-8", "surrogateescape")`` gives the bytes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from vswitch.netsys.libc import die_with_parent as _die_with_parent
from vswitch.text import tail as _tail

MAX_LINE = 64 << 20
_LINE_RE = re.compile(
    rb"VSW1 (?:READY (?P<rid>[\w-]+) (?P<boot>[\w-]+)"
    rb"|RESULT (?P<id>[\w-]+) (?P<rc>\d+) (?P<nout>\d+) (?P<nerr>\d+)"
    rb" (?P<out>[A-Za-z0-9+/=]*) (?P<err>[A-Za-z0-9+/=]*) END"
    rb"|ERROR (?P<eid>[\w-]+) (?P<why>\S+))\s*$"
)


class GuestError(RuntimeError):
    """Something went wrong with a guest; the message names the guest."""


class GuestTimeoutError(GuestError, TimeoutError):
    """A boot or a command took too long (also an asyncio.TimeoutError)."""


@dataclass
class Nic:
    """A vhost-user NIC.  By default QEMU connects as the client to the
    switch's unix socket (and reconnects if the switch restarts); with
    server=True QEMU listens on the socket and the switch connects to it
    (a port with `mode: client`)."""

    socket: str
    mac: str
    reconnect: bool = True
    server: bool = False
    queues: int = 1  # queue pairs (multiqueue: netdev queues=N, device mq=on)
    device_opts: str = ""  # more virtio-net-pci properties, e.g. "guest_announce=off"


@dataclass
class ExecResult:
    rc: int
    stdout: str
    stderr: str
    where: str = field(default="", compare=False, repr=False)  # "guest NAME: command CMD"

    def check(self) -> Self:
        """Raise GuestError unless rc is 0."""
        if self.rc != 0:
            raise GuestError(f"{self.where} failed (rc {self.rc}): {self.stderr.strip()}")
        return self


def image_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Where the guest image lives; raise a GuestError saying how to build it if absent."""
    d = Path(
        explicit
        or os.environ.get("VSWITCH_GUEST_DIR")
        or Path.home() / ".cache" / "vswitch" / "guest"
    )
    for f in ("vmlinuz", "initramfs.img"):
        if not (d / f).is_file():
            raise GuestError(
                f"guest image file {d / f} is missing: build it with "
                f"`scripts/build-guest-image {d}`"
            )
    return d


class Guest:
    """One QEMU guest. ``async with Guest(...) as g`` starts it and waits for the agent."""

    def __init__(
        self,
        name: str,
        workdir: str | os.PathLike[str],
        nics: list[Nic] | None = None,
        ips: dict[int, list[str]] | None = None,
        gw: str | list[str] | None = None,
        memory_mb: int = 128,
        image_dir: str | os.PathLike[str] | None = None,
        machine: str = "q35",
        qemu: str = "qemu-system-x86_64",
        extra_args: list[str] | None = None,
        kernel_args: list[str] | None = None,
        cpus: int = 1,
    ) -> None:
        self.name = name
        self.cpus = cpus
        self.workdir = Path(workdir)
        self.nics = list(nics or [])
        self.ips = dict(ips or {})
        self.gw = [gw] if isinstance(gw, str) else list(gw or [])
        self.memory_mb = memory_mb
        self.machine = machine
        self.qemu = qemu
        self.extra_args = list(extra_args or [])
        self.kernel_args = list(kernel_args or [])
        self._image_dir = image_dir
        self.console_log = self.workdir / f"{name}.console.log"
        self.qemu_log = self.workdir / f"{name}.qemu.log"
        self.agent_socket = self.workdir / f"{name}.agent.sock"
        self._sockdir: str | None = None
        self.boot_id: str | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[ExecResult]] = {}
        self._pings: set[str] = set()
        self._ready: tuple[asyncio.Future[str], str | None] | None = None
        self._ids = itertools.count(1)
        self._tag = os.urandom(3).hex()

    # -- lifecycle ---------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.start()
        try:
            await self.wait_ready()
        except BaseException:
            await self.kill()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def cmdline(self) -> list[str]:
        img = image_dir(self._image_dir)
        mem = f"{self.memory_mb}M"
        # no_timer_check: on a starved host the emulated timer looks broken
        # to the kernel's boot-time check, which then panics.
        params = ["console=ttyS0", "loglevel=4", "mitigations=off", "no_timer_check",
                  f"vswitch.hostname={self.name}"]  # fmt: skip
        for n, addrs in sorted(self.ips.items()):
            if addrs:
                params.append(f"vswitch.ip{n if n else ''}={','.join(addrs)}")
        if self.gw:
            params.append(f"vswitch.gw={','.join(self.gw)}")
        params += self.kernel_args
        args = [
            self.qemu, "-name", _q(self.name), "-machine", self.machine,
            "-accel", "tcg", "-cpu", "max", "-smp", str(self.cpus), "-m", mem,
            "-object", f"memory-backend-memfd,id=mem,size={mem},share=on",
            "-numa", "node,memdev=mem",
            "-nographic", "-nodefaults", "-no-user-config",
            "-kernel", str(img / "vmlinuz"), "-initrd", str(img / "initramfs.img"),
            "-append", " ".join(params),
            "-serial", f"file:{self.console_log}",
            "-chardev", f"socket,id=agent,path={_q(self.agent_socket)},server=on,wait=off",
            "-serial", "chardev:agent",
        ]  # fmt: skip
        for i, nic in enumerate(self.nics):
            if nic.server:
                rc = ",server=on,wait=off"
            else:
                rc = ",reconnect=1" if nic.reconnect else ""
            mq = f",queues={nic.queues}" if nic.queues > 1 else ""
            args += [
                "-chardev", f"socket,id=vu{i},path={_q(nic.socket)}{rc}",
                "-netdev", f"vhost-user,id=net{i},chardev=vu{i}{mq}",
                "-device", f"virtio-net-pci,netdev=net{i},mac={nic.mac},vectors=0"
                + (",mq=on" if mq else "")
                + (f",{nic.device_opts}" if nic.device_opts else ""),
            ]  # fmt: skip
        return args + self.extra_args

    async def start(self, connect_timeout: float = 30.0) -> None:
        """Launch QEMU and connect to the agent's serial port (the guest keeps booting)."""
        if self.running:
            raise GuestError(f"guest {self.name}: already running (pid {self.pid})")
        if shutil.which(self.qemu) is None:
            raise GuestError(
                f"guest {self.name}: {self.qemu} not found: install the Debian package "
                "qemu-system-x86"
            )
        image_dir(self._image_dir)  # fail early, before anything is created
        self.workdir.mkdir(parents=True, exist_ok=True)
        if len(os.fsencode(self.agent_socket)) > 100:  # sun_path is 108 bytes
            self._sockdir = tempfile.mkdtemp(prefix="vswitch-guest-")
            self.agent_socket = Path(self._sockdir) / "agent.sock"
        args = self.cmdline()
        self.agent_socket.unlink(missing_ok=True)
        await asyncio.to_thread(self.console_log.write_bytes, b"")
        log = await asyncio.to_thread(open, self.qemu_log, "wb")
        with log:
            self._proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + connect_timeout
        while True:
            if not self.running:
                await self._proc.wait()
                raise GuestError(
                    f"guest {self.name}: QEMU exited with {self._proc.returncode} at start; "
                    f"its output ({self.qemu_log}):\n{await self._tail(self.qemu_log)}"
                )
            try:
                reader, self._writer = await asyncio.open_unix_connection(
                    str(self.agent_socket), limit=1 << 16
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    await self.kill()
                    raise GuestTimeoutError(
                        f"guest {self.name}: QEMU did not create {self.agent_socket} within "
                        f"{connect_timeout}s; its output:\n{await self._tail(self.qemu_log)}"
                    ) from None
                await asyncio.sleep(0.05)
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def wait_ready(self, timeout: float = 120.0) -> str:
        """Wait until the agent answers; returns the guest's boot id."""
        return await self._wait_ready(timeout, None)

    async def reboot(self, timeout: float = 120.0) -> str:
        """``reboot -f`` in the guest and wait for the agent of the next boot."""
        old = self.boot_id
        await self._send("EXEC", self._next_id(), _b64("reboot -f"))  # no reply comes
        return await self._wait_ready(timeout, old)

    async def kill(self) -> None:
        """SIGKILL QEMU and reap it."""
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
        await self._cleanup()

    async def stop(self, poweroff_timeout: float = 3.0, term_timeout: float = 5.0) -> None:
        """Power off through the agent, else SIGTERM, else SIGKILL; always reaps QEMU."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(GuestError, OSError):
                await self._send("EXEC", self._next_id(), _b64("poweroff -f"))
            for sig, wait in ((None, poweroff_timeout), (signal.SIGTERM, term_timeout)):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.send_signal(sig)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), wait)
                    break
        await self.kill()

    # -- commands ----------------------------------------------------------------------

    async def exec(self, cmd: str, timeout: float = 60.0) -> ExecResult:
        """Run ``sh -c cmd`` in the guest; on timeout kill it and raise GuestTimeoutError."""
        rid = self._next_id()
        fut: asyncio.Future[ExecResult] = asyncio.get_running_loop().create_future()
        self._pending[rid] = fut
        try:
            await self._send("EXEC", rid, _b64(cmd))
            res = await asyncio.wait_for(asyncio.shield(fut), timeout)
            res.where = f"guest {self.name}: command {cmd!r}"
            return res
        except TimeoutError:
            with contextlib.suppress(GuestError, OSError):
                await self._send("KILL", rid)
            raise GuestTimeoutError(
                f"guest {self.name}: command {cmd!r} did not finish within {timeout}s (killed it)"
            ) from None
        finally:
            self._pending.pop(rid, None)
            fut.cancel()

    # -- internals ---------------------------------------------------------------------

    def _next_id(self) -> str:
        return f"{self._tag}-{next(self._ids)}"

    async def _send(self, *fields: str) -> None:
        if self._writer is None or self._writer.is_closing() or not self.running:
            raise GuestError(f"guest {self.name}: not running (start() it first)")
        self._writer.write(("\nVSW1 " + " ".join(fields) + "\n").encode())
        await self._writer.drain()

    async def _wait_ready(self, limit: float, not_boot: str | None) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        fut: asyncio.Future[str] = loop.create_future()
        self._ready = (fut, not_boot)
        try:
            while not fut.done():
                if not self.running:
                    qemu = await self._tail(self.qemu_log, 5)
                    raise GuestError(
                        f"guest {self.name}: QEMU exited while booting; console "
                        f"({self.console_log}):\n{await self._tail(self.console_log)}\n"
                        f"QEMU output ({self.qemu_log}):\n{qemu}"
                    )
                left = deadline - loop.time()
                if left <= 0:
                    socks = " ".join(n.socket for n in self.nics)
                    hint = f" (QEMU waits for the vhost-user servers {socks})" if socks else ""
                    raise GuestTimeoutError(
                        f"guest {self.name}: agent not ready after {limit}s{hint}; console "
                        f"({self.console_log}):\n{await self._tail(self.console_log)}"
                    )
                rid = self._next_id()
                self._pings.add(rid)
                await self._send("PING", rid)
                await asyncio.wait([fut], timeout=min(1.0, left))
            self.boot_id = fut.result()
            return self.boot_id
        finally:
            self._ready = None
            self._pings.clear()
            fut.cancel()

    async def _read_loop(self, reader: asyncio.StreamReader) -> None:
        part: list[bytes] = []  # the unfinished line, in pieces (replies can be megabytes)
        size = 0
        try:
            while chunk := await reader.read(1 << 16):
                *lines, rest = chunk.split(b"\n")
                if lines:
                    lines[0] = b"".join([*part, lines[0]])
                    part, size = [], 0
                for line in lines:
                    if (pos := line.find(b"VSW1 ")) >= 0:
                        self._dispatch(line[pos:])
                part.append(rest)
                size += len(rest)
                if size > MAX_LINE:
                    part, size = [], 0
        except OSError:
            pass
        finally:
            err = GuestError(f"guest {self.name}: agent connection lost (QEMU gone?)")
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(err)

    def _dispatch(self, line: bytes) -> None:
        m = _LINE_RE.match(line)
        if m is None:
            return
        if m["rid"] is not None:
            rid, boot = m["rid"].decode(), m["boot"].decode()
            if self._ready and rid in self._pings and boot != self._ready[1]:
                if not self._ready[0].done():
                    self._ready[0].set_result(boot)
            return
        rid = (m["id"] or m["eid"]).decode()
        fut = self._pending.get(rid)
        if fut is None or fut.done():
            return  # a late reply, e.g. to a command that timed out
        if m["eid"] is not None:
            fut.set_exception(GuestError(f"guest {self.name}: agent error {m['why'].decode()}"))
            return
        out, err = base64.b64decode(m["out"]), base64.b64decode(m["err"])
        if len(out) != int(m["nout"]) or len(err) != int(m["nerr"]):
            fut.set_exception(GuestError(f"guest {self.name}: garbled reply to {rid}"))
            return
        dec = "utf-8", "surrogateescape"
        fut.set_result(ExecResult(int(m["rc"]), out.decode(*dec), err.decode(*dec)))

    async def _cleanup(self) -> None:
        if self._proc is not None:
            await self._proc.wait()
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
            self._writer = None
        if self._reader_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._reader_task, 5)
            self._reader_task = None
        self.agent_socket.unlink(missing_ok=True)
        if self._sockdir is not None:
            shutil.rmtree(self._sockdir, ignore_errors=True)
            self._sockdir = None
            self.agent_socket = self.workdir / f"{self.name}.agent.sock"

    @staticmethod
    async def _tail(path: Path, lines: int = 30) -> str:
        return await asyncio.to_thread(_tail, path, lines)


def _q(value: object) -> str:
    """Quote a value for a QEMU option list (a comma is written as two)."""
    return str(value).replace(",", ",,")


def _b64(s: str) -> str:
    return base64.b64encode(s.encode("utf-8", "surrogateescape")).decode()
