"""Running a lab: switches, VMs, namespace hosts and trunks, brought up and torn down together.

    with Lab.from_file("configs/labs/star.yaml") as lab:
        print(lab.exec("vm1", "ping -c1 10.0.0.2").stdout)

    async with Lab.from_file("configs/labs/star.yaml") as lab:      # the same, in asyncio
        r = await lab.exec_async("h1", "ping -c1 10.0.0.1")

How a lab runs (docs/lab.md has the picture):

- Each switch is a `vswitch run` child process with its own config, control socket and log
  in the lab's run directory: the product exactly as users run it, one poll thread each, and
  `vswitch ports --control RUN/sw1/ctl.sock` works on it.
- Each VM is a QEMU guest (vswitch.lab.guest.Guest) whose NICs are vhost-user clients of the
  switches' sockets; commands run in it through its serial exec agent.
- Each host is a network namespace NAME.NODE; the switch creates its interface (a TAP port
  with the node's MAC and addresses) inside it.
- Each trunk between two switches is a TAP port on each, both in the lab's private namespace
  NAME._trunk, joined there by a kernel bridge.

Everything is scoped by the lab name (namespaces, run directory; interface names live inside
the lab's own namespaces), so labs run side by side.  The owner (this object's process)
holds a lock in the run directory for the lab's life; `state.json` there records every
namespace and process before it is created, so `vswitch lab down NAME` (`sweep()`) removes
everything even after the owner died.  Every process the lab starts dies with its owner
(PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

import yaml

from vswitch.config import default_control_path
from vswitch.errors import VswitchError
from vswitch.lab.guest import ExecResult, Guest, GuestError, GuestTimeoutError, Nic, image_dir
from vswitch.lab.loader import load_lab
from vswitch.lab.topology import LabSpec, Node
from vswitch.mac import format_mac
from vswitch.netsys.libc import die_with_parent as _die_with_parent
from vswitch.netsys.netns import (
    create_netns,
    delete_netns,
    netns_exists,
    netns_path,
    netns_pids,
    netns_preexec,
    run_in_netns,
)

__all__ = ["ExecResult", "Lab", "LabError", "find_lab", "labs_root", "list_labs", "sweep"]

log = logging.getLogger("vswitch.lab")
T = TypeVar("T")

STATE = "state.json"
LOCK = "owner.lock"
CONTROL = "lab.sock"
SWITCH_START_TIMEOUT = 30.0
DEFAULT_BOOT_TIMEOUT = 180.0
# no_timer_check: under TCG on a busy machine the kernel's IO-APIC timer check can fail
# ("IO-APIC + timer doesn't work!") and panic; the check is pointless in a VM.
GUEST_KERNEL_ARGS = ["no_timer_check"]
MAX_REPLY = 64 << 20



class LabError(VswitchError):
    """A lab could not be brought up, reached, or torn down; the message names the node."""


class _NotUp(Exception):
    def __init__(self, node: str, why: str, console: Path) -> None:
        super().__init__(node)
        self.node, self.why, self.console = node, why, console


def labs_root() -> Path:
    """/run/vswitch/labs for root (next to the default control socket)."""
    return default_control_path().parent / "labs"


# --------------------------------------------------------------------------- processes


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot): tells a pid from its reuse."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _alive(rec: dict[str, Any] | None) -> bool:
    return bool(rec) and _start_time(rec["pid"]) == rec.get("start")


def _kill(rec: dict[str, Any], sig: int = signal.SIGKILL) -> bool:
    if not _alive(rec):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(rec["pid"], sig)
    return True


def _proc_rec(pid: int) -> dict[str, Any]:
    return {"pid": pid, "start": _start_time(pid)}


def host_argv(cmd: str | list[str] | tuple[str, ...]) -> list[str]:
    """A shell command string runs under sh -c; an argv list runs as it is."""
    if isinstance(cmd, str):
        return ["sh", "-c", cmd]
    return list(cmd)


# --------------------------------------------------------------------------- state


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((run_dir / STATE).read_text())
    except (OSError, ValueError):
        return None


def _owner_alive(run_dir: Path) -> bool:
    """The owner holds an flock on owner.lock for the lab's life."""
    try:
        fd = os.open(run_dir / LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def list_labs(root: Path | None = None) -> list[str]:
    root = root or labs_root()
    try:
        return sorted(d.name for d in root.iterdir() if d.is_dir())
    except FileNotFoundError:
        return []


def find_lab(ref: str | None, root: Path | None = None) -> str:
    """A lab name from NAME, a lab file, or nothing (the only lab there is)."""
    root = root or labs_root()
    labs = list_labs(root)
    if ref is None:
        if len(labs) == 1:
            return labs[0]
        if not labs:
            raise LabError("no lab is up (start one with `vswitch lab up LAB.yaml`)")
        raise LabError(
            f"{len(labs)} labs are up: {', '.join(labs)} (say which, e.g. --lab {labs[0]})"
        )
    if ref in labs:
        return ref
    if ref.endswith((".yaml", ".yml")) or os.sep in ref:
        name = load_lab(ref).name
        if name in labs:
            return name
        raise LabError(f"lab {name} (from {ref}) is not up")
    raise LabError(f"no lab {ref!r} is up (up: {', '.join(labs) or 'none'})")


def sweep(
    name: str, root: Path | None = None, say: Callable[[str], None] | None = None
) -> list[str]:
    """Remove whatever a lab left: its processes, the processes in its namespaces, its
    namespaces and its run directory.  Returns what it removed, one line each."""
    root = root or labs_root()
    run_dir = root / name
    state = _read_state(run_dir) or {}
    done: list[str] = []

    def note(line: str) -> None:
        done.append(line)
        if say:
            say(line)

    procs: dict[str, dict[str, Any]] = state.get("procs", {})
    for what, rec in procs.items():
        if _kill(rec, signal.SIGTERM):
            note(f"stopped {what} (pid {rec['pid']})")
    deadline = time.monotonic() + 5
    while any(_alive(r) for r in procs.values()) and time.monotonic() < deadline:
        time.sleep(0.05)
    for what, rec in procs.items():
        if _kill(rec):
            note(f"killed {what} (pid {rec['pid']})")
    for ns in state.get("netns", []):
        for pid in netns_pids(ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                note(f"killed pid {pid} in namespace {ns}")
        if delete_netns(ns):
            note(f"removed namespace {ns}")
    if run_dir.exists():
        shutil.rmtree(run_dir, ignore_errors=True)
        note(f"removed {run_dir}")
    return done


# --------------------------------------------------------------------------- the lab


class Lab:
    """A lab brought up from a LabSpec.  `with` / `async with` bring it up and tear it down.

    Sync methods (up, down, exec, status) run the asyncio core in a private event-loop
    thread; the *_async methods are the core, for callers already in asyncio."""

    def __init__(
        self,
        spec: LabSpec,
        *,
        run_root: str | os.PathLike[str] | None = None,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        progress: Callable[[str], None] | None = None,
        image: str | os.PathLike[str] | None = None,
        switch_log_level: str | None = None,
    ) -> None:
        self.spec = spec
        self.name = spec.name
        self.root = Path(run_root) if run_root is not None else labs_root()
        self.run_dir = self.root / spec.name
        self.boot_timeout = boot_timeout
        self.progress = progress
        self.image = image
        self.switch_log_level = switch_log_level
        self.state = "down"
        self.guests: dict[str, Guest] = {}
        self.switches: dict[str, asyncio.subprocess.Process] = {}
        self._lock_fd = -1
        self._owned = False  # the run directory is ours (down_async may sweep it)
        self._record: dict[str, Any] = {}
        self._t0 = 0.0
        self._up_at: float | None = None
        self._server: asyncio.Server | None = None
        self._stopped: asyncio.Event | None = None
        self._down_lock: asyncio.Lock | None = None
        self._thread: _LoopThread | None = None
        self._up_task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kw: Any) -> Lab:
        return cls(load_lab(path), **kw)

    # -- names ---------------------------------------------------------------------------

    def switch_dir(self, sw: str) -> Path:
        return self.run_dir / sw

    def socket_path(self, sw: str, port: str) -> Path:
        return self.switch_dir(sw) / f"{port}.sock"

    def control_path(self, sw: str) -> Path:
        return self.switch_dir(sw) / "ctl.sock"

    @property
    def lab_socket(self) -> Path:
        return self.run_dir / CONTROL

    # -- progress ------------------------------------------------------------------------

    def _say(self, what: str) -> None:
        line = f"[{time.monotonic() - self._t0:6.1f}s] {what}"
        log.info("lab %s: %s", self.name, what)
        if self.progress is not None:
            self.progress(line)

    # -- bring-up ------------------------------------------------------------------------

    async def up_async(self) -> None:
        """Bring everything up and wait until every node answers; LabError naming the node
        otherwise, after tearing down whatever had started."""
        if self.state != "down":
            raise LabError(f"lab {self.name} is {self.state} (bring it down first)")
        self._t0 = time.monotonic()
        self._stopped = asyncio.Event()
        self._down_lock = asyncio.Lock()
        self._check()
        self.state = "starting"
        self._up_task = asyncio.current_task()
        try:
            self._claim()
            await self._serve()  # `lab status` and `lab down` work during bring-up too
            self._say(
                f"lab {self.name}: {len(self.spec.switches)} switch(es), "
                f"{len(self.spec.vms)} VM(s), {len(self.spec.hosts)} host(s), "
                f"{len(self.spec.trunks)} trunk(s); run directory {self.run_dir}"
            )
            await self._create_namespaces()
            await asyncio.gather(*(self._start_switch(sw) for sw in self.spec.switches))
            await asyncio.gather(self._join_trunks(), self._setup_hosts(), self._boot_vms())
            await self._wait_ports()
        except BaseException as exc:
            why = str(exc) if isinstance(exc, VswitchError) else repr(exc)
            self._say(f"bring-up failed: {why.splitlines()[0] if why else type(exc).__name__}")
            self._say("tearing down what was started")
            await asyncio.shield(self.down_async())
            if isinstance(exc, GuestError):
                raise LabError(str(exc)) from None
            raise
        self.state = "up"
        self._up_at = time.monotonic()
        self._write_state()
        self._say(f"lab {self.name} is up in {self._up_at - self._t0:.1f}s")

    def _check(self) -> None:
        """Everything that can be refused before anything is created."""
        if os.geteuid() != 0:
            raise LabError(
                "labs need root: they create network namespaces and TAP devices (run as root)"
            )
        if not os.path.exists("/dev/net/tun"):
            raise LabError("/dev/net/tun is missing (load the tun module: modprobe tun)")
        if self.spec.vms:
            if shutil.which("qemu-system-x86_64") is None:
                raise LabError(
                    "qemu-system-x86_64 not found (install the Debian package "
                    "qemu-system-x86, or run scripts/setup)"
                )
            try:
                image_dir(self.image)
            except GuestError as exc:
                raise LabError(str(exc)) from None
        self.root.mkdir(parents=True, exist_ok=True)
        if self.run_dir.exists():
            if _owner_alive(self.run_dir):
                st = _read_state(self.run_dir) or {}
                raise LabError(
                    f"lab {self.name} is already up (owner pid {st.get('owner', {}).get('pid')}, "
                    f"run directory {self.run_dir}): `vswitch lab down {self.name}` first"
                )
            removed = sweep(self.name, self.root)
            self._say(f"removed the remains of an earlier run ({len(removed)} item(s))")
        for ns in self.spec.netns:
            if netns_exists(ns) or netns_path(ns).exists():
                raise LabError(
                    f"network namespace {ns} exists and is not this lab's (remove it with "
                    f"`ip netns del {ns}`, or rename the lab)"
                )

    def _claim(self) -> None:
        """The run directory, the owner lock and the state file: from here on, down_async()
        (and `vswitch lab down`) know what to remove."""
        self.run_dir.mkdir(mode=0o700)
        self._owned = True
        self._lock_fd = os.open(self.run_dir / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        self._record = {
            "name": self.name,
            "file": str(self.spec.file) if self.spec.file else None,
            "run_dir": str(self.run_dir),
            "owner": _proc_rec(os.getpid()),
            "netns": list(self.spec.netns),  # all of them, before any is created
            "procs": {},
            "nodes": {
                n.name: {
                    "type": n.type,
                    "addresses": n.addresses,
                    "netns": self.spec.node_netns(n.name) if n.type == "host" else None,
                }
                for n in self.spec.nodes.values()
            },
            "control": str(self.lab_socket),
        }
        self._write_state()

    def _write_state(self) -> None:
        if not self.run_dir.exists():
            return
        self._record["status"] = self.state
        tmp = self.run_dir / (STATE + ".tmp")
        tmp.write_text(json.dumps(self._record, indent=2))
        tmp.replace(self.run_dir / STATE)

    async def _create_namespaces(self) -> None:
        for h in self.spec.hosts:
            ns = self.spec.node_netns(h.name)
            await asyncio.to_thread(create_netns, ns)
            self._say(f"host {h.name}: namespace {ns}")
        if self.spec.trunks:
            ns = self.spec.trunk_netns
            await asyncio.to_thread(create_netns, ns)
            await asyncio.to_thread(run_in_netns, ns, lambda: _trunk_setup(self.spec))

    def _switch_config(self, sw: str) -> dict[str, Any]:
        spec = self.spec.switches[sw].spec
        ports: list[dict[str, Any]] = []
        for node in self.spec.nodes.values():
            for i in node.ifaces:
                if i.switch != sw:
                    continue
                if node.type == "vm":
                    ports.append(
                        {
                            "name": i.port,
                            "type": "vhost-user",
                            "path": str(self.socket_path(sw, i.port)),
                            "mtu": i.mtu,
                        }
                    )
                else:
                    ports.append(
                        {
                            "name": i.port,
                            "type": "tap",
                            "ifname": i.name,
                            "netns": self.spec.node_netns(node.name),
                            "mtu": i.mtu,
                            "mac": format_mac(i.mac),
                            "addresses": list(i.addresses),
                        }
                    )
        for t in self.spec.trunks:
            for side, port, tap in ((t.a, t.port_a, t.taps[0]), (t.b, t.port_b, t.taps[1])):
                if side == sw:
                    ports.append(
                        {
                            "name": port,
                            "type": "tap",
                            "ifname": tap,
                            "netns": self.spec.trunk_netns,
                            "mtu": t.mtu,
                        }
                    )
        return {
            "control": str(self.control_path(sw)),
            "switch": {
                "datapath": spec.datapath,
                "mac_age": spec.mac_age,
                "fdb_size": spec.fdb_size,
                "log_level": spec.log_level,
            },
            "ports": ports,
        }

    async def _start_switch(self, sw: str) -> None:
        d = self.switch_dir(sw)
        d.mkdir()
        cfg = d / "vswitch.yaml"
        cfg.write_text(yaml.safe_dump(self._switch_config(sw), sort_keys=False))
        args = [sys.executable, "-m", "vswitch", "run", str(cfg)]
        if self.switch_log_level:
            args += ["--log-level", self.switch_log_level]
        with _open_log(d / "vswitch.log") as out:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                preexec_fn=_die_with_parent,
                start_new_session=True,
            )
        self.switches[sw] = proc
        self._record["procs"][f"switch {sw}"] = _proc_rec(proc.pid)
        self._write_state()
        deadline = time.monotonic() + SWITCH_START_TIMEOUT
        while True:
            if proc.returncode is not None:
                raise LabError(
                    f"switch {sw} exited with status {proc.returncode} at start; its log "
                    f"({d / 'vswitch.log'}):\n{_tail(d / 'vswitch.log')}"
                )
            try:
                await _call(self.control_path(sw), "version", wait=2)
                break
            except (OSError, LabError):
                if time.monotonic() > deadline:
                    raise LabError(
                        f"switch {sw} did not answer on {self.control_path(sw)} within "
                        f"{SWITCH_START_TIMEOUT:.0f}s; its log:\n{_tail(d / 'vswitch.log')}"
                    ) from None
                await asyncio.sleep(0.1)
        self._say(
            f"switch {sw} running (pid {proc.pid}, {len(self.spec.switches[sw].ports)} ports)"
        )

    async def _join_trunks(self) -> None:
        if not self.spec.trunks:
            return
        await asyncio.to_thread(run_in_netns, self.spec.trunk_netns, lambda: _trunk_join(self.spec))
        for t in self.spec.trunks:
            self._say(f"trunk {t.a} - {t.b} joined ({t.bridge} in {self.spec.trunk_netns})")

    async def _setup_hosts(self) -> None:
        for h in self.spec.hosts:
            if h.routes:
                ns = self.spec.node_netns(h.name)
                await asyncio.to_thread(run_in_netns, ns, lambda h=h: _add_routes(h))
            self._say(f"host {h.name} ready ({', '.join(h.addresses) or 'no addresses'})")

    async def _boot_vms(self) -> None:
        vms = self.spec.vms
        if not vms:
            return
        vdir = self.run_dir / "vms"
        vdir.mkdir(exist_ok=True)
        for vm in vms:
            nics = [
                Nic(str(self.socket_path(i.switch, i.port)), format_mac(i.mac)) for i in vm.ifaces
            ]
            ips = {k: list(i.addresses) for k, i in enumerate(vm.ifaces) if i.addresses}
            gws = [via for to, via in vm.routes if to == "default"]
            self.guests[vm.name] = Guest(
                vm.name,
                vdir,
                nics=nics,
                ips=ips,
                gw=gws,
                memory_mb=vm.memory,
                image_dir=self.image,
                kernel_args=GUEST_KERNEL_ARGS,
            )

        async def start(vm: Node) -> None:
            g = self.guests[vm.name]
            try:
                await g.start()
            except GuestError as exc:
                raise LabError(f"vm {vm.name} did not start: {exc}") from None
            assert g.pid is not None
            self._record["procs"][f"vm {vm.name}"] = _proc_rec(g.pid)
            self._write_state()
            self._say(f"vm {vm.name} booting (pid {g.pid}, {vm.memory} MiB)")

        await asyncio.gather(*(start(vm) for vm in vms))
        deadline = time.monotonic() + self.boot_timeout

        async def ready(vm: Node) -> None:
            g = self.guests[vm.name]
            watch = asyncio.create_task(_watch_console(vm.name, g.console_log))
            boot = asyncio.create_task(g.wait_ready(timeout=max(1.0, deadline - time.monotonic())))
            try:
                await asyncio.wait([boot, watch], return_when=asyncio.FIRST_COMPLETED)
                if boot.done():
                    await boot
                else:
                    watch.result()  # raises _NotUp with what the console said
            except GuestTimeoutError:
                raise _NotUp(vm.name, "the agent did not answer", g.console_log) from None
            except GuestError as exc:
                raise _NotUp(vm.name, str(exc).partition("\n")[0], g.console_log) from None
            finally:
                for t in (boot, watch):
                    t.cancel()
                await asyncio.gather(boot, watch, return_exceptions=True)
            for to, via in vm.routes:
                if to != "default":
                    r = await g.exec(f"ip route add {to} via {via}", timeout=20)
                    if r.rc != 0:
                        raise LabError(f"vm {vm.name}: route {to} via {via}: {r.stderr.strip()}")
            self._say(f"vm {vm.name} up ({', '.join(vm.addresses) or 'no addresses'})")

        results = await asyncio.gather(*(ready(vm) for vm in vms), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if not failed:
            return
        late = [r for r in failed if isinstance(r, _NotUp)]
        if not late:
            raise failed[0]
        first = late[0]
        names = ", ".join(r.node for r in late)
        raise LabError(
            f"{'vm' if len(late) == 1 else 'vms'} {names} did not come up within "
            f"{self.boot_timeout:.0f}s: {first.why}; the last console lines of {first.node}:\n"
            + _tail(first.console, 15)
        )

    async def _wait_ports(self, timeout: float = 60.0) -> None:
        """Every link up: each switch port reports state up."""
        pending: dict[tuple[str, str], str] = {}
        for node in self.spec.nodes.values():
            for i in node.ifaces:
                pending[(i.switch, i.port)] = f"link {node.name}:{i.name} - {i.switch}"
        for t in self.spec.trunks:
            pending[(t.a, t.port_a)] = f"trunk port {t.a}:{t.port_a}"
            pending[(t.b, t.port_b)] = f"trunk port {t.b}:{t.port_b}"
        deadline = time.monotonic() + timeout
        while pending:
            for sw in {s for s, _ in pending}:
                ports = {p["name"]: p for p in await _call(self.control_path(sw), "ports")}
                for key in [k for k in pending if k[0] == sw]:
                    if ports.get(key[1], {}).get("state") == "up":
                        self._say(f"{pending.pop(key)} up")
            if pending and time.monotonic() > deadline:
                what = ", ".join(pending.values())
                raise LabError(
                    f"not up after {timeout:.0f}s: {what} (see the switch logs in {self.run_dir})"
                )
            if pending:
                await asyncio.sleep(0.2)

    async def _serve(self) -> None:
        """The lab's control socket: `vswitch lab status/exec/down` from other processes."""
        self._server = await asyncio.start_unix_server(
            self._on_client, path=str(self.lab_socket), limit=1 << 20
        )
        os.chmod(self.lab_socket, 0o600)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            req = json.loads(line)
            cmd, args = req.get("cmd"), req.get("args") or {}
            try:
                if cmd == "status":
                    result: Any = await self.status_async()
                elif cmd == "exec":
                    r = await self.exec_async(
                        args["node"], args["command"], float(args.get("timeout", 60))
                    )
                    result = {"rc": r.rc, "stdout": r.stdout, "stderr": r.stderr}
                elif cmd == "down":
                    self.request_down()
                    result = {"stopping": True}
                elif cmd == "version":
                    result = {"lab": self.name}
                else:
                    raise LabError(f"unknown lab command {cmd!r}")
                reply = {"ok": True, "result": result}
            except (VswitchError, KeyError, ValueError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (OSError, ValueError):
            pass
        finally:
            writer.close()

    # -- running things ------------------------------------------------------------------

    def node(self, name: str) -> Node:
        try:
            return self.spec.nodes[name]
        except KeyError:
            known = ", ".join(self.spec.nodes)
            raise LabError(f"lab {self.name} has no node {name!r} (nodes: {known})") from None

    async def exec_async(
        self, node: str, cmd: str | list[str], timeout: float = 60.0
    ) -> ExecResult:
        """Run a command on a node: in the guest (sh -c) or in the host's namespace.
        Returns rc, stdout, stderr; LabError when it cannot run or times out."""
        n = self.node(node)
        if self.state != "up":
            raise LabError(f"lab {self.name} is {self.state}")
        text = cmd if isinstance(cmd, str) else shlex.join(cmd)
        if n.type == "vm":
            try:
                return await self.guests[node].exec(text, timeout=timeout)
            except GuestError as exc:
                raise LabError(str(exc)) from None
        proc = await asyncio.create_subprocess_exec(
            *host_argv(cmd),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=netns_preexec(self.spec.node_netns(node)),
            start_new_session=True,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise LabError(
                f"host {node}: command {text!r} did not finish within {timeout}s (killed it)"
            ) from None
        dec = ("utf-8", "surrogateescape")
        res = ExecResult(proc.returncode or 0, out.decode(*dec), err.decode(*dec))
        res.where = f"host {node}: command {text!r}"
        return res

    async def status_async(self) -> dict[str, Any]:
        """Nodes, switches (with their ports) and links, as a dict (what `lab status` shows)."""
        switches = []
        port_state: dict[tuple[str, str], str] = {}
        for sw in self.spec.switches:
            proc = self.switches.get(sw)
            entry: dict[str, Any] = {
                "name": sw,
                "pid": proc.pid if proc else None,
                "control": str(self.control_path(sw)),
                "state": "running" if proc and proc.returncode is None else "stopped",
                "ports": [],
            }
            if entry["state"] == "running":
                with contextlib.suppress(OSError, LabError):
                    for p in await _call(self.control_path(sw), "ports", wait=5):
                        port_state[(sw, p["name"])] = p["state"]
                        entry["ports"].append(
                            {"name": p["name"], "type": p["type"], "state": p["state"]}
                        )
            switches.append(entry)

        async def node_state(n: Node) -> str:
            if n.type == "host":
                return "up" if netns_exists(self.spec.node_netns(n.name)) else "gone"
            g = self.guests.get(n.name)
            if g is None or not g.running:
                return "stopped"
            try:
                await g.exec("true", timeout=5)
                return "up"
            except GuestError:
                return "not answering"

        states = await asyncio.gather(*(node_state(n) for n in self.spec.nodes.values()))
        nodes = []
        for n, st in zip(self.spec.nodes.values(), states, strict=True):
            g = self.guests.get(n.name)
            nodes.append(
                {
                    "name": n.name,
                    "type": n.type,
                    "state": st,
                    "pid": g.pid if g else None,
                    "netns": self.spec.node_netns(n.name) if n.type == "host" else None,
                    "memory": n.memory if n.type == "vm" else None,
                    "interfaces": [
                        {
                            "name": i.name,
                            "mac": format_mac(i.mac),
                            "addresses": list(i.addresses),
                            "switch": i.switch,
                            "port": i.port,
                            "link": port_state.get((i.switch, i.port), "unknown"),
                        }
                        for i in n.ifaces
                    ],
                    "routes": [{"to": to, "via": via} for to, via in n.routes],
                }
            )
        trunks = [
            {
                "a": t.a,
                "b": t.b,
                "bridge": t.bridge,
                "netns": self.spec.trunk_netns,
                "state": "up"
                if port_state.get((t.a, t.port_a)) == port_state.get((t.b, t.port_b)) == "up"
                else "down",
            }
            for t in self.spec.trunks
        ]
        return {
            "name": self.name,
            "file": str(self.spec.file) if self.spec.file else None,
            "state": self.state,
            "run_dir": str(self.run_dir),
            "owner": os.getpid(),
            "uptime": round(time.monotonic() - self._up_at, 1) if self._up_at else None,
            "switches": switches,
            "nodes": nodes,
            "trunks": trunks,
        }

    # -- tear-down -----------------------------------------------------------------------

    async def down_async(self) -> None:
        """Stop everything and remove everything; safe to call twice, and after a failure."""
        assert self._down_lock is not None or self.state == "down"
        if self._down_lock is None:
            return
        async with self._down_lock:
            if self.state == "down":
                return
            self.state = "stopping"
            self._write_state()
            if self._server is not None:
                self._server.close()
                self._server = None
            with contextlib.suppress(OSError):
                self.lab_socket.unlink()
            await asyncio.gather(
                *(g.stop(poweroff_timeout=2.0, term_timeout=3.0) for g in self.guests.values()),
                return_exceptions=True,
            )
            self.guests.clear()
            await asyncio.gather(*(self._stop_switch(sw) for sw in list(self.switches)))
            self.switches.clear()
            if self._owned:
                removed = await asyncio.to_thread(sweep, self.name, self.root)
                for line in removed:
                    log.debug("lab %s: %s", self.name, line)
                self._owned = False
            if self._lock_fd >= 0:
                os.close(self._lock_fd)
                self._lock_fd = -1
            self.state = "down"
            self._up_at = None
            if self._stopped is not None:
                self._stopped.set()
            self._say(f"lab {self.name} is down")

    async def _stop_switch(self, sw: str) -> None:
        proc = self.switches[sw]
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        self._record["procs"].pop(f"switch {sw}", None)

    def request_down(self) -> None:
        """Bring the lab down soon: cancels a bring-up under way (which then tears down)."""
        if self.state == "starting" and self._up_task is not None and not self._up_task.done():
            self._up_task.cancel()
        elif self.state == "up":
            task = asyncio.get_running_loop().create_task(self.down_async())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def wait_down(self) -> None:
        """Until the lab is brought down (by down_async or `vswitch lab down`)."""
        assert self._stopped is not None
        await self._stopped.wait()

    async def __aenter__(self) -> Self:
        await self.up_async()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.down_async()

    # -- sync API ------------------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._thread is None:
            self._thread = _LoopThread(f"lab {self.name}")
        return self._thread.run(coro)

    def up(self) -> Self:
        try:
            self._run(self.up_async())
        except BaseException:
            self._close_thread()
            raise
        return self

    def down(self) -> None:
        if self._thread is None:
            return
        try:
            self._run(self.down_async())
        finally:
            self._close_thread()

    def exec(self, node: str, cmd: str | list[str], timeout: float = 60.0) -> ExecResult:
        if self._thread is None:
            raise LabError(f"lab {self.name} is not up")
        return self._run(self.exec_async(node, cmd, timeout))

    def status(self) -> dict[str, Any]:
        if self._thread is None:
            raise LabError(f"lab {self.name} is not up")
        return self._run(self.status_async())

    def _close_thread(self) -> None:
        if self._thread is not None:
            self._thread.close()
            self._thread = None

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()


class _LoopThread:
    """An event loop in its own thread.  QEMU and the switches are its children and die
    with it (PR_SET_PDEATHSIG follows the thread that forked them), so it lives as long as
    the lab.  Ctrl-C in the caller cancels the running call; the caller's down() still runs."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result()
        except BaseException:
            if not fut.done():
                fut.cancel()
                with contextlib.suppress(BaseException):
                    fut.result(timeout=60)
            raise

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=30)
        if not self._thread.is_alive():
            self.loop.close()


# --------------------------------------------------------------------------- helpers


def _trunk_setup(spec: LabSpec) -> None:
    """In the trunk namespace: no IPv6 chatter, and one bridge per trunk."""
    from pyroute2 import IPRoute

    for key in ("all", "default"):
        with contextlib.suppress(OSError):
            Path(f"/proc/sys/net/ipv6/conf/{key}/disable_ipv6").write_text("1")
    with IPRoute() as ipr:
        for t in spec.trunks:
            ipr.link("add", ifname=t.bridge, kind="bridge", br_stp_state=0, br_forward_delay=0)
            (idx,) = ipr.link_lookup(ifname=t.bridge)
            ipr.link("set", index=idx, mtu=t.mtu, state="up")


def _trunk_join(spec: LabSpec) -> None:
    """In the trunk namespace, once the switches made their taps: join each pair."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for t in spec.trunks:
            (br,) = ipr.link_lookup(ifname=t.bridge)
            for tap in t.taps:
                found = ipr.link_lookup(ifname=tap)
                if not found:
                    raise LabError(
                        f"trunk {t.a} - {t.b}: tap {tap} is missing in "
                        f"{spec.trunk_netns} (see the switch logs)"
                    )
                ipr.link("set", index=found[0], master=br, state="up")


def _add_routes(node: Node) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for to, via in node.routes:
            v6 = ":" in via
            dst = ("::/0" if v6 else "0.0.0.0/0") if to == "default" else to
            ipr.route("add", dst=dst, gateway=via, family=socket.AF_INET6 if v6 else socket.AF_INET)


async def _watch_console(node: str, console: Path) -> None:
    """Returns never; raises _NotUp as soon as the guest's console shows a kernel panic."""
    while True:
        await asyncio.sleep(1.0)
        text = await asyncio.to_thread(_tail, console, 60)
        m = re.search(r"Kernel panic - not syncing: (.*?)(?: \]---)?$", text, re.MULTILINE)
        if m:
            raise _NotUp(node, f"the guest kernel panicked ({m.group(1).strip()})", console)


def _open_log(path: Path) -> Any:
    return open(path, "ab")  # a local file: opening it does not block for long


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"({exc.strerror})"


async def _call(path: str | Path, cmd: str, wait: float = 30.0, **args: Any) -> Any:
    """One JSON-lines request on a control socket (a switch's or a lab's)."""
    reader, writer = await asyncio.wait_for(
        asyncio.open_unix_connection(str(path), limit=MAX_REPLY), wait
    )
    try:
        writer.write(json.dumps({"id": 1, "cmd": cmd, "args": args}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), wait)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if not line:
        raise LabError(f"{path}: closed without a reply")
    resp = json.loads(line)
    if not resp.get("ok"):
        raise LabError(str(resp.get("error")))
    return resp.get("result")


async def lab_call(
    name: str, cmd: str, *, wait: float = 30.0, root: Path | None = None, **args: Any
) -> Any:
    """A request to a running lab's owner, from another process (the CLI)."""
    run_dir = (root or labs_root()) / name
    if not _owner_alive(run_dir):
        raise LabError(
            f"lab {name} has no running owner (it crashed, or is being torn down): "
            f"`vswitch lab down {name}` removes what is left"
        )
    try:
        return await _call(run_dir / CONTROL, cmd, wait=wait, **args)
    except (OSError, TimeoutError) as exc:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOENT, errno.ECONNREFUSED):
            raise LabError(f"lab {name} is not answering yet (still coming up?)") from None
        raise LabError(f"lab {name}: {exc}") from None
