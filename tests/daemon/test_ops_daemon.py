"""The real daemon: logs (text and JSON, one line per event, none per frame) and SIGHUP."""

from __future__ import annotations

import asyncio
import json
import re
import signal
from pathlib import Path
from typing import Any

import yaml
from support.ops import Daemon, VGuest, frames, wait_until

from vswitch.control import request

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
TEXT_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) \S")


def write(tmp: Path, names: list[str], **extra: Any) -> Path:
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp / f"{n}.sock")} for n in names]
    path = tmp / "vswitch.yaml"
    path.write_text(yaml.safe_dump({"control": str(tmp / "ctl.sock"), "ports": ports, **extra}))
    return path


async def test_json_logs_one_line_per_event_and_sighup_reload(tmp_path: Path) -> None:
    cfg = write(tmp_path, ["a", "b"])
    ctl = tmp_path / "ctl.sock"
    d = Daemon(cfg, ctl, "--log-format", "json")
    async with d:
        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
        await a.start()
        await b.start()
        a.post_rx()
        b.post_rx(250)
        await wait_until(lambda: _states(ctl, "up"), what="ports up")  # both guests connected
        lines_before = len(d.lines())
        await a.send(*frames(MB, MA, 500))
        await a.drain_tx()
        await asyncio.sleep(0.3)
        assert len(d.lines()) == lines_before  # no line per frame

        # SIGHUP: the file gained port c.
        write(tmp_path, ["a", "b", "c"])
        d.signal(signal.SIGHUP)
        await wait_until(lambda: _has_port(ctl, "c"), what="port c after SIGHUP")
        # SIGHUP with a broken file: refused and logged; the daemon goes on.
        cfg.write_text("ports: [{name: a, type: vhost-user, path: a.sock, mtu: 0}]\n")
        d.signal(signal.SIGHUP)
        await wait_until(lambda: any("reload refused" in line for line in d.lines()))
        assert {p["name"] for p in await request(ctl, "ports")} == {"a", "b", "c"}
        a.close()
        b.close()
        await wait_until(lambda: _states(ctl, "listening", "a"), what="a to go down")
    assert d.proc is not None and d.proc.returncode == 0

    records = [json.loads(line) for line in d.lines()]  # every line is one JSON object
    for r in records:
        assert {"ts", "level", "logger", "msg"} <= set(r), r
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", r["ts"])
    msgs = [r["msg"] for r in records]

    def has(pattern: str) -> bool:
        return any(re.search(pattern, m) for m in msgs)

    assert has(r"^port a: front end connected$")
    assert has(r"^port a: features .*VERSION_1")
    assert has(r"^port a: link up$") and has(r"^port a: link down$")
    assert has(r"^port a: front end disconnected$")
    assert has(r"^SIGHUP received, reloading ")
    reload = [r for r in records if r.get("event") == "reload"]
    assert [r["msg"] for r in reload][:2] == [
        f"reload: port c added (vhost-user, {tmp_path / 'c.sock'})",
        f"reload of {cfg} done: 1 change(s), 0 not applied",
    ]
    refused = [r for r in reload if r["level"] == "error"]
    assert [r["msg"] for r in refused] == [
        f"reload refused: {cfg}: ports[0] (a).mtu: 0 is out of range 68..9000 (e.g. 1500)"
    ]
    assert len(records) < 40  # a handful of events, not per-frame noise


async def test_text_logs_by_default(tmp_path: Path) -> None:
    cfg = write(tmp_path, ["a"], switch={"log_level": "info"})
    d = Daemon(cfg, tmp_path / "ctl.sock")
    async with d:
        await request(tmp_path / "ctl.sock", "fdb-flush")
    lines = d.lines()
    assert lines and all(TEXT_LINE.match(line) for line in lines), lines
    assert any(
        line.endswith("INFO fdb: flushed 0 entries (dynamic) on all ports") for line in lines
    )
    assert lines[-1].endswith("INFO stopped")


async def _has_port(ctl: Path, name: str) -> bool:
    return name in {p["name"] for p in await request(ctl, "ports")}


async def _states(ctl: Path, state: str, only: str | None = None) -> bool:
    ports = await request(ctl, "ports")
    return all(p["state"] == state for p in ports if only is None or p["name"] == only)
