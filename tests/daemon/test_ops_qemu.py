"""Hot reload under real traffic: two Linux guests ping each other through `vswitch run`
while a third port is added (with an in-place change to a busy port) and removed again by
reload, first with `vswitch reload`, then with SIGHUP.  No ping may be lost."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import need_tool
from support.switch_process import SwitchProcess, build_guest_image

from vswitch.lab.guest import Guest, GuestError, Nic

pytestmark = pytest.mark.qemu

COUNT = 50  # pings, 0.2 s apart: 10 s of traffic around the reloads


def port(tmp: Path, name: str, **kw: Any) -> dict[str, Any]:
    return {"name": name, "type": "vhost-user", "path": str(tmp / f"{name}.sock"), **kw}


def write(sw: SwitchProcess, ports: list[dict[str, Any]]) -> None:
    sw.config.write_text(yaml.safe_dump({"control": str(sw.control), "ports": ports}))


async def vswitch_reload(sw: SwitchProcess) -> str:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vswitch", "reload", "--control", str(sw.control),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_reload_adds_and_removes_a_port_without_losing_a_ping(tmp_path: Path) -> None:
    need_tool("qemu-system-x86_64")
    image = build_guest_image()
    base = [port(tmp_path, "vm1"), port(tmp_path, "vm2")]
    async with SwitchProcess(tmp_path, base) as sw:
        guests = [
            Guest(
                f"vm{i}", tmp_path,
                nics=[Nic(socket=sw.sock(f"vm{i}"), mac=f"52:54:00:00:00:0{i}")],
                ips={0: [f"10.0.0.{i}/24"]}, image_dir=image,
            )
            for i in (1, 2)
        ]  # fmt: skip
        try:
            await asyncio.gather(*(g.start() for g in guests))
            await asyncio.gather(*(g.wait_ready(timeout=240) for g in guests))
            await sw.wait_port("vm1", "up")
            await sw.wait_port("vm2", "up")
            (await guests[0].exec("ping -c 2 -W 5 10.0.0.2", timeout=60)).check()

            # -w bounds the whole run (busybox ping), so a stalled path reports, not hangs.
            ping = asyncio.create_task(
                guests[0].exec(f"ping -i 0.2 -c {COUNT} -W 2 -w {COUNT} 10.0.0.2", timeout=180)
            )
            await asyncio.sleep(2)
            # vm3 appears, and busy vm1 changes in place (its MAC limit).
            write(sw, [port(tmp_path, "vm1", mac_limit=64), base[1], port(tmp_path, "vm3")])
            out = await vswitch_reload(sw)
            assert "port vm1: mac_limit 4096 -> 64" in out and "port vm3 added" in out, out
            assert (await sw.ports())["vm3"]["state"] == "listening"
            await asyncio.sleep(2)
            # vm3 goes away again, by SIGHUP this time.
            write(sw, [port(tmp_path, "vm1", mac_limit=64), base[1]])
            assert sw.proc is not None
            sw.proc.send_signal(signal.SIGHUP)
            for _ in range(100):
                if "vm3" not in await sw.ports():
                    break
                await asyncio.sleep(0.1)
            assert "vm3" not in await sw.ports(), sw.tail()
            assert not (tmp_path / "vm3.sock").exists()

            try:
                r = await ping
            except GuestError as exc:
                counters = {n: p["counters"] for n, p in (await sw.ports()).items()}
                raise AssertionError(f"{exc}\n{counters}\n{sw.tail()}") from exc
            info = await sw.ports()
            summary = re.search(r"(\d+) packets transmitted, (\d+) packets received", r.stdout)
            assert summary, r.stdout + r.stderr
            assert summary.groups() == (str(COUNT), str(COUNT)), (r.stdout, info, sw.tail())
            assert " 0% packet loss" in r.stdout
            for name in ("vm1", "vm2"):
                c = info[name]["counters"]
                assert info[name]["state"] == "up" and info[name]["connects"] == 1, info[name]
                assert not {k: v for k, v in c.items() if "drop" in k and v}, (name, c)
            assert info["vm1"]["mac_limit"] == 64
        finally:
            await asyncio.gather(*(g.stop() for g in guests), return_exceptions=True)
    log = sw.tail(200)
    assert "reload: port vm3 added" in log and "reload: port vm3 removed" in log, log
