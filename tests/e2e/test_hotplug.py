"""Memory hotplug under traffic with a real QEMU guest (TCG) on `vswitch run`: DIMMs
(memfd, share=on) plugged one at a time while a host pings the guest every 10 ms, past the
8 regions a SET_MEM_TABLE can carry (QEMU sends ADD_MEM_REG, CONFIGURE_MEM_SLOTS), one
unplugged (REM_MEM_REG), and no descriptor or mapping of the switch's left behind.

The guest onlines the DIMMs movable (memhp_default_state=online_movable), which is what
lets it give one back; the kernel keeps its own buffers (skbs) out of movable memory, so
the DIMMs hold user and page-cache memory here (a tmpfs file fills them), not the RX
buffers themselves."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from conftest import need_root, need_tool
from support.migration import HOST_IP, MigrationRig
from support.qmp import Qmp
from support.switch_process import build_guest_image

pytestmark = pytest.mark.qemu

DIMMS = 9  # with the boot RAM, 10 regions: more than a SET_MEM_TABLE holds
DIMM_MB = 128


@pytest.fixture(scope="module")
def image() -> Path:
    need_tool("qemu-system-x86_64")
    need_root()
    return build_guest_image()


def switch_maps(pid: int) -> int:
    with open(f"/proc/{pid}/maps") as f:
        return sum("memfd:" in line for line in f)


def switch_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def regions(rig: MigrationRig) -> int:
    return (await rig.switches[0].ports())["vmA"]["migration"]["mem_regions"]


async def wait_regions(rig: MigrationRig, n: int, timeout: float = 60) -> None:
    for _ in range(int(timeout * 10)):
        if await regions(rig) == n:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"vmA has {await regions(rig)} memory regions, want {n}")


async def test_dimms_plugged_and_unplugged_under_traffic(tmp_path: Path, image: Path) -> None:
    async with MigrationRig(tmp_path, image) as rig:
        maxmem = 256 + (DIMMS + 1) * DIMM_MB
        g = rig.guest("hp", "vmA", ["-m", f"256M,slots={DIMMS + 1},maxmem={maxmem}M"],
                      kernel_args=["memhp_default_state=online_movable"])  # fmt: skip
        await g.start()
        await g.wait_ready(timeout=240)
        sw = rig.switches[0]
        await sw.wait_port("vmA", "up")
        await rig.host_ping()
        assert sw.proc is not None
        pid = sw.proc.pid
        info = (await sw.ports())["vmA"]
        assert "CONFIGURE_MEM_SLOTS" in info["protocol_features"], info
        base = await regions(rig)
        # The control connection of the call above may still be closing in the daemon.
        await asyncio.sleep(0.5)
        maps0, fds0 = switch_maps(pid), switch_fds(pid)
        qmp = await Qmp(str(tmp_path / "hp" / "qmp.sock")).connect()
        try:
            await rig.start_pinger()
            total0 = int((await g.exec("grep MemTotal /proc/meminfo")).stdout.split()[1])
            for i in range(DIMMS):
                await qmp.cmd("object-add", **{"qom-type": "memory-backend-memfd", "id": f"m{i}",
                              "size": DIMM_MB << 20, "share": True})  # fmt: skip
                await qmp.cmd("device_add", driver="pc-dimm", id=f"d{i}", memdev=f"m{i}")
                await wait_regions(rig, base + i + 1)
            assert await regions(rig) == base + DIMMS > 8
            # The guest onlines the DIMMs as their ACPI events come, a few seconds later.
            want = total0 + (DIMMS - 1) * DIMM_MB * 1024
            for _ in range(120):
                total = int((await g.exec("grep MemTotal /proc/meminfo")).stdout.split()[1])
                if total >= want:
                    break
                await asyncio.sleep(0.5)
            assert total >= want, (total0, total)
            # Fill the new memory: a tmpfs file (shmem pages are movable, the rootfs's
            # ramfs pages are not) larger than what the boot RAM has free, so the guest
            # really uses the DIMMs while the switch keeps forwarding.
            r = await g.exec("mkdir -p /mnt/fill && mount -t tmpfs -o size=400m tmpfs /mnt/fill"
                             " && dd if=/dev/zero of=/mnt/fill/f bs=1M count=200 2>&1 && "
                             "ping -c 3 -W 5 -w 20 " + HOST_IP, timeout=240)  # fmt: skip
            assert r.rc == 0, r.stdout + r.stderr
            await g.exec("rm -f /mnt/fill/f && umount /mnt/fill")
            # Unplug the last DIMM: the guest offlines it, QEMU sends REM_MEM_REG.
            await qmp.cmd("device_del", id=f"d{DIMMS - 1}")
            await wait_regions(rig, base + DIMMS - 1, timeout=120)
            await qmp.cmd("object-del", id=f"m{DIMMS - 1}")
            await rig.host_ping()
            await asyncio.sleep(0.5)
            await rig.stop_pinger()
            lines = [ln for ln in rig.ping_lines if "bytes from" in ln]
            assert len(lines) > 100, rig.ping_lines[-5:]
            port = (await sw.ports())["vmA"]
            assert port["state"] == "up" and port["counters"]["ring_errors"] == 0, port
            # One mapping per region, no descriptor kept: the DIMMs still plugged are
            # mapped, the unplugged one is not.
            assert switch_maps(pid) == maps0 + DIMMS - 1
            await asyncio.sleep(0.5)  # as above
            assert switch_fds(pid) == fds0
        finally:
            await qmp.close()
        # QEMU gone: every mapping goes with the port's memory.
        await g.kill()
        await sw.wait_port("vmA", "listening")
        assert switch_maps(pid) == maps0 - base
