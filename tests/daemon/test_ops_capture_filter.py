"""Capture filters and multi-port captures against a real Switch, read back by tshark:
only matching frames reach the file, a bad expression is refused with libpcap's message,
frames the filter rejects are counted and never copied (a full ring would show it),
several ports go into one pcapng with an interface per port in time order, and
`tshark -i -` reads the live stream."""

from __future__ import annotations

import asyncio
import struct
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

MA, MB, MC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"
TIMEOUT = 30


def _mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def icmp(dst: str, src: str, n: int) -> list[bytes]:
    """n ICMP echo requests 10.0.0.1 -> 10.0.0.2, their sequence number the index."""
    out = []
    for i in range(n):
        body = struct.pack("!BBHHH", 8, 0, 0, 1, i) + bytes(56)
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(body), i, 0, 64, 1, 0,
                         bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))  # fmt: skip
        out.append(_mac(dst) + _mac(src) + b"\x08\x00" + ip + body)
    return out


def arp(src: str, n: int) -> list[bytes]:
    out = []
    for i in range(n):
        body = bytes.fromhex("0001080006040001") + _mac(src) + bytes([10, 0, 0, 1])
        body += bytes(6) + bytes([10, 0, 0, 100 + i])
        out.append(_mac("ff:ff:ff:ff:ff:ff") + _mac(src) + b"\x08\x06" + body + bytes(18))
    return out


@pytest.fixture
def tshark() -> str:
    return need_tool("tshark")


@pytest.fixture(params=["thread", "loop"])
async def sw(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Switch]:
    cfg = config(tmp_path, ["a", "b", "c"], switch={"datapath": request.param})
    async with Switch(cfg) as s:
        yield s


@pytest.fixture
async def guests(sw: Switch) -> AsyncIterator[tuple[VGuest, VGuest, VGuest]]:
    gs = tuple(VGuest(sw.ports[n].cfg.path) for n in "abc")
    for g in gs:
        await g.start()
        g.post_rx(250)
    await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
    yield gs  # type: ignore[misc]
    for g in gs:
        g.close()






def counters(sw: Switch, port: str) -> dict[str, int]:
    return sw.ports[port].info()["counters"]


async def test_filter_words_keep_only_matching_frames(
    sw: Switch, guests: tuple[VGuest, VGuest, VGuest], tmp_path: Path, tshark: str
) -> None:
    a, _, _ = guests
    out = tmp_path / "f.pcapng"
    # Several words joined like tcpdump's: the filter is "icmp or arp".
    proc = await cli(sw, "a", "icmp", "or", "arp", "-w", str(out), "--direction", "rx")
    await wait_until(lambda: "a" in sw.captures, what="the capture")
    assert sw.captures["a"].args.filter == "icmp or arp"
    noise = frames(MB, MA, 20)  # ethertype 0x88b5: not matched
    pings, arps = icmp(MB, MA, 5), arp(MA, 3)
    await a.send(*noise[:10], *pings, *noise[10:], *arps)
    await a.drain_tx()
    await wait_until(lambda: sw.captures["a"].frames == 8, what="8 frames sent")
    c = counters(sw, "a")
    assert c["cap_filtered"] == 20 and c["cap_packets"] == 8 and c["cap_drops"] == 0
    proc.send_signal(2)
    _, err = await finish(proc)
    assert "capturing on a (rx, filter 'icmp or arp')" in err
    assert "a: 8 frame(s) captured, 0 dropped by the capture, 20 filtered out" in err
    rows = await fields(tshark, out, "frame.protocols", "icmp.seq", "arp.dst.proto_ipv4")
    assert [r[0] for r in rows] == ["eth:ethertype:ip:icmp:data"] * 5 + ["eth:ethertype:arp"] * 3
    assert [r[1] for r in rows[:5]] == [str(i) for i in range(5)]
    assert [r[2] for r in rows[5:]] == ["10.0.0.100", "10.0.0.101", "10.0.0.102"]
    # The file says which filter ran, and how many frames it accepted.
    reader = Reader()
    list(reader.feed(out.read_bytes()))
    assert reader.filtered == 20 and reader.dropped == 0
    info = await fields(tshark, out, "frame.interface_name")
    assert info == [["a"]] * 8


async def test_filter_option_and_the_control_argument(
    sw: Switch, guests: tuple[VGuest, VGuest, VGuest], tshark: str, tmp_path: Path
) -> None:
    a, _, _ = guests
    out = tmp_path / "o.pcapng"
    proc = await cli(sw, "b", "--filter", "icmp[icmptype] = icmp-echo and ip[5] >= 3",
                     "-c", "2", "-w", str(out))  # fmt: skip
    await wait_until(lambda: "b" in sw.captures, what="the capture")
    await a.send(*icmp(MB, MA, 6))  # ip id 0..5: ids 3, 4 (and 5) match
    await finish(proc)
    assert [r[0] for r in await fields(tshark, out, "ip.id")] == ["0x0003", "0x0004"]

    # Straight through the protocol, as a script would.
    client = Client(sw.config.control)
    result = await client.call("capture", port="a", filter="ether src " + MC)
    assert result["filter"] == "ether src " + MC and result["ports"] == ["a"]
    st = await request(sw.config.control, "stats")
    assert st["captures"]["a"]["filter"] == "ether src " + MC
    await client.close()
    await wait_until(lambda: not sw.captures, what="the capture to end")


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("icmp or", "can't parse filter expression: syntax error"),
        ("tcp port 99999", "illegal port number 99999 > 65535"),
        ("vlan 5000", "VLAN tag 5000 greater than maximum 4095"),
        ("ether host zz", "unknown ether host 'zz'"),
    ],
)
async def test_bad_expression_refused_with_libpcaps_message(
    sw: Switch, expr: str, message: str, tmp_path: Path
) -> None:
    with pytest.raises(ControlError) as exc:
        await request(sw.config.control, "capture", port="a", filter=expr)
    assert str(exc.value) == f"capture: bad filter {expr!r}: {message}"
    assert not sw.captures
    out = tmp_path / "x.pcapng"
    proc = await cli(sw, "a", *expr.split(), "-w", str(out))
    _, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 1
    assert err.decode() == f"error: capture: bad filter {expr!r}: {message}\n"
    assert not out.exists()
    assert [p["capture"] for p in await request(sw.config.control, "ports")] == [False] * 3


async def test_rejected_frames_are_never_copied(
    sw: Switch, guests: tuple[VGuest, VGuest, VGuest]
) -> None:
    """With the smallest ring and nobody reading, 3000 frames of 1000 bytes fill it many
    times over (test_ops_capture shows the drops); through a filter they reject, nothing is
    copied: no drop, no frame, every one counted as filtered."""
    a, _, _ = guests
    client = Client(sw.config.control)
    await client.call("capture", port="a", direction="rx", buffer=64 << 10, filter="icmp")
    n = 3000
    await a.send(*frames(MB, MA, n, size=1000))
    await a.drain_tx()
    c = counters(sw, "a")
    assert c["rx_packets"] == n
    assert c["cap_filtered"] == n and c["cap_packets"] == 0 and c["cap_drops"] == 0
    await a.send(*icmp(MB, MA, 2))
    await a.drain_tx()
    await wait_until(lambda: counters(sw, "a")["cap_packets"] == 2)
    assert client.writer is not None and client.reader is not None
    client.writer.write_eof()
    data = b""
    while chunk := await asyncio.wait_for(client.reader.read(1 << 20), TIMEOUT):
        data += chunk
    await client.close()
    reader = Reader()
    assert len(list(reader.feed(data))) == 2
    assert reader.filtered == n and reader.dropped == 0


async def test_several_ports_into_one_pcapng(
    sw: Switch, guests: tuple[VGuest, VGuest, VGuest], tmp_path: Path, tshark: str
) -> None:
    a, b, c = guests
    out = tmp_path / "both.pcapng"
    proc = await cli(sw, "a", "b", "-w", str(out))
    await wait_until(lambda: "a" in sw.captures and "b" in sw.captures, what="the capture")
    assert sw.captures["a"] is sw.captures["b"] and "c" not in sw.captures
    for i in range(4):  # interleaved in time: a -> b, b -> a, c -> a (not captured on c)
        await a.send(*frames(MB, MA, 1, size=100 + i))
        await a.drain_tx()
        await b.send(*frames(MA, MB, 1, size=200 + i))
        await b.drain_tx()
        await c.send(*frames(MA, MC, 1, size=300 + i))
        await c.drain_tx()
        await asyncio.sleep(0.03)  # across drains of the rings
    await wait_until(lambda: sw.captures["a"].frames == 20, what="20 frames sent")
    proc.send_signal(2)
    _, err = await finish(proc)
    assert "a+b: 20 frame(s) captured, 0 dropped by the capture" in err

    rows = await fields(
        tshark, out, "frame.interface_name", "frame.interface_description",
        "frame.packet_flags_direction", "frame.len", "frame.time_epoch",
    )  # fmt: skip
    assert len(rows) == 20
    desc = {"a": "vswitch port a (both)", "b": "vswitch port b (both)"}
    assert all(desc[r[0]] == r[1] for r in rows)
    times = [float(r[4]) for r in rows]
    assert times == sorted(times)  # merged in time order
    got = [(r[0], r[2], r[3]) for r in rows]
    rx, tx = "0x00000001", "0x00000002"
    want = []
    for i in range(4):  # each frame on both of its ports: taken from one, given to the other
        want += [("a", rx, str(100 + i)), ("b", tx, str(100 + i))]
        want += [("b", rx, str(200 + i)), ("a", tx, str(200 + i))]
        want += [("a", tx, str(300 + i))]
    assert got == want
    # capinfos sees both interfaces and their statistics blocks.
    proc2 = await asyncio.create_subprocess_exec(
        need_tool("capinfos"), str(out), stdout=asyncio.subprocess.PIPE
    )
    info = (await asyncio.wait_for(proc2.communicate(), TIMEOUT))[0].decode()
    assert "Number of interfaces in file: 2" in info
    assert "Number of packets:   20" in info or "Number of packets = 20" in info, info
    assert "Number of packets = 12" in info and "Number of packets = 8" in info  # a, b
    assert info.count("Number of stat entries = 1") == 2  # a statistics block each


async def test_a_removed_port_leaves_a_multi_port_capture(
    sw: Switch, guests: tuple[VGuest, VGuest, VGuest]
) -> None:
    client = Client(sw.config.control)
    await client.call("capture", port=["a", "c"])
    await sw.remove_port("c", "port removed by test")
    assert "c" not in sw.captures and "a" in sw.captures
    a, _, _ = guests
    await a.send(*frames(MB, MA, 3))
    await wait_until(lambda: sw.captures["a"].frames == 3, what="frames from a")
    await client.close()
    await wait_until(lambda: not sw.captures, what="the capture to end")
    with pytest.raises(ControlError, match="format pcap holds one interface"):
        await request(sw.config.control, "capture", port=["a", "b"], format="pcap")
    with pytest.raises(ControlError, match="a port is named twice"):
        await request(sw.config.control, "capture", port=["a", "a"])


async def test_tshark_reads_the_live_stream(
    sw: Switch, guests: tuple[VGuest, VGuest, VGuest], tshark: str
) -> None:
    """`vswitch capture a b -w - | tshark -i -`: tshark's capture from a pipe (dumpcap)
    reads the pcapng stream as it comes, block by block: it prints the frames and exits
    after -c while the capture still runs (no --count on our side)."""
    a, _, _ = guests
    ctl = sw.config.control
    cmd = (
        f"{sys.executable} -m vswitch capture a b icmp --control {ctl} -w - "
        f"| timeout 25 {tshark} -i - -c 6 -l -T fields -e frame.interface_name -e icmp.seq"
    )
    proc = await asyncio.create_subprocess_shell(
        cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    await wait_until(lambda: "a" in sw.captures, what="the capture")
    await a.send(*frames(MB, MA, 5))  # filtered out
    await a.send(*icmp(MB, MA, 3))
    await a.drain_tx()
    out, err = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert sorted(lines) == sorted(["a\t0", "b\t0", "a\t1", "b\t1", "a\t2", "b\t2"]), lines
    await wait_until(lambda: not sw.captures, what="the capture to end with its reader")
