"""Hot reload of a real Switch: the difference is applied, the rest keeps forwarding, and a
bad file changes nothing.  (test_ops_daemon.py reloads the real daemon with SIGHUP and the
CLI; test_ops_qemu.py does it under two pinging guests.)"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.ops import VGuest, frames, wait_until

from vswitch.config import load_config
from vswitch.control import Client, request
from vswitch.daemon.switch import Switch
from vswitch.errors import ControlError
from vswitch.logs import current_level

MA, MB, MC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
S1, S2 = "52:54:00:00:00:01", "52:54:00:00:00:02"


def port(tmp: Path, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "vhost-user", "path": str(tmp / f"{name}.sock"), **kw}


def write(tmp: Path, ports: list[dict[str, Any]], **extra: Any) -> Path:
    path = tmp / "vswitch.yaml"
    path.write_text(yaml.safe_dump({"control": str(tmp / "ctl.sock"), "ports": ports, **extra}))
    return path


async def forwards(sw: Switch, a: VGuest, b: VGuest, n: int = 5) -> None:
    """n frames from a reach b (b's MAC is known, so they are not flooded)."""
    before = sw.ports[b_name(sw, b)].info()["counters"]["tx_packets"]
    await a.send(*frames(MB, MA, n))
    await wait_until(
        lambda: sw.ports[b_name(sw, b)].info()["counters"]["tx_packets"] == before + n,
        what="frames to reach b",
    )
    assert b.received()[-n:] == frames(MB, MA, n)


def b_name(sw: Switch, g: VGuest) -> str:
    return next(n for n, p in sw.ports.items() if str(p.cfg.path) == g.fe.path)


@pytest.fixture(autouse=True)
def keep_log_level() -> Any:
    level = logging.getLogger().level
    yield
    logging.getLogger().setLevel(level)


async def test_reload_applies_only_the_difference(tmp_path: Path, caplog: Any) -> None:
    caplog.set_level(logging.INFO)
    cfg = write(tmp_path, [port(tmp_path, "a", static_macs=[S1]), port(tmp_path, "b")])
    async with Switch(load_config(cfg)) as sw:
        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
        await a.start()
        await b.start()
        try:
            a.post_rx()
            b.post_rx(250)
            await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
            await b.send(*frames(MA, MB, 1))  # b's MAC is learned
            await forwards(sw, a, b)
            pa, pb = sw.ports["a"], sw.ports["b"]

            # A new port c; a changes in place; switch settings; metrics appear.
            write(
                tmp_path,
                [
                    port(tmp_path, "a", static_macs=[S2], mtu=9000, mac_limit=10),
                    port(tmp_path, "b"),
                    port(tmp_path, "c", mac_limit=0),
                ],
                switch={"mac_age": 60, "fdb_size": 1024, "log_level": "debug"},
                metrics={"listen": "127.0.0.1:0"},
            )
            r = await request(sw.config.control, "reload")
            assert r["file"] == str(cfg)
            assert r["changes"] == [
                f"port a: mtu 1500 -> 9000, mac_limit 4096 -> 10, static_macs [{S1}] -> [{S2}]",
                f"port c added (vhost-user, {tmp_path / 'c.sock'})",
                "switch.mac_age 300 -> 60",
                "switch.log_level info -> debug",
                "metrics.listen none -> 127.0.0.1:0",
            ]
            assert r["warnings"] == [
                "switch.fdb_size 65536 -> 1024 not applied: the MAC table is sized at start; "
                "restart vswitch to resize it"
            ]
            assert current_level() == "debug"
            # Untouched: the same port objects, the same front ends, still forwarding.
            assert sw.ports["a"] is pa and sw.ports["b"] is pb
            assert pa.connects == pb.connects == 1
            await forwards(sw, a, b)
            info = (await request(sw.config.control, "ports", port="a"))[0]
            assert info["mtu"] == 9000 and info["mac_limit"] == 10
            table = {e["mac"]: e for e in await request(sw.config.control, "fdb")}
            assert S1 not in table and table[S2] == {
                "mac": S2, "vlan": 0, "port": "a", "age": table[S2]["age"], "type": "static",
            }  # fmt: skip
            assert sw.ports["c"].info()["state"] == "listening"
            assert sw.config.switch.fdb_size == 65536 and sw.config.switch.mac_age == 60
            assert sw.dp is not None and sw.dp.switch_stats()["fdb_capacity"] >= 65536
            assert (await request(sw.config.control, "stats"))["metrics"].startswith("127.0.0.1:")
            logged = [r.getMessage() for r in caplog.records if r.name == "vswitch.reload"]
            assert logged == [f"reload: {c}" for c in r["changes"][:3] + r["warnings"]] + [
                f"reload: {c}" for c in r["changes"][3:]
            ]

            # The new port forwards too.
            c = VGuest(tmp_path / "c.sock")
            await c.start()
            c.post_rx()
            await wait_until(lambda: sw.ports["c"].info()["state"] == "up")
            await c.send(*frames(MA, MC, 2))
            await wait_until(lambda: pa.info()["counters"]["tx_packets"] >= 2)
            c.close()

            # Remove c and restart b on a new path: b's guest must reconnect; a is untouched.
            write(
                tmp_path,
                [
                    port(tmp_path, "a", static_macs=[S2], mtu=9000, mac_limit=10),
                    {**port(tmp_path, "b"), "path": str(tmp_path / "b2.sock")},
                ],
                switch={"mac_age": 60, "fdb_size": 1024, "log_level": "debug"},
                metrics={"listen": "127.0.0.1:0"},
            )
            r = await sw.reload()
            assert r["changes"] == [
                "port c removed",
                f"port b restarted: path {tmp_path / 'b.sock'} -> {tmp_path / 'b2.sock'}",
            ]
            assert set(sw.ports) == {"a", "b"} and sw.ports["a"] is pa
            assert not (tmp_path / "c.sock").exists() and not (tmp_path / "b.sock").exists()
            assert (tmp_path / "b2.sock").exists()
            assert sw.ports["b"].info()["state"] == "listening"
            assert MB not in {e["mac"] for e in await request(sw.config.control, "fdb")}
            assert pa.info()["state"] == "up" and pa.connects == 1
            assert (await request(sw.config.control, "stats"))["reloads"]["ok"] == 2
        finally:
            a.close()
            b.close()


async def test_a_bad_file_is_refused_and_nothing_changes(tmp_path: Path, caplog: Any) -> None:
    cfg = write(tmp_path, [port(tmp_path, "a"), port(tmp_path, "b")])
    async with Switch(load_config(cfg)) as sw:
        before = sw.config
        pa = sw.ports["a"]
        write(tmp_path, [port(tmp_path, "a", mtu=1), port(tmp_path, "b"), port(tmp_path, "c")])
        with pytest.raises(ControlError) as exc:
            await request(sw.config.control, "reload")
        assert str(exc.value) == (
            "reload refused, the running configuration stays:\n"
            f"{cfg}: ports[0] (a).mtu: 1 is out of range 68..9000 (e.g. 1500)"
        )
        assert any(
            r.levelname == "ERROR" and "reload refused" in r.getMessage() for r in caplog.records
        )
        cfg.write_text("ports: [\n")
        with pytest.raises(ControlError, match="YAML syntax error"):
            await sw.reload()
        cfg.unlink()
        with pytest.raises(ControlError, match="cannot read the file"):
            await sw.reload()
        assert sw.config is before and set(sw.ports) == {"a", "b"} and sw.ports["a"] is pa
        assert not (tmp_path / "c.sock").exists()
        st = await request(sw.config.control, "stats")
        assert st["reloads"]["failed"] == 3 and st["reloads"]["ok"] == 0

        # A new socket path that another process listens on: refused before anything changes.
        holder = socket.socket(socket.AF_UNIX)
        holder.bind(str(tmp_path / "c.sock"))
        holder.listen()
        try:
            write(tmp_path, [port(tmp_path, "b"), port(tmp_path, "c")])
            with pytest.raises(
                ControlError, match=r"port c: .*c\.sock is in use by a live process"
            ):
                await sw.reload()
            assert set(sw.ports) == {"a", "b"}
        finally:
            holder.close()
            os.unlink(tmp_path / "c.sock")


async def test_a_capture_ends_when_its_port_is_removed(tmp_path: Path) -> None:
    cfg = write(tmp_path, [port(tmp_path, "a"), port(tmp_path, "b")])
    async with Switch(load_config(cfg)) as sw:
        client = Client(sw.config.control)
        await client.call("capture", port="b")
        write(tmp_path, [port(tmp_path, "a")])
        assert (await sw.reload())["changes"] == ["port b removed"]
        assert client.reader is not None
        data = await client.reader.read()  # the stream ends: header and statistics block
        assert data[:4] == bytes.fromhex("0a0d0d0a") and not sw.captures
        await client.close()
        # A port with the same name can come back, and be captured again.
        write(tmp_path, [port(tmp_path, "a"), port(tmp_path, "b")])
        assert (await sw.reload())["changes"] == [
            f"port b added (vhost-user, {tmp_path / 'b.sock'})"
        ]
        again = Client(sw.config.control)
        assert (await again.call("capture", port="b", count=1))["port"] == "b"
        await again.close()


async def test_poll_idle_and_control_mode_apply_and_no_change_is_quiet(tmp_path: Path) -> None:
    cfg = write(tmp_path, [port(tmp_path, "a"), port(tmp_path, "b")])
    async with Switch(load_config(cfg)) as sw:
        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
        await a.start()
        await b.start()
        try:
            a.post_rx()
            b.post_rx()
            await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
            await b.send(*frames(MA, MB, 1))
            assert (await sw.reload())["changes"] == []
            write(
                tmp_path,
                [port(tmp_path, "a"), port(tmp_path, "b")],
                control_mode="0660",
                switch={"poll_idle_us": 50, "poll_linger_ns": 0, "datapath": "loop"},
            )
            r = await sw.reload()
            assert r["changes"] == [
                "switch.poll_idle_us 100 -> 50",
                "switch.poll_linger_ns 3000 -> 0",
                "control_mode 0660",
            ]
            assert r["warnings"] == [
                "switch.datapath thread -> loop not applied: the data path mode is chosen at "
                "start; restart vswitch to change it"
            ]
            assert os.stat(tmp_path / "ctl.sock").st_mode & 0o777 == 0o660
            assert sw.dp is not None and sw.dp.threaded
            await forwards(sw, a, b)  # the restarted poll thread serves the rings
        finally:
            a.close()
            b.close()
