"""Mirror ports (`mirror:`) on a real Switch with test-side front ends: an IDS port gets a
copy of a <-> b in each direction setting, exactly once each; a full IDS ring drops copies
(counted) while a and b lose nothing; `vswitch ports --json` shows it; reload changes it in
place, also when a mirrored port goes in the same reload or restarts.  (The fast path's
own cases are in tests/fastpath/test_fastpath_mirror.py; a TAP mirror read by tshark in
tests/ports/test_tap_mirror.py.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from support.ops import VGuest, frames, wait_until

from vswitch.config import load_config
from vswitch.daemon.commands import commands
from vswitch.daemon.switch import Switch

MA, MB, MI = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:1d"


def port(tmp: Path, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "vhost-user", "path": str(tmp / f"{name}.sock"), **kw}


def write(tmp: Path, ports: list[dict[str, Any]]) -> Path:
    path = tmp / "vswitch.yaml"
    path.write_text(yaml.safe_dump({"control": str(tmp / "ctl.sock"), "ports": ports}))
    return path


def three(tmp: Path, mirror: dict[str, Any] | None, **ids: Any) -> list[dict[str, Any]]:
    """a and b with static MACs (nothing floods), and ids, the mirror port."""
    extra = {"mirror": mirror} if mirror else {}
    return [
        port(tmp, "a", static_macs=[MA]),
        port(tmp, "b", static_macs=[MB]),
        port(tmp, "ids", static_macs=[MI], **extra, **ids),
    ]


def counters(sw: Switch, name: str) -> dict[str, int]:
    return sw.ports[name].info()["counters"]


async def up(sw: Switch, *guests: VGuest) -> None:
    for g in guests:
        await g.start()
    await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()),
                     what="every port up")  # fmt: skip


async def exchange(sw: Switch, a: VGuest, b: VGuest, n: int) -> tuple[list[bytes], list[bytes]]:
    """n frames a -> b, then n frames b -> a; both arrive whole."""
    ab, ba = frames(MB, MA, n, size=120), frames(MA, MB, n, size=140)
    before = counters(sw, "b")["tx_packets"], counters(sw, "a")["tx_packets"]
    await a.send(*ab)
    await wait_until(lambda: counters(sw, "b")["tx_packets"] == before[0] + n, what="a -> b")
    await b.send(*ba)
    await wait_until(lambda: counters(sw, "a")["tx_packets"] == before[1] + n, what="b -> a")
    assert b.received() == ab and a.received() == ba
    return ab, ba


@pytest.mark.parametrize("direction", ["rx", "tx", "both"])
@pytest.mark.parametrize("sources", [["a"], ["a", "b"]])
async def test_ids_sees_each_frame_once(tmp_path: Path, direction: str, sources: list[str]) -> None:
    cfg = write(tmp_path, three(tmp_path, {"from": sources, "direction": direction}))
    async with Switch(load_config(cfg)) as sw:
        a, b, ids = (VGuest(tmp_path / f"{n}.sock") for n in ("a", "b", "ids"))
        try:
            await up(sw, a, b, ids)
            for g in (a, b, ids):
                g.post_rx(200)
            ab, ba = await exchange(sw, a, b, 20)
            # rx of a is a -> b, tx of a is b -> a; with a and b both, either direction
            # of either port is every frame, and a frame is copied once however many
            # reasons it has.
            want = {"rx": ab, "tx": ba, "both": ab + ba}[direction]
            if len(sources) == 2:
                want = ab + ba
            await wait_until(lambda: counters(sw, "ids")["tx_mirror"] == len(want),
                             what="the copies")  # fmt: skip
            assert ids.received() == want
            c = counters(sw, "ids")
            assert c["tx_packets"] == len(want) and c["mirror_drops"] == 0
            for name in ("a", "b"):
                assert counters(sw, name)["tx_mirror"] == 0
            # What `vswitch ports --json` says of it.
            cmds = commands(sw)
            info = {p["name"]: p for p in await cmds["ports"]()}
            assert info["ids"]["mirror"] == {"from": sources, "direction": direction}
            assert info["a"]["mirror"] is None
        finally:
            for g in (a, b, ids):
                g.close()


async def test_full_ids_ring_drops_copies_not_traffic(tmp_path: Path) -> None:
    cfg = write(tmp_path, three(tmp_path, {"from": ["a"], "direction": "rx"}))
    async with Switch(load_config(cfg)) as sw:
        a, b, ids = (VGuest(tmp_path / f"{n}.sock") for n in ("a", "b", "ids"))
        try:
            await up(sw, a, b, ids)
            b.post_rx(250)
            ids.post_rx(8)  # and never again: the IDS stopped reading
            sent = frames(MB, MA, 240, size=200)
            await a.send(*sent)
            await wait_until(lambda: counters(sw, "b")["tx_packets"] == 240, what="a -> b")
            await a.drain_tx()
            assert b.received() == sent
            c = counters(sw, "ids")
            assert (c["tx_mirror"], c["mirror_drops"], c["tx_drop_no_buffer"]) == (8, 232, 232)
            assert ids.received() == sent[:8]
            for name in ("a", "b"):
                assert not any(v for k, v in counters(sw, name).items() if "drop" in k)
        finally:
            for g in (a, b, ids):
                g.close()


async def test_reload_changes_mirror_in_place(tmp_path: Path) -> None:
    path = write(tmp_path, [*three(tmp_path, None), port(tmp_path, "c")])
    async with Switch(load_config(path)) as sw:
        a, b, ids, c = (VGuest(tmp_path / f"{n}.sock") for n in ("a", "b", "ids", "c"))
        try:
            await up(sw, a, b, ids, c)
            for g in (a, b, ids):
                g.post_rx(250)
            ids_port = sw.ports["ids"]
            await exchange(sw, a, b, 3)
            assert ids.received() == [] and counters(sw, "ids")["tx_mirror"] == 0

            # A mirror appears: in place, ids keeps its front end.
            write(tmp_path, [*three(tmp_path, {"from": ["a", "c"], "direction": "rx"}),
                             port(tmp_path, "c")])  # fmt: skip
            r = await sw.reload()
            assert r["changes"] == ["port ids: mirror none -> from [a, c] direction rx"]
            assert sw.ports["ids"] is ids_port and ids_port.info()["connects"] == 1
            ab, ba = await exchange(sw, a, b, 3)
            await wait_until(lambda: counters(sw, "ids")["tx_mirror"] == 3, what="copies")
            assert ids.received() == ab

            # c goes, and with it out of the mirror; the direction changes too.
            write(tmp_path, three(tmp_path, {"from": ["a"], "direction": "tx"}))
            r = await sw.reload()
            assert r["changes"] == [
                "port c removed",
                "port ids: mirror from [a, c] direction rx -> from [a] direction tx",
            ]
            ab, ba = await exchange(sw, a, b, 3)
            await wait_until(lambda: counters(sw, "ids")["tx_mirror"] == 6, what="copies")
            assert ids.received() == ba

            # The mirrored port restarts (a new path: a new fast-path port): still mirrored.
            ports = three(tmp_path, {"from": ["a"], "direction": "both"})
            ports[0]["path"] = str(tmp_path / "a2.sock")
            write(tmp_path, ports)
            r = await sw.reload()
            assert "port ids: mirror from [a] direction tx -> from [a] direction both" in (
                r["changes"])
            a.close()
            a = VGuest(tmp_path / "a2.sock")
            await up(sw, a)
            a.post_rx(250)
            ab, ba = await exchange(sw, a, b, 3)
            await wait_until(lambda: counters(sw, "ids")["tx_mirror"] == 12, what="copies")
            assert ids.received() == ab + ba

            # And goes away.
            ports = three(tmp_path, None)
            ports[0]["path"] = str(tmp_path / "a2.sock")
            write(tmp_path, ports)
            r = await sw.reload()
            assert r["changes"] == ["port ids: mirror from [a] direction both -> none"]
            await exchange(sw, a, b, 3)
            assert ids.received() == [] and counters(sw, "ids")["tx_mirror"] == 12
        finally:
            for g in (a, b, ids, c):
                g.close()
