"""Three real Linux guests under QEMU talk through `vswitch run`.

The guests run the Debian kernel's stock virtio-net driver; the switch is
the real CLI in a subprocess; everything is checked from the outside (ping
in the guests, the control socket of the daemon)."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest
from conftest import need_tool
from support.switch_process import SwitchProcess, build_guest_image

from vswitch.lab.guest import Guest, Nic

pytestmark = pytest.mark.qemu

NAMES = ["vm1", "vm2", "vm3"]


def mac(i: int) -> str:
    return f"52:54:00:00:00:{i + 1:02x}"


def ip(i: int) -> str:
    return f"10.0.0.{i + 1}"


@pytest.fixture(scope="module")
def image() -> Path:
    need_tool("qemu-system-x86_64")
    return build_guest_image()


def guest(sw: SwitchProcess, i: int, image: Path) -> Guest:
    return Guest(
        NAMES[i],
        sw.workdir,
        nics=[Nic(socket=sw.sock(NAMES[i]), mac=mac(i))],
        ips={0: [f"{ip(i)}/24"]},
        image_dir=image,
    )


async def ping(g: Guest, target: str, count: int = 2, sw: SwitchProcess | None = None) -> None:
    # -w bounds the whole run: busybox ping can otherwise wait long for a reply.
    r = await g.exec(f"ping -c {count} -W 5 -w {5 + 2 * count} {target}", timeout=60)
    if r.rc != 0:
        counters = {n: p["counters"] for n, p in (await sw.ports()).items()} if sw else {}
        raise AssertionError(f"{g.name} -> {target} failed:\n{r.stdout}{r.stderr}\n{counters}")


async def full_mesh(guests: list[Guest], sw: SwitchProcess) -> None:
    for a, b in itertools.permutations(range(len(guests)), 2):
        await ping(guests[a], ip(b), sw=sw)


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_three_guests_switch_learn_and_survive_restarts(
    tmp_path: Path, image: Path, datapath: str
) -> None:
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp_path / f"{n}.sock")} for n in NAMES]
    async with SwitchProcess(tmp_path, ports, switch={"datapath": datapath}) as sw:
        guests = [guest(sw, i, image) for i in range(3)]
        try:
            await asyncio.gather(*(g.start() for g in guests))
            await asyncio.gather(*(g.wait_ready(timeout=240) for g in guests))
            for n in NAMES:
                await sw.wait_port(n, "up")

            await full_mesh(guests, sw)

            info = await sw.ports()
            for n in NAMES:
                p = info[n]
                assert {"VERSION_1", "MRG_RXBUF", "EVENT_IDX"} <= set(p["features"]), p
                assert p["counters"]["rx_packets"] > 0 and p["counters"]["tx_packets"] > 0
                assert p["counters"]["ring_errors"] == 0
            fdb = {e["mac"]: e for e in await sw.fdb()}
            for i, n in enumerate(NAMES):
                assert fdb[mac(i)]["port"] == n and fdb[mac(i)]["type"] == "dynamic"

            # The guest kernel's own counters agree with the switch's: every
            # frame vm1 sent reached the switch, none was dropped.
            r = await guests[0].exec("cat /sys/class/net/eth0/statistics/tx_packets")
            sent = int(r.stdout)
            vm1 = (await sw.ports())["vm1"]["counters"]
            assert vm1["rx_packets"] == sent, (vm1, sent)

            # QEMU killed: only that port goes down, its MAC is flushed, and
            # the others keep talking.
            await guests[2].kill()
            await sw.wait_port("vm3", "listening")
            assert mac(2) not in {e["mac"] for e in await sw.fdb()}
            await ping(guests[0], ip(1), sw=sw)

            # QEMU restarted on the same socket: connectivity comes back.
            guests[2] = guest(sw, 2, image)
            await guests[2].start()
            await guests[2].wait_ready(timeout=240)
            await sw.wait_port("vm3", "up")
            await ping(guests[2], ip(0), count=3, sw=sw)
            await ping(guests[1], ip(2), sw=sw)

            # A guest reboot resets the device under the same connection.
            await guests[1].reboot(timeout=240)
            await sw.wait_port("vm2", "up")
            await full_mesh(guests, sw)
            assert (await sw.ports())["vm2"]["counters"]["ring_errors"] == 0
        finally:
            await asyncio.gather(*(g.stop() for g in guests), return_exceptions=True)
        assert not any(p.exists() for p in tmp_path.glob("*.agent.sock"))

    assert sw.proc is not None and sw.proc.returncode == 0, sw.tail()
    # Clean exit: every socket the switch created is gone.
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".sock"], os.listdir(tmp_path)
