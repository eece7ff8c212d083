"""A lab's switches: each a `vswitch run` child process with its own config, control socket
and log in RUN/LAB/SWITCH/ (the product exactly as users run it, one poll thread each).

Node interfaces become ports: a VM's a vhost-user port (the guest's NIC is its client), a
host's a TAP port the switch creates in the host's namespace with the node's name, MAC and
addresses; each end of a trunk is a TAP port in the lab's trunk namespace."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from vswitch.lab.errors import LabError
from vswitch.lab.server import switch_call
from vswitch.lab.topology import LabSpec
from vswitch.mac import format_mac
from vswitch.netsys.libc import die_with_parent
from vswitch.text import tail

SWITCH_START_TIMEOUT = 30.0


def switch_dir(run_dir: Path, sw: str) -> Path:
    return run_dir / sw


def socket_path(run_dir: Path, sw: str, port: str) -> Path:
    """A vhost-user port's socket: the switch listens, the guest's NIC connects."""
    return switch_dir(run_dir, sw) / f"{port}.sock"


def control_path(run_dir: Path, sw: str) -> Path:
    return switch_dir(run_dir, sw) / "ctl.sock"


def switch_config(spec: LabSpec, run_dir: Path, sw: str) -> dict[str, Any]:
    """The switch's vswitch.yaml, as a dict."""
    settings = spec.switches[sw].spec
    ports: list[dict[str, Any]] = []
    for node in spec.nodes.values():
        for i in node.ifaces:
            if i.switch != sw:
                continue
            if node.type == "vm":
                ports.append(
                    {
                        "name": i.port,
                        "type": "vhost-user",
                        "path": str(socket_path(run_dir, sw, i.port)),
                        "mtu": i.mtu,
                    }
                )
            else:
                ports.append(
                    {
                        "name": i.port,
                        "type": "tap",
                        "ifname": i.name,
                        "netns": spec.node_netns(node.name),
                        "mtu": i.mtu,
                        "mac": format_mac(i.mac),
                        "addresses": list(i.addresses),
                    }
                )
    for t in spec.trunks:
        ends = ((t.a, t.port_a, t.taps[0], *t.vteps), (t.b, t.port_b, t.taps[1], *t.vteps[::-1]))
        for side, port, tap, local, remote in ends:
            if side != sw:
                continue
            if t.via == "vxlan":
                # Both ends in the trunk namespace, over its loopback.
                ports.append({"name": port, "type": "vxlan", "vni": t.vni, "local": local,
                              "remotes": [remote], "netns": spec.trunk_netns, "mtu": t.mtu})
                continue  # fmt: skip
            ports.append(
                {
                    "name": port,
                    "type": "tap",
                    "ifname": tap,
                    "netns": spec.trunk_netns,
                    "mtu": t.mtu,
                }
            )
    return {
        "control": str(control_path(run_dir, sw)),
        "switch": {
            "datapath": settings.datapath,
            "mac_age": settings.mac_age,
            "fdb_size": settings.fdb_size,
            "log_level": settings.log_level,
        },
        "ports": ports,
    }


def _open_log(path: Path) -> Any:
    return open(path, "ab")  # a local file: opening it does not block for long


async def start_switch(
    spec: LabSpec,
    run_dir: Path,
    sw: str,
    *,
    log_level: str | None,
    started: Callable[[asyncio.subprocess.Process], None],
) -> asyncio.subprocess.Process:
    """Write the switch's config, start it (`started(proc)` as soon as it runs, so the lab
    records it) and wait until its control socket answers; LabError with its log if not."""
    d = switch_dir(run_dir, sw)
    d.mkdir()
    cfg = d / "vswitch.yaml"
    cfg.write_text(yaml.safe_dump(switch_config(spec, run_dir, sw), sort_keys=False))
    args = [sys.executable, "-m", "vswitch", "run", str(cfg)]
    if log_level:
        args += ["--log-level", log_level]
    log = d / "vswitch.log"
    with _open_log(log) as out:
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=die_with_parent,
            start_new_session=True,
        )
    started(proc)
    ctl = control_path(run_dir, sw)
    deadline = time.monotonic() + SWITCH_START_TIMEOUT
    while True:
        if proc.returncode is not None:
            raise LabError(
                f"switch {sw} exited with status {proc.returncode} at start; its log "
                f"({log}):\n{tail(log, 20)}"
            )
        try:
            await switch_call(ctl, "version", wait=2)
            return proc
        except LabError:
            if time.monotonic() > deadline:
                raise LabError(
                    f"switch {sw} did not answer on {ctl} within "
                    f"{SWITCH_START_TIMEOUT:.0f}s; its log:\n{tail(log, 20)}"
                ) from None
            await asyncio.sleep(0.1)


async def stop_switch(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def wait_ports(
    spec: LabSpec, run_dir: Path, say: Callable[[str], None], timeout: float = 60.0
) -> None:
    """Until every link is up: each switch port reports state up (saying each); LabError
    naming those that are not after `timeout` seconds."""
    pending: dict[tuple[str, str], str] = {}
    for node in spec.nodes.values():
        for i in node.ifaces:
            pending[(i.switch, i.port)] = f"link {node.name}:{i.name} - {i.switch}"
    for t in spec.trunks:
        pending[(t.a, t.port_a)] = f"trunk port {t.a}:{t.port_a}"
        pending[(t.b, t.port_b)] = f"trunk port {t.b}:{t.port_b}"
    deadline = time.monotonic() + timeout
    while pending:
        for sw in {s for s, _ in pending}:
            ports = {p["name"]: p for p in await switch_call(control_path(run_dir, sw), "ports")}
            for key in [k for k in pending if k[0] == sw]:
                if ports.get(key[1], {}).get("state") == "up":
                    say(f"{pending.pop(key)} up")
        if pending and time.monotonic() > deadline:
            what = ", ".join(pending.values())
            raise LabError(
                f"not up after {timeout:.0f}s: {what} (see the switch logs in {run_dir})"
            )
        if pending:
            await asyncio.sleep(0.2)
