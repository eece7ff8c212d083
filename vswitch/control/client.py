"""The control protocol's client: one connection to a daemon (or a lab's owner) for
one request, several (`vswitch top`), or a stream (a capture)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any, Self

from vswitch.errors import ControlError

MAX_REPLY = 256 << 20  # the client accepts replies up to this size (a big fdb dump)
REQUEST_TIMEOUT = 30.0


class NoServer(ControlError):
    """Nothing listens on the path (no socket there, or the connection is refused)."""


class CommandFailed(ControlError):
    """The server answered the request with an error; the message is the server's."""


class Client:
    """One connection to the daemon, for several requests (`vswitch top`) or a stream.

    `async with Client(path) as c: await c.call("ports")`; errors are ControlError (NoServer
    and CommandFailed tell two of them apart).  `timeout` bounds the connect and each reply."""

    def __init__(self, path: str | Path, *, timeout: float = REQUEST_TIMEOUT) -> None:
        self.path = path
        self.timeout = timeout
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self._ids = 0

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        path = self.path
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_unix_connection(str(path), limit=MAX_REPLY), self.timeout
            )
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise NoServer(f"no vswitch daemon on {path} (is `vswitch run` running?)") from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path} (run as the daemon's user, or widen control_mode)"
            ) from None
        except TimeoutError:
            raise ControlError(
                f"the vswitch daemon on {path} does not accept connections"
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def call(self, cmd: str, /, **args: Any) -> Any:
        """Send one command and return its result (ControlError if the daemon refused it)."""
        if self.writer is None or self.reader is None:
            await self.connect()
        assert self.writer is not None and self.reader is not None
        path = self.path
        self._ids += 1
        try:
            msg = {"id": self._ids, "cmd": cmd, "args": args}
            self.writer.write(json.dumps(msg).encode() + b"\n")
            await self.writer.drain()
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
        except TimeoutError:
            await self.close()
            raise ControlError(f"no reply from the vswitch daemon on {path}") from None
        except ValueError:
            await self.close()
            raise ControlError(f"the reply from {path} is longer than {MAX_REPLY} bytes") from None
        except OSError as exc:
            await self.close()
            raise ControlError(f"connection to {path} lost: {exc.strerror or exc}") from None
        if not line:
            await self.close()
            raise ControlError(
                f"the vswitch daemon on {path} closed the connection without a reply"
            )
        try:
            resp = json.loads(line)
        except ValueError:
            raise ControlError(f"the reply from {path} is not JSON: {line[:80]!r}") from None
        if not isinstance(resp, dict) or "ok" not in resp:
            raise ControlError(f"the reply from {path} is not a vswitch reply: {line[:80]!r}")
        if not resp["ok"]:
            raise CommandFailed(str(resp.get("error") or "the daemon reported an unknown error"))
        return resp.get("result")


async def request(path: str | Path, cmd: str, /, **args: Any) -> Any:
    """Send one command to the daemon at `path`; return its result or raise ControlError."""
    async with Client(path) as client:
        return await client.call(cmd, **args)
