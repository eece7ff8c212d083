"""Reconnect in both directions: the switch killed with SIGKILL and started
again, with QEMU as the client (reconnect=1) and as the server (the switch's
`mode: client`), and QEMU restarted under a client-mode switch.  The guests
are never rebooted: their links come back on their own."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from pathlib import Path

import pytest
from conftest import need_tool
from support.switch_process import ROOT, SwitchProcess, build_guest_image

from vswitch.lab.guest import Guest, Nic

pytestmark = pytest.mark.qemu

OUTAGES = ROOT / "build" / "reconnect-outages.json"


@pytest.fixture(scope="module")
def image() -> Path:
    need_tool("qemu-system-x86_64")
    return build_guest_image()


def record(name: str, seconds: float, capsys: pytest.CaptureFixture[str]) -> None:
    """Outage times go to build/ for the issue notes, and to the test output."""
    OUTAGES.parent.mkdir(exist_ok=True)
    data = json.loads(OUTAGES.read_text()) if OUTAGES.exists() else {}
    data[name] = round(seconds, 2)
    OUTAGES.write_text(json.dumps(data, indent=1))
    with capsys.disabled():
        print(f"\n{name}: outage {seconds:.2f}s")


PING_INTERVAL = 0.1


async def start_pinging(g: Guest, target: str) -> None:
    """A ping running in the guest through the failure, every 100 ms."""
    r = await g.exec(f"ping -i {PING_INTERVAL} {target} > /tmp/ping.log 2>&1 &", timeout=30)
    assert r.rc == 0, r


async def stop_pinging(g: Guest) -> list[tuple[int, float]]:
    """Stops the guest's ping; (sequence number, RTT in s) of each reply."""
    await g.exec("killall ping; sleep 0.3", timeout=30)
    out = (await g.exec("cat /tmp/ping.log", timeout=30)).stdout
    return [(int(n), float(t) / 1000) for n, t in re.findall(r"seq=(\d+) .*time=([\d.]+) ms", out)]


def outage(replies: list[tuple[int, float]]) -> float:
    """The longest time the guest's ping went without an answer.  Requests
    sent while the switch is down wait in the guest's TX ring and are
    answered late when it is back (a long RTT); lost ones leave a gap in the
    sequence numbers.  Either way, the time to the next answer counts."""
    assert len(replies) > 10, replies
    answered = {seq: seq * PING_INTERVAL + rtt for seq, rtt in replies}
    worst = 0.0
    for seq in range(replies[0][0], replies[-1][0] + 1):
        sent = seq * PING_INTERVAL
        # When this request, or failing that the next answered one, got its answer.
        nxt = min(t for s, t in answered.items() if s >= seq)
        worst = max(worst, nxt - sent)
    return worst


async def until_ping(g: Guest, target: str, since: float, limit: float = 90.0) -> float:
    while True:
        r = await g.exec(f"ping -c 1 -W 1 -w 2 {target}", timeout=30)
        if r.rc == 0:
            return time.monotonic() - since
        assert time.monotonic() - since < limit, f"{g.name} cannot reach {target} after {limit}s"


def guests(sw: SwitchProcess, image: Path, server: bool) -> list[Guest]:
    return [
        Guest(
            f"vm{i}",
            sw.workdir,
            nics=[Nic(sw.sock(f"vm{i}"), f"52:54:00:00:01:0{i}", server=server)],
            ips={0: [f"10.0.1.{i}/24"]},
            image_dir=image,
        )
        for i in (1, 2)
    ]


@pytest.mark.parametrize("mode", ["server", "client"])
async def test_switch_killed_and_restarted_guests_recover(
    tmp_path: Path, image: Path, mode: str, capsys: pytest.CaptureFixture[str]
) -> None:
    ports = [
        {"name": n, "type": "vhost-user", "path": str(tmp_path / f"{n}.sock"), "mode": mode}
        for n in ("vm1", "vm2")
    ]
    sw = SwitchProcess(tmp_path, ports)
    vms = guests(sw, image, server=(mode == "client"))
    try:
        if mode == "server":
            await sw.start()
            await asyncio.gather(*(g.start() for g in vms))
        else:
            # QEMU serves the sockets: it must be there first, and the
            # switch finds it by retrying.
            await asyncio.gather(*(g.start() for g in vms))
            await sw.start()
        await asyncio.gather(*(g.wait_ready(timeout=240) for g in vms))
        await sw.wait_port("vm1", "up")
        await sw.wait_port("vm2", "up")
        await until_ping(vms[0], "10.0.1.2", time.monotonic())

        # SIGKILL while vm1 pings vm2 every 100 ms: no cleanup at all;
        # stale socket files stay behind.
        await start_pinging(vms[0], "10.0.1.2")
        await asyncio.sleep(1.0)
        t0 = time.monotonic()
        await sw.stop(signal.SIGKILL)
        await sw.start()
        await sw.wait_port("vm1", "up")
        await sw.wait_port("vm2", "up")
        await until_ping(vms[0], "10.0.1.2", t0)
        await asyncio.sleep(1.0)
        replies = await stop_pinging(vms[0])
        # The pings before the kill and after the restart were answered.
        assert replies[0][0] <= 2 and replies[-1][0] >= replies[0][0] + 20, replies
        record(f"switch SIGKILL, {mode} mode", outage(replies), capsys)
        # Both directions, and the restarted switch learned both guests again.
        await until_ping(vms[1], "10.0.1.1", time.monotonic())
        fdb = {e["mac"]: e["port"] for e in await sw.fdb()}
        assert fdb == {"52:54:00:00:01:01": "vm1", "52:54:00:00:01:02": "vm2"}

        if mode == "client":
            # QEMU restarted under a client-mode switch: the switch retries.
            t0 = time.monotonic()
            await vms[1].kill()
            await sw.wait_port("vm2", "connecting")
            vms[1] = guests(sw, image, server=True)[1]
            await vms[1].start()
            await vms[1].wait_ready(timeout=240)
            await sw.wait_port("vm2", "up")
            record("QEMU restart, client mode", await until_ping(vms[0], "10.0.1.2", t0), capsys)
    finally:
        await asyncio.gather(*(g.stop() for g in vms), return_exceptions=True)
        if sw.proc is not None:
            await sw.stop()
    assert sw.proc is not None and sw.proc.returncode == 0, sw.tail()
