"""A lab's VMs: QEMU guests (vswitch.lab.guest.Guest) whose NICs are vhost-user clients of
the switches' sockets, booted together and waited for until each one's exec agent answers.

A guest whose console shows a kernel panic fails at once; one that does not answer in time
fails with the end of its console."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from vswitch.lab.errors import LabError
from vswitch.lab.guest import Guest, GuestError, GuestTimeoutError, Nic
from vswitch.lab.topology import Node
from vswitch.mac import format_mac
from vswitch.text import tail

# no_timer_check: under TCG on a busy machine the kernel's IO-APIC timer check can fail
# ("IO-APIC + timer doesn't work!") and panic; the check is pointless in a VM.
GUEST_KERNEL_ARGS = ["no_timer_check"]


class NotUp(Exception):
    """A guest did not come up: why, and its console log."""

    def __init__(self, node: str, why: str, console: Path) -> None:
        super().__init__(node)
        self.node, self.why, self.console = node, why, console


def make_guests(
    vms: list[Node],
    vdir: Path,
    socket_path: Callable[[str, str], Path],
    image: str | os.PathLike[str] | None,
) -> dict[str, Guest]:
    """A Guest per VM node (not started): NICs on the sockets socket_path(switch, port), with
    the node's MACs, addresses and default gateways on the kernel command line."""
    guests = {}
    for vm in vms:
        nics = [Nic(str(socket_path(i.switch, i.port)), format_mac(i.mac)) for i in vm.ifaces]
        ips = {k: list(i.addresses) for k, i in enumerate(vm.ifaces) if i.addresses}
        gws = [via for to, via in vm.routes if to == "default"]
        guests[vm.name] = Guest(
            vm.name,
            vdir,
            nics=nics,
            ips=ips,
            gw=gws,
            memory_mb=vm.memory,
            image_dir=image,
            kernel_args=GUEST_KERNEL_ARGS,
        )
    return guests


async def boot_vms(
    vms: list[Node],
    guests: dict[str, Guest],
    *,
    boot_timeout: float,
    say: Callable[[str], None],
    started: Callable[[str, int], None],
) -> None:
    """Start every guest (`started(name, pid)` for each), then wait until all answer, with
    their other routes added; LabError naming those that did not come up."""

    async def start(vm: Node) -> None:
        g = guests[vm.name]
        try:
            await g.start()
        except GuestError as exc:
            raise LabError(f"vm {vm.name} did not start: {exc}") from None
        assert g.pid is not None
        started(vm.name, g.pid)
        say(f"vm {vm.name} booting (pid {g.pid}, {vm.memory} MiB)")

    await asyncio.gather(*(start(vm) for vm in vms))
    deadline = time.monotonic() + boot_timeout
    results = await asyncio.gather(
        *(_ready(vm, guests[vm.name], deadline, say) for vm in vms), return_exceptions=True
    )
    failed = [r for r in results if isinstance(r, BaseException)]
    if not failed:
        return
    late = [r for r in failed if isinstance(r, NotUp)]
    if not late:
        raise failed[0]
    first = late[0]
    names = ", ".join(r.node for r in late)
    raise LabError(
        f"{'vm' if len(late) == 1 else 'vms'} {names} did not come up within "
        f"{boot_timeout:.0f}s: {first.why}; the last console lines of {first.node}:\n"
        + tail(first.console, 15)
    )


async def _ready(vm: Node, g: Guest, deadline: float, say: Callable[[str], None]) -> None:
    """Until the guest's agent answers (NotUp if it does not by the deadline, or panics);
    then its routes other than the default ones."""
    watch = asyncio.create_task(watch_console(vm.name, g.console_log))
    boot = asyncio.create_task(g.wait_ready(timeout=max(1.0, deadline - time.monotonic())))
    try:
        await asyncio.wait([boot, watch], return_when=asyncio.FIRST_COMPLETED)
        if boot.done():
            await boot
        else:
            watch.result()  # raises NotUp with what the console said
    except GuestTimeoutError:
        raise NotUp(vm.name, "the agent did not answer", g.console_log) from None
    except GuestError as exc:
        raise NotUp(vm.name, str(exc).partition("\n")[0], g.console_log) from None
    finally:
        for t in (boot, watch):
            t.cancel()
        await asyncio.gather(boot, watch, return_exceptions=True)
    for to, via in vm.routes:
        if to != "default":
            r = await g.exec(f"ip route add {to} via {via}", timeout=20)
            if r.rc != 0:
                raise LabError(f"vm {vm.name}: route {to} via {via}: {r.stderr.strip()}")
    say(f"vm {vm.name} up ({', '.join(vm.addresses) or 'no addresses'})")


async def watch_console(node: str, console: Path) -> None:
    """Returns never; raises NotUp as soon as the guest's console shows a kernel panic."""
    while True:
        await asyncio.sleep(1.0)
        text = await asyncio.to_thread(tail, console, 60)
        m = re.search(r"Kernel panic - not syncing: (.*?)(?: \]---)?$", text, re.MULTILINE)
        if m:
            raise NotUp(node, f"the guest kernel panicked ({m.group(1).strip()})", console)
