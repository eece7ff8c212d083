"""A Python client for a running vswitch: the control socket's commands as asyncio methods.

```python
import asyncio
from vswitch.client import Client

async def main() -> None:
    async with Client("/run/vswitch/ctl.sock") as sw:     # checks the protocol version
        print(sw.server["version"], [p["name"] for p in await sw.ports()])
        await sw.fdb_add("52:54:00:00:00:09", "vm2")
        async with await sw.capture("vm1", "vm2", filter="icmp", count=10) as cap:
            async for frame in cap.frames():
                print(frame.name, frame.length)

asyncio.run(main())
```

Every method returns what `vswitch <command> --json` prints (the result of the command of
that name in docs/control.md) and raises `ControlError` (`CommandFailed` with the daemon's
message when it refused).  One connection serves any number of requests, in order; a
capture takes a connection of its own (the stream), which `capture()` opens.

`Client(check=True)` sends `hello` first and raises `IncompatibleServer` unless the daemon
speaks PROTOCOL; `server` then holds the hello reply (version, protocol, commands, config).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal, Self, TypedDict

from vswitch import PROTOCOL, __version__
from vswitch.config import default_control_path
from vswitch.config.edit import FileEdit
from vswitch.control.client import REQUEST_TIMEOUT, CommandFailed, NoServer
from vswitch.control.client import Client as _Connection
from vswitch.errors import ConfigError, ControlError
from vswitch.pcap import Frame, Reader

__all__ = [
    "PROTOCOL",
    "Capture",
    "Client",
    "CommandFailed",
    "ControlError",
    "IncompatibleServer",
    "NoServer",
]

Direction = Literal["rx", "tx", "both"]


class IncompatibleServer(ControlError):
    """The daemon speaks another protocol version than this client (see `hello`)."""


class Hello(TypedDict):
    version: str  # the daemon's package version
    protocol: int  # the control protocol's version (vswitch.PROTOCOL)
    commands: list[str]
    config: str | None  # the file it was started with


class FdbEntry(TypedDict, total=False):
    mac: str
    vlan: int
    port: str | None
    age: int
    type: Literal["static", "dynamic"]


class Flushed(TypedDict):
    flushed: int
    port: str | None
    static: bool
    vlan: int | None


class Reloaded(TypedDict):
    file: str | None
    changes: list[str]
    warnings: list[str]


class PortChanged(TypedDict, total=False):
    port: dict[str, Any] | None  # port-add: the new port as `ports` shows it
    changes: list[str]
    warnings: list[str]
    saved: str | None  # the config file written, with save=True


class Capture:
    """A running capture: `info` (the daemon's parameter echo), `reader` (the raw pcapng or
    pcap byte stream), `frames()` (the frames parsed from it), `stop()` (half-close: the
    daemon sends what it still has and the statistics, then ends the stream)."""

    def __init__(self, conn: _Connection, info: dict[str, Any]) -> None:
        assert conn.reader is not None and conn.writer is not None
        self._conn = conn
        self.info = info
        self.reader: asyncio.StreamReader = conn.reader
        self.parser = Reader()

    async def frames(self) -> AsyncIterator[Frame]:
        """The frames as they come, until the capture ends (count, duration, stop())."""
        while data := await self.reader.read(1 << 16):
            for f in self.parser.feed(data):
                yield f

    @property
    def dropped(self) -> int | None:
        """Frames the capture missed (from the statistics blocks, once the stream ended)."""
        return self.parser.dropped

    @property
    def filtered(self) -> int | None:
        """Frames the filter left out (pcapng with a filter, once the stream ended)."""
        return self.parser.filtered

    def stop(self) -> None:
        assert self._conn.writer is not None
        with contextlib.suppress(OSError, RuntimeError):
            self._conn.writer.write_eof()

    async def close(self) -> None:
        await self._conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _args(**kw: Any) -> dict[str, Any]:
    return {k: v for k, v in kw.items() if v is not None}


class Client:
    """The control socket of a running vswitch (default: the daemon's default path)."""

    def __init__(
        self,
        path: str | Path | None = None,
        *,
        timeout: float = REQUEST_TIMEOUT,
        check: bool = True,
    ) -> None:
        self.path = Path(path) if path is not None else default_control_path()
        self.timeout = timeout
        self.check = check
        self.server: Hello | None = None
        self._conn = _Connection(self.path, timeout=timeout)

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self._conn.connect()
        if self.check:
            await self.hello()

    async def close(self) -> None:
        await self._conn.close()

    async def call(self, cmd: str, /, **args: Any) -> Any:
        """Any command by name, as the protocol has it (docs/control.md)."""
        return await self._conn.call(cmd, **args)

    # The commands, one method each.

    async def hello(self) -> Hello:
        """The daemon's version and protocol; IncompatibleServer (with check) when it does
        not speak this client's PROTOCOL."""
        try:
            reply: Hello = await self.call("hello")
        except CommandFailed as exc:
            if "unknown command" in str(exc):
                raise IncompatibleServer(
                    f"the daemon on {self.path} has no `hello` command: it is older than "
                    f"this client (vswitch {__version__}, protocol {PROTOCOL})"
                ) from None
            raise
        self.server = reply
        if self.check and reply.get("protocol") != PROTOCOL:
            raise IncompatibleServer(
                f"the daemon on {self.path} speaks protocol {reply.get('protocol')} "
                f"(vswitch {reply.get('version')}); this client speaks {PROTOCOL} "
                f"(vswitch {__version__})"
            )
        return reply

    async def version(self) -> str:
        return (await self.call("version"))["version"]

    async def ports(self, port: str | None = None) -> list[dict[str, Any]]:
        return await self.call("ports", **_args(port=port))

    async def fdb(self, port: str | None = None) -> list[FdbEntry]:
        return await self.call("fdb", **_args(port=port))

    async def fdb_add(self, mac: str, port: str, vlan: int | None = None) -> FdbEntry:
        return await self.call("fdb-add", **_args(mac=mac, port=port, vlan=vlan))

    async def fdb_del(self, mac: str, vlan: int | None = None) -> FdbEntry:
        return await self.call("fdb-del", **_args(mac=mac, vlan=vlan))

    async def fdb_flush(
        self, port: str | None = None, static: bool = False, vlan: int | None = None
    ) -> Flushed:
        return await self.call("fdb-flush", **_args(port=port, static=static or None, vlan=vlan))

    async def stats(self) -> dict[str, Any]:
        return await self.call("stats")

    async def reload(self) -> Reloaded:
        return await self.call("reload")

    async def capture(
        self,
        *ports: str,
        filter: str | None = None,
        direction: Direction = "both",
        count: int | None = None,
        snaplen: int | None = None,
        format: Literal["pcapng", "pcap"] = "pcapng",
        buffer: int | None = None,
        duration: float | None = None,
    ) -> Capture:
        """Start a capture on one port or several (one pcapng); on its own connection."""
        if not ports:
            raise ValueError("capture: name at least one port")
        conn = _Connection(self.path, timeout=self.timeout)
        args = _args(
            port=ports[0] if len(ports) == 1 else list(ports),
            filter=filter,
            direction=direction,
            count=count,
            snaplen=snaplen,
            format=format,
            buffer=buffer,
            duration=duration,
        )
        try:
            info = await conn.call("capture", **args)
        except BaseException:
            await conn.close()
            raise
        return Capture(conn, info)

    async def add_port(
        self, name: str, type: str = "vhost-user", *, save: bool = False, **keys: Any
    ) -> PortChanged:
        """Add a port (keys as in the config file: path=, mode=, mtu=, ...), applied like a
        reload of that port.  save=True also writes it to the daemon's config file (with
        this process's permissions), only once the daemon took it.  A relative `path` is
        taken relative to this process's directory."""
        raw: dict[str, Any] = {"name": name, "type": type, **keys}
        if isinstance(raw.get("path"), str | Path):
            raw["path"] = str(Path(os.getcwd(), raw["path"]))  # absolute stays absolute
        edit = await self._prepare(lambda f: FileEdit.add_port(f, raw)) if save else None
        return await self._apply("port-add", edit, port=raw)

    async def del_port(self, name: str, *, save: bool = False) -> PortChanged:
        """Remove a port (its guest is disconnected); save=True also removes it from the
        daemon's config file."""
        edit = await self._prepare(lambda f: FileEdit.remove_port(f, name)) if save else None
        return await self._apply("port-del", edit, name=name)

    async def _prepare(self, make: Any) -> FileEdit:
        hello = self.server or await self.hello()
        path = hello.get("config")
        if not path:
            raise ControlError("cannot save: the daemon was not started from a config file")
        try:
            return await asyncio.to_thread(make, path)
        except ConfigError as exc:
            raise ControlError(f"not saved, nothing changed: {exc}") from None
        except OSError as exc:
            why = exc.strerror or exc
            raise ControlError(f"{path}: {why} (not saved, nothing changed)") from None

    async def _apply(self, cmd: str, edit: FileEdit | None, **args: Any) -> PortChanged:
        try:
            result: PortChanged = await self.call(cmd, **args)
            result["saved"] = None
            if edit is not None:
                try:
                    await asyncio.to_thread(edit.commit)
                except OSError as exc:
                    raise ControlError(
                        f"{cmd} applied, but {edit.path} was not saved: {exc.strerror or exc}"
                    ) from None
                result["saved"] = str(edit.path)
            return result
        finally:
            if edit is not None:
                edit.abandon()
