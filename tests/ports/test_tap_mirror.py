"""A TAP port as a mirror (SPAN) for tcpdump habits: tshark in the tap's namespace sees a
copy of what two vhost-user ports send each other, each frame once, with the right MACs."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from pathlib import Path

from conftest import need_root, need_tool
from support.ops import VGuest, frames, wait_until

from vswitch.config import parse_config
from vswitch.daemon.switch import Switch
from vswitch.netsys.netns import delete_netns, netns_preexec

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


async def test_tshark_on_a_tap_mirror_sees_the_traffic(tmp_path: Path) -> None:
    need_root()
    need_tool("tshark")
    ns = f"vst-m-{uuid.uuid4().hex[:6]}"
    ports = [
        {"name": "a", "type": "vhost-user", "path": str(tmp_path / "a.sock"),
         "static_macs": [MA]},
        {"name": "b", "type": "vhost-user", "path": str(tmp_path / "b.sock"),
         "static_macs": [MB]},
        {"name": "span", "type": "tap", "ifname": "span0", "netns": ns,
         "mirror": {"from": ["a"], "direction": "both"}},
    ]  # fmt: skip
    conf = parse_config({"control": str(tmp_path / "ctl.sock"), "ports": ports})
    tshark = None
    try:
        async with Switch(conf) as sw:
            a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
            try:
                for g in (a, b):
                    await g.start()
                    g.post_rx(100)
                await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
                tshark = await asyncio.create_subprocess_exec(
                    "tshark", "-i", "span0", "-n", "-l", "-f", "ether proto 0x88b5",
                    "-a", "duration:60", "-T", "fields", "-e", "eth.src", "-e", "eth.dst",
                    "-e", "frame.len",
                    preexec_fn=netns_preexec(ns), stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                assert tshark.stdout is not None
                rows: list[tuple[str, ...]] = []

                async def row() -> tuple[str, ...]:
                    assert tshark is not None and tshark.stdout is not None
                    line = await asyncio.wait_for(tshark.stdout.readline(), 30)
                    assert line, f"tshark ended after {rows}"
                    return tuple(line.decode().rstrip("\n").split("\t"))

                # tshark says "Capturing on" a little before it does: probe frames (64 B)
                # until it shows one.
                probes = 0
                first = asyncio.ensure_future(row())
                while not first.done() and probes < 100:
                    await a.send(*frames(MB, MA, 1, size=64))
                    probes += 1
                    await asyncio.sleep(0.1)
                rows.append(await first)
                ab, ba = frames(MB, MA, 10, size=120), frames(MA, MB, 10, size=140)
                await a.send(*ab)
                await b.send(*ba)
                while len([r for r in rows if r[2] != "64"]) < 20:
                    rows.append(await row())
                # The probes, then a -> b and b -> a, each frame once (the kernel's own
                # frames from span0 flood to a and b, and a's tx mirror never copies them
                # back to span0).
                real = [r for r in rows if r[2] != "64"]
                assert real == [(MA, MB, "120")] * 10 + [(MB, MA, "140")] * 10, rows
                assert all(r == (MA, MB, "64") for r in rows if r[2] == "64"), rows
                c = sw.ports["span"].info()["counters"]
                assert c["tx_mirror"] == probes + 20 and c["mirror_drops"] == 0, c
            finally:
                a.close()
                b.close()
    finally:
        if tshark is not None and tshark.returncode is None:
            tshark.kill()
            await tshark.wait()
        delete_netns(ns)
