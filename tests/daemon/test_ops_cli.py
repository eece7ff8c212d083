"""The operator commands of the CLI, human and --json, against a real switch with traffic."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from support.ops import VGuest, frames, run_in, switch_in_thread, wait_until

from vswitch.cli import main
from vswitch.config import load_config
from vswitch.daemon.switch import Switch

MA, MB, MS = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "52:54:00:00:00:09"


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Switch, Path]]:
    """A switch with ports a and b, a guest on each, 3 frames a->b and 2 b->a."""
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp_path / f"{n}.sock")} for n in "ab"]
    ports[0]["static_macs"] = [MS]
    cfg = tmp_path / "vswitch.yaml"
    cfg.write_text(yaml.safe_dump({"control": str(tmp_path / "ctl.sock"), "ports": ports}))
    with switch_in_thread(load_config(cfg)) as (sw, loop):
        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")

        async def traffic() -> None:
            await a.start()
            await b.start()
            a.post_rx()
            b.post_rx()
            await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
            await a.send(*frames(MB, MA, 3))
            await wait_until(lambda: sw.ports["b"].info()["counters"]["tx_packets"] == 3)
            await b.send(*frames(MA, MB, 2, size=200))
            await wait_until(lambda: sw.ports["a"].info()["counters"]["tx_packets"] == 2)

        run_in(loop, traffic())
        try:
            yield sw, cfg
        finally:
            a.close()
            b.close()


def cli(sw: Switch, *args: str, code: int = 0) -> Any:
    result = CliRunner().invoke(
        main, [*args, "--control", str(sw.config.control)], prog_name="vswitch"
    )
    assert result.exit_code == code, (result.output, result.exception)
    return result


def test_ports_both_forms(running: tuple[Switch, Path]) -> None:
    sw, _ = running
    lines = cli(sw, "ports").stdout.splitlines()
    assert lines[:3] == [
        "NAME  TYPE        STATE  RX-PKTS  RX-BYTES  TX-PKTS  TX-BYTES  DROPS",
        "a     vhost-user  up           3       300        2       400      0",
        "b     vhost-user  up           2       400        3       300      0",
    ]
    assert lines[4].startswith("a: peer connected, mtu 1500, features ")
    assert lines[5] == "   queues 0 (size 256, enabled, ready), 1 (size 256, enabled, ready)"
    assert lines[6] == "   macs 1 (limit 4096)"
    data = json.loads(cli(sw, "ports", "--json").stdout)
    assert [p["name"] for p in data] == ["a", "b"]
    assert data[0]["counters"]["rx_packets"] == 3 and data[0]["static_macs"] == [MS]
    assert [p["name"] for p in json.loads(cli(sw, "ports", "b", "--json").stdout)] == ["b"]
    assert cli(sw, "ports", "zz", code=1).stderr == "error: no port 'zz' (ports: a, b)\n"


def test_fdb_both_forms_and_changes(running: tuple[Switch, Path]) -> None:
    sw, _ = running
    table = cli(sw, "fdb").stdout.splitlines()
    assert table[0] == "MAC                VLAN  PORT  TYPE     AGE"
    assert [line.split()[:4] for line in table[1:]] == [
        [MA, "0", "a", "dynamic"],
        [MB, "0", "b", "dynamic"],
        [MS, "0", "a", "static"],
    ]
    assert table[3].endswith("static     -")
    assert cli(sw, "fdb", "show", "--port", "b").stdout.splitlines()[1].startswith(MB)
    shown = json.loads(cli(sw, "fdb", "--json").stdout)
    assert [(e["mac"], e["type"]) for e in shown] == [
        (MA, "dynamic"),
        (MB, "dynamic"),
        (MS, "static"),
    ]
    assert json.loads(cli(sw, "fdb", "show", "--json").stdout) == shown

    assert (
        cli(sw, "fdb", "add", "52:54:00:00:00:0A", "b").stdout
        == "added static 52:54:00:00:00:0a on b\n"
    )
    added = json.loads(
        cli(sw, "fdb", "add", "52:54:00:00:00:0b", "b", "--vlan", "0", "--json").stdout
    )
    assert added == {"mac": "52:54:00:00:00:0b", "vlan": 0, "port": "b", "type": "static"}
    assert (
        cli(sw, "fdb", "del", "52:54:00:00:00:0b").stdout
        == "removed 52:54:00:00:00:0b (was on b)\n"
    )
    assert cli(sw, "fdb", "flush", "b").stdout == "flushed 1 entry (dynamic) on b\n"
    r = json.loads(cli(sw, "fdb", "flush", "--json").stdout)
    assert r == {"flushed": 1, "port": None, "static": False, "vlan": None}
    assert (
        cli(sw, "fdb", "flush", "--static").stdout
        == "flushed 2 entries (dynamic and static) on all ports\n"
    )
    assert cli(sw, "fdb").stdout == "MAC  VLAN  PORT  TYPE  AGE\n"
    err = cli(sw, "fdb", "add", "ff:ff:ff:ff:ff:ff", "a", code=1).stderr
    assert err.startswith("error: mac: ff:ff:ff:ff:ff:ff is a broadcast address")
    assert "not in the MAC table" in cli(sw, "fdb", "del", MS, code=1).stderr


def test_stats_both_forms(running: tuple[Switch, Path]) -> None:
    sw, _ = running
    text = cli(sw, "stats").stdout
    lines = text.splitlines()
    assert lines[0].startswith("uptime 00:00:")
    assert lines[1] == "reloads 0 ok, 0 failed"
    rows = [line.split() for line in lines]
    assert ["SWITCH", "VALUE"] in rows and ["fdb_entries", "3"] in rows
    # Aligned: every row of the switch table is as wide as its header.
    head = next(i for i, line in enumerate(lines) if line.startswith("SWITCH"))
    assert len({len(line) for line in lines[head : head + 4]}) == 1
    i = rows.index(["COUNTER", "a", "b"])
    assert rows[i + 1 : i + 3] == [["rx_packets", "3", "2"], ["rx_bytes", "300", "400"]]
    assert lines[i + 2].endswith("300  400")  # right-aligned numbers
    data = json.loads(cli(sw, "stats", "--json").stdout)
    assert data["switch"]["fdb_entries"] == 3 and data["ports"]["b"]["tx_packets"] == 3
    assert set(data) == {"switch", "ports", "uptime", "reloads", "metrics", "captures", "vlans"}


def test_reload_both_forms(running: tuple[Switch, Path]) -> None:
    sw, cfg = running
    assert cli(sw, "reload").stdout == f"reloaded {cfg}\n  no changes\n"
    doc = yaml.safe_load(cfg.read_text())
    doc["ports"][1]["mtu"] = 2000
    doc["switch"] = {"fdb_size": 4096}
    cfg.write_text(yaml.safe_dump(doc))
    assert cli(sw, "reload").stdout == (
        f"reloaded {cfg}\n"
        "  port b: mtu 1500 -> 2000\n"
        "  not applied: switch.fdb_size 65536 -> 4096 not applied: the MAC table is sized at "
        "start; restart vswitch to resize it\n"
    )
    assert json.loads(cli(sw, "reload", "--json").stdout) == {
        "file": str(cfg),
        "changes": [],
        "warnings": [
            "switch.fdb_size 65536 -> 4096 not applied: the MAC table is sized at start; "
            "restart vswitch to resize it"
        ],
    }
    doc["ports"][1]["mtu"] = "big"
    cfg.write_text(yaml.safe_dump(doc))
    # The daemon runs in this process: its own log line about the refusal
    # may land on the same stderr; the CLI's message is the error: lines.
    err = "".join(
        line
        for line in cli(sw, "reload", code=1).stderr.splitlines(True)
        if line.startswith("error: ")
    )
    assert err == (
        "error: reload refused, the running configuration stays:\n"
        f"error: {cfg}: ports[1] (b).mtu: expected a whole number, "
        "got the string 'big' (e.g. 1500)\n"
    )
    assert sw.ports["b"].cfg.mtu == 2000


@pytest.mark.parametrize("args", [["fdb", "add"], ["fdb", "flush"], ["stats"], ["reload"],
                                  ["capture"], ["top"]])  # fmt: skip
def test_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, [*args, "--help"], prog_name="vswitch")
    assert result.exit_code == 0 and result.output.startswith("Usage: vswitch")


def test_fdb_commands_with_vlans(tmp_path: Path) -> None:
    """--vlan on fdb add/del/flush, a VLAN the port does not carry refused, the default
    VLAN of fdb add being the port's own, and ports showing each port's VLANs."""
    ports = [
        {"name": "a", "type": "vhost-user", "path": str(tmp_path / "a.sock"), "vlan": 10},
        {"name": "b", "type": "vhost-user", "path": str(tmp_path / "b.sock"),
         "trunks": [10, "20-22"], "native_vlan": 5},
    ]  # fmt: skip
    cfg = tmp_path / "vswitch.yaml"
    cfg.write_text(yaml.safe_dump({"control": str(tmp_path / "ctl.sock"), "ports": ports}))
    with switch_in_thread(load_config(cfg)) as (sw, _):
        assert cli(sw, "fdb", "add", MS, "a").stdout == f"added static {MS} vlan 10 on a\n"
        assert cli(sw, "fdb", "add", MS, "b").stdout == f"added static {MS} vlan 5 on b\n"
        assert cli(sw, "fdb", "add", MA, "b", "--vlan", "21").stdout.endswith("vlan 21 on b\n")
        err = cli(sw, "fdb", "add", MB, "b", "--vlan", "30", code=1).stderr
        assert err == (
            "error: port b does not carry VLAN 30 (trunks 10,20-22, native_vlan 5): "
            "give --vlan with one of its VLANs\n"
        )
        assert "does not carry VLAN 0" in cli(sw, "fdb", "add", MB, "a", "--vlan", "0",
                                              code=1).stderr  # fmt: skip
        rows = [line.split()[:4] for line in cli(sw, "fdb").stdout.splitlines()[1:]]
        assert rows == [[MS, "5", "b", "static"], [MS, "10", "a", "static"],
                        [MA, "21", "b", "static"]]  # fmt: skip
        out = cli(sw, "fdb", "flush", "--static", "--vlan", "21").stdout
        assert out == "flushed 1 entry (dynamic and static) on all ports, VLAN 21\n"
        assert "removed" in cli(sw, "fdb", "del", MS, "--vlan", "5").stdout
        assert [e["vlan"] for e in json.loads(cli(sw, "fdb", "--json").stdout)] == [10]
        lines = cli(sw, "ports").stdout.splitlines()
        assert "   vlan 10, macs 0 (limit 4096)" in lines
        assert "   trunk 10,20-22, native 5, macs 0 (limit 4096)" in lines
        info = {p["name"]: p for p in json.loads(cli(sw, "ports", "--json").stdout)}
        assert (info["a"]["vlan_mode"], info["a"]["vlan"]) == ("access", 10)
        assert info["b"]["trunks"] == [10, 20, 21, 22] and info["b"]["native_vlan"] == 5
