"""vswitch.client.Client against a real `vswitch run`: every method, the JSON shapes the
CLI's --json prints, the protocol check; and runtime port changes (`vswitch port add/del`,
with and without --save: the file then loads and has the port, comments kept)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from support.ops import Daemon, VGuest, frames, wait_until

import vswitch
from vswitch.client import Client, CommandFailed, IncompatibleServer
from vswitch.config import load_config
from vswitch.errors import ControlError

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
CONFIG = """\
# the lab switch
control: {tmp}/ctl.sock
switch:
  mac_age: 300    # seconds
ports:
  - name: a       # first guest
    type: vhost-user
    path: {tmp}/a.sock
  # the second guest
  - name: b
    type: vhost-user
    path: {tmp}/b.sock
    socket_mode: "0600"
"""


@pytest.fixture
async def daemon(tmp_path: Path) -> Any:
    cfg = tmp_path / "vswitch.yaml"
    cfg.write_text(CONFIG.format(tmp=tmp_path))
    async with Daemon(cfg, tmp_path / "ctl.sock") as d:
        yield d


async def vswitch_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vswitch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def cli_json(ctl: Path, *args: str) -> Any:
    rc, out, err = await vswitch_cli(*args, "--control", str(ctl), "--json")
    assert rc == 0, err
    return json.loads(out)


def scrub(v: Any) -> Any:
    """Drop what changes between two looks (ages, uptime, counters of the poll thread)."""
    if isinstance(v, dict):
        return {k: scrub(x) for k, x in v.items() if k not in ("age", "uptime", "switch")}
    if isinstance(v, list):
        return [scrub(x) for x in v]
    return v


async def test_every_method_against_a_real_daemon(daemon: Daemon, tmp_path: Path) -> None:
    ctl = daemon.control
    async with Client(ctl) as c:
        hello = c.server
        assert hello is not None
        assert hello["version"] == vswitch.__version__ and hello["protocol"] == vswitch.PROTOCOL
        assert hello["config"] == str(daemon.config)
        assert {"hello", "ports", "fdb", "capture", "port-add", "port-del"} <= set(
            hello["commands"]
        )
        assert await c.hello() == hello
        assert await c.version() == vswitch.__version__

        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
        await a.start()
        await b.start()
        a.post_rx()
        b.post_rx()
        await wait_until(
            lambda: _all_up(c), what="both ports up"
        )
        await a.send(*frames(MB, MA, 3))
        await a.drain_tx()

        ports = await c.ports()
        assert [p["name"] for p in ports] == ["a", "b"]
        assert scrub(await c.ports("a")) == scrub([ports[0]]) == scrub(
            await cli_json(ctl, "ports", "a")
        )
        fdb = await c.fdb()
        assert [(e["mac"], e["port"], e["type"]) for e in fdb] == [(MA, "a", "dynamic")]
        assert scrub(fdb) == scrub(await cli_json(ctl, "fdb"))
        assert await c.fdb_add(MB, "b") == {"mac": MB, "vlan": 0, "port": "b", "type": "static"}
        assert await c.fdb("b") == [
            {"mac": MB, "vlan": 0, "port": "b", "age": 0, "type": "static"}
        ]
        assert await c.fdb_del(MB) == {"mac": MB, "vlan": 0, "port": "b"}
        assert await c.fdb_flush("a") == {
            "flushed": 1, "port": "a", "static": False, "vlan": None
        }  # fmt: skip
        st = await c.stats()
        assert set(st) == {
            "switch", "ports", "uptime", "reloads", "metrics", "captures", "vlans"
        }  # fmt: skip
        assert scrub(st)["ports"].keys() == scrub(await cli_json(ctl, "stats"))["ports"].keys()
        r = await c.reload()
        assert r == {"file": str(daemon.config), "changes": [], "warnings": []}

        # A capture of both ports, with a filter, as a stream of frames.
        cap = await c.capture("a", "b", filter="ether src " + MA, count=4)
        assert cap.info["ports"] == ["a", "b"] and cap.info["filter"] == "ether src " + MA
        await a.send(*frames(MB, MA, 2))
        await b.send(*frames(MA, MB, 5))  # from MB: filtered out
        async with cap:
            got = [(f.name, f.direction, f.length) async for f in cap.frames()]
        assert sorted(got) == [("a", 1, 100)] * 2 + [("b", 2, 100)] * 2
        assert cap.dropped == 0 and cap.filtered == 10  # the 5 from MB: rx on b, tx on a

        # Runtime ports.
        added = await c.add_port("c", path=str(tmp_path / "c.sock"), mtu=9000)
        assert added["changes"] == [f"port c added (vhost-user, {tmp_path}/c.sock)"]
        assert added["port"] is not None and added["port"]["mtu"] == 9000
        assert added["saved"] is None
        assert [p["name"] for p in await c.ports()] == ["a", "b", "c"]
        removed = await c.del_port("c")
        assert removed["changes"] == ["port c removed"]
        with pytest.raises(CommandFailed, match=r"no port 'zz' \(ports: a, b\)"):
            await c.del_port("zz")
        with pytest.raises(CommandFailed, match="no port 'zz'"):
            await c.ports("zz")
        # Any command by name, as the protocol has it.
        assert (await c.call("version"))["version"] == vswitch.__version__
        a.close()
        b.close()


async def _all_up(c: Client) -> bool:
    return all(p["state"] == "up" for p in await c.ports())


async def test_the_protocol_check(daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    import vswitch.client as client

    monkeypatch.setattr(client, "PROTOCOL", 99)
    with pytest.raises(IncompatibleServer, match=r"speaks protocol 1 .*this client speaks 99"):
        async with Client(daemon.control):
            pass
    async with Client(daemon.control, check=False) as c:  # the caller decides
        assert (await c.hello())["protocol"] == 1
    with pytest.raises(ControlError, match="no vswitch daemon"):
        async with Client(daemon.control.with_name("nothing.sock")):
            pass


async def test_port_add_and_del_from_the_cli(daemon: Daemon, tmp_path: Path) -> None:
    ctl, cfg = str(daemon.control), daemon.config
    before = cfg.read_text()
    # Without --save: the running switch only.
    rc, out, err = await vswitch_cli(
        "port", "add", "c", "--path", str(tmp_path / "c.sock"), "--mtu", "9000",
        "--socket-mode", "0660", "--mac-limit=64", "--control", ctl,
    )  # fmt: skip
    assert rc == 0, err
    assert out == f"port c added (vhost-user, {tmp_path}/c.sock)\n"
    assert cfg.read_text() == before
    (c,) = await cli_json(daemon.control, "ports", "c")
    assert (c["mtu"], c["mac_limit"], c["state"]) == (9000, 64, "listening")
    assert oct((tmp_path / "c.sock").stat().st_mode & 0o777) == "0o660"
    async with VGuest(tmp_path / "c.sock") as g:  # a guest can attach at once
        g.post_rx()
        await wait_until(lambda: _state(daemon.control, "c", "up"), what="c up")

    # Refused like the file would be, with its one-line messages; nothing changes.
    rc, _, err = await vswitch_cli("port", "add", "d", "--path", "d.sock", "--mtu", "0",
                                   "--control", ctl)  # fmt: skip
    assert rc == 1 and "port-add: ports[3] (d).mtu: 0 is out of range 68..9000" in err
    rc, _, err = await vswitch_cli("port", "add", "d", "--path", str(tmp_path / "a.sock"),
                                   "--control", ctl)  # fmt: skip
    assert rc == 1 and "is already used by ports[0] (a).path" in err
    rc, _, err = await vswitch_cli("port", "add", "d", "--path", "d.sock", "--colour", "red",
                                   "--control", ctl)  # fmt: skip
    assert rc == 1 and "ports[3] (d).colour: unknown key" in err
    assert [p["name"] for p in await cli_json(daemon.control, "ports")] == ["a", "b", "c"]

    # A reload of the file forgets what was not saved.
    await cli_json(daemon.control, "reload")
    assert [p["name"] for p in await cli_json(daemon.control, "ports")] == ["a", "b"]

    # With --save: the file gains the port, keeps its comments, and loads.
    rc, out, err = await vswitch_cli(
        "port", "add", "d", "--path", str(tmp_path / "d.sock"), "--mode", "client",
        "--save", "--control", ctl,
    )  # fmt: skip
    assert rc == 0, err
    assert out.splitlines()[-1] == f"saved to {cfg}"
    text = cfg.read_text()
    assert text.startswith(before)  # everything the user wrote, comments included
    assert text[len(before):] == (
        f"  - name: d\n    type: vhost-user\n    path: {tmp_path}/d.sock\n    mode: client\n"
    )
    loaded = load_config(cfg)
    assert [(p.name, p.mode) for p in loaded.ports] == [
        ("a", "server"), ("b", "server"), ("d", "client")
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no leftovers
    r = await cli_json(daemon.control, "reload")
    assert r["changes"] == []  # the file and the switch agree

    # port del --save: gone from both; the rest of the file as it was.
    rc, out, err = await vswitch_cli("port", "del", "d", "--save", "--control", ctl)
    assert rc == 0, err
    assert out == f"port d removed\nsaved to {cfg}\n"
    assert cfg.read_text() == before
    rc, out, err = await vswitch_cli("port", "del", "b", "--save", "--control", ctl, "--json")
    assert rc == 0, err
    assert json.loads(out) == {"changes": ["port b removed"], "warnings": [], "saved": str(cfg)}
    assert "# the second guest" not in cfg.read_text() or "name: b" not in cfg.read_text()
    assert [p.name for p in load_config(cfg).ports] == ["a"]
    # The last port cannot go: a config has at least one.
    rc, _, err = await vswitch_cli("port", "del", "a", "--control", ctl)
    assert rc == 1 and "port-del: ports: no ports" in err
    # A daemon restarted on the saved file has what was saved.
    await daemon.stop()
    await daemon.start()
    assert [p["name"] for p in await cli_json(daemon.control, "ports")] == ["a"]


async def _state(ctl: Path, name: str, state: str) -> bool:
    async with Client(ctl, check=False) as c:
        return (await c.ports(name))[0]["state"] == state
