"""The control protocol's server: JSON lines over a unix stream socket.

Request:  {"id": <any>, "cmd": "ports", "args": {...}}        (one JSON object per line)
Response: {"id": <same>, "ok": true, "result": ...}
      or  {"id": <same>, "ok": false, "error": "message"}

A command may answer with a `Stream`: after its ok reply the connection carries raw bytes
(a packet capture) until either side closes it.  Generic: the daemon serves its commands
with it (docs/control.md documents them), and a lab's owner serves the lab's.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vswitch.errors import ControlError
from vswitch.netsys.unix import listen_unix

log = logging.getLogger("vswitch.control")

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


@dataclass
class Stream:
    """A command result after which the connection carries raw bytes.

    The server sends the ok reply with `result`, then awaits `run(reader, writer)`; `close()`
    is awaited in every case (also when the client left before the reply), then the
    connection is closed."""

    result: Any
    run: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
    close: Callable[[], Awaitable[None]]


MAX_REQUEST = 1 << 20  # a request line longer than this closes the connection


def make_handler(commands: Mapping[str, Callable[..., Awaitable[Any]]]) -> Handler:
    """Build a handler that calls commands[cmd](**args), checking the arguments first."""

    async def handle(req: dict[str, Any]) -> Any:
        cmd, args = req["cmd"], req["args"]
        fn = commands.get(cmd)
        if fn is None:
            raise ControlError(f"unknown command {cmd!r} (known: {', '.join(sorted(commands))})")
        try:
            inspect.signature(fn).bind(**args)
        except TypeError as exc:
            raise ControlError(f"bad arguments for {cmd!r}: {exc}") from None
        return await fn(**args)

    return handle


def _reply(rid: Any, result: Any = None, error: str | None = None) -> bytes:
    if error is not None:
        msg: dict[str, Any] = {"id": rid, "ok": False, "error": error}
    else:
        msg = {"id": rid, "ok": True, "result": result}
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


class ControlServer:
    """Serve the control protocol on a unix socket; `async with ControlServer(...)`."""

    def __init__(self, path: str | Path, handler: Handler, *, mode: int = 0o600) -> None:
        self.path = Path(path)
        self._handler = handler
        self._mode = mode
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def start(self) -> None:
        """Bind and listen; StartupError if the path is in use or cannot be bound."""
        sock = listen_unix(self.path, mode=self._mode)
        st = os.stat(self.path)
        self._inode = (st.st_dev, st.st_ino)
        try:
            self._server = await asyncio.start_unix_server(
                self._on_client, sock=sock, limit=MAX_REQUEST
            )
        except BaseException:
            sock.close()
            self._unlink()
            raise
        log.debug("control socket listening on %s", self.path)

    async def close(self) -> None:
        """Stop listening, end every connection and remove the socket file."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if server is not None:
            await server.wait_closed()
        self._unlink()

    def _unlink(self) -> None:
        # Only our own file: a successor may already have replaced it.
        try:
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._inode:
                self.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.warning("cannot remove %s: %s", self.path, exc.strerror)
        self._inode = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        try:
            await self._serve(reader, writer)
        except ConnectionError:
            pass
        except asyncio.CancelledError:
            # close() ended the connection.  Ending the task normally: asyncio's stream
            # callback (Python 3.11) calls task.exception() and logs a cancelled task.
            pass
        finally:
            self._clients.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await reader.readline()
            except ValueError:  # the line exceeds MAX_REQUEST
                writer.write(_reply(None, error=f"request longer than {MAX_REQUEST} bytes"))
                await writer.drain()
                return
            if not line:
                return
            if not line.strip():
                continue
            reply, stream = await self._dispatch(line)
            if stream is None:
                writer.write(reply)
                await writer.drain()
                continue
            try:
                writer.write(reply)
                await writer.drain()
                await stream.run(reader, writer)
            finally:
                await stream.close()
            return

    async def _dispatch(self, line: bytes) -> tuple[bytes, Stream | None]:
        """The reply line, and the Stream to run after it if the command returned one."""
        try:
            req = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError:
            return _reply(None, error="request is not valid UTF-8"), None
        except ValueError as exc:
            return _reply(None, error=f"request is not valid JSON: {exc}"), None
        except RecursionError:  # the decoder recurses per nesting level
            return _reply(None, error="request is nested too deeply"), None
        if not isinstance(req, dict):
            msg = 'request must be a JSON object like {"id":1,"cmd":"ports"}'
            return _reply(None, error=msg), None
        rid, cmd, args = req.get("id"), req.get("cmd"), req.get("args")
        if not isinstance(cmd, str) or not cmd:
            return _reply(rid, error='request has no "cmd" string'), None
        if args is None:
            args = {}
        if not isinstance(args, dict):
            return _reply(rid, error='"args" must be a JSON object'), None
        try:
            result = await self._handler({"id": rid, "cmd": cmd, "args": args})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("control command %r failed", cmd, exc_info=True)
            return _reply(rid, error=str(exc) or type(exc).__name__), None
        stream = None
        if isinstance(result, Stream):
            stream, result = result, result.result
        try:
            return _reply(rid, result), stream
        except (TypeError, ValueError) as exc:
            log.warning("control command %r returned a result JSON cannot encode: %s", cmd, exc)
            if stream is not None:
                await stream.close()
            return _reply(rid, error=f"internal error: cannot encode the result of {cmd!r}"), None
