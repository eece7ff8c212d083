"""Running out of file descriptors (issue 12): a port whose accept() fails with EMFILE
logs, backs off and keeps listening, and the switch still shuts down cleanly."""

from __future__ import annotations

import logging
import os
import resource
import socket
from pathlib import Path

import pytest
from support.ops import VGuest, config, wait_until

from vswitch.daemon.switch import Switch
from vswitch.netsys.fds import fds_needed, raise_fd_limit


def lowest_free_fd() -> int:
    fd = os.dup(0)
    os.close(fd)
    return fd


async def test_accept_out_of_descriptors_backs_off_and_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="vswitch.vhost")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    async with Switch(config(tmp_path, ["a"])) as sw:
        path = str(sw.ports["a"].cfg.path)
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # its fd exists already
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_fd(), hard))
        try:
            probe.connect(path)  # queued in the backlog; accept() needs a new fd: EMFILE
            await wait_until(
                lambda: "cannot accept a front end" in caplog.text, what="the EMFILE warning"
            )
            assert sw.ports["a"].state == "listening"
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # Descriptors are back: the port accepts the waiting connection, then a real one.
        await wait_until(lambda: sw.ports["a"].connects == 1, what="the retried accept")
        probe.close()
        await wait_until(lambda: sw.ports["a"].session is None, what="the probe to leave")
        async with VGuest(path):
            await wait_until(lambda: sw.ports["a"].state == "up", what="port a up")
    assert not os.path.exists(path)


def test_fd_limit_is_raised_for_the_ports() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        got = raise_fd_limit(4)
        assert got == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert got >= min(hard if hard != resource.RLIM_INFINITY else got, fds_needed())
        assert got > 256 or hard <= 256
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
