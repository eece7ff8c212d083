"""Reading and writing vhost-user messages on a non-blocking unix socket.

asyncio's streams drop ancillary data, so messages are read with recvmsg()
when the loop reports the socket readable.  Every received descriptor is
owned by the returned Message, or closed here if the message is rejected.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket

from vswitch.vhost.protocol import (
    FLAG_VERSION_MASK,
    HEADER,
    MAX_FDS,
    MAX_PAYLOAD,
    VERSION,
    Message,
    ProtocolError,
    request_name,
)

_CMSG_SPACE = socket.CMSG_SPACE(MAX_FDS * array.array("i").itemsize)


def close_fds(fds: list[int]) -> None:
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()


class PeerClosed(Exception):
    """The front end closed the connection."""


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    fut = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await fut
    finally:
        loop.remove_reader(sock.fileno())


def _take_fds(ancdata: list[tuple[int, int, bytes]], flags: int, into: list[int]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds = array.array("i")
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
            into.extend(fds)
    if flags & socket.MSG_CTRUNC:
        raise ProtocolError(f"more than {MAX_FDS} file descriptors sent with one message")


async def _recv_exact(
    loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int, fds: list[int]
) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        try:
            data, anc, flags, _ = sock.recvmsg(n - len(buf), _CMSG_SPACE, socket.MSG_CMSG_CLOEXEC)
        except (BlockingIOError, InterruptedError):
            await _readable(loop, sock)
            continue
        except ConnectionResetError as e:
            raise PeerClosed() from e
        _take_fds(anc, flags, fds)
        if not data:
            raise PeerClosed()
        buf += data
    return bytes(buf)


async def recv_message(sock: socket.socket) -> Message:
    """The next message; raises PeerClosed on EOF and ProtocolError on garbage."""
    loop = asyncio.get_running_loop()
    fds: list[int] = []
    try:
        header = await _recv_exact(loop, sock, HEADER.size, fds)
        request, flags, size = HEADER.unpack(header)
        if flags & FLAG_VERSION_MASK != VERSION:
            raise ProtocolError(f"{request_name(request)}: unsupported version in flags {flags:#x}")
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"{request_name(request)}: payload of {size} bytes is too large")
        payload = await _recv_exact(loop, sock, size, fds) if size else b""
        if len(fds) > MAX_FDS:
            raise ProtocolError(f"{request_name(request)}: {len(fds)} file descriptors")
    except BaseException:
        close_fds(fds)
        raise
    return Message(request, flags, payload, fds)


async def send(sock: socket.socket, data: bytes) -> None:
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, data)
