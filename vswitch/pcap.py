"""Capture file formats: the fast path's capture records to pcapng or pcap, and back.

The fast path fills a buffer with records of `struct vs_cap_hdr` (fastpath.h: ts_ns u64,
caplen, len, port, dir u32) followed by caplen bytes of frame, padded to a multiple of 8.
`Encoder` turns them into a stream that tshark, Wireshark and tcpdump read:

- pcapng (the default): one Section Header Block, one Interface Description Block named
  after the port with nanosecond timestamps, an Enhanced Packet Block per frame whose
  epb_flags carry the direction (inbound = rx, outbound = tx, from the switch's side), and
  an Interface Statistics Block at the end with the frames the capture dropped.
- pcap: the classic format (microseconds, no direction), for tools that read nothing else.

`Reader` walks either format incrementally (the CLI counts and prints frames with it).
Formats: https://www.ietf.org/archive/id/draft-ietf-opsawg-pcapng-02.html and pcap(5).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

FORMATS = ("pcapng", "pcap")
LINKTYPE_ETHERNET = 1
DIR_RX, DIR_TX = 1, 2  # VS_CAP_RX, VS_CAP_TX

CAP_HDR = struct.Struct("<QIIII")  # struct vs_cap_hdr
assert CAP_HDR.size == 24

# pcapng block types and options
_SHB, _IDB, _ISB, _EPB = 0x0A0D0D0A, 0x00000001, 0x00000005, 0x00000006
_BOM = 0x1A2B3C4D
_EPB_HEAD = struct.Struct("<IIIIIII")  # type, length, interface, ts high, ts low, caplen, len
_EPB_FLAGS = {DIR_RX: 1, DIR_TX: 2}  # epb_flags bits 0-1: 01 inbound, 10 outbound
# pcap
_PCAP_MAGIC_US = 0xA1B2C3D4
_PCAP_MAGIC_NS = 0xA1B23C4D
_PCAP_REC = struct.Struct("<IIII")


def _pad4(n: int) -> int:
    return (n + 3) & ~3


def _option(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + b"\0" * (_pad4(len(value)) - len(value))


def _block(btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def _ts(ns: int) -> bytes:
    return struct.pack("<II", ns >> 32, ns & 0xFFFFFFFF)


@dataclass
class Encoder:
    """Turns capture records of one port into a pcapng or pcap byte stream."""

    fmt: str
    port: str
    snaplen: int
    description: str = ""
    application: str = "vswitch"

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise ValueError(f"unknown capture format {self.fmt!r} (use pcapng or pcap)")

    def header(self) -> bytes:
        if self.fmt == "pcap":
            return struct.pack(
                "<IHHiIII", _PCAP_MAGIC_US, 2, 4, 0, 0, self.snaplen, LINKTYPE_ETHERNET
            )
        shb = struct.pack("<IHHq", _BOM, 1, 0, -1)
        shb += _option(4, self.application.encode()) + _option(0, b"")  # shb_userappl
        opts = _option(2, self.port.encode())  # if_name
        if self.description:
            opts += _option(3, self.description.encode())  # if_description
        opts += _option(9, b"\x09")  # if_tsresol: 10^-9 s
        idb = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, self.snaplen) + opts + _option(0, b"")
        return _block(_SHB, shb) + _block(_IDB, idb)

    def records(self, buf: memoryview, limit: int | None = None) -> tuple[bytes, int]:
        """Encode the whole records in buf (at most `limit` of them); (bytes, how many)."""
        out: list[bytes] = []
        off, n, end = 0, 0, len(buf)
        pcap = self.fmt == "pcap"
        while off + CAP_HDR.size <= end and (limit is None or n < limit):
            ts, caplen, length, _port, direction = CAP_HDR.unpack_from(buf, off)
            start = off + CAP_HDR.size
            if start + caplen > end:
                break  # never happens with whole records from vs_capture_read
            frame = bytes(buf[start : start + caplen])
            if pcap:
                s, ns = divmod(ts, 1_000_000_000)
                out.append(_PCAP_REC.pack(s, ns // 1000, caplen, length) + frame)
            else:
                pad = _pad4(caplen) - caplen
                total = _EPB_HEAD.size + caplen + pad + 16  # + epb_flags, end, length
                flags = _EPB_FLAGS.get(direction, 0)
                out.append(
                    _EPB_HEAD.pack(_EPB, total, 0, ts >> 32, ts & 0xFFFFFFFF, caplen, length)
                    + frame
                    + b"\0" * pad
                    + struct.pack("<HHIHHI", 2, 4, flags, 0, 0, total)
                )
            off = (start + caplen + 7) & ~7
            n += 1
        return b"".join(out), n

    def trailer(self, start_ns: int, end_ns: int, received: int, dropped: int) -> bytes:
        """pcapng: an Interface Statistics Block (what tshark/capinfos report as drops)."""
        if self.fmt == "pcap":
            return b""
        opts = _option(2, _ts(start_ns)) + _option(3, _ts(end_ns))  # isb_starttime/endtime
        opts += _option(4, struct.pack("<Q", received))  # isb_ifrecv
        opts += _option(5, struct.pack("<Q", dropped))  # isb_ifdrop
        body = struct.pack("<I", 0) + _ts(end_ns) + opts + _option(0, b"")
        return _block(_ISB, body)


@dataclass
class Frame:
    ts_ns: int
    direction: int  # DIR_RX, DIR_TX, or 0 when the format does not say
    length: int  # on the wire
    data: bytes  # the captured bytes


class Reader:
    """Incremental reader of a pcapng or pcap stream: feed() bytes, get Frames.

    Also keeps the drop count of the last pcapng Interface Statistics Block."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.fmt: str | None = None
        self.frames = 0
        self.dropped: int | None = None
        self._ns = False
        self._tsresol = 1_000_000  # units per second; pcapng default 10^-6

    def feed(self, data: bytes) -> Iterator[Frame]:
        self._buf += data
        while True:
            frame_or_none = self._next()
            if frame_or_none is False:
                return
            if frame_or_none is not None:
                self.frames += 1
                yield frame_or_none

    def _next(self) -> Frame | bool | None:
        """A Frame, None (a non-frame block consumed), or False (need more bytes)."""
        b = self._buf
        if self.fmt is None:
            if len(b) < 24:
                return False
            magic = struct.unpack_from("<I", b)[0]
            if magic == _SHB:
                self.fmt = "pcapng"
            elif magic in (_PCAP_MAGIC_US, _PCAP_MAGIC_NS):
                self.fmt, self._ns = "pcap", magic == _PCAP_MAGIC_NS
                del b[:24]
                return None
            else:
                raise ValueError(f"not a pcap or pcapng stream (magic {magic:#010x})")
        if self.fmt == "pcap":
            if len(b) < 16:
                return False
            s, frac, caplen, length = _PCAP_REC.unpack_from(b)
            if len(b) < 16 + caplen:
                return False
            data = bytes(b[16 : 16 + caplen])
            del b[: 16 + caplen]
            return Frame(s * 1_000_000_000 + frac * (1 if self._ns else 1000), 0, length, data)
        if len(b) < 12:
            return False
        btype, blen = struct.unpack_from("<II", b)
        if blen < 12 or blen % 4:
            raise ValueError(f"corrupt pcapng block (type {btype:#x}, length {blen})")
        if len(b) < blen:
            return False
        block = bytes(b[:blen])
        del b[:blen]
        if btype == _IDB:
            for code, value in _options(block[16:-4]):
                if code == 9 and value:
                    r = value[0]
                    self._tsresol = 2 ** (r & 0x7F) if r & 0x80 else 10**r
        elif btype == _ISB:
            for code, value in _options(block[20:-4]):
                if code == 5 and len(value) == 8:
                    self.dropped = struct.unpack("<Q", value)[0]
        elif btype == _EPB:
            _, _, _, hi, lo, caplen, length = _EPB_HEAD.unpack_from(block)
            data = block[28 : 28 + caplen]
            direction = 0
            for code, value in _options(block[28 + _pad4(caplen) : -4]):
                if code == 2 and len(value) == 4:
                    bits = struct.unpack("<I", value)[0] & 3
                    direction = {1: DIR_RX, 2: DIR_TX}.get(bits, 0)
            ts = ((hi << 32) | lo) * 1_000_000_000 // self._tsresol
            return Frame(ts, direction, length, data)
        return None


def _options(raw: bytes) -> Iterator[tuple[int, bytes]]:
    off = 0
    while off + 4 <= len(raw):
        code, n = struct.unpack_from("<HH", raw, off)
        if code == 0:
            return
        yield code, raw[off + 4 : off + 4 + n]
        off += 4 + _pad4(n)


def describe(frame: Frame) -> str:
    """A one-line summary of an Ethernet frame, for `vswitch capture` without -w."""
    d = frame.data
    if len(d) < 14:
        return f"runt frame, {frame.length} bytes"
    dst, src = _mac(d[0:6]), _mac(d[6:12])
    etype = int.from_bytes(d[12:14], "big")
    what = {0x0800: "IPv4", 0x0806: "ARP", 0x86DD: "IPv6", 0x8100: "802.1Q"}.get(
        etype, f"ethertype {etype:#06x}"
    )
    if etype == 0x0800 and len(d) >= 34:
        proto = {1: "ICMP", 6: "TCP", 17: "UDP"}.get(d[23], f"proto {d[23]}")
        what = f"IPv4 {_ip4(d[26:30])} > {_ip4(d[30:34])} {proto}"
    elif etype == 0x0806 and len(d) >= 42:
        op = {1: "request", 2: "reply"}.get(int.from_bytes(d[20:22], "big"), "op ?")
        what = f"ARP {op} {_ip4(d[28:32])} > {_ip4(d[38:42])}"
    return f"{src} > {dst}, {what}, length {frame.length}"


def _mac(b: bytes) -> str:
    return ":".join(f"{x:02x}" for x in b)


def _ip4(b: bytes) -> str:
    return ".".join(str(x) for x in b)
