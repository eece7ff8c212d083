"""DPDK testpmd's virtio-user as a second, independent front end."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import need, need_root, need_tool
from support.switch_process import SwitchProcess

from vswitch.testkit.testpmd import DpdkTestpmd, hugepages_ready

pytestmark = pytest.mark.dpdk

MAC = {0: "02:00:00:00:00:01", 1: "02:00:00:00:00:02"}
QUEUE_SIZE = 256


@pytest.fixture
def dpdk() -> None:
    need_tool("dpdk-testpmd")
    need_root()
    ok, why = hugepages_ready()
    need(ok, why)


@pytest.mark.parametrize("datapath", ["thread", "loop"])
async def test_testpmd_frames_flow_both_ways_and_counters_agree(
    tmp_path: Path, dpdk: None, datapath: str
) -> None:
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp_path / f"{n}.sock")} for n in "ab"]
    async with SwitchProcess(tmp_path, ports, switch={"datapath": datapath}) as sw:
        vdevs = [
            f"net_virtio_user{i},path={sw.sock(n)},mac={MAC[i]},queue_size={QUEUE_SIZE}"
            for i, n in enumerate("ab")
        ]
        # mac forwarding with each port addressed to the other: frames loop
        # a -> switch -> b -> testpmd -> b -> switch -> a, and the switch has
        # to learn both stations to send them the right way.
        args = [
            "--forward-mode=mac",
            f"--eth-peer=0,{MAC[1]}",
            f"--eth-peer=1,{MAC[0]}",
            "--nb-cores=1",
        ]
        async with DpdkTestpmd(vdevs, args, tmp_path / "testpmd.log", tmp_path.name) as tp:
            await sw.wait_port("a", "up")
            await sw.wait_port("b", "up")
            await tp.cmd("start tx_first")
            await asyncio.sleep(2)
            await tp.cmd("stop")
            await asyncio.sleep(0.5)  # let the switch finish the last kicks
            nic = await tp.port_stats()
            info = await sw.ports()
            fdb = {e["mac"]: e["port"] for e in await sw.fdb()}

            if nic[0]["tx_packets"] < 1000 or nic[1]["tx_packets"] < 1000:
                # testpmd's first tx_first is known to move nothing now and then: fail
                # loudly with its log rather than blame the switch's counters below
                pytest.fail(f"testpmd moved too little: {nic}\n{tp.tail()}")

        for i, name in enumerate("ab"):
            c = info[name]["counters"]
            # Every frame testpmd sent on a port was taken by the switch...
            assert c["rx_packets"] == nic[i]["tx_packets"], (name, c, nic)
            assert c["rx_bytes"] == nic[i]["tx_bytes"], (name, c, nic)
            # ...and every frame testpmd received came from the switch; what
            # the switch delivered after testpmd stopped polling is still
            # in the RX ring, at most one ring's worth.
            unread = c["tx_packets"] - nic[i]["rx_packets"]
            assert 0 <= unread <= QUEUE_SIZE, (name, c, nic)
            drops = {k: v for k, v in c.items() if "drop" in k and v}
            assert not drops, (name, drops)
            assert c["ring_errors"] == 0
            assert {"VERSION_1", "MRG_RXBUF"} <= set(info[name]["features"])
        assert fdb == {MAC[0]: "a", MAC[1]: "b"}


async def test_testpmd_with_two_queue_pairs_uses_every_queue(tmp_path: Path, dpdk: None) -> None:
    """virtio-user with queues=2 and --rxq=2 --txq=2: the switch serves both TX queues of
    each port and spreads testpmd's flows (--txonly-multi-flow: tx_first's frames differ by
    source address) over both RX queues; nothing is dropped."""
    ports = [{"name": n, "type": "vhost-user", "path": str(tmp_path / f"{n}.sock")} for n in "ab"]
    async with SwitchProcess(tmp_path, ports) as sw:
        vdevs = [
            f"net_virtio_user{i},path={sw.sock(n)},mac={MAC[i]},queue_size={QUEUE_SIZE},queues=2"
            for i, n in enumerate("ab")
        ]
        args = [
            "--forward-mode=mac",
            f"--eth-peer=0,{MAC[1]}",
            f"--eth-peer=1,{MAC[0]}",
            "--nb-cores=1",
            "--rxq=2",
            "--txq=2",
            "--txonly-multi-flow",
        ]
        async with DpdkTestpmd(vdevs, args, tmp_path / "testpmd.log", tmp_path.name) as tp:
            await sw.wait_port("a", "up")
            await sw.wait_port("b", "up")
            await tp.cmd("start tx_first")
            await asyncio.sleep(2)
            await tp.cmd("stop")
            await asyncio.sleep(0.5)
            nic = await tp.port_stats()
            info = await sw.ports()
        if nic[0]["tx_packets"] < 1000 or nic[1]["tx_packets"] < 1000:
            pytest.fail(f"testpmd moved too little: {nic}\n{tp.tail()}")
        for name in "ab":
            p = info[name]
            assert "MQ" in p["features"], p["features"]
            queues = {q["index"]: q for q in p["queues"]}
            assert set(queues) == {0, 1, 2, 3}, queues
            assert all(queues[q]["packets"] > 0 for q in range(4)), (name, queues)
            drops = {k: v for k, v in p["counters"].items() if "drop" in k and v}
            assert not drops, (name, drops)
