"""The fast path's BPF interpreter (csrc/vs_capture.c) against libpcap's own bpf_filter():
the programs pcap_compile makes for tcpdump expressions, over frames of every kind the
expressions look at (and runts, truncated headers, garbage), each frame also split into
segments the way frames lie in guest memory.  Both must return the same value for every
(program, frame).  Also: programs the fast path must refuse (bpf_validate's rules), and a
hypothesis run of random frames."""

from __future__ import annotations

import errno
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vswitch.bpf import INSN, Filter, compile_filter
from vswitch.testkit.virtio_driver import ffi, lib

EXPRESSIONS = [
    "",
    "icmp",
    "icmp or arp",
    "arp and arp[6:2] = 2",
    "ip",
    "ip6",
    "tcp",
    "udp port 53",
    "tcp dst port 80 or tcp src portrange 8000-8100",
    "host 10.0.0.1",
    "src net 10.0.0.0/8 and not dst host 10.0.0.9",
    "ether src 52:54:00:00:00:01",
    "ether dst ff:ff:ff:ff:ff:ff",
    "ether broadcast or ether multicast",
    "ether proto 0x88b5",
    "vlan",
    "vlan 10 and icmp",
    "greater 200",
    "less 64",
    "len > 100 and len < 1000",
    "ip[8] < 5",
    "ip[2:2] > 576",
    "tcp[tcpflags] & (tcp-syn|tcp-ack) = tcp-syn",
    "tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420",
    "icmp[icmptype] = icmp-echoreply",
    "ip[6:2] & 0x1fff != 0",
    "ip6 and ip6[6] = 58",
    "icmp6",
    "ip proto 47",
    "udp[8:2] % 7 = 3",
    "ip[1] * 3 - 5 = 10 or ip[1] / 2 = 4",
    "(ip[0] & 0xf) << 2 > 20",
    "ip[0] ^ 0x45 = 0 and ip[3] | 1 = 1",
    "ether[len - 1] = 0xaa",
    "ether[12:2] = 0x0800 and ether[100] = 1",
]


def mac(s: str) -> bytes:
    return bytes(int(x, 16) for x in s.split(":"))


def eth(dst: str, src: str, etype: int, payload: bytes) -> bytes:
    return mac(dst) + mac(src) + struct.pack("!H", etype) + payload


def ipv4(proto: int, src: str, dst: str, payload: bytes, ihl: int = 5, frag: int = 0) -> bytes:
    opts = b"\x01" * ((ihl - 5) * 4)
    total = 20 + len(opts) + len(payload)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, total, 1, frag, 64, proto, 0,
                      bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))  # fmt: skip
    return hdr + opts + payload


def tcp(sport: int, dport: int, flags: int, data: bytes = b"") -> bytes:
    return struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, flags, 8192, 0, 0) + data


def udp(sport: int, dport: int, data: bytes) -> bytes:
    return struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data


A, B, BC = "52:54:00:00:00:01", "52:54:00:00:00:02", "ff:ff:ff:ff:ff:ff"


def frames() -> list[bytes]:
    out = [
        eth(B, A, 0x0800, ipv4(1, "10.0.0.1", "10.0.0.2", b"\x08\x00" + b"\0" * 62)),
        eth(A, B, 0x0800, ipv4(1, "10.0.0.2", "10.0.0.1", b"\x00\x00" + b"\0" * 62)),
        eth(BC, A, 0x0806, bytes.fromhex("0001080006040001") + mac(A) + bytes(4) + bytes(10)),
        eth(A, B, 0x0806, bytes.fromhex("0001080006040002") + mac(B) + bytes(4) + bytes(10)),
        eth(B, A, 0x0800, ipv4(6, "10.0.0.1", "10.0.0.9", tcp(40000, 80, 0x02))),
        eth(B, A, 0x0800, ipv4(6, "10.1.2.3", "10.0.0.2", tcp(8050, 22, 0x12, b"x" * 300))),
        eth(B, A, 0x0800, ipv4(6, "10.0.0.1", "10.0.0.2", tcp(1234, 80, 0x18, b"GET / HTTP/1.1"))),
        eth(B, A, 0x0800, ipv4(17, "192.168.1.1", "10.0.0.1", udp(5353, 53, b"q" * 40))),
        eth(B, A, 0x0800, ipv4(17, "10.0.0.1", "10.0.0.2", udp(9, 9, b"z" * 1400))),
        eth(B, A, 0x0800, ipv4(17, "10.0.0.1", "10.0.0.2", udp(53, 1, b"a" * 8), ihl=7)),
        eth(B, A, 0x0800, ipv4(17, "10.0.0.1", "10.0.0.2", b"frag" * 10, frag=0x2001)),
        eth(B, A, 0x0800, ipv4(47, "10.0.0.1", "10.0.0.2", b"\0" * 30)),
        eth(B, A, 0x86DD, struct.pack("!IHBB", 0x60000000, 8, 58, 64) + bytes(32) + bytes(8)),
        eth(B, A, 0x86DD, struct.pack("!IHBB", 0x60000000, 8, 17, 64) + bytes(32) + bytes(8)),
        eth(
            B,
            A,
            0x8100,
            struct.pack("!HH", 10, 0x0800)
            + ipv4(1, "10.0.0.1", "10.0.0.2", b"\x08\x00" + bytes(30)),
        ),
        eth(B, A, 0x8100, struct.pack("!HH", 20, 0x0806) + bytes(28)),
        eth("01:00:5e:00:00:01", A, 0x0800, ipv4(2, "10.0.0.1", "224.0.0.1", bytes(8))),
        eth(B, A, 0x88B5, bytes(46)),
        eth(B, A, 0x88B5, bytes(200) + b"\xaa"),
        eth(B, A, 0x0800, ipv4(6, "10.0.0.1", "10.0.0.2", b"")[:10]),  # truncated IP header
        eth(B, A, 0x0800, ipv4(6, "10.0.0.1", "10.0.0.2", tcp(1, 80, 2))[:30]),  # cut TCP
        mac(B) + mac(A),  # 12 bytes: a runt
        mac(B)[:3],
    ]
    rnd = random.Random(18)
    out += [bytes(rnd.randrange(256) for _ in range(rnd.randrange(1, 300))) for _ in range(40)]
    return out


SEGMENTS = (0, 1, 2, 3, 7, 20, 64)


def fast(f: Filter, frame: bytes, seg_len: int) -> int:
    prog = ffi.from_buffer("struct vs_bpf_insn[]", f.insns)
    return lib.vs_bpf_test(prog, f.count, frame, len(frame), seg_len)


def reference(f: Filter, frame: bytes) -> int:
    from vswitch._pcap import ffi as pffi
    from vswitch._pcap import lib as plib

    prog = pffi.from_buffer("struct bpf_insn[]", f.insns)
    return plib.bpf_filter(prog, frame, len(frame), len(frame))


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_same_verdict_as_libpcap(expr: str) -> None:
    f = compile_filter(expr)
    matched = 0
    for frame in frames():
        want = reference(f, frame)
        matched += want != 0
        for seg in SEGMENTS:
            assert fast(f, frame, seg) == want, (expr, frame.hex(), seg)
    if expr in ("icmp", "icmp or arp", "tcp", "vlan 10 and icmp", "udp port 53"):
        assert 0 < matched < len(frames())  # the expression really selects


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(EXPRESSIONS),
    st.binary(min_size=0, max_size=400),
    st.sampled_from(SEGMENTS),
    st.sampled_from([b"", bytes.fromhex("52540000000252540000000108004500")]),
)
def test_random_frames(expr: str, body: bytes, seg: int, head: bytes) -> None:
    f = compile_filter(expr)
    frame = head + body
    assert fast(f, frame, seg) == reference(f, frame)


def prog(*insns: tuple[int, int, int, int]) -> bytes:
    return b"".join(INSN.pack(*i) for i in insns)


RET_K, LD_ABS_B, JEQ_K, JA = 0x06, 0x30, 0x15, 0x05
LD_MEM, ST, DIV_K, LSH_K = 0x60, 0x02, 0x34, 0x64


@pytest.mark.parametrize(
    "insns",
    [
        pytest.param(b"", id="empty"),
        pytest.param(prog((LD_ABS_B, 0, 0, 0)), id="no return at the end"),
        pytest.param(prog((JEQ_K, 1, 0, 0), (RET_K, 0, 0, 1)), id="jt past the end"),
        pytest.param(prog((JEQ_K, 0, 5, 0), (RET_K, 0, 0, 1)), id="jf past the end"),
        pytest.param(prog((JA, 0, 0, 1), (RET_K, 0, 0, 1)), id="ja past the end"),
        pytest.param(prog((JA, 0, 0, 0xFFFFFFFF), (RET_K, 0, 0, 1)), id="ja wrapping"),
        pytest.param(prog((LD_MEM, 0, 0, 16), (RET_K, 0, 0, 1)), id="scratch index 16"),
        pytest.param(prog((ST, 0, 0, 99), (RET_K, 0, 0, 1)), id="store index 99"),
        pytest.param(prog((DIV_K, 0, 0, 0), (RET_K, 0, 0, 1)), id="divide by constant 0"),
        pytest.param(prog((LSH_K, 0, 0, 32), (RET_K, 0, 0, 1)), id="shift by 32"),
        pytest.param(prog((0xFF, 0, 0, 0), (RET_K, 0, 0, 1)), id="unknown opcode"),
        pytest.param(prog(*[(RET_K, 0, 0, 1)] * 4097), id="too long"),
    ],
)
def test_refuses_bad_programs(insns: bytes) -> None:
    n = len(insns) // 8
    p = ffi.from_buffer("struct vs_bpf_insn[]", insns or b"\0" * 8)
    assert lib.vs_bpf_test(p, n, b"\0" * 64, 64, 0) == -errno.EINVAL


def test_loads_outside_the_frame_reject_it() -> None:
    # ld [k] for k at the very end, past it, and where k + 4 wraps around 2**32.
    for k, want in ((60, 1), (61, 0), (0xFFFFFFFE, 0)):
        p = prog((0x20, 0, 0, k), (RET_K, 0, 0, 1))
        assert lib.vs_bpf_test(ffi.from_buffer("struct vs_bpf_insn[]", p), 2,
                               bytes(64), 64, 5) == want  # fmt: skip
    # ldx #0xffffffff; ld [x + 2]: the indexed offset wraps.
    p = prog((0x01, 0, 0, 0xFFFFFFFF), (0x50, 0, 0, 2), (RET_K, 0, 0, 1))
    assert lib.vs_bpf_test(ffi.from_buffer("struct vs_bpf_insn[]", p), 3, bytes(64), 64, 0) == 0
