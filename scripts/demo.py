"""The demo: `vswitch run configs/minimal.yaml`, two QEMU guests attached to
it over vhost-user, a ping between them, and the switch's own view.

Run through scripts/demo, which prepares the machine first."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from vswitch.control import request
from vswitch.lab.guest import Guest, Nic

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/minimal.yaml"
SOCKDIR = Path("/run/vswitch")


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


def vswitch(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vswitch", *args], check=True)


async def main() -> int:
    workdir = Path(tempfile.mkdtemp(prefix="vswitch-demo-"))
    say(f"vswitch run {CONFIG.relative_to(ROOT)}")
    print(CONFIG.read_text())
    switch = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "vswitch", "run", str(CONFIG), stdin=asyncio.subprocess.DEVNULL
    )
    guests = [
        Guest(f"vm{i}", workdir, nics=[Nic(str(SOCKDIR / f"vm{i}.sock"), f"52:54:00:00:00:0{i}")],
              ips={0: [f"10.0.0.{i}/24"]})
        for i in (1, 2)
    ]  # fmt: skip
    try:
        for _ in range(100):
            try:
                await request(SOCKDIR / "ctl.sock", "version")
                break
            except Exception:
                await asyncio.sleep(0.1)
        say("booting two guests (QEMU, TCG, Debian kernel + busybox) on the switch's sockets")
        print(" ".join(guests[0].cmdline()))
        t0 = time.monotonic()
        await asyncio.gather(*(g.start() for g in guests))
        await asyncio.gather(*(g.wait_ready(timeout=240) for g in guests))
        print(f"both guests up in {time.monotonic() - t0:.1f}s")

        say("vm1: ping -c 5 10.0.0.2")
        r = await guests[0].exec("ping -c 5 -W 5 10.0.0.2", timeout=60)
        print(r.stdout, r.stderr, end="")

        say("vm2: the guest kernel's own counters for eth0")
        stats = (
            "for f in rx_packets tx_packets rx_bytes tx_bytes; do "
            'echo "$f $(cat /sys/class/net/eth0/statistics/$f)"; done'
        )
        print((await guests[1].exec(stats)).stdout, end="")

        say("vswitch ports")
        await asyncio.to_thread(vswitch, "ports", "--config", str(CONFIG))
        say("vswitch fdb")
        await asyncio.to_thread(vswitch, "fdb", "--config", str(CONFIG))
        return r.rc
    finally:
        say("tearing down")
        await asyncio.gather(*(g.stop() for g in guests), return_exceptions=True)
        if switch.returncode is None:
            switch.send_signal(signal.SIGTERM)
        await switch.wait()
        shutil.rmtree(workdir, ignore_errors=True)
        print(f"switch exited with {switch.returncode}; sockets left in {SOCKDIR}: "
              f"{sorted(os.listdir(SOCKDIR)) or 'none'}")  # fmt: skip


if __name__ == "__main__":
    SOCKDIR.mkdir(exist_ok=True)
    sys.exit(asyncio.run(main()))
