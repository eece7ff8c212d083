"""`vswitch ports` says when a vhost-user port has had no front end for a while, and who can
reach its socket: the only explanation a user gets when QEMU cannot open the socket (libvirt
runs it as libvirt-qemu), since QEMU then retries for ever and `virsh start` hangs."""

from __future__ import annotations

import grp
import json
import os
import pwd
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from support.ops import VGuest, run_in, switch_in_thread, wait_until

from vswitch.cli import main
from vswitch.cli.output import format_ports
from vswitch.config import load_config
from vswitch.daemon.switch import Switch

ME = pwd.getpwuid(os.geteuid()).pw_name
MY_GROUP = grp.getgrgid(os.getegid()).gr_name


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[tuple[Switch, Any]]:
    """Port a listens (0660, our group), port b connects to a socket nobody listens on."""
    ports = [
        {"name": "a", "type": "vhost-user", "path": str(tmp_path / "a.sock"),
         "socket_mode": "0660", "group": MY_GROUP},
        {"name": "b", "type": "vhost-user", "path": str(tmp_path / "b.sock"), "mode": "client"},
        {"name": "c", "type": "vhost-user", "path": str(tmp_path / "c.sock")},
    ]  # fmt: skip
    cfg = tmp_path / "vswitch.yaml"
    cfg.write_text(yaml.safe_dump({"control": str(tmp_path / "ctl.sock"), "ports": ports}))
    with switch_in_thread(load_config(cfg)) as (sw, loop):
        yield sw, loop


def cli(sw: Switch, *args: str) -> str:
    result = CliRunner().invoke(
        main, [*args, "--control", str(sw.config.control)], prog_name="vswitch"
    )
    assert result.exit_code == 0, (result.output, result.exception)
    return result.stdout


def ports_json(sw: Switch) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in json.loads(cli(sw, "ports", "--json"))}


def age(sw: Switch, name: str, seconds: float) -> None:
    """Pretend the port has waited `seconds` longer (rather than sleep that long)."""
    port: Any = sw.ports[name]
    port._idle_since -= seconds


def test_json_idle_seconds_and_socket(switch: tuple[Switch, Any], tmp_path: Path) -> None:
    sw, loop = switch
    data = ports_json(sw)
    a, b = data["a"], data["b"]
    assert a["state"] == "listening" and b["state"] == "connecting"
    assert 0 <= a["idle_seconds"] < 10 and 0 <= b["idle_seconds"] < 10
    st = os.stat(tmp_path / "a.sock")
    assert a["socket"] == {
        "owner": ME, "group": MY_GROUP, "uid": st.st_uid, "gid": st.st_gid,
        "mode": "0660", "is_socket": True,
    }  # fmt: skip
    assert data["c"]["socket"]["mode"] == "0600"
    assert b["socket"] is None  # nobody listens at b's path: no file

    async def connect_and_leave() -> None:
        async with VGuest(tmp_path / "a.sock"):
            await wait_until(lambda: sw.ports["a"].info()["peer"] == "connected")
            assert sw.ports["a"].info()["idle_seconds"] is None
        await wait_until(lambda: sw.ports["a"].info()["peer"] is None)

    age(sw, "a", 100)
    run_in(loop, connect_and_leave())
    # The clock starts again when the front end leaves.
    assert 0 <= ports_json(sw)["a"]["idle_seconds"] < 10


def test_client_port_sees_the_front_ends_socket(switch: tuple[Switch, Any], tmp_path: Path) -> None:
    """A socket at b's path that accepts but never speaks: the switch is connected, so the
    port is not idle; the file it shows is the front end's."""
    sw, loop = switch
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "b.sock"))
    os.chmod(tmp_path / "b.sock", 0o640)
    listener.listen(1)
    try:
        run_in(loop, wait_until(lambda: sw.ports["b"].info()["peer"] == "connected", 15))
        b = ports_json(sw)["b"]
        assert b["idle_seconds"] is None
        assert b["socket"]["mode"] == "0640" and b["socket"]["owner"] == ME
    finally:
        listener.close()


def test_human_note_after_ten_seconds(switch: tuple[Switch, Any], tmp_path: Path) -> None:
    sw, _ = switch
    assert "no front end" not in cli(sw, "ports")  # just started: no note yet
    age(sw, "a", 42)
    age(sw, "b", 125)
    age(sw, "c", 11)
    lines = cli(sw, "ports").splitlines()
    assert lines[1].split()[:3] == ["a", "vhost-user", "listening"]
    notes = [line.strip() for line in lines if "no front end" in line]
    assert notes == [
        f"no front end for 42 s; socket {ME}:{MY_GROUP} 0660: user {ME} and group {MY_GROUP} "
        "can connect",
        f"no front end for 2m05s; no socket at {tmp_path / 'b.sock'} yet (the front end "
        "listens there)",
        f"no front end for 11 s; socket {ME}:{MY_GROUP} 0600: "
        + ("only root can connect" if ME == "root" else f"user {ME} can connect")
        + " (libvirt runs QEMU as libvirt-qemu: see docs/libvirt.md)",
    ]


def test_format_ports_notes() -> None:
    """The note from the JSON fields alone (what a client of an older daemon lacks: none)."""

    def port(**kw: Any) -> dict[str, Any]:
        return {"name": "vm1", "type": "vhost-user", "state": "listening", "mode": "server",
                "path": "/run/vswitch/vm1.sock", **kw}  # fmt: skip

    root_only = {"owner": "root", "group": "root", "mode": "0600"}
    shared = {"owner": "root", "group": "libvirt-qemu", "mode": "0660"}
    out = format_ports([port(idle_seconds=3600.5, socket=root_only)])
    assert out.splitlines()[-1] == (
        "     no front end for 1h00m; socket root:root 0600: only root can connect "
        "(libvirt runs QEMU as libvirt-qemu: see docs/libvirt.md)"
    )
    out = format_ports([port(idle_seconds=10.0, socket=shared)])
    assert out.splitlines()[-1] == (
        "     no front end for 10 s; socket root:libvirt-qemu 0660: user root and group "
        "libvirt-qemu can connect"
    )
    assert "no front end" not in format_ports([port(idle_seconds=9.9, socket=shared)])
    assert "no front end" not in format_ports([port(idle_seconds=None, socket=shared)])
    assert "no front end" not in format_ports([port()])  # a daemon without the fields
    gone = format_ports([port(idle_seconds=20, socket=None)])
    assert "the socket /run/vswitch/vm1.sock is missing" in gone
    theirs = {"owner": "libvirt-qemu", "group": "libvirt-qemu", "mode": "0775"}
    client = format_ports([port(mode="client", state="connecting", idle_seconds=30,
                                socket=theirs)])  # fmt: skip
    assert client.splitlines()[-1] == (
        "     no front end for 30 s; the front end's socket libvirt-qemu:libvirt-qemu 0775"
    )
