"""The control socket: JSON lines over a unix stream socket.

Request:  {"id": <any>, "cmd": "ports", "args": {...}}        (one JSON object per line)
Response: {"id": <same>, "ok": true, "result": ...}
      or  {"id": <same>, "ok": false, "error": "message"}

A command may answer with a `Stream`: after its ok reply the connection carries raw bytes
(a packet capture) until either side closes it.  docs/control.md documents every command.

`ControlServer` serves it, `request()` is the client, and `prepare_socket_path()` /
`listen_unix()` are shared with the vhost-user ports, which listen on unix sockets too.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import inspect
import json
import logging
import os
import socket
import stat
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from vswitch.errors import ControlError, StartupError

log = logging.getLogger(__name__)

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
MAX_REPLY = 256 << 20  # the client accepts replies up to this size (a big fdb dump)
REQUEST_TIMEOUT = 30.0


# --------------------------------------------------------------------------- socket files


def prepare_socket_path(path: str | Path) -> None:
    """Make `path` free for bind(): remove a stale socket file, refuse a live one.

    Raises StartupError when a process listens on it, when it is not a socket, or when it
    cannot be checked.  Never blocks: the probe is a non-blocking connect().
    """
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"{path}: cannot check the socket path: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket (remove it, or choose another path)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        err = probe.connect_ex(str(path))
    if err in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise StartupError(
            f"{path} is in use by a live process: another vswitch is running on {path}? "
            "(stop it, or choose another path)"
        )
    if err != errno.ECONNREFUSED:
        raise StartupError(f"{path}: cannot check the socket: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"{path}: cannot remove the stale socket: {exc.strerror}") from None
    log.info("removed stale socket %s", path)


def listen_unix(
    path: str | Path,
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    backlog: int = 16,
) -> socket.socket:
    """Bind and listen on a unix stream socket at `path` with the given mode and owner.

    The file is chmod-ed (and chown-ed) after bind() but before listen(): until then
    connect() is refused, so there is no window with a wider mode.  Returns a non-blocking
    listening socket; raises StartupError with the path and the reason.
    """
    path = Path(path)
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"{path}: cannot bind: {exc.strerror or exc}") from None
    try:
        os.chmod(path, mode)
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise StartupError(f"{path}: cannot set up the socket: {exc.strerror or exc}") from None
    return sock


def ensure_socket_dir(path: str | Path) -> None:
    """Create the directory of a default socket path (0755) if missing.

    An existing directory must be ours (or root's) and not a symlink: in /tmp, someone else
    could have created it to intercept the socket.
    """
    d = Path(path).parent
    try:
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = d.lstat()
    except OSError as exc:
        raise StartupError(f"{d}: cannot create the directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, os.geteuid()):
        raise StartupError(
            f"{d} is not a directory owned by you (remove it, or set `control:` in the config)"
        )


# --------------------------------------------------------------------------- server


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


# --------------------------------------------------------------------------- client


class Client:
    """One connection to the daemon, for several requests (`vswitch top`) or a stream.

    `async with Client(path) as c: await c.call("ports")`; errors are ControlError."""

    def __init__(self, path: str | Path) -> None:
        self.path = path
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
                asyncio.open_unix_connection(str(path), limit=MAX_REPLY), REQUEST_TIMEOUT
            )
        except (FileNotFoundError, ConnectionRefusedError, NotADirectoryError):
            raise ControlError(f"no vswitch daemon on {path} (is `vswitch run` running?)") from None
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
            line = await asyncio.wait_for(self.reader.readline(), REQUEST_TIMEOUT)
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
            raise ControlError(str(resp.get("error") or "the daemon reported an unknown error"))
        return resp.get("result")


async def request(path: str | Path, cmd: str, /, **args: Any) -> Any:
    """Send one command to the daemon at `path`; return its result or raise ControlError."""
    async with Client(path) as client:
        return await client.call(cmd, **args)


__all__ = [
    "Client",
    "ControlError",
    "ControlServer",
    "Handler",
    "StartupError",
    "Stream",
    "ensure_socket_dir",
    "listen_unix",
    "make_handler",
    "prepare_socket_path",
    "request",
]
