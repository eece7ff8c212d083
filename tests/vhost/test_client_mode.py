"""Client-mode ports (`mode: client`) against a test-side front end that
serves the socket, as QEMU does with `-chardev socket,server=on`: the switch
may start first, retries with backoff, and comes back after each loss.
Socket ownership and the daemon's log level are here too: both are about
what `vswitch run` does around a port rather than inside its rings."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import need_root
from support.peers import SoftGuest, count, frame, log_lines, seq_of
from support.switch_process import SwitchProcess

MACS = {"a": "02:00:00:00:30:01", "b": "02:00:00:00:30:02"}


@contextlib.asynccontextmanager
async def serving(path: Path) -> AsyncIterator[socket.socket]:
    """A listening unix socket, like QEMU's server=on chardev."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(8)
    srv.setblocking(False)
    try:
        yield srv
    finally:
        srv.close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


async def accept(srv: socket.socket, timeout: float = 10.0) -> socket.socket:
    loop = asyncio.get_running_loop()
    conn, _ = await asyncio.wait_for(loop.sock_accept(srv), timeout)
    conn.setblocking(False)
    return conn


def ports(tmp: Path) -> list[dict[str, object]]:
    return [
        {"name": "a", "type": "vhost-user", "path": str(tmp / "a.sock"), "mode": "client"},
        {"name": "b", "type": "vhost-user", "path": str(tmp / "b.sock")},
    ]


async def test_switch_first_then_front_end_and_again_after_it_restarts(tmp_path: Path) -> None:
    """The switch starts with nothing at a's path: the port waits
    (`connecting`, one log line).  When the front end appears the port comes
    up and forwards; when the front end goes away and comes back, the
    switch finds it again on its own."""
    async with SwitchProcess(tmp_path, ports(tmp_path)) as sw:
        await logged(sw, r"port a: waiting for a front end at ", 1)
        assert (await sw.ports())["a"]["state"] == "connecting"
        b = SoftGuest(sw.sock("b"), MACS["b"])
        await b.attach()
        try:
            for round_ in range(2):
                async with serving(tmp_path / "a.sock") as srv:
                    conn = await accept(srv)
                    a = SoftGuest(str(tmp_path / "a.sock"), MACS["a"])
                    try:
                        await a.attach(sock=conn)
                        await sw.wait_port("a", "up", timeout=10)
                        b.got.clear()
                        await a.send([frame(MACS["b"], MACS["a"], round_ * 100 + k)
                                      for k in range(20)])  # fmt: skip
                        got = await b.wait_received(20)
                        assert [seq_of(f)[2] for f in got if seq_of(f)] == [
                            round_ * 100 + k for k in range(20)
                        ]
                    finally:
                        a.close()  # QEMU gone: the socket file goes with it
                await sw.wait_port("a", "connecting", timeout=10)
                # Waiting again, and saying so once.
                await logged(sw, r"port a: waiting for a front end at ", round_ + 2)
        finally:
            b.close()
    lines = log_lines(sw.log)
    assert count(lines, r"port a: waiting for a front end at ") == 3, sw.tail()
    assert count(lines, r"port a: link up") == 2, sw.tail()


async def logged(sw: SwitchProcess, pattern: str, n: int, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while count(log_lines(sw.log), pattern) < n:
        assert loop.time() < deadline, f"{pattern!r} not logged {n} times:\n{sw.tail()}"
        await asyncio.sleep(0.05)


async def test_a_front_end_that_drops_every_connection_is_retried_with_backoff(
    tmp_path: Path,
) -> None:
    """A server that accepts and closes at once (a crashing QEMU, a wrong
    program at the path) must not be hammered: the retries back off."""
    async with serving(tmp_path / "a.sock") as srv, SwitchProcess(tmp_path, ports(tmp_path)) as sw:
        loop = asyncio.get_running_loop()
        accepted = 0
        end = loop.time() + 5.0
        while (left := end - loop.time()) > 0:
            try:
                conn = await accept(srv, timeout=left)
            except TimeoutError:
                break
            accepted += 1
            conn.close()
        # Backoff 0.1, 0.2, 0.4, 0.8, 1.6, 2 s: about six tries in 5 s
        # (without it: fifty).
        assert 3 <= accepted <= 9, f"{accepted} connections in 5 s"
        # A well-behaved front end is still found, within the largest delay.
        conn = await accept(srv, timeout=5)
        a = SoftGuest(str(tmp_path / "a.sock"), MACS["a"])
        try:
            await a.attach(sock=conn)
            await sw.wait_port("a", "up", timeout=10)
        finally:
            a.close()


async def test_socket_owner_group_and_mode_are_applied(tmp_path: Path) -> None:
    need_root()
    cfg = [
        {
            "name": "a",
            "type": "vhost-user",
            "path": str(tmp_path / "a.sock"),
            "owner": 65534,
            "group": 65534,
            "socket_mode": "0660",
        }
    ]
    async with SwitchProcess(tmp_path, cfg):
        st = os.stat(tmp_path / "a.sock")
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (65534, 65534, 0o660)


@pytest.mark.parametrize("level", ["warning", "debug"])
async def test_log_level_filters_the_daemon_log(tmp_path: Path, level: str) -> None:
    async with SwitchProcess(tmp_path, ports(tmp_path)[1:], log_level=level) as sw:
        b = SoftGuest(sw.sock("b"), MACS["b"])
        try:
            await b.attach()
            await sw.wait_port("b", "up", timeout=10)
        finally:
            b.close()
        await sw.wait_port("b", "listening", timeout=10)
    lines = log_lines(sw.log)
    info = count(lines, r"port b: link up")
    debug = count(lines, r"port b: SET_MEM_TABLE")
    if level == "warning":
        assert (info, debug) == (0, 0), sw.tail()
    else:
        assert (info, debug) == (1, 1), sw.tail()
