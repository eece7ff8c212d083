"""The QEMU guest launcher and its exec agent (vswitch/lab/guest.py, scripts/build-guest-image)."""

from __future__ import annotations

import asyncio
import glob
import os
import stat
import subprocess
import time
from pathlib import Path

import pytest
from conftest import need, need_tool

from vswitch.lab.guest import ExecResult, Guest, GuestError, GuestTimeoutError, Nic, _b64

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "scripts" / "build-guest-image"


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """Build (or reuse) the guest image in the default place, as other tests use it."""
    need_tool("qemu-system-x86_64")
    need(bool(glob.glob("/boot/vmlinuz-*")), "no Debian kernel (apt-get install linux-image-amd64)")
    need(os.path.exists("/bin/busybox"), "no /bin/busybox (apt-get install busybox-static)")
    out = Path(os.environ.get("VSWITCH_GUEST_DIR") or Path.home() / ".cache" / "vswitch" / "guest")
    proc = subprocess.run(
        [str(BUILD), str(out)], capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, f"build-guest-image failed:\n{proc.stdout}{proc.stderr}"
    return out


def _kernel_version(image: Path) -> str:
    for line in (image / "stamp").read_text().splitlines():
        if line.startswith("kernel "):
            return line.split()[1]
    raise AssertionError(f"no kernel line in {image / 'stamp'}")


def _sockets(d: Path) -> list[Path]:
    return [p for p in d.rglob("*") if stat.S_ISSOCK(p.lstat().st_mode)]


# -- without QEMU ----------------------------------------------------------------------


def test_missing_image_names_file_and_fix(tmp_path: Path) -> None:
    g = Guest("nope", tmp_path, image_dir=tmp_path / "img")
    with pytest.raises(GuestError) as e:
        g.cmdline()
    msg = str(e.value)
    assert str(tmp_path / "img" / "vmlinuz") in msg
    assert "scripts/build-guest-image" in msg


def test_cmdline(tmp_path: Path) -> None:
    img = tmp_path / "img"
    img.mkdir()
    (img / "vmlinuz").write_bytes(b"")
    (img / "initramfs.img").write_bytes(b"")
    g = Guest(
        "vm1",
        tmp_path,
        nics=[
            Nic("/run/sw/a.sock", "52:54:00:00:00:01"),
            Nic("/b.sock", "52:54:00:00:00:02", False),
        ],
        ips={0: ["10.0.0.1/24", "fd00::1/64"], 1: ["10.1.0.1/24"]},
        gw="10.0.0.254",
        memory_mb=128,
        image_dir=img,
    )
    args = g.cmdline()
    joined = " ".join(args)
    assert "memory-backend-memfd,id=mem,size=128M,share=on" in joined
    assert "-no-reboot" not in args
    assert "socket,id=vu0,path=/run/sw/a.sock,reconnect=1" in args
    assert "socket,id=vu1,path=/b.sock" in args
    assert "virtio-net-pci,netdev=net1,mac=52:54:00:00:00:02,vectors=0" in args
    append = args[args.index("-append") + 1].split()
    assert "vswitch.ip=10.0.0.1/24,fd00::1/64" in append
    assert "vswitch.ip1=10.1.0.1/24" in append
    assert "vswitch.gw=10.0.0.254" in append
    assert "vswitch.hostname=vm1" in append


async def test_reply_parsing_ignores_garbage_and_late_replies(tmp_path: Path) -> None:
    g = Guest("p", tmp_path)
    fut: asyncio.Future[ExecResult] = asyncio.get_running_loop().create_future()
    g._pending["a-2"] = fut
    g._dispatch(b"VSW1 RESULT a-1 0 3 0 eWVz  END")  # late reply to an old request
    g._dispatch(b"VSW1 RESULT a-2 0 99 0 eWVz  END")  # wrong length: garbled
    assert fut.done() and isinstance(fut.exception(), GuestError)
    fut = asyncio.get_running_loop().create_future()
    g._pending["a-2"] = fut
    g._dispatch(b"VSW1 RESULT a-2 0 3 nonsense")
    assert not fut.done()
    g._dispatch(b"VSW1 RESULT a-2 7 3 2 eWVz bm8= END\r")
    assert fut.result() == ExecResult(7, "yes", "no")


# -- with QEMU: one boot, one reboot ---------------------------------------------------


async def test_guest_lifecycle(guest_image: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    g = Guest("t-guest", work, image_dir=guest_image)
    t0 = time.monotonic()
    await g.start()
    try:
        await g.wait_ready(timeout=180)
        print(f"agent ready {time.monotonic() - t0:.1f}s after start")
        assert g.console_log.exists()

        r = await g.exec("uname -r")
        assert (r.rc, r.stdout.strip(), r.stderr) == (0, _kernel_version(guest_image), "")
        r = await g.exec("hostname")
        assert r.stdout.strip() == "t-guest"

        r = await g.exec("echo to-out; echo to-err >&2; exit 3")
        assert (r.rc, r.stdout, r.stderr) == (3, "to-out\n", "to-err\n")

        # binary and unicode output survive the trip
        r = await g.exec(r"printf '\000\001\377\n'; printf 'h\303\251llo \342\234\223'")
        assert r.rc == 0
        assert (
            r.stdout.encode("utf-8", "surrogateescape")
            == b"\x00\x01\xff\nh\xc3\xa9llo \xe2\x9c\x93"
        )
        assert r.stdout.endswith("héllo ✓")
        r = await g.exec("echo 'ünï ✓' >&2")
        assert r.stderr == "ünï ✓\n"
        r = await g.exec("seq 1 20000")
        assert r.stdout.split() == [str(i) for i in range(1, 20001)]

        # no NIC: only lo
        r = await g.exec("ls /sys/class/net; ip link")
        assert r.stdout.split()[0] == "lo" and "eth0" not in r.stdout

        # a command that times out is killed; its late reply is never taken for another's
        with pytest.raises(asyncio.TimeoutError):
            await g.exec("sleep 30", timeout=2)
        r = await g.exec("sleep 1; echo after")
        assert (r.rc, r.stdout) == (0, "after\n")
        r = await g.exec("ps | grep -c '[s]leep 30'")
        assert r.stdout.strip() == "0"
        results = await asyncio.gather(*(g.exec(f"sleep 0.5; echo {i}") for i in range(4)))
        assert [x.stdout for x in results] == [f"{i}\n" for i in range(4)]

        # A command line that arrives in two pieces, with another command finishing in
        # between, is still read whole. The agent was a busybox `while read` loop, whose
        # read drops what it has of a line when SIGCHLD interrupts it: lab pings that
        # followed each other closely hung now and then.
        first = asyncio.ensure_future(g.exec("sleep 1; echo first"))
        await asyncio.sleep(0.3)  # its EXEC goes out before the split line starts
        rid = g._next_id()
        second: asyncio.Future[ExecResult] = asyncio.get_running_loop().create_future()
        g._pending[rid] = second
        assert g._writer is not None
        line = f"\nVSW1 EXEC {rid} {_b64('echo second')}\n".encode()
        g._writer.write(line[:12])
        assert (await first).stdout == "first\n"
        await asyncio.sleep(0.5)  # the agent process that ran it has exited by now
        g._writer.write(line[12:])
        assert (await asyncio.wait_for(second, 20)).stdout == "second\n"

        boot = g.boot_id
        t0 = time.monotonic()
        assert await g.reboot(timeout=180) != boot
        print(f"rebooted in {time.monotonic() - t0:.1f}s")
        r = await g.exec("cat /proc/uptime; uname -r")
        assert r.rc == 0 and float(r.stdout.split()[0]) < 60
        pid = g.pid
    finally:
        await g.stop()
    assert pid is not None and not g.running
    assert not Path(f"/proc/{pid}").exists()
    assert _sockets(work) == []
    with pytest.raises(GuestError):
        await g.exec("true")
    assert "vswitch-init: up: t-guest" in g.console_log.read_text(errors="replace")


async def test_boot_failure_shows_console(guest_image: Path, tmp_path: Path) -> None:
    # 32 MiB is too small for the kernel: the guest never gets ready; the error says why
    g = Guest("tiny", tmp_path, image_dir=guest_image, memory_mb=32)
    await g.start()
    try:
        with pytest.raises(GuestTimeoutError) as e:
            await g.wait_ready(timeout=5)
    finally:
        await g.kill()
    assert "guest tiny" in str(e.value) and str(g.console_log) in str(e.value)
    assert not g.running and _sockets(tmp_path) == []
