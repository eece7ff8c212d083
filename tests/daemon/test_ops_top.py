"""`vswitch top` in a real terminal (tmux) against a switch with steady traffic."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import need_tool
from support.ops import VGuest, config, frames, wait_until

from vswitch.daemon.switch import Switch

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
UNIT = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}


def value(cell: str) -> float:
    m = re.fullmatch(r"([\d.]+)([kMG]?)b?", cell)
    assert m, cell
    return float(m.group(1)) * UNIT[m.group(2)]


@pytest.fixture
async def busy(tmp_path: Path) -> AsyncIterator[Switch]:
    """Ports a and b; a sends ~2000 frames/s to b, which takes only its first 100."""
    async with Switch(config(tmp_path, ["a", "b"])) as sw:
        a, b = VGuest(tmp_path / "a.sock"), VGuest(tmp_path / "b.sock")
        await a.start()
        await b.start()
        b.post_rx(100)
        await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
        await b.send(*frames(MA, MB, 1))

        async def traffic() -> None:
            batch = frames(MB, MA, 100, size=500)
            while True:
                await a.send(*batch)
                await asyncio.sleep(0.05)

        task = asyncio.create_task(traffic())
        try:
            yield sw
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            a.close()
            b.close()


async def run(*args: str, timeout: float = 20) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def test_top_in_a_terminal(busy: Switch, tmp_path: Path) -> None:
    tmux = need_tool("tmux")
    sock = f"vswitch-top-{os.getpid()}"  # a private tmux server
    ctl = busy.config.control
    # pytest exports COLUMNS/LINES, which rich would trust over the real terminal size.
    cmd = f"env -u COLUMNS -u LINES {sys.executable} -m vswitch top --control {ctl}; sleep 30"
    await run(tmux, "-L", sock, "new-session", "-d", "-s", "top", "-x", "150", "-y", "20", cmd)
    try:
        await asyncio.sleep(3.5)  # three refreshes
        screen = await run(tmux, "-L", sock, "capture-pane", "-p", "-t", "top")
        rows = {line.split()[0]: line.split() for line in screen.splitlines() if line.split()}
        assert "vswitch top" in screen and f"{ctl}" in screen, screen
        head = "PORT STATE RX PPS RX BPS TX PPS TX BPS DROP/S DROPS MACS".split()
        assert rows["PORT"] == head, screen
        a, b = rows["a"], rows["b"]
        assert a[1] == "up" and b[1] == "up"
        # a sends ~2000 frames/s of 500 bytes; b receives them but has room for no more.
        assert 300 < value(a[2]) < 20_000, screen
        assert value(a[3]) == pytest.approx(value(a[2]) * 500 * 8, rel=0.05), screen
        assert value(b[4]) == 0 and value(b[6]) > 300, screen  # all dropped: no buffers
        assert int(b[7]) > 1000 and a[8] == "1" and b[8] == "1", screen
        assert re.search(r"fdb 2/\d+", screen), screen

        # Ctrl-C quits and gives the terminal back.
        await run(tmux, "-L", sock, "send-keys", "-t", "top", "C-c")
        await asyncio.sleep(0.5)
        screen = await run(tmux, "-L", sock, "capture-pane", "-p", "-t", "top")
        assert "Traceback" not in screen and "PORT" not in screen, screen
    finally:
        await run(tmux, "-L", sock, "kill-server")


async def test_top_batch_mode(busy: Switch) -> None:
    out = await run(
        sys.executable, "-m", "vswitch", "top", "--control", str(busy.config.control),
        "-n", "2", "-i", "0.5",
    )  # fmt: skip
    tables = [block for block in out.split("vswitch top") if block.strip()]
    assert len(tables) == 2, out
    first, second = ([line.split() for line in t.splitlines()] for t in tables)
    assert ["a", "up", "-", "-", "-", "-", "-"] == next(r for r in first if r[:1] == ["a"])[:7]
    assert value(next(r for r in second if r[:1] == ["a"])[2]) > 0


def test_top_shows_each_queue_pair_of_a_multiqueue_port() -> None:
    from rich.console import Console

    from vswitch.cli.top import Sample, render

    def port(n: int) -> dict[str, object]:
        queues = [{"index": q, "pair": q // 2, "ready": True, "packets": n * (q + 1),
                   "bytes": 100 * n * (q + 1)} for q in range(4)]  # fmt: skip
        return {"name": "vm1", "state": "up", "counters": {"rx_packets": n}, "queues": queues}

    prev, cur = Sample(0.0, [port(0)], {}), Sample(1.0, [port(10)], {})
    console = Console(width=150, record=True)
    console.print(render("ctl.sock", cur, prev, 1.0))
    lines = console.export_text().splitlines()
    rows = {ln.split()[1]: ln.split() for ln in lines if ln.strip().startswith("queue")}
    # Pair 1: the switch took 40/s from ring 3 (its TX) and gave 30/s to ring 2 (its RX).
    assert rows["0"][2:4] == ["ready", "20"] and rows["1"][3] == "40", rows
    assert rows["1"][5] == "30", rows
