"""Hostile rings against the real daemon (issue 12): a front end whose guest posts
descriptor chains far longer than a frame needs, RX buffers cut into tiny heads, and a
chain longer than its queue.  Only its own frames suffer: they are dropped and counted,
or its port breaks; the honest pair keeps forwarding and the control socket answers.
tests/fastpath/test_fastpath_hostile.py checks the limits themselves, in C."""

from __future__ import annotations

import asyncio
import os
import random
from pathlib import Path

from support.peers import BROADCAST, SoftGuest, announce, frame, vports
from support.switch_process import SwitchProcess

from vswitch.control import request

MACS = {n: f"02:00:00:00:30:{i + 1:02x}" for i, n in enumerate("abh")}


async def counters(sw: SwitchProcess, port: str) -> dict[str, int]:
    return (await sw.ports())[port]["counters"]


async def honest_pair_forwards(a: SoftGuest, b: SoftGuest, n: int, base: int) -> None:
    a.got.clear()
    b.got.clear()
    await a.send([frame(MACS["b"], MACS["a"], base + i) for i in range(n)])
    await b.send([frame(MACS["a"], MACS["b"], base + i) for i in range(n)])
    await b.wait_received(n, timeout=5)
    await a.wait_received(n, timeout=5)


async def test_overlong_chains_and_tiny_heads_cost_only_the_hostile_port(
    tmp_path: Path,
) -> None:
    rng = random.Random(7)
    async with SwitchProcess(tmp_path, vports(tmp_path, "abh"), log_level="info") as sw:
        a = await SoftGuest(sw.sock("a"), MACS["a"]).attach()
        b = await SoftGuest(sw.sock("b"), MACS["b"]).attach()
        h = SoftGuest(sw.sock("h"), MACS["h"], num=512, mem_size=8 << 20)
        await h.attach(rx_buffers=0)
        await announce(a, b)
        try:
            # RX: 400 buffers of 8 bytes each: no frame fits in 64 heads.
            h.rx.add_rx(8, count=400)
            os.eventfd_write(h.kick[0], 1)
            # TX: chains of 170 descriptors (zero-length pieces among them), direct and
            # indirect, each carrying a broadcast frame the switch must not forward.
            body = frame(BROADCAST, MACS["h"], 0, size=600)
            for indirect in (False, True, False, True):
                cuts = sorted(rng.sample(range(1, len(body)), 150))
                h.tx.add_tx(body, bytes(12), split=cuts + [cuts[-1]] * 20, indirect=indirect)
            os.eventfd_write(h.kick[1], 1)
            # A broadcast from the honest side reaches h's RX ring too: 612 bytes with its
            # header, 77 heads of 8 bytes, more than a frame may use.
            await a.send([frame(BROADCAST, MACS["a"], 999, size=600)])
            await b.wait_received(1, timeout=5)

            loop = asyncio.get_running_loop()
            deadline = loop.time() + 5
            while True:
                c = await counters(sw, "h")
                if c["rx_drop_desc_limit"] >= 4 and c["tx_drop_desc_limit"] >= 1:
                    break
                assert loop.time() < deadline, {k: v for k, v in c.items() if v}
                await asyncio.sleep(0.05)
            assert c["rx_packets"] == 0 and c["tx_packets"] == 0 and c["ring_errors"] == 0, c
            assert (await sw.ports())["h"]["state"] == "up"  # dropped, not broken
            assert (await counters(sw, "b"))["tx_packets"] >= 1
            await honest_pair_forwards(a, b, 200, 1000)
        finally:
            h.close()

        # A chain longer than its queue (an indirect table of 100 in a ring of 64):
        # the ring is broken, that port only.
        h = SoftGuest(sw.sock("h"), MACS["h"], num=64, mem_size=2 << 20)
        await h.attach()
        try:
            body = frame(MACS["a"], MACS["h"], 0, size=300)
            h.tx.add_tx(body, bytes(12), split=list(range(2, 200, 2)), indirect=True)
            os.eventfd_write(h.kick[1], 1)
            await sw.wait_port("h", "broken", timeout=10)
            port = (await sw.ports())["h"]
            assert "longer than the queue" in (port["error"] or ""), port["error"]
            await asyncio.wait_for(request(sw.control, "ports"), 3)
            await honest_pair_forwards(a, b, 200, 2000)
        finally:
            h.close()
            a.close()
            b.close()
