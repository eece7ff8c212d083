"""Real libvirt for the tests: libvirtd and virtlogd started by the test (PID 1 need not be
systemd), domains defined from XML like docs/libvirt.md's, `virsh` bounded in time, and
guests reached through the exec agent of vswitch/lab/guest.py over the domain's second
serial port (`<serial type='unix'>`).

Everything is the system instance (`qemu:///system`: QEMU runs as libvirt-qemu, which is
what the permissions under test are about), so one test at a time on a machine holds
LOCK; what the test starts it stops, and what it defines it undefines."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import quoteattr

from vswitch.lab.guest import Guest
from vswitch.netsys.libc import die_with_parent

URI = "qemu:///system"
RUN_DIR = Path("/run/libvirt")
QEMU_LOG_DIR = Path("/var/log/libvirt/qemu")
LOCK = Path("/run/lock/vswitch-libvirt-test.lock")
PREFIX = "vswitch-test-"  # every domain a test defines; stale ones are removed at start
QEMU_USER = "libvirt-qemu"  # Debian's qemu.conf default user and group


def virsh_sync(*args: str, timeout: float = 30, check: bool = True) -> str:
    r = subprocess.run(
        ["virsh", "-q", "-c", URI, *args], capture_output=True, text=True, timeout=timeout
    )
    if check and r.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: rc {r.returncode}: {r.stderr.strip()}")
    return r.stdout


async def virsh(*args: str, timeout: float = 60, check: bool = True) -> str:
    proc = await asyncio.create_subprocess_exec(
        "virsh", "-q", "-c", URI, *args,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(f"virsh {' '.join(args)} did not finish within {timeout} s") from None
    if check and proc.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: rc {proc.returncode}: {err.decode()}")
    return out.decode()


class Libvirt:
    """virtlogd and libvirtd as children of the test (foreground, logging into `workdir`),
    unless a libvirtd already answers: then that one is used and left alone."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.owned = False
        self._run_dir_existed = RUN_DIR.exists()
        self._lock: IO[str] | None = None
        self.domains: list[str] = []

    def start(self, timeout: float = 30) -> None:
        LOCK.parent.mkdir(parents=True, exist_ok=True)
        self._lock = open(LOCK, "w")  # held until stop()
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        if self._answers():
            self._remove_stale_domains()
            return
        self.owned = True
        env = dict(os.environ, LIBVIRT_LOG_OUTPUTS=f"3:file:{self.workdir / 'libvirtd.log'}")
        for argv in (
            ["virtlogd", "--pid-file", str(self.workdir / "virtlogd.pid")],
            ["libvirtd", "--pid-file", str(self.workdir / "libvirtd.pid")],
        ):
            with open(self.workdir / f"{argv[0]}.out", "wb") as out:
                self.procs.append(
                    subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=out,
                        env=env,
                        preexec_fn=die_with_parent,
                    )
                )
        deadline = time.monotonic() + timeout
        while not self._answers():
            for p in self.procs:
                if p.poll() is not None:
                    raise AssertionError(f"{p.args[0]} exited with {p.returncode}: {self.logs()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"libvirtd did not answer within {timeout} s: {self.logs()}")
            time.sleep(0.2)
        self._remove_stale_domains()

    def _answers(self) -> bool:
        try:
            virsh_sync("version", timeout=10)
            return True
        except (AssertionError, subprocess.TimeoutExpired):
            return False

    def _remove_stale_domains(self) -> None:
        """Domains an earlier, killed run of these tests left defined."""
        names = virsh_sync("list", "--all", "--name").split()
        for name in names:
            if name.startswith(PREFIX):
                self.remove(name)

    def define(self, name: str, xml: str) -> None:
        path = self.workdir / f"{name}.xml"
        path.write_text(xml)
        self.domains.append(name)
        virsh_sync("define", str(path))

    def remove(self, name: str) -> None:
        """Destroy (if running) and undefine a domain, and delete libvirt's log of it."""
        virsh_sync("destroy", name, check=False)
        virsh_sync("undefine", name, check=False)
        with contextlib.suppress(OSError):
            shutil.copy(QEMU_LOG_DIR / f"{name}.log", self.workdir / f"{name}.libvirt.log")
        (QEMU_LOG_DIR / f"{name}.log").unlink(missing_ok=True)

    def qemu_log(self, name: str) -> str:
        """libvirt's log of the domain: QEMU's command line and what it printed."""
        try:
            return (QEMU_LOG_DIR / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def leftovers(self) -> list[str]:
        return [n for n in virsh_sync("list", "--all", "--name").split() if n in self.domains]

    def stop(self) -> None:
        try:
            for name in self.domains:
                self.remove(name)
        finally:
            for p in reversed(self.procs):  # libvirtd first, then virtlogd
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    try:
                        p.wait(15)
                    except subprocess.TimeoutExpired:
                        p.kill()
                        p.wait()
            self.procs.clear()
            if self.owned and not self._run_dir_existed:
                shutil.rmtree(RUN_DIR, ignore_errors=True)
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def logs(self) -> str:
        out = []
        for f in ("libvirtd.out", "virtlogd.out", "libvirtd.log"):
            with contextlib.suppress(OSError):
                out.append(f"--- {f}\n" + (self.workdir / f).read_text(errors="replace")[-3000:])
        return "\n".join(out)


def domain_xml(
    name: str,
    *,
    kernel: Path,
    initrd: Path,
    cmdline: str,
    mac: str,
    vhost_socket: Path,
    qemu_listens: bool,
    console: Path,
    agent: Path,
    mtu: int = 1500,
    memory_mb: int = 128,
    queues: int = 1,
) -> str:
    """A TCG domain on one vswitch port, as docs/libvirt.md writes it: shared memfd memory,
    a vhostuser interface (QEMU connects with reconnect, or listens: `qemu_listens`), the
    MTU and vectors=0 (QEMU 7.2 under TCG) through <qemu:override>, the console in a file
    and the exec agent's serial port on a unix socket.  queues > 1: that many queue pairs
    (`<driver queues=.../>`, libvirt then sets mq=on) and as many vCPUs."""
    role = "server" if qemu_listens else "client"
    reconnect = "" if qemu_listens else "\n        <reconnect enabled='yes' timeout='1'/>"
    driver = f"\n      <driver queues='{queues}'/>" if queues > 1 else ""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid.uuid4()}</uuid>
  <memory unit='MiB'>{memory_mb}</memory>
  <memoryBacking>
    <source type='memfd'/>
    <access mode='shared'/>
  </memoryBacking>
  <vcpu>{max(1, queues)}</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{shutil.which("qemu-system-x86_64") or "/usr/bin/qemu-system-x86_64"}</emulator>
    <interface type='vhostuser'>
      <mac address='{mac}'/>
      <source type='unix' path={quoteattr(str(vhost_socket))} mode='{role}'>{reconnect}
      </source>
      <model type='virtio'/>{driver}
      <alias name='ua-vswitch0'/>
    </interface>
    <serial type='file'>
      <source path={quoteattr(str(console))}/>
      <target port='0'/>
    </serial>
    <serial type='unix'>
      <source mode='bind' path={quoteattr(str(agent))}/>
      <target port='1'/>
    </serial>
    <memballoon model='none'/>
  </devices>
  <qemu:override>
    <qemu:device alias='ua-vswitch0'>
      <qemu:frontend>
        <qemu:property name='vectors' type='unsigned' value='0'/>
        <qemu:property name='host_mtu' type='unsigned' value='{mtu}'/>
      </qemu:frontend>
    </qemu:device>
  </qemu:override>
</domain>
"""


class LibvirtGuest(Guest):
    """A guest libvirt runs: `virsh start`/`destroy` instead of a QEMU child, the same
    exec agent over the domain's `<serial type='unix'>` (Guest's protocol, unchanged)."""

    def __init__(self, name: str, workdir: Path, agent: Path, **kw: Any) -> None:
        super().__init__(name, workdir, **kw)
        self.agent_socket = agent
        self.qemu_log = QEMU_LOG_DIR / f"{name}.log"
        self._active = False

    @property
    def running(self) -> bool:
        return self._active

    async def start(self, connect_timeout: float = 90.0) -> None:
        await virsh("start", self.name, timeout=connect_timeout)
        self._active = True
        reader, self._writer = await asyncio.open_unix_connection(
            str(self.agent_socket), limit=1 << 16
        )
        self._reader_task = asyncio.create_task(self._read_loop(reader))

    async def kill(self) -> None:
        """`virsh destroy` (QEMU gets SIGTERM, then SIGKILL)."""
        if self._active:
            await virsh("destroy", self.name, check=False)
        self._active = False
        await self._cleanup()

    async def stop(self, poweroff_timeout: float = 3.0, term_timeout: float = 5.0) -> None:
        await self.kill()
