"""`vswitch capture` against a real Switch with exact traffic, read back by tshark."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import need_tool
from support.ops import VGuest, config, frames, wait_until
from support.ops import capture_cli as cli
from support.ops import capture_finish as finish
from support.ops import tshark_fields as fields

from vswitch.control import Client, request
from vswitch.daemon.switch import Switch
from vswitch.errors import ControlError
from vswitch.pcap import Reader

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
TIMEOUT = 30


@pytest.fixture
def tshark() -> str:
    return need_tool("tshark")


@pytest.fixture(params=["thread", "loop"])
async def sw(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Switch]:
    """Both data paths: the poll thread fills the capture ring from another thread, the
    event loop from the same one that drains it."""
    cfg = config(tmp_path, ["a", "b"], switch={"datapath": request.param})
    async with Switch(cfg) as s:
        yield s


@pytest.fixture
async def guests(sw: Switch) -> AsyncIterator[tuple[VGuest, VGuest]]:
    a, b = VGuest(sw.ports["a"].cfg.path), VGuest(sw.ports["b"].cfg.path)
    await a.start()
    await b.start()
    a.post_rx(200)
    b.post_rx(200)
    await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
    yield a, b
    a.close()
    b.close()




async def capturing(sw: Switch, port: str) -> None:
    await wait_until(lambda: port in sw.captures, what=f"a capture on {port}")




async def test_capture_both_directions_to_pcapng(
    sw: Switch, guests: tuple[VGuest, VGuest], tmp_path: Path, tshark: str
) -> None:
    a, b = guests
    out = tmp_path / "a.pcap"
    proc = await cli(sw, "a", "-w", str(out), "--count", "15")
    await capturing(sw, "a")
    to_b, to_a = frames(MB, MA, 10), frames(MA, MB, 5, size=200)
    await a.send(*to_b)
    await wait_until(lambda: sw.ports["b"].info()["counters"]["tx_packets"] == 10)
    await b.send(*to_a)
    await wait_until(lambda: sw.ports["a"].info()["counters"]["tx_packets"] == 5)
    await a.send(*frames(MB, MA, 3))  # beyond --count: not in the file
    _, err = await finish(proc)
    assert "a: 15 frame(s) captured, 0 dropped by the capture" in err

    rows = await fields(
        tshark, out, "frame.interface_name", "frame.packet_flags_direction",
        "eth.src", "eth.dst", "frame.len", "data.data",
    )  # fmt: skip
    assert len(rows) == 15
    assert all(r[0] == "a" for r in rows)
    assert [r[1] for r in rows] == ["0x00000001"] * 10 + ["0x00000002"] * 5  # in, then out
    assert [(r[2], r[3], r[4]) for r in rows] == [(MA, MB, "100")] * 10 + [(MB, MA, "200")] * 5
    sent = [f[14:] for f in to_b + to_a]  # tshark shows the payload after the ethertype
    assert [bytes.fromhex(r[5]) for r in rows] == sent
    assert not sw.captures  # the capture ended with the stream
    c = sw.ports["a"].info()["counters"]
    assert c["cap_drops"] == 0 and c["cap_packets"] >= 15
    # A second capture can start once the first is done.
    proc = await cli(sw, "a", "-w", str(tmp_path / "again.pcap"), "--duration", "0.3", "-q")
    _, err = await finish(proc)
    assert err == ""


async def test_capture_streams_to_tshark_through_a_pipe(
    sw: Switch, guests: tuple[VGuest, VGuest], tshark: str
) -> None:
    a, b = guests
    ctl = sw.config.control
    cmd = (
        f"{sys.executable} -m vswitch capture b --control {ctl} --direction rx -c 5 -w - "
        f"| {tshark} -r - -T fields -e eth.src -e frame.len"
    )
    proc = await asyncio.create_subprocess_shell(
        cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await capturing(sw, "b")
    await a.send(*frames(MB, MA, 4))  # into b: tx on b, not captured with --direction rx
    await wait_until(lambda: sw.ports["b"].info()["counters"]["tx_packets"] == 4)
    await b.send(*frames(MA, MB, 5, size=64))
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    assert out.decode().splitlines() == [f"{MB}\t64"] * 5


async def test_pcap_format_and_frame_lines(
    sw: Switch, guests: tuple[VGuest, VGuest], tmp_path: Path, tshark: str
) -> None:
    a, _ = guests
    out = tmp_path / "tx.pcap"
    proc = await cli(
        sw, "b", "-F", "pcap", "--direction", "tx", "-c", "3", "-s", "61", "-w", str(out)
    )
    await capturing(sw, "b")
    await a.send(*frames(MB, MA, 3, size=80))
    await finish(proc)
    assert out.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")  # classic pcap, microseconds
    rows = await fields(tshark, out, "eth.src", "frame.len", "frame.cap_len")
    assert rows == [[MA, "80", "61"]] * 3  # cut at the snap length, the wire length kept

    # Without -w: one line per frame, with its direction.
    proc = await cli(sw, "a", "-c", "2", "-s", "20")
    await capturing(sw, "a")
    await a.send(*frames(MB, MA, 2))
    text, err = await finish(proc)
    lines = text.splitlines()
    assert len(lines) == 2, text
    assert lines[0].endswith(f" a rx {MA} > {MB}, ethertype 0x88b5, length 100"), lines
    assert "capturing on a (both), frame summaries" in err


async def test_slow_reader_drops_the_capture_never_the_port(
    sw: Switch, guests: tuple[VGuest, VGuest]
) -> None:
    a, _ = guests
    client = Client(sw.config.control)
    # The smallest ring (64 KiB) and a client that does not read.
    result = await client.call("capture", port="a", direction="rx", buffer=64 << 10)
    assert result["port"] == "a" and result["format"] == "pcapng"
    n = 3000
    await a.send(*frames(MB, MA, n, size=1000))
    await a.drain_tx()  # the port took every frame although nobody reads the capture
    c = sw.ports["a"].info()["counters"]
    assert c["rx_packets"] == n and c["cap_drops"] > 0
    assert sum(v for k, v in c.items() if k.startswith("rx_drop")) == 0
    assert c["cap_packets"] + c["cap_drops"] == n

    # Now read: what was captured arrives, and the statistics block counts the drops.
    assert client.writer is not None and client.reader is not None
    client.writer.write_eof()
    reader, data = Reader(), b""
    while chunk := await asyncio.wait_for(client.reader.read(1 << 20), TIMEOUT):
        data += chunk
    got = list(reader.feed(data))
    await client.close()
    assert reader.dropped == c["cap_drops"]
    assert len(got) == c["cap_packets"] == n - reader.dropped
    assert all(f.length == 1000 for f in got)
    await wait_until(lambda: not sw.captures, what="the capture to end")


async def test_one_capture_per_port_and_clear_errors(sw: Switch) -> None:
    first = Client(sw.config.control)
    await first.call("capture", port="a")
    with pytest.raises(ControlError, match="port a already has a capture running"):
        await request(sw.config.control, "capture", port="a")
    with pytest.raises(ControlError, match=r"no port 'zz' \(ports: a, b\)"):
        await request(sw.config.control, "capture", port="zz")
    with pytest.raises(ControlError, match=r"buffer must be a whole number in 65536\.\."):
        await request(sw.config.control, "capture", port="b", buffer=10)
    # The other port is free, and stats show the running capture.
    st = await request(sw.config.control, "stats")
    assert set(st["captures"]) == {"a"}
    await first.close()  # the client leaves: the daemon stops the capture
    await wait_until(lambda: not sw.captures, what="the capture to end")
    second = Client(sw.config.control)
    await second.call("capture", port="a")
    await second.close()
    await wait_until(lambda: not sw.captures, what="the capture to end")


async def test_cli_capture_errors(sw: Switch, tmp_path: Path) -> None:
    proc = await cli(sw, "zz", "-w", str(tmp_path / "x.pcap"))
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 1
    assert err.decode() == "error: no port 'zz' (ports: a, b)\n"
    assert not (tmp_path / "x.pcap").exists()  # nothing is created for a refused capture
    ports = await request(sw.config.control, "ports")  # the daemon carried on
    assert [p["capture"] for p in ports] == [False, False]


async def test_ctrl_c_ends_the_capture_with_a_complete_file(
    sw: Switch, guests: tuple[VGuest, VGuest], tmp_path: Path, tshark: str
) -> None:
    a, _ = guests
    out = tmp_path / "int.pcapng"
    proc = await cli(sw, "a", "-w", str(out))
    await capturing(sw, "a")
    await a.send(*frames(MB, MA, 7))
    await wait_until(lambda: "a" in sw.captures and sw.captures["a"].frames == 7)
    proc.send_signal(signal.SIGINT)
    _, err = await finish(proc)
    assert "a: 7 frame(s) captured, 0 dropped by the capture" in err
    assert len(await fields(tshark, out, "frame.number")) == 7
    # capinfos reads the whole file, the statistics block at its end included.
    proc2 = await asyncio.create_subprocess_exec(
        need_tool("capinfos"), "-M", str(out), stdout=asyncio.subprocess.PIPE
    )
    info, _ = await asyncio.wait_for(proc2.communicate(), TIMEOUT)
    assert "Number of packets = 7" in info.decode()
