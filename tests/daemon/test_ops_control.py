"""The control API of a real Switch with traffic: ports, fdb (show, add, del, flush), stats,
the per-port MAC limit, and garbage on the control socket."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from support.ops import VGuest, config, frames, wait_until

from vswitch.control import request
from vswitch.control.server import MAX_REQUEST
from vswitch.daemon.switch import Switch
from vswitch.errors import ControlError

MA, MB, MS = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:5e"


@pytest.fixture
async def sw(tmp_path: Path) -> AsyncIterator[Switch]:
    async with Switch(config(tmp_path, ["a", "b"])) as s:
        yield s


async def ask(sw: Switch, cmd: str, **args: Any) -> Any:
    return await request(sw.config.control, cmd, **args)


async def two_guests(sw: Switch) -> tuple[VGuest, VGuest]:
    a, b = VGuest(sw.ports["a"].cfg.path), VGuest(sw.ports["b"].cfg.path)
    await a.start()
    await b.start()
    a.post_rx()
    b.post_rx()
    await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
    return a, b


async def test_ports_fdb_stats_with_traffic(sw: Switch) -> None:
    a, b = await two_guests(sw)
    try:
        await a.send(*frames(MB, MA, 10))
        await wait_until(lambda: sw.ports["b"].info()["counters"]["tx_packets"] == 10)
        assert b.received() == frames(MB, MA, 10)
        await b.send(*frames(MA, MB, 5))
        await a.drain_tx()
        await b.drain_tx()
        await wait_until(lambda: sw.ports["a"].info()["counters"]["tx_packets"] == 5)

        ports = {p["name"]: p for p in await ask(sw, "ports")}
        assert set(ports) == {"a", "b"}
        for p in ports.values():
            assert p["state"] == "up" and p["peer"] == "connected", p
            assert {"VERSION_1", "MRG_RXBUF"} <= set(p["features"])
            assert [q["size"] for q in p["queues"]] == [256, 256]
            assert p["mac_limit"] == 4096 and p["capture"] is False
        assert ports["a"]["counters"]["rx_packets"] == 10
        assert ports["a"]["counters"]["rx_bytes"] == 1000
        assert ports["b"]["counters"]["tx_packets"] == 10
        assert ports["b"]["counters"]["rx_packets"] == 5
        assert [p["name"] for p in await ask(sw, "ports", port="b")] == ["b"]

        fdb = await ask(sw, "fdb")
        assert [(e["mac"], e["port"], e["type"], e["vlan"]) for e in fdb] == [
            (MA, "a", "dynamic", 0),
            (MB, "b", "dynamic", 0),
        ]
        assert [e["mac"] for e in await ask(sw, "fdb", port="b")] == [MB]

        st = await ask(sw, "stats")
        assert st["switch"]["fdb_entries"] == 2
        assert st["switch"]["fdb_capacity"] >= 65536
        assert st["switch"]["flooded"] >= 1
        assert st["ports"]["a"] == (await ask(sw, "ports", port="a"))[0]["counters"]
        assert st["reloads"] == {"ok": 0, "failed": 0, "last_ok": pytest.approx(sw.start_time)}
        assert st["metrics"] is None and st["captures"] == {} and st["uptime"] >= 0
    finally:
        a.close()
        b.close()


async def test_fdb_add_del_flush(sw: Switch) -> None:
    a, b = await two_guests(sw)
    try:
        await a.send(*frames(MB, MA, 1))
        await b.send(*frames(MA, MB, 1))
        await wait_until(lambda: sw.dp is not None and sw.dp.switch_stats()["fdb_entries"] == 2)

        r = await ask(sw, "fdb-add", mac=MS.upper(), port="b")
        assert r == {"mac": MS, "vlan": 0, "port": "b", "type": "static"}
        table = {e["mac"]: e for e in await ask(sw, "fdb")}
        assert table[MS]["type"] == "static" and table[MS]["port"] == "b"
        # A static entry wins over learning: MS sending from port a does not move it.
        await a.send(*frames(MB, MS, 1))
        await a.drain_tx()
        assert {e["mac"]: e for e in await ask(sw, "fdb")}[MS]["port"] == "b"

        # Flushing b's learned addresses keeps its static one, and a's.
        assert (await ask(sw, "fdb-flush", port="b")) == {
            "flushed": 1,
            "port": "b",
            "static": False,
            "vlan": None,
        }
        assert {e["mac"] for e in await ask(sw, "fdb")} == {MA, MS}
        assert (await ask(sw, "fdb-del", mac=MS)) == {"mac": MS, "vlan": 0, "port": "b"}
        with pytest.raises(ControlError, match=f"{MS} vlan 0 is not in the MAC table"):
            await ask(sw, "fdb-del", mac=MS)
        await ask(sw, "fdb-add", mac=MS, port="a")
        assert (await ask(sw, "fdb-flush"))["flushed"] == 1  # MA; static MS stays
        assert (await ask(sw, "fdb-flush", static=True))["flushed"] == 1
        assert await ask(sw, "fdb") == []

        errors = {
            ("fdb-add", (("mac", "nonsense"), ("port", "a"))): "mac: 'nonsense' is not a MAC",
            ("fdb-add", (("mac", "01:00:5e:00:00:01"), ("port", "a"))): "multicast",
            ("fdb-add", (("mac", MS), ("port", "zz"))): r"no port 'zz' \(ports: a, b\)",
            ("fdb-add", (("mac", MS), ("port", "a"), ("vlan", 5000))): "vlan must be",
            ("fdb-add", (("mac", MS),)): "bad arguments for 'fdb-add'",
            ("fdb-flush", (("port", "zz"),)): "no port 'zz'",
            ("fdb-flush", (("static", "yes"),)): "static must be true or false",
            ("fdb", (("port", 3),)): "port must be a port name",
            ("nope", ()): "unknown command 'nope'",
        }
        for (cmd, args), msg in errors.items():
            with pytest.raises(ControlError, match=msg):
                await ask(sw, cmd, **dict(args))
    finally:
        a.close()
        b.close()


async def test_mac_limit_caps_learning_per_port(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["a", "b"])
    ports = [cfg.ports[0].model_copy(update={"mac_limit": 2}), cfg.ports[1]]
    async with Switch(cfg.model_copy(update={"ports": tuple(ports)})) as sw:
        a, b = await two_guests(sw)
        try:
            sources = [f"02:00:00:00:01:{i:02x}" for i in range(5)]
            for src in sources:
                await a.send(*frames(MB, src, 1))
            await a.drain_tx()
            fdb = await ask(sw, "fdb")
            assert [e["mac"] for e in fdb] == sources[:2]
            c = (await ask(sw, "ports", port="a"))[0]["counters"]
            assert c["fdb_count"] == 2 and c["fdb_limit"] == 3
            assert c["rx_packets"] == 5  # frames from unlearned sources still flow (flooded)
            assert (await ask(sw, "ports", port="b"))[0]["counters"]["tx_packets"] == 5
        finally:
            a.close()
            b.close()


class Raw:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, raw: bytes) -> dict[str, Any]:
        self.writer.write(raw)
        await self.writer.drain()
        line = await asyncio.wait_for(self.reader.readline(), 5)
        reply = json.loads(line)
        assert isinstance(reply, dict)
        return reply


async def test_garbage_on_the_control_socket(sw: Switch) -> None:
    path = str(sw.config.control)
    conn = Raw(*await asyncio.open_unix_connection(path))
    for raw, error in [
        (b"\x00\x01\x02 garbage\n", "request is not valid JSON"),
        (b"GET / HTTP/1.1\n", "request is not valid JSON"),
        (b'{"cmd": "ports", "args": "all"}\n', '"args" must be a JSON object'),
        (b'{"cmd": "fdb-flush", "args": {"port": ["a"]}}\n', "port must be a port name"),
        (b'{"cmd": "capture", "args": {"port": "a", "count": -1}}\n', "count must be"),
        (b'{"cmd": "capture", "args": {"port": "a", "direction": "up"}}\n', "direction must"),
        (b'{"cmd": "fdb", "args": {"colour": 1}}\n', "bad arguments for 'fdb'"),
        (b"\xff\xfe\n", "request is not valid UTF-8"),
        # Nesting deep enough to exhaust the decoder's recursion (issue 12).
        (b"[" * 200_000 + b"]" * 200_000 + b"\n", "request is nested too deeply"),
        # Numbers JSON cannot carry but Python's decoder accepts: never a capture that
        # cannot end (issue 12).
        (b'{"cmd": "capture", "args": {"port": "a", "duration": NaN}}\n', "duration must"),
        (b'{"cmd": "capture", "args": {"port": "a", "duration": Infinity}}\n', "duration must"),
        (b'{"cmd": "capture", "args": {"port": "a", "duration": 1e300}}\n', "duration must"),
    ]:
        reply = await conn.send(raw)
        assert reply["ok"] is False and error in reply["error"], (raw, reply)
    assert (await conn.send(b'{"id": 3, "cmd": "version"}\n'))["id"] == 3
    # A line over the limit: an error, then the server closes that connection only.
    conn.writer.write(b"x" * (MAX_REQUEST + 10) + b"\n")
    reply = json.loads(await asyncio.wait_for(conn.reader.readline(), 5))
    assert "longer than" in reply["error"]
    assert await asyncio.wait_for(conn.reader.read(), 5) == b""
    # A client that sends half a line and vanishes.
    _, w = await asyncio.open_unix_connection(path)
    w.write(b'{"cmd": "por')
    w.close()
    # The daemon carries on.
    assert [p["name"] for p in await ask(sw, "ports")] == ["a", "b"]
    assert sw.ports["a"].info()["state"] == "listening"
