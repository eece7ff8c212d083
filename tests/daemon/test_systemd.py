"""Running under systemd (issue 18): the notify protocol against a socket the test
listens on (PID 1 here is not systemd, so `systemd-run` cannot be used), `--check`, the
default config path, journal-friendly logs, and the shipped unit file."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import need_tool
from support.peers import vports
from support.switch_process import ROOT, SwitchProcess

from vswitch.cli import main
from vswitch.control import request


class NotifyListener:
    """What a service manager would read on $NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    async def next(self, timeout: float = 20.0) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self.sock, 4096), timeout)
        return dict(line.split("=", 1) for line in data.decode().splitlines())

    async def until(self, key: str) -> dict[str, str]:
        while True:
            msg = await self.next()
            if key in msg:
                return msg


async def test_notify_ready_reloading_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = NotifyListener(tmp_path / "notify.sock")
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    sw = SwitchProcess(tmp_path, vports(tmp_path, "ab"), log_level="info")
    await sw.start()
    try:
        ready = await listener.until("READY")
        assert ready == {"READY": "1", "STATUS": "2 ports: 2 listening"}
        # Ready means ready: the control socket answers and both sockets exist.
        assert (await request(sw.control, "version"))["version"]
        assert os.path.exists(sw.sock("a")) and os.path.exists(sw.sock("b"))

        assert sw.proc is not None
        sw.proc.send_signal(signal.SIGHUP)
        reloading = await listener.until("RELOADING")
        assert reloading["RELOADING"] == "1" and int(reloading["MONOTONIC_USEC"]) > 0
        assert (await listener.until("READY"))["READY"] == "1"

        await request(sw.control, "reload")  # `vswitch reload`, systemd's ExecReload
        assert "RELOADING" in await listener.until("RELOADING")
        assert (await listener.until("READY"))["STATUS"] == "2 ports: 2 listening"

        sw.proc.send_signal(signal.SIGTERM)
        assert (await listener.until("STOPPING"))["STOPPING"] == "1"
        assert await sw.stop() == 0
    finally:
        await sw.stop()
        listener.sock.close()


def cli(*args: str) -> object:
    return CliRunner().invoke(main, list(args), prog_name="vswitch")


def test_check_validates_and_exits(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        f"control: {tmp_path}/ctl.sock\n"
        f"ports:\n  - {{name: vm1, type: vhost-user, path: {tmp_path}/vm1.sock}}\n"
    )
    r = cli("run", "--check", str(good))
    assert r.exit_code == 0, r.output  # type: ignore[attr-defined]
    assert r.output == f"{good}: OK (1 port)\n"  # type: ignore[attr-defined]
    assert not (tmp_path / "vm1.sock").exists()  # nothing was started

    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("vm1.sock}", "vm1.sock, mtu: 1}"))
    r = cli("run", "--check", str(bad))
    assert r.exit_code == 2
    assert "mtu: 1 is out of range" in r.stderr  # type: ignore[attr-defined]

    # What the loader cannot see: a socket directory anyone may write.
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text(good.read_text().replace(f"{tmp_path}/vm1.sock", f"{open_dir}/vm1.sock"))
    r = cli("run", "--check", str(unsafe))
    assert r.exit_code == 2
    assert f"{open_dir} (the directory of {open_dir}/vm1.sock) is writable" in r.stderr  # type: ignore[attr-defined]


def test_run_without_a_config_reads_etc_vswitch(tmp_path: Path) -> None:
    if os.path.exists("/etc/vswitch/vswitch.yaml"):
        pytest.skip("this machine has an /etc/vswitch/vswitch.yaml of its own")
    r = cli("run", "--check")
    assert r.exit_code == 2
    assert r.stderr.startswith(  # type: ignore[attr-defined]
        "error: /etc/vswitch/vswitch.yaml: cannot read the file"
    )


def test_logs_to_the_journal_carry_priorities_and_no_timestamps(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    log = tmp_path / "stderr"
    with open(log, "wb") as err:
        st = os.fstat(err.fileno())
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        cfg.write_text(
            f"control: {tmp_path}/ctl.sock\n"
            f"ports:\n  - {{name: vm1, type: vhost-user, path: {tmp_path}/vm1.sock}}\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-m", "vswitch", "run", str(cfg)], stderr=err, env=env
        )
        try:
            for _ in range(200):
                if (tmp_path / "ctl.sock").exists():
                    break
                subprocess.run(["sleep", "0.05"], check=True)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
    lines = log.read_text().splitlines()
    assert lines, "nothing logged"
    for line in lines:
        assert re.match(r"^<[2-7]>", line), line
        assert not re.match(r"^<\d>\d{4}-\d\d-\d\d", line), line
    assert any(line.startswith("<6>vswitch ") and "running" in line for line in lines), lines


def test_unit_file_is_valid_for_systemd(tmp_path: Path) -> None:
    analyze = need_tool("systemd-analyze")
    vswitch = shutil.which("vswitch") or str(Path(sys.executable).parent / "vswitch")
    unit = (ROOT / "configs/systemd/vswitch.service").read_text()
    assert "Type=notify" in unit and "ExecReload=" in unit and "RuntimeDirectory=vswitch" in unit
    limit = int(re.search(r"^LimitNOFILE=(\d+)$", unit, re.M).group(1))  # type: ignore[union-attr]
    from vswitch.netsys.fds import fds_needed

    assert limit >= fds_needed()
    path = tmp_path / "vswitch.service"
    path.write_text(unit.replace("/usr/local/bin/vswitch", vswitch))
    r = subprocess.run([analyze, "verify", str(path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
