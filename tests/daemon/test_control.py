"""The control socket against a real ControlServer on a temporary unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from vswitch.control import ControlServer, make_handler, request
from vswitch.control.server import MAX_REQUEST
from vswitch.errors import ControlError, StartupError
from vswitch.netsys.unix import listen_unix, prepare_socket_path


async def handler(req: dict[str, Any]) -> Any:
    cmd, args = req["cmd"], req["args"]
    if cmd == "echo":
        return args
    if cmd == "ports":
        return [{"name": "vm1"}]
    if cmd == "boom":
        raise RuntimeError("the handler blew up")
    if cmd == "slow":
        await asyncio.sleep(3600)
    if cmd == "unencodable":
        return {1, 2}
    raise ValueError(f"unknown command {cmd!r}")


def exists(path: Path) -> bool:
    return path.exists()  # a local lstat: fine in a test coroutine


@pytest.fixture
def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "ctl.sock"


@pytest.fixture
async def server(sock_path: Path) -> AsyncIterator[ControlServer]:
    async with ControlServer(sock_path, handler) as srv:
        yield srv


class Conn:
    """A raw client speaking lines, to send what `request()` never would."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, path: Path) -> Conn:
        return cls(*await asyncio.open_unix_connection(str(path)))

    async def send(self, raw: bytes) -> dict[str, Any]:
        self.writer.write(raw)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line.endswith(b"\n")
        reply = json.loads(line)
        assert isinstance(reply, dict)
        return reply

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_request_response(server: ControlServer, sock_path: Path) -> None:
    assert await request(sock_path, "ports") == [{"name": "vm1"}]
    assert await request(sock_path, "echo", port="vm1", n=3) == {"port": "vm1", "n": 3}
    conn = await Conn.open(sock_path)
    reply = await conn.send(b'{"id": "abc", "cmd": "echo", "args": {"x": [1, 2]}}\n')
    assert reply == {"id": "abc", "ok": True, "result": {"x": [1, 2]}}
    reply = await conn.send(b'{"id": 7, "cmd": "echo"}\n')
    assert reply == {"id": 7, "ok": True, "result": {}}
    await conn.close()


@pytest.mark.parametrize(
    ("raw", "rid", "error"),
    [
        (b"this is not json\n", None, "request is not valid JSON"),
        (b"[1, 2, 3]\n", None, "request must be a JSON object"),
        (b'"ports"\n', None, "request must be a JSON object"),
        (b'{"id": 5}\n', 5, 'request has no "cmd" string'),
        (b'{"id": 6, "cmd": 42}\n', 6, 'request has no "cmd" string'),
        (b'{"id": 8, "cmd": "echo", "args": [1]}\n', 8, '"args" must be a JSON object'),
        (b'{"id": 9, "cmd": "\xff\xfe"}\n', None, "request is not valid UTF-8"),
    ],
)
async def test_garbage_gets_error_and_connection_survives(
    server: ControlServer, sock_path: Path, raw: bytes, rid: Any, error: str
) -> None:
    conn = await Conn.open(sock_path)
    reply = await conn.send(raw)
    assert reply["ok"] is False
    assert reply["id"] == rid
    assert reply["error"].startswith(error)
    # The same connection still works, and so does the server.
    assert (await conn.send(b'{"id": 1, "cmd": "ports"}\n'))["result"] == [{"name": "vm1"}]
    await conn.close()
    assert await request(sock_path, "ports") == [{"name": "vm1"}]


async def test_blank_lines_are_ignored(server: ControlServer, sock_path: Path) -> None:
    conn = await Conn.open(sock_path)
    assert (await conn.send(b'\n  \n{"id": 2, "cmd": "ports"}\n'))["id"] == 2
    await conn.close()


async def test_overlong_line_gets_error_and_close(server: ControlServer, sock_path: Path) -> None:
    conn = await Conn.open(sock_path)
    reply = await conn.send(b'{"cmd": "echo", "args": {"x": "' + b"a" * MAX_REQUEST + b'"}}\n')
    assert reply["ok"] is False
    assert "longer than" in reply["error"]
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""  # closed by the server
    await conn.close()
    assert await request(sock_path, "ports") == [{"name": "vm1"}]


async def test_handler_exception_becomes_error(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(ControlError, match=r"^the handler blew up$"):
        await request(sock_path, "boom")
    with pytest.raises(ControlError, match=r"^unknown command 'nope'$"):
        await request(sock_path, "nope")
    with pytest.raises(ControlError, match="cannot encode the result"):
        await request(sock_path, "unencodable")
    assert await request(sock_path, "ports") == [{"name": "vm1"}]


async def test_socket_mode_is_0600(server: ControlServer, sock_path: Path) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


async def test_socket_mode_given(sock_path: Path) -> None:
    async with ControlServer(sock_path, handler, mode=0o660):
        assert stat.S_IMODE(os.stat(sock_path).st_mode) == 0o660


async def test_close_removes_file_and_ends_clients(sock_path: Path) -> None:
    srv = ControlServer(sock_path, handler)
    await srv.start()
    conn = await Conn.open(sock_path)
    await conn.send(b'{"cmd": "ports"}\n')
    conn.writer.write(b'{"cmd": "slow"}\n')  # a handler still running at close
    await conn.writer.drain()
    await asyncio.sleep(0.05)
    await asyncio.wait_for(srv.close(), 5)
    assert not exists(sock_path)
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""
    await conn.close()


async def test_stale_socket_is_replaced(sock_path: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(sock_path))
    stale.close()  # the file stays, nobody listens
    assert exists(sock_path)
    async with ControlServer(sock_path, handler):
        assert await request(sock_path, "ports") == [{"name": "vm1"}]


async def test_live_socket_is_refused(server: ControlServer, sock_path: Path) -> None:
    with pytest.raises(StartupError, match=f"another vswitch is running on {sock_path}\\?"):
        async with ControlServer(sock_path, handler):
            pass
    # The first server is untouched.
    assert await request(sock_path, "ports") == [{"name": "vm1"}]


def test_prepare_socket_path(tmp_path: Path) -> None:
    prepare_socket_path(tmp_path / "absent.sock")  # nothing there: fine
    regular = tmp_path / "file"
    regular.write_text("keep me")
    with pytest.raises(StartupError, match="exists and is not a socket"):
        prepare_socket_path(regular)
    assert regular.read_text() == "keep me"
    live = listen_unix(tmp_path / "live.sock", mode=0o640)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "live.sock").st_mode) == 0o640
        with pytest.raises(StartupError, match="in use by a live process"):
            prepare_socket_path(tmp_path / "live.sock")
    finally:
        live.close()
    prepare_socket_path(tmp_path / "live.sock")  # now stale: removed
    assert not (tmp_path / "live.sock").exists()


async def test_client_error_when_no_daemon(tmp_path: Path) -> None:
    path = tmp_path / "nobody.sock"
    with pytest.raises(ControlError) as info:
        await request(path, "ports")
    assert str(info.value) == f"no vswitch daemon on {path} (is `vswitch run` running?)"
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(path))
    stale.close()
    with pytest.raises(ControlError, match="no vswitch daemon on"):
        await request(path, "ports")


async def test_make_handler(sock_path: Path) -> None:
    async def ports(verbose: bool = False) -> list[str]:
        return ["vm1", "verbose"] if verbose else ["vm1"]

    async with ControlServer(sock_path, make_handler({"ports": ports})):
        assert await request(sock_path, "ports") == ["vm1"]
        assert await request(sock_path, "ports", verbose=True) == ["vm1", "verbose"]
        with pytest.raises(ControlError, match=r"unknown command 'fdb' \(known: ports\)"):
            await request(sock_path, "fdb")
        with pytest.raises(ControlError, match="bad arguments for 'ports'"):
            await request(sock_path, "ports", colour="red")
