"""The `vswitch` command through click's CliRunner, against a real ControlServer."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from vswitch import __version__
from vswitch.cli import main
from vswitch.config import Config
from vswitch.control import ControlServer
from vswitch.errors import StartupError

COUNTERS = {
    "rx_packets": 10,
    "rx_bytes": 1280,
    "tx_packets": 12,
    "tx_bytes": 123456789,
    "rx_drop_runt": 1,
    "tx_drop_no_buffer": 2,
    "kicks": 99,
}
PORTS = [
    {
        "name": "vm1",
        "type": "vhost-user",
        "path": "/tmp/vswitch/vm1.sock",
        "state": "up",
        "peer": "connected",
        "features": ["VERSION_1", "MRG_RXBUF"],
        "protocol_features": ["MQ", "REPLY_ACK"],
        "mtu": 1500,
        "queues": [
            {"index": 0, "size": 256, "enabled": True, "ready": True},
            {"index": 1, "size": 256, "enabled": True, "ready": True},
        ],
        "counters": COUNTERS,
        "error": None,
    },
    {
        "name": "vm2",
        "type": "vhost-user",
        "path": "/tmp/vswitch/vm2.sock",
        "state": "broken",
        "peer": None,
        "features": [],
        "protocol_features": [],
        "mtu": 9000,
        "queues": [],
        "counters": {},
        "error": "descriptor 7 outside guest memory",
    },
]
FDB = [
    {"mac": "52:54:00:00:00:02", "vlan": 0, "port": "vm2", "age": 3, "type": "dynamic"},
    {"mac": "52:54:00:00:00:01", "vlan": 0, "port": "vm1", "age": 0, "type": "static"},
]


async def fake_daemon(req: dict[str, Any]) -> Any:
    return {"ports": PORTS, "fdb": FDB}[req["cmd"]]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Path]:
    """A ControlServer with canned answers, on its own loop in a background thread."""
    path = tmp_path / "ctl.sock"
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    stop = asyncio.Event()

    async def serve() -> None:
        async with ControlServer(path, fake_daemon):
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(5)
    yield path
    loop.call_soon_threadsafe(stop.set)
    thread.join(5)
    loop.close()


def cli(*args: str) -> Any:
    return CliRunner().invoke(main, list(args), prog_name="vswitch")


def test_version() -> None:
    result = cli("--version")
    assert result.exit_code == 0
    assert result.output == f"vswitch, version {__version__}\n"


@pytest.mark.parametrize("args", [[], ["run"], ["ports"], ["fdb"]])
def test_help(args: list[str]) -> None:
    result = cli(*args, "--help")
    assert result.exit_code == 0
    assert result.output.startswith("Usage: vswitch")
    assert "--help" in result.output


def test_run_bad_config_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"control: {tmp_path}/ctl.sock\n"
        f"ports:\n  - {{name: vm1, type: vhost-user, path: {tmp_path}/vm1.sock, mtu: 1}}\n"
    )
    result = cli("run", str(bad))
    assert result.exit_code == 2
    assert result.stderr == (
        f"error: {bad}: ports[0] (vm1).mtu: 1 is out of range 68..9000 (e.g. 1500)\n"
    )
    assert result.stdout == ""
    assert sorted(os.listdir(tmp_path)) == ["bad.yaml"]


def test_run_missing_config(tmp_path: Path) -> None:
    result = cli("run", str(tmp_path / "none.yaml"))
    assert result.exit_code == 2
    assert "cannot read the file: No such file or directory" in result.stderr


def fake_switch_module(
    monkeypatch: pytest.MonkeyPatch, fail: str | None = None, signal_at_start: bool = False
) -> dict[str, Any]:
    """Stand in for vswitch.daemon.switch (the contract: async with Switch(cfg) as sw, ...)."""
    seen: dict[str, Any] = {}

    class Switch:
        def __init__(self, config: Config, notify: object = None) -> None:
            seen["config"] = config
            self._stopped = asyncio.Event()

        async def __aenter__(self) -> Switch:
            if fail:
                raise StartupError(fail)
            if signal_at_start:
                os.kill(os.getpid(), signal.SIGTERM)
                await asyncio.sleep(0.05)  # the handler runs while we are still starting
            return self

        async def __aexit__(self, *exc: object) -> None:
            seen["exited"] = True

        def stop(self) -> None:
            seen["stopped"] = True
            self._stopped.set()

        async def serve_forever(self) -> None:
            if not signal_at_start:
                asyncio.get_running_loop().call_later(0.05, os.kill, os.getpid(), signal.SIGTERM)
            await asyncio.wait_for(self._stopped.wait(), 10)

    module = types.ModuleType("vswitch.daemon.switch")
    module.Switch = Switch  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "vswitch.daemon.switch", module)
    return seen


def good_config(tmp_path: Path) -> Path:
    path = tmp_path / "good.yaml"
    path.write_text(
        f"control: {tmp_path}/ctl.sock\n"
        f"ports:\n  - {{name: vm1, type: vhost-user, path: {tmp_path}/vm1.sock}}\n"
    )
    return path


def test_run_stops_cleanly_on_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fake_switch_module(monkeypatch)
    result = cli("run", str(good_config(tmp_path)), "--log-level", "debug")
    assert result.exit_code == 0, result.output
    assert seen["config"].ports[0].name == "vm1"
    assert seen["stopped"] and seen["exited"]
    assert "INFO SIGTERM received, stopping" in result.stderr
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_run_signal_during_startup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = fake_switch_module(monkeypatch, signal_at_start=True)
    result = cli("run", str(good_config(tmp_path)))
    assert result.exit_code == 0, result.output
    assert seen["stopped"] and seen["exited"]


def test_run_startup_error_exits_1(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_switch_module(monkeypatch, fail="another vswitch is running on /x.sock?")
    result = cli("run", str(good_config(tmp_path)))
    assert result.exit_code == 1
    assert result.stderr.endswith("error: another vswitch is running on /x.sock?\n")


def test_no_daemon_exits_1() -> None:
    result = cli("ports", "--control", "/nonexistent")
    assert result.exit_code == 1
    assert result.stderr == (
        "error: no vswitch daemon on /nonexistent (is `vswitch run` running?)\n"
    )
    assert cli("fdb", "--control", "/nonexistent").exit_code == 1


def test_control_and_config_together(tmp_path: Path) -> None:
    result = cli("ports", "--control", "/x", "--config", str(good_config(tmp_path)))
    assert result.exit_code == 2
    assert "give --control or --config, not both" in result.stderr


@pytest.mark.parametrize(("cmd", "data"), [("ports", PORTS), ("fdb", FDB)])
def test_json_output(daemon: Path, cmd: str, data: Any) -> None:
    result = cli(cmd, "--control", str(daemon), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == data


def test_ports_table(daemon: Path) -> None:
    result = cli("ports", "--control", str(daemon))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[:3] == [
        "NAME  TYPE        STATE   RX-PKTS  RX-BYTES  TX-PKTS   TX-BYTES  DROPS",
        "vm1   vhost-user  up           10      1280       12  123456789      3",
        "vm2   vhost-user  broken        0         0        0          0      0",
    ]
    assert lines[3] == ""
    assert lines[4] == (
        "vm1: peer connected, mtu 1500, features VERSION_1 MRG_RXBUF, "
        "protocol features MQ REPLY_ACK"
    )
    assert "queues 0 (size 256, enabled, ready), 1 (size 256, enabled, ready)" in lines[5]
    assert lines[6].startswith("vm2: peer none, mtu 9000, features -")
    assert lines[7].strip() == "error: descriptor 7 outside guest memory"


def test_fdb_table(daemon: Path) -> None:
    result = cli("fdb", "--control", str(daemon))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "MAC                VLAN  PORT  TYPE     AGE",
        "52:54:00:00:00:01     0  vm1   static     -",
        "52:54:00:00:00:02     0  vm2   dynamic    3",
    ]


def test_control_path_from_config(daemon: Path, tmp_path: Path) -> None:
    result = cli("fdb", "--config", str(good_config(tmp_path)))  # control: tmp_path/ctl.sock
    assert result.exit_code == 0, result.output
    assert "52:54:00:00:00:01" in result.stdout
