"""The lab's control sockets: the owner's own (RUN/LAB/lab.sock) and its switches'.

The owner serves `status`, `exec`, `down` and `version` with vswitch.control's ControlServer,
the protocol of the switch's control socket (docs/control.md); `vswitch lab status/exec/down`
reach it from other processes with `lab_call`.  `switch_call` asks one of the lab's switches.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from vswitch.control import Client, CommandFailed, ControlServer, NoServer, make_handler
from vswitch.errors import ControlError
from vswitch.lab.errors import LabError
from vswitch.lab.guest import ExecResult
from vswitch.lab.state import CONTROL, labs_root, owner_alive

__all__ = ["lab_call", "lab_server", "switch_call"]


class Owner(Protocol):
    """What the server needs of the lab it serves (vswitch.lab.lifecycle.Lab)."""

    name: str

    async def status_async(self) -> dict[str, Any]: ...

    async def exec_async(
        self, node: str, cmd: str | list[str], timeout: float = 60.0
    ) -> ExecResult: ...

    def request_down(self) -> None: ...


def commands(lab: Owner) -> dict[str, Callable[..., Awaitable[Any]]]:
    """The lab's commands, by name, for make_handler."""

    async def status() -> dict[str, Any]:
        return await lab.status_async()

    async def exec_(node: str, command: str, timeout: float = 60.0) -> dict[str, Any]:
        r = await lab.exec_async(node, command, float(timeout))
        return {"rc": r.rc, "stdout": r.stdout, "stderr": r.stderr}

    async def down() -> dict[str, Any]:
        lab.request_down()  # after this reply: down_async closes this server
        return {"stopping": True}

    async def version() -> dict[str, Any]:
        return {"lab": lab.name}

    return {"status": status, "exec": exec_, "down": down, "version": version}


def lab_server(lab: Owner, path: Path) -> ControlServer:
    """The owner's server (start() it; close() stops it and removes the socket)."""
    return ControlServer(path, make_handler(commands(lab)), mode=0o600)


async def lab_call(
    name: str, cmd: str, *, wait: float = 30.0, root: Path | None = None, **args: Any
) -> Any:
    """A request to a running lab's owner, from another process (the CLI).  `wait` bounds
    the connect and the reply; LabError says what went wrong."""
    run_dir = (root or labs_root()) / name
    if not owner_alive(run_dir):
        raise LabError(
            f"lab {name} has no running owner (it crashed, or is being torn down): "
            f"`vswitch lab down {name}` removes what is left"
        )
    try:
        async with Client(run_dir / CONTROL, timeout=wait) as client:
            return await client.call(cmd, **args)
    except NoServer:
        raise LabError(f"lab {name} is not answering yet (still coming up?)") from None
    except CommandFailed as exc:
        raise LabError(str(exc)) from None
    except ControlError as exc:
        raise LabError(f"lab {name}: {exc}") from None


async def switch_call(path: Path, cmd: str, *, wait: float = 30.0) -> Any:
    """One request to a lab switch's control socket; LabError with the reason otherwise."""
    try:
        async with Client(path, timeout=wait) as client:
            return await client.call(cmd)
    except ControlError as exc:
        raise LabError(str(exc)) from None
