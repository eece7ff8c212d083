"""Running a lab: switches, VMs, namespace hosts and trunks, brought up and torn down together.

    with Lab.from_file("configs/labs/star.yaml") as lab:
        print(lab.exec("vm1", "ping -c1 10.0.0.2").stdout)

    async with Lab.from_file("configs/labs/star.yaml") as lab:      # the same, in asyncio
        r = await lab.exec_async("h1", "ping -c1 10.0.0.1")

How a lab runs (docs/lab.md has the picture):

- Each switch is a `vswitch run` child process with its own config, control socket and log
  in the lab's run directory (switches.py): `vswitch ports --control RUN/sw1/ctl.sock` works.
- Each VM is a QEMU guest whose NICs are vhost-user clients of the switches' sockets
  (vms.py); commands run in it through its serial exec agent.
- Each host is a network namespace NAME.NODE; the switch creates its interface (a TAP port
  with the node's MAC and addresses) inside it.
- Each trunk between two switches is a TAP port on each, both in the lab's private namespace
  NAME._trunk, joined there by a kernel bridge.

Everything is scoped by the lab name (namespaces, run directory; interface names live inside
the lab's own namespaces), so labs run side by side.  The owner (this object's process)
holds a lock in the run directory for the lab's life and records every namespace and
process before it creates it (state.py), so `vswitch lab down NAME` removes everything even
after the owner died.  Every process the lab starts dies with its owner (PR_SET_PDEATHSIG).
The owner answers `vswitch lab status/exec/down` on its control socket (server.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import shutil
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, Self, TypeVar

from vswitch.control import ControlServer
from vswitch.errors import VswitchError
from vswitch.lab.errors import LabError
from vswitch.lab.guest import ExecResult, Guest, GuestError, image_dir
from vswitch.lab.loader import load_lab
from vswitch.lab.procs import host_argv, proc_rec
from vswitch.lab.server import lab_server
from vswitch.lab.state import CONTROL, Ownership, labs_root, owner_alive, read_state, sweep
from vswitch.lab.status import nodes_status, switches_status, trunks_status
from vswitch.lab.switches import (
    control_path,
    socket_path,
    start_switch,
    stop_switch,
    switch_dir,
    wait_ports,
)
from vswitch.lab.sync import LoopThread
from vswitch.lab.topology import LabSpec, Node
from vswitch.lab.vms import boot_vms, make_guests
from vswitch.netsys.links import add_bridges, add_routes, disable_ipv6, join_bridge
from vswitch.netsys.netns import (
    create_netns,
    netns_exists,
    netns_path,
    netns_preexec,
    run_in_netns,
)

__all__ = ["ExecResult", "Lab", "LabError"]

log = logging.getLogger("vswitch.lab")
T = TypeVar("T")

DEFAULT_BOOT_TIMEOUT = 180.0


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
        self._own = Ownership(self.run_dir)
        self._t0 = 0.0
        self._up_at: float | None = None
        self._server: ControlServer | None = None
        self._stopped: asyncio.Event | None = None
        self._down_lock: asyncio.Lock | None = None
        self._thread: LoopThread | None = None
        self._up_task: asyncio.Task[Any] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **kw: Any) -> Lab:
        return cls(load_lab(path), **kw)

    # -- names ---------------------------------------------------------------------------

    def switch_dir(self, sw: str) -> Path:
        return switch_dir(self.run_dir, sw)

    def socket_path(self, sw: str, port: str) -> Path:
        return socket_path(self.run_dir, sw, port)

    def control_path(self, sw: str) -> Path:
        return control_path(self.run_dir, sw)

    @property
    def lab_socket(self) -> Path:
        return self.run_dir / CONTROL

    # -- progress and state --------------------------------------------------------------

    def _say(self, what: str) -> None:
        line = f"[{time.monotonic() - self._t0:6.1f}s] {what}"
        log.info("lab %s: %s", self.name, what)
        if self.progress is not None:
            self.progress(line)

    def _write_state(self) -> None:
        self._own.write(self.state)

    def _started(self, what: str, pid: int) -> None:
        """A process the lab started: in state.json before anything waits on it."""
        self._own.add_proc(what, pid, self.state)

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
            # `lab status` and `lab down` work during bring-up too
            self._server = lab_server(self, self.lab_socket)
            await self._server.start()
            self._say(
                f"lab {self.name}: {len(self.spec.switches)} switch(es), "
                f"{len(self.spec.vms)} VM(s), {len(self.spec.hosts)} host(s), "
                f"{len(self.spec.trunks)} trunk(s); run directory {self.run_dir}"
            )
            await self._create_namespaces()
            await asyncio.gather(*(self._start_switch(sw) for sw in self.spec.switches))
            await asyncio.gather(self._join_trunks(), self._setup_hosts(), self._boot_vms())
            await wait_ports(self.spec, self.run_dir, self._say)
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
            if owner_alive(self.run_dir):
                st = read_state(self.run_dir) or {}
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
        record = {
            "name": self.name,
            "file": str(self.spec.file) if self.spec.file else None,
            "run_dir": str(self.run_dir),
            "owner": proc_rec(os.getpid()),
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
        self._own.claim(record, self.state)

    async def _create_namespaces(self) -> None:
        for h in self.spec.hosts:
            ns = self.spec.node_netns(h.name)
            await asyncio.to_thread(create_netns, ns)
            self._say(f"host {h.name}: namespace {ns}")
        if self.spec.trunks:
            ns = self.spec.trunk_netns
            bridges = [(t.bridge, t.mtu) for t in self.spec.trunks if t.via == "tap"]
            await asyncio.to_thread(create_netns, ns)
            await asyncio.to_thread(run_in_netns, ns, lambda: _trunk_setup(bridges))

    async def _start_switch(self, sw: str) -> None:
        def started(proc: asyncio.subprocess.Process) -> None:
            self.switches[sw] = proc
            self._started(f"switch {sw}", proc.pid)

        proc = await start_switch(
            self.spec, self.run_dir, sw, log_level=self.switch_log_level, started=started
        )
        self._say(
            f"switch {sw} running (pid {proc.pid}, {len(self.spec.switches[sw].ports)} ports)"
        )

    async def _join_trunks(self) -> None:
        if not self.spec.trunks:
            return
        await asyncio.to_thread(run_in_netns, self.spec.trunk_netns, lambda: _trunk_join(self.spec))
        for t in self.spec.trunks:
            how = t.bridge if t.via == "tap" else f"vxlan vni {t.vni}"
            self._say(f"trunk {t.a} - {t.b} joined ({how} in {self.spec.trunk_netns})")

    async def _setup_hosts(self) -> None:
        for h in self.spec.hosts:
            if h.routes:
                ns = self.spec.node_netns(h.name)
                await asyncio.to_thread(run_in_netns, ns, lambda h=h: add_routes(h.routes))
            self._say(f"host {h.name} ready ({', '.join(h.addresses) or 'no addresses'})")

    async def _boot_vms(self) -> None:
        vms = self.spec.vms
        if not vms:
            return
        vdir = self.run_dir / "vms"
        vdir.mkdir(exist_ok=True)
        self.guests.update(make_guests(vms, vdir, self.socket_path, self.image))
        await boot_vms(
            vms,
            self.guests,
            boot_timeout=self.boot_timeout,
            say=self._say,
            started=lambda name, pid: self._started(f"vm {name}", pid),
        )

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
        sws, port_state = await switches_status(self.spec, self.switches, self.control_path)
        nodes = await nodes_status(self.spec, self.guests, port_state)
        return {
            "name": self.name,
            "file": str(self.spec.file) if self.spec.file else None,
            "state": self.state,
            "run_dir": str(self.run_dir),
            "owner": os.getpid(),
            "uptime": round(time.monotonic() - self._up_at, 1) if self._up_at else None,
            "switches": sws,
            "nodes": nodes,
            "trunks": trunks_status(self.spec, port_state),
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
            server, self._server = self._server, None
            if server is not None:
                await server.close()  # and removes the socket
            await asyncio.gather(
                *(g.stop(poweroff_timeout=2.0, term_timeout=3.0) for g in self.guests.values()),
                return_exceptions=True,
            )
            self.guests.clear()
            await asyncio.gather(*(self._stop_switch(sw) for sw in list(self.switches)))
            self.switches.clear()
            if self._own.owned:
                removed = await asyncio.to_thread(sweep, self.name, self.root)
                for line in removed:
                    log.debug("lab %s: %s", self.name, line)
                self._own.owned = False
            self._own.release()
            self.state = "down"
            self._up_at = None
            if self._stopped is not None:
                self._stopped.set()
            self._say(f"lab {self.name} is down")

    async def _stop_switch(self, sw: str) -> None:
        await stop_switch(self.switches[sw])
        self._own.drop_proc(f"switch {sw}")

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
            self._thread = LoopThread(f"lab {self.name}")
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


# --------------------------------------------------------------------------- trunks


def _trunk_setup(bridges: list[tuple[str, int]]) -> None:
    """In the trunk namespace: no IPv6 chatter, and one bridge per trunk."""
    disable_ipv6()
    add_bridges(bridges)


def _trunk_join(spec: LabSpec) -> None:
    """In the trunk namespace, once the switches made their taps: join each pair."""
    for t in spec.trunks:
        if t.via != "tap":
            continue  # a VXLAN trunk's ports find each other
        missing = join_bridge(t.bridge, t.taps)
        if missing is not None:
            raise LabError(
                f"trunk {t.a} - {t.b}: tap {missing} is missing in "
                f"{spec.trunk_netns} (see the switch logs)"
            )
