"""A minimal QMP client (QEMU Machine Protocol) for the migration and hotplug tests:
JSON lines on QEMU's `-qmp unix:PATH,server=on,wait=off` socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class QmpError(RuntimeError):
    pass


class Qmp:
    def __init__(self, path: str) -> None:
        self.path = path
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.events: list[dict[str, Any]] = []

    async def connect(self, timeout: float = 30.0) -> Qmp:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            try:
                self._reader, self._writer = await asyncio.open_unix_connection(
                    self.path, limit=1 << 20
                )
                break
            except (FileNotFoundError, ConnectionRefusedError):
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)
        await self._line()  # the greeting
        await self.cmd("qmp_capabilities")
        return self

    async def _line(self) -> dict[str, Any]:
        assert self._reader is not None
        line = await asyncio.wait_for(self._reader.readline(), 60)
        if not line:
            raise QmpError(f"QMP {self.path}: connection closed (QEMU gone?)")
        return json.loads(line)

    async def cmd(self, name: str, **args: Any) -> Any:
        assert self._writer is not None
        msg: dict[str, Any] = {"execute": name}
        if args:
            msg["arguments"] = args
        self._writer.write(json.dumps(msg).encode() + b"\n")
        await self._writer.drain()
        while True:
            reply = await self._line()
            if "event" in reply:
                self.events.append(reply)
                continue
            if "error" in reply:
                raise QmpError(f"QMP {name} {args}: {reply['error']}")
            return reply.get("return")

    async def status(self) -> str:
        return (await self.cmd("query-status"))["status"]

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
            self._writer = None
