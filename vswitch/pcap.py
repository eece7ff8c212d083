"""Capture file formats: the fast path's capture records to pcapng or pcap, and back.

The fast path fills a buffer with records of `struct vs_cap_hdr` (fastpath.h: ts_ns u64,
caplen, len, port, dir u32) followed by caplen bytes of frame, padded to a multiple of 8.
`Encoder` turns them into a stream that tshark, Wireshark and tcpdump read:

- pcapng (the default): one Section Header Block, one Interface Description Block per
  port (its name, a description, the filter, nanosecond timestamps), an Enhanced Packet
  Block per frame naming its interface, whose epb_flags carry the direction (inbound = rx,
  outbound = tx, from the switch's side), and an Interface Statistics Block per port at
  the end with the frames the capture saw, dropped and (with a filter) accepted.
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


@dataclass(frozen=True)
class Interface:
    """One interface of a capture: a port (its fast path index, `port_id`, is what the
    records carry) and what its Interface Description Block says."""

    name: str
    port_id: int = 0
    description: str = ""
    filter: str = ""  # the capture filter expression, "" for none (if_filter)


@dataclass(frozen=True)
class Record:
    """One capture record (struct vs_cap_hdr and its bytes), as split() finds it."""

    ts_ns: int
    port: int
    direction: int
    length: int
    data: bytes


@dataclass(frozen=True)
class IfStats:
    """An interface's counts for its Interface Statistics Block."""

    received: int  # frames the capture saw (isb_ifrecv)
    dropped: int  # frames it had no room for (isb_ifdrop)
    accepted: int | None = None  # frames the filter passed (isb_filteraccept), if one ran


def split(buf: memoryview | bytes) -> list[Record]:
    """The whole records in a buffer vs_capture_read filled."""
    out: list[Record] = []
    off, end = 0, len(buf)
    while off + CAP_HDR.size <= end:
        ts, caplen, length, port, direction = CAP_HDR.unpack_from(buf, off)
        start = off + CAP_HDR.size
        if start + caplen > end:
            break  # never happens with whole records from vs_capture_read
        out.append(Record(ts, port, direction, length, bytes(buf[start : start + caplen])))
        off = (start + caplen + 7) & ~7
    return out


class Encoder:
    """Turns capture records into a pcapng (one interface per port) or pcap byte stream.

    `Encoder(fmt, port, snaplen)` for one port, or `interfaces=[Interface(...), ...]` for
    several: each record goes to the interface whose port_id it carries."""

    def __init__(
        self,
        fmt: str,
        port: str = "",
        snaplen: int = 65535,
        description: str = "",
        application: str = "vswitch",
        *,
        interfaces: list[Interface] | None = None,
    ) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown capture format {fmt!r} (use pcapng or pcap)")
        self.fmt = fmt
        self.snaplen = snaplen
        self.application = application
        self.interfaces = interfaces or [Interface(port, 0, description)]
        if fmt == "pcap" and len(self.interfaces) != 1:
            raise ValueError("a pcap file has one interface: use pcapng for several ports")
        self._index = {i.port_id: n for n, i in enumerate(self.interfaces)}

    def header(self) -> bytes:
        if self.fmt == "pcap":
            return struct.pack(
                "<IHHiIII", _PCAP_MAGIC_US, 2, 4, 0, 0, self.snaplen, LINKTYPE_ETHERNET
            )
        shb = struct.pack("<IHHq", _BOM, 1, 0, -1)
        shb += _option(4, self.application.encode()) + _option(0, b"")  # shb_userappl
        out = _block(_SHB, shb)
        for i in self.interfaces:
            opts = _option(2, i.name.encode())  # if_name
            if i.description:
                opts += _option(3, i.description.encode())  # if_description
            opts += _option(9, b"\x09")  # if_tsresol: 10^-9 s
            if i.filter:
                opts += _option(11, b"\x00" + i.filter.encode())  # if_filter, libpcap string
            idb = struct.pack("<HHI", LINKTYPE_ETHERNET, 0, self.snaplen) + opts + _option(0, b"")
            out += _block(_IDB, idb)
        return out

    def records(self, buf: memoryview, limit: int | None = None) -> tuple[bytes, int]:
        """Encode the whole records in buf (at most `limit` of them); (bytes, how many)."""
        recs = split(buf)
        if limit is not None:
            recs = recs[:limit]
        return self.encode(recs), len(recs)

    def encode(self, recs: list[Record]) -> bytes:
        out: list[bytes] = []
        pcap = self.fmt == "pcap"
        for r in recs:
            ts, caplen = r.ts_ns, len(r.data)
            if pcap:
                s, ns = divmod(ts, 1_000_000_000)
                out.append(_PCAP_REC.pack(s, ns // 1000, caplen, r.length) + r.data)
                continue
            pad = _pad4(caplen) - caplen
            total = _EPB_HEAD.size + caplen + pad + 16  # + epb_flags, end, length
            flags = _EPB_FLAGS.get(r.direction, 0)
            iface = self._index.get(r.port, 0)
            out.append(
                _EPB_HEAD.pack(_EPB, total, iface, ts >> 32, ts & 0xFFFFFFFF, caplen, r.length)
                + r.data
                + b"\0" * pad
                + struct.pack("<HHIHHI", 2, 4, flags, 0, 0, total)
            )
        return b"".join(out)

    def trailer(
        self, start_ns: int, end_ns: int, received: int = 0, dropped: int = 0,
        stats: list[IfStats] | None = None,
    ) -> bytes:  # fmt: skip
        """pcapng: an Interface Statistics Block per interface (what tshark/capinfos report
        as drops); `stats` in interface order, or received/dropped for one interface."""
        if self.fmt == "pcap":
            return b""
        stats = stats or [IfStats(received, dropped)]
        out = b""
        for n, st in enumerate(stats):
            opts = _option(2, _ts(start_ns)) + _option(3, _ts(end_ns))  # isb_starttime/endtime
            opts += _option(4, struct.pack("<Q", st.received))  # isb_ifrecv
            opts += _option(5, struct.pack("<Q", st.dropped))  # isb_ifdrop
            if st.accepted is not None:
                opts += _option(6, struct.pack("<Q", st.accepted))  # isb_filteraccept
            body = struct.pack("<I", n) + _ts(end_ns) + opts + _option(0, b"")
            out += _block(_ISB, body)
        return out


@dataclass
class Frame:
    ts_ns: int
    direction: int  # DIR_RX, DIR_TX, or 0 when the format does not say
    length: int  # on the wire
    data: bytes  # the captured bytes
    interface: int = 0  # pcapng: the index of its Interface Description Block
    name: str = ""  # pcapng: that interface's if_name


class Reader:
    """Incremental reader of a pcapng or pcap stream: feed() bytes, get Frames.

    Also keeps the interfaces' names (`interfaces`) and the drop counts of the pcapng
    Interface Statistics Blocks (`dropped`, their sum over interfaces)."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.fmt: str | None = None
        self.frames = 0
        self.interfaces: list[str] = []
        self._drops: dict[int, int] = {}
        self._received: dict[int, int] = {}
        self._accepted: dict[int, int] = {}
        self._ns = False
        self._tsresol: list[int] = []  # units per second per interface; default 10^-6

    @property
    def dropped(self) -> int | None:
        return sum(self._drops.values()) if self._drops else None

    @property
    def filtered(self) -> int | None:
        """Frames a capture filter left out (isb_ifrecv - isb_filteraccept), if one ran."""
        if not self._accepted:
            return None
        return sum(self._received.get(i, 0) - n for i, n in self._accepted.items())

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
        if btype == _SHB:
            self.interfaces, self._tsresol = [], []  # a new section starts over
        elif btype == _IDB:
            name, resol = "", 1_000_000
            for code, value in _options(block[16:-4]):
                if code == 9 and value:
                    r = value[0]
                    resol = 2 ** (r & 0x7F) if r & 0x80 else 10**r
                elif code == 2:
                    name = value.decode(errors="replace")
            self.interfaces.append(name)
            self._tsresol.append(resol)
        elif btype == _ISB:
            iface = struct.unpack_from("<I", block, 8)[0]
            counts = {4: self._received, 5: self._drops, 6: self._accepted}
            for code, value in _options(block[20:-4]):
                if code in counts and len(value) == 8:
                    counts[code][iface] = struct.unpack("<Q", value)[0]
        elif btype == _EPB:
            _, _, iface, hi, lo, caplen, length = _EPB_HEAD.unpack_from(block)
            data = block[28 : 28 + caplen]
            direction = 0
            for code, value in _options(block[28 + _pad4(caplen) : -4]):
                if code == 2 and len(value) == 4:
                    bits = struct.unpack("<I", value)[0] & 3
                    direction = {1: DIR_RX, 2: DIR_TX}.get(bits, 0)
            known = iface < len(self.interfaces)
            resol = self._tsresol[iface] if known else 1_000_000
            ts = ((hi << 32) | lo) * 1_000_000_000 // resol
            name = self.interfaces[iface] if known else ""
            return Frame(ts, direction, length, data, iface, name)
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
