"""Multiqueue with real guests: two QEMU guests with two vCPUs and two queue pairs each
(`-netdev vhost-user,queues=2`, `virtio-net-pci,mq=on`).  Flows from both vCPUs and to
several addresses use every queue in both directions (the guests' own per-queue counters,
`ethtool -S`, and the switch's); `ethtool -L` takes a pair away at run time and gives it
back, and the guest reconnecting with one pair still works."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from conftest import need_tool
from support.switch_process import SwitchProcess, build_guest_image

from vswitch.lab.guest import Guest, Nic

pytestmark = pytest.mark.qemu

MAC = {"vm1": "52:54:00:00:0d:01", "vm2": "52:54:00:00:0d:02"}
# Several addresses each: flows between different pairs hash to different queues.
ADDRS = {n: [f"10.0.{k}.{i}/24" for k in range(4)] for i, n in enumerate(MAC, 1)}


@pytest.fixture(scope="module")
def image() -> Path:
    need_tool("qemu-system-x86_64")
    return build_guest_image()


def guest(sw: SwitchProcess, name: str, image: Path, queues: int = 2) -> Guest:
    return Guest(name, sw.workdir, nics=[Nic(socket=sw.sock(name), mac=MAC[name], queues=queues)],
                 ips={0: ADDRS[name]}, image_dir=image, cpus=2)  # fmt: skip


async def ethtool_queues(g: Guest) -> dict[str, int]:
    """The guest's per-queue packet counters: {'rx0': n, 'tx0': n, 'rx1': ...}."""
    r = await g.exec("ethtool -S eth0", timeout=30)
    assert r.rc == 0, r.stdout + r.stderr
    out = {}
    for m in re.finditer(r"(rx|tx)_queue_(\d+)_packets: (\d+)", r.stdout):
        out[f"{m.group(1)}{m.group(2)}"] = int(m.group(3))
    return out


async def traffic(src: Guest, dst: str = "vm2") -> None:
    """Pings from both vCPUs (each uses its own TX queue) to every address of dst."""
    i = list(MAC).index(dst) + 1
    cmds = [f"taskset {cpu} ping -c 3 -i 0.2 -W 3 10.0.{k}.{i} >/dev/null"
            for cpu in (1, 2) for k in range(4)]  # fmt: skip
    r = await src.exec(" & ".join(cmds) + " & wait", timeout=90)
    assert r.rc == 0, r.stdout + r.stderr


async def switch_queues(sw: SwitchProcess, name: str) -> dict[int, dict[str, int]]:
    return {q["index"]: q for q in (await sw.ports())[name]["queues"]}


async def reaches(g: Guest, target: str) -> bool:
    return (await g.exec(f"ping -c 1 -W 2 -w 8 {target}", timeout=30)).rc == 0


async def test_every_queue_carries_traffic_and_queue_counts_change(
    tmp_path: Path, image: Path
) -> None:
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp_path / f"{n}.sock")} for n in MAC]
    async with SwitchProcess(tmp_path, ports) as sw:
        vms = {n: guest(sw, n, image) for n in MAC}
        try:
            await asyncio.gather(*(g.start() for g in vms.values()))
            await asyncio.gather(*(g.wait_ready(timeout=240) for g in vms.values()))
            for n in MAC:
                await sw.wait_port(n, "up")
            vm1, vm2 = vms["vm1"], vms["vm2"]
            info = (await sw.ports())["vm1"]
            # (QEMU keeps CTRL_VQ to itself: it runs the control queue.)
            assert "MQ" in info["features"], info["features"]
            for n in MAC:
                qs = await switch_queues(sw, n)
                assert all(qs[q]["ready"] for q in range(4)), qs

            await traffic(vm1, "vm2")
            await traffic(vm2, "vm1")
            for n in MAC:
                g = await ethtool_queues(vms[n])
                assert all(g[k] > 0 for k in ("rx0", "rx1", "tx0", "tx1")), (n, g)
                qs = await switch_queues(sw, n)
                assert all(qs[q]["packets"] > 0 for q in range(4)), (n, qs)

            # The guest goes down to one pair: QEMU disables pair 1's rings; nothing is
            # put on them any more, and everything still gets through.
            r = await vm2.exec("ethtool -L eth0 combined 1")
            assert r.rc == 0, r.stdout + r.stderr
            await asyncio.sleep(0.5)
            qs = await switch_queues(sw, "vm2")
            assert not qs[2]["ready"] and not qs[3]["ready"] and qs[0]["ready"], qs
            before = qs[2]["packets"]
            await traffic(vm1, "vm2")
            assert (await switch_queues(sw, "vm2"))[2]["packets"] == before
            # And back to two.
            r = await vm2.exec("ethtool -L eth0 combined 2")
            assert r.rc == 0, r.stdout + r.stderr
            await asyncio.sleep(0.5)
            await traffic(vm1, "vm2")
            qs = await switch_queues(sw, "vm2")
            assert qs[2]["ready"] and qs[2]["packets"] > before, qs

            # vm2 comes back as a guest with a single queue pair on the same port.
            await vm2.stop()
            await sw.wait_port("vm2", "listening")
            vms["vm2"] = vm2 = guest(sw, "vm2", image, queues=1)
            await vm2.start()
            await vm2.wait_ready(timeout=240)
            await sw.wait_port("vm2", "up")
            assert await reaches(vm1, "10.0.0.2") and await reaches(vm2, "10.0.3.1")
            assert "MQ" not in (await sw.ports())["vm2"]["features"]
        finally:
            await asyncio.gather(*(g.stop() for g in vms.values()), return_exceptions=True)


async def test_a_port_limited_to_one_pair_refuses_more(tmp_path: Path, image: Path) -> None:
    """queues: 1 on the port: MQ is not offered, and a single-queue guest runs on it as
    before, with one ring pair set up."""
    ports = [{"name": "vm1", "type": "vhost-user", "path": str(tmp_path / "vm1.sock"),
              "queues": 1}]  # fmt: skip
    async with SwitchProcess(tmp_path, ports) as sw:
        g = Guest("vm1", sw.workdir, nics=[Nic(socket=sw.sock("vm1"), mac=MAC["vm1"])],
                  ips={0: ADDRS["vm1"]}, image_dir=image, cpus=1)  # fmt: skip
        try:
            await g.start()
            await g.wait_ready(timeout=240)
            await sw.wait_port("vm1", "up")
            info = (await sw.ports())["vm1"]
            assert "MQ" not in info["features"]
            assert len(info["queues"]) == 2
        finally:
            await g.stop()
