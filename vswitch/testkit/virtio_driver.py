"""A test-side virtio-net driver for the C fast path, in pure Python.

It plays the guest: guest RAM is a memfd mapped here, split into one or more
regions whose guest-physical and front-end virtual addresses differ (rings
are found by the latter, buffers by the former), and split virtqueues laid
out in it (virtio 1.2, 2.7).  It can build everything a real driver builds
(chains, indirect tables, both header sizes) and anything a hostile one
might (raw descriptor and index pokes).

Port mirrors what the vhost-user control plane does with a session:
features, memory table, vring num/addr/base, kick and call eventfds,
enable.  It talks to `lib` directly: these tests are about the C API.
"""

from __future__ import annotations

import fcntl
import glob
import importlib.util
import mmap
import os
import select
import signal
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

# Split ring flags (virtio 1.2, 2.7.5 and 2.7.10).
DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

F_MRG_RXBUF = 1 << 15
F_INDIRECT_DESC = 1 << 28
F_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32
# What QEMU acks for a modern Linux guest.
MODERN = F_VERSION_1 | F_MRG_RXBUF | F_INDIRECT_DESC | F_EVENT_IDX



def features_id(features: int) -> str:
    """A readable pytest id for a feature set."""
    names = [n for n, bit in (("v1", F_VERSION_1), ("mrg", F_MRG_RXBUF),
                              ("indirect", F_INDIRECT_DESC), ("event_idx", F_EVENT_IDX))
             if features & bit]
    return "+".join(names) or "legacy"


Q_RX = 0  # the guest's receive queue: the switch writes into it
Q_TX = 1  # the guest's transmit queue: the switch reads from it

_DESC = struct.Struct("<QIHH")


def load_fastpath() -> tuple[Any, Any]:
    """(ffi, lib) of vswitch._fastpath.

    With VSWITCH_FASTPATH_DIR set, the module is loaded from
    $VSWITCH_FASTPATH_DIR/vswitch/_fastpath*.so (what scripts/build-inplace
    OUTDIR builds, e.g. with sanitizers) instead of the package's own.
    """
    where = os.environ.get("VSWITCH_FASTPATH_DIR")
    if not where:
        from vswitch import _fastpath

        return _fastpath.ffi, _fastpath.lib
    name = "vswitch._fastpath"
    mod = sys.modules.get(name)
    if mod is None:
        found = sorted(glob.glob(os.path.join(where, "vswitch", "_fastpath*.so")))
        if not found:
            raise ImportError(f"VSWITCH_FASTPATH_DIR={where}: no vswitch/_fastpath*.so there")
        import vswitch  # the parent package first, as a normal import would

        spec = importlib.util.spec_from_file_location(name, found[0])
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        vswitch._fastpath = mod  # type: ignore[attr-defined]
    assert mod.__file__ is not None and mod.__file__.startswith(os.path.abspath(where)), (
        f"vswitch._fastpath was already imported from {mod.__file__}"
    )
    return mod.ffi, mod.lib


ffi, lib = load_fastpath()


# Frames


def mac(s: str) -> bytes:
    return bytes.fromhex(s.replace(":", ""))


def mac_int(m: bytes | str) -> int:
    """The fast path's MAC encoding: first octet in bits 47..40."""
    return int.from_bytes(mac(m) if isinstance(m, str) else m, "big")


def eth(dst: bytes | str, src: bytes | str, size: int = 64, ethertype: int = 0x88B5,
        fill: int | None = None) -> bytes:
    """An Ethernet frame of `size` bytes with a recognisable payload."""
    d = mac(dst) if isinstance(dst, str) else dst
    s = mac(src) if isinstance(src, str) else src
    head = d + s + ethertype.to_bytes(2, "big")
    n = size - len(head)
    if n < 0:
        return head[:size]
    if fill is None:
        payload = bytes((i * 7 + size) & 0xFF for i in range(n))
    else:
        payload = bytes([fill]) * n
    return head + payload


def net_hdr(hdr_len: int, num_buffers: int = 0, flags: int = 0, gso_type: int = 0) -> bytes:
    """virtio-net header (virtio 1.2, 5.1.6): 10 bytes legacy, 12 with num_buffers."""
    h = struct.pack("<BBHHHH", flags, gso_type, 0, 0, 0, 0)
    if hdr_len == 12:
        h += struct.pack("<H", num_buffers)
    assert len(h) == hdr_len
    return h


def hdr_len_for(features: int) -> int:
    return 12 if features & (F_MRG_RXBUF | F_VERSION_1) else 10


# Guest memory


@dataclass
class Region:
    gpa: int
    size: int
    uaddr: int
    file_off: int  # mmap_offset


@dataclass
class _Free:
    start: int
    size: int


class GuestMemory:
    """One memfd holding every region; the test maps the whole file."""

    def __init__(self, regions: Sequence[Region], slack: int = 0, *, seals: str = "qemu") -> None:
        """slack: bytes of file past the last region, never part of guest
        memory; with mmap_offset > 0 the file also has bytes before it.
        fill_outside() and outside() watch those bytes.  seals: "qemu", the
        memfd sealed as QEMU's memory-backend-memfd seals it (seal=on, its
        default: no growing, no shrinking, no more seals); "unsealable", one
        made without MFD_ALLOW_SEALING, which can never be sealed, like DPDK's
        or a hugetlbfs file: the switch maps it and may see it truncated
        (truncate()); "none", sealable but unsealed, which the switch refuses."""
        assert seals in ("qemu", "unsealable", "none"), seals
        self.regions = list(regions)
        self.file_size = max(r.file_off + r.size for r in self.regions) + slack
        flags = os.MFD_CLOEXEC | (0 if seals == "unsealable" else os.MFD_ALLOW_SEALING)
        self.fd = os.memfd_create("guest-ram", flags)
        os.ftruncate(self.fd, self.file_size)
        if seals == "qemu":
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        self.map = mmap.mmap(self.fd, self.file_size)
        # First-fit free lists per region, in guest-physical addresses.
        self._free: list[list[_Free]] = [[_Free(r.gpa, r.size)] for r in self.regions]

    @classmethod
    def single(cls, size: int = 4 << 20, gpa: int = 0x100000, uaddr: int = 0x7F0000000000,
               file_off: int = 0, slack: int = 0, seals: str = "qemu") -> GuestMemory:
        return cls([Region(gpa, size, uaddr, file_off)], slack, seals=seals)

    def truncate(self, size: int) -> None:
        """What a hostile front end does after SET_MEM_TABLE: shrink the file
        (possible only when it is not sealed).  The test's own mapping is
        left alone (touching its lost pages would fault here too)."""
        os.ftruncate(self.fd, size)

    @classmethod
    def three(cls) -> GuestMemory:
        """Three 1 MiB regions with holes between them in both address spaces,
        stored out of order in the file."""
        mb = 1 << 20
        return cls([
            Region(0x100000, mb, 0x7F0000000000, 2 * mb + 0x3000),
            Region(0x400000, mb, 0x7F1000200000, 0x1000),
            Region(0x900000, mb, 0x7E0000000000, mb + 0x2000),
        ])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)

    def table(self, fd: int | None = None) -> list[tuple[int, int, int, int, int]]:
        """(guest_phys_addr, size, user_addr, mmap_offset, fd) per region."""
        f = self.fd if fd is None else fd
        return [(r.gpa, r.size, r.uaddr, r.file_off, f) for r in self.regions]

    # Translation

    def _region(self, gpa: int) -> Region:
        for r in self.regions:
            if r.gpa <= gpa < r.gpa + r.size:
                return r
        raise ValueError(f"gpa {gpa:#x} is in no region")

    def offset(self, gpa: int, n: int = 1) -> int:
        r = self._region(gpa)
        assert gpa + n <= r.gpa + r.size, f"[{gpa:#x}, +{n}) leaves its region"
        return r.file_off + gpa - r.gpa

    def uaddr(self, gpa: int) -> int:
        r = self._region(gpa)
        return r.uaddr + gpa - r.gpa

    def read(self, gpa: int, n: int) -> bytes:
        out = b""
        while n > 0:
            r = self._region(gpa)
            take = min(n, r.gpa + r.size - gpa)
            off = r.file_off + gpa - r.gpa
            out += self.map[off:off + take]
            gpa += take
            n -= take
        return out

    def write(self, gpa: int, data: bytes) -> None:
        while data:
            r = self._region(gpa)
            take = min(len(data), r.gpa + r.size - gpa)
            off = r.file_off + gpa - r.gpa
            self.map[off:off + take] = data[:take]
            gpa += take
            data = data[take:]

    def u16(self, gpa: int) -> int:
        return int(struct.unpack("<H", self.read(gpa, 2))[0])

    def put16(self, gpa: int, v: int) -> None:
        self.write(gpa, struct.pack("<H", v & 0xFFFF))

    def u32(self, gpa: int) -> int:
        return int(struct.unpack("<I", self.read(gpa, 4))[0])

    def snapshot(self) -> bytes:
        return bytes(self.map)

    def _outside(self) -> list[tuple[int, int]]:
        spans = sorted((r.file_off, r.file_off + r.size) for r in self.regions)
        out, pos = [], 0
        for a, b in spans:
            if a > pos:
                out.append((pos, a))
            pos = max(pos, b)
        if pos < self.file_size:
            out.append((pos, self.file_size))
        return out

    def fill_outside(self, byte: int = 0xA5) -> None:
        """Fill the file's bytes that belong to no region with a canary."""
        for a, b in self._outside():
            self.map[a:b] = bytes([byte]) * (b - a)

    def outside(self) -> bytes:
        return b"".join(self.map[a:b] for a, b in self._outside())

    # Allocation

    def alloc(self, size: int, align: int = 16, region: int | None = None) -> int:
        lists = [self._free[region]] if region is not None else self._free
        for fl in lists:
            for i, f in enumerate(fl):
                start = (f.start + align - 1) // align * align
                if start + size <= f.start + f.size:
                    pieces = []
                    if start > f.start:
                        pieces.append(_Free(f.start, start - f.start))
                    end = start + size
                    if end < f.start + f.size:
                        pieces.append(_Free(end, f.start + f.size - end))
                    fl[i:i + 1] = pieces
                    return start
        raise MemoryError(f"no {size} bytes free in guest memory")

    def free(self, start: int, size: int) -> None:
        for r, fl in zip(self.regions, self._free, strict=True):
            if r.gpa <= start < r.gpa + r.size:
                fl.append(_Free(start, size))
                fl.sort(key=lambda f: f.start)
                merged: list[_Free] = []
                for f in fl:
                    if merged and merged[-1].start + merged[-1].size == f.start:
                        merged[-1].size += f.size
                    else:
                        merged.append(f)
                fl[:] = merged
                return
        raise ValueError(f"free of {start:#x}: in no region")


# Split virtqueue


@dataclass
class Used:
    id: int
    len: int
    data: bytes = b""  # what the device wrote (RX), filled by reclaim()


@dataclass
class _Chain:
    ids: list[int]
    allocs: list[tuple[int, int]] = field(default_factory=list)
    # (gpa, len) of each device-writable span, in chain order.
    writable: list[tuple[int, int]] = field(default_factory=list)


class SplitRing:
    """The driver side of one split virtqueue of `num` entries."""

    def __init__(self, mem: GuestMemory, num: int, region: int | None = None) -> None:
        self.mem = mem
        self.num = num
        self.desc = mem.alloc(16 * num, 16, region)
        self.avail = mem.alloc(6 + 2 * num, 4, region)
        self.used = mem.alloc(6 + 8 * num, 4, region)
        mem.write(self.desc, bytes(16 * num))
        mem.write(self.avail, bytes(6 + 2 * num))
        mem.write(self.used, bytes(6 + 8 * num))
        self.free_ids = list(range(num))
        self.avail_idx = 0  # the driver's shadow of avail->idx
        self.last_used = 0  # next used entry the driver will read
        self.chains: dict[int, _Chain] = {}
        # Like Linux's virtqueue_enable_cb: after reading the used ring, ask
        # for an interrupt at the next entry (matters only with EVENT_IDX).
        self.rearm = True

    # Addresses the control plane hands to vs_vring_set_addr.

    @property
    def desc_ua(self) -> int:
        return self.mem.uaddr(self.desc)

    @property
    def avail_ua(self) -> int:
        return self.mem.uaddr(self.avail)

    @property
    def used_ua(self) -> int:
        return self.mem.uaddr(self.used)

    # Raw access, for well-formed and malformed rings alike.

    def write_desc(self, i: int, addr: int, length: int, flags: int = 0, nxt: int = 0) -> None:
        self.mem.write(self.desc + 16 * i, _DESC.pack(addr, length, flags, nxt))

    def read_desc(self, i: int) -> tuple[int, int, int, int]:
        a, ln, f, n = _DESC.unpack(self.mem.read(self.desc + 16 * i, 16))
        return int(a), int(ln), int(f), int(n)

    def set_avail_slot(self, slot: int, head: int) -> None:
        self.mem.put16(self.avail + 4 + 2 * (slot % self.num), head)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx & 0xFFFF
        self.mem.put16(self.avail + 2, self.avail_idx)

    def set_avail_flags(self, flags: int) -> None:
        self.mem.put16(self.avail, flags)

    def set_used_event(self, idx: int) -> None:
        self.mem.put16(self.avail + 4 + 2 * self.num, idx)

    @property
    def used_idx(self) -> int:
        return self.mem.u16(self.used + 2)

    @property
    def used_flags(self) -> int:
        return self.mem.u16(self.used)

    @property
    def avail_event(self) -> int:
        return self.mem.u16(self.used + 4 + 8 * self.num)

    def used_entry(self, slot: int) -> Used:
        a = self.used + 4 + 8 * (slot % self.num)
        return Used(self.mem.u32(a), self.mem.u32(a + 4))

    def set_base(self, idx: int) -> None:
        """Both indexes at idx, as a ring that has already gone round."""
        self.set_avail_idx(idx)
        self.mem.put16(self.used + 2, idx)
        self.last_used = idx & 0xFFFF

    # Building chains

    def take_ids(self, n: int) -> list[int]:
        if n > len(self.free_ids):
            raise RuntimeError(f"ring of {self.num}: {n} descriptors wanted, "
                               f"{len(self.free_ids)} free")
        ids, self.free_ids = self.free_ids[:n], self.free_ids[n:]
        return ids

    def add_chain(self, segments: Sequence[tuple[bytes | int, bool]], indirect: bool = False,
                  publish: bool = True) -> int:
        """Add a chain of buffers and return its head.

        Each segment is (bytes to place, device-readable) or (size, writable):
        an int is a writable buffer of that many bytes.  With indirect, the
        chain goes in an indirect table and the ring holds one descriptor.
        """
        chain = _Chain(ids=[])
        descs: list[tuple[int, int, int]] = []
        for seg, _ in segments:
            if isinstance(seg, int):
                gpa = self.mem.alloc(max(seg, 1), 8)
                self.mem.write(gpa, b"\xee" * seg)
                chain.allocs.append((gpa, max(seg, 1)))
                chain.writable.append((gpa, seg))
                descs.append((gpa, seg, DESC_F_WRITE))
            else:
                gpa = self.mem.alloc(max(len(seg), 1), 8)
                self.mem.write(gpa, seg)
                chain.allocs.append((gpa, max(len(seg), 1)))
                descs.append((gpa, len(seg), 0))
        if indirect:
            table = self.mem.alloc(16 * len(descs), 16)
            chain.allocs.append((table, 16 * len(descs)))
            raw = b""
            for i, (a, ln, f) in enumerate(descs):
                last = i == len(descs) - 1
                raw += _DESC.pack(a, ln, f | (0 if last else DESC_F_NEXT), 0 if last else i + 1)
            self.mem.write(table, raw)
            chain.ids = self.take_ids(1)
            self.write_desc(chain.ids[0], table, 16 * len(descs), DESC_F_INDIRECT)
        else:
            chain.ids = self.take_ids(len(descs))
            for i, (a, ln, f) in enumerate(descs):
                last = i == len(descs) - 1
                nxt = 0 if last else chain.ids[i + 1]
                self.write_desc(chain.ids[i], a, ln, f | (0 if last else DESC_F_NEXT), nxt)
        head = chain.ids[0]
        self.chains[head] = chain
        if publish:
            self.publish(head)
        return head

    def publish(self, *heads: int) -> None:
        for h in heads:
            self.set_avail_slot(self.avail_idx, h)
            self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.mem.put16(self.avail + 2, self.avail_idx)

    def add_tx(self, frame: bytes, hdr: bytes, split: Sequence[int] | None = None,
               hdr_separate: bool = False, indirect: bool = False,
               publish: bool = True) -> int:
        """A frame to transmit: the header then the frame, cut at `split`
        offsets of the frame, with the header in its own descriptor or not."""
        cuts = [0, *(split or ()), len(frame)]
        pieces = [frame[a:b] for a, b in pairwise(cuts)]
        if hdr_separate:
            segs = [hdr, *pieces]
        else:
            segs = [hdr + pieces[0], *pieces[1:]]
        return self.add_chain([(s, False) for s in segs], indirect=indirect, publish=publish)

    def add_rx(self, size: int, count: int = 1, split: Sequence[int] | None = None,
               indirect: bool = False) -> list[int]:
        """`count` receive buffers of `size` bytes (cut into `split` sizes)."""
        sizes = list(split) if split else [size]
        return [self.add_chain([(s, True) for s in sizes], indirect=indirect)
                for _ in range(count)]

    # Completions

    def pending_used(self) -> int:
        return (self.used_idx - self.last_used) & 0xFFFF

    def reclaim(self) -> list[Used]:
        """Read the used entries the device published since last time and
        free their descriptors, as a driver's interrupt handler does."""
        out = []
        end = self.used_idx
        while self.last_used != end:
            u = self.used_entry(self.last_used)
            self.last_used = (self.last_used + 1) & 0xFFFF
            chain = self.chains.pop(u.id, None)
            if chain is None:
                raise AssertionError(f"used entry for {u.id}, which is not an outstanding head")
            chain_data = b"".join(self.mem.read(a, ln) for a, ln in chain.writable)
            self.free_ids.extend(chain.ids)
            for a, ln in chain.allocs:
                self.mem.free(a, ln)
            u.data = chain_data[:u.len]
            out.append(u)
        if self.rearm:
            self.set_used_event(self.last_used)
        return out


@dataclass
class Received:
    hdr: bytes
    frame: bytes
    buffers: list[Used]

    @property
    def num_buffers(self) -> int:
        return int(struct.unpack("<H", self.hdr[10:12])[0]) if len(self.hdr) == 12 else 1


# The fast path's side


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_take(fd: int) -> int:
    """Reads the counter away, never waiting: a hostile test clears O_NONBLOCK on
    the description it shares with the switch, and a blocking read of an empty
    counter would hang the test itself.  Only the switch writes to these, so
    readable-then-read cannot race to empty."""
    if not select.select([fd], [], [], 0)[0]:
        return 0
    try:
        return int(struct.unpack("<Q", os.read(fd, 8))[0])
    except BlockingIOError:
        return 0


class Switch:
    """A vs_switch and the ports opened on it; frees everything on close."""

    def __init__(self, fdb_size: int = 1024) -> None:
        sw = lib.vs_switch_new(fdb_size)
        assert sw != ffi.NULL
        self.sw = sw
        self.ports: list[Port] = []

    def __enter__(self) -> Switch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.sw is not None:
            lib.vs_switch_free(self.sw)
            self.sw = None
        for p in self.ports:
            p.release()
        self.ports.clear()

    def port(self, port_id: int | None = None, **kw: Any) -> Port:
        if port_id is None:
            port_id = len(self.ports)
        p = Port(self, port_id, **kw)
        self.ports.append(p)
        return p

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct vs_switch_stats *")
        lib.vs_switch_get_stats(self.sw, st)
        return {f: getattr(st, f) for f, _ in ffi.typeof("struct vs_switch_stats").fields}

    def poll(self, budget: int = 256) -> int:
        return int(lib.vs_poll(self.sw, budget))

    def fdb(self) -> dict[int, tuple[int, int]]:
        """mac -> (port, flags)."""
        out = ffi.new("struct vs_fdb_entry[]", 4096)
        n = lib.vs_fdb_dump(self.sw, out, 4096)
        return {out[i].mac: (out[i].port, out[i].flags) for i in range(n)}


class Port:
    """A vhost-user port set up the way the control plane does it."""

    def __init__(self, switch: Switch, port_id: int, *, mem: GuestMemory | None = None,
                 features: int = MODERN, num: int = 256, mtu: int = 1500,
                 rx_num: int | None = None, setup: bool = True, ring_region: int | None = None,
                 base: int = 0, pairs: int = 1) -> None:
        self.switch = switch
        self.sw = switch.sw
        self.id = port_id
        self.features = features
        self.own_mem = mem is None
        self.mem = mem if mem is not None else GuestMemory.single()
        # Ring 2k is pair k's RX (the switch fills it), 2k+1 its TX.
        self.rings = [SplitRing(self.mem, rx_num or num if q % 2 == Q_RX else num, ring_region)
                      for q in range(2 * pairs)]
        self.kick_fds = [eventfd() for _ in self.rings]
        self.call_fds = [eventfd() for _ in self.rings]
        assert lib.vs_port_open(self.sw, port_id, lib.VS_PORT_VHOST, mtu) == 0
        if setup:
            self.setup(base=base)

    @property
    def rx(self) -> SplitRing:
        return self.rings[Q_RX]

    @property
    def tx(self) -> SplitRing:
        return self.rings[Q_TX]

    @property
    def hdr_len(self) -> int:
        return hdr_len_for(self.features)

    def set_mem(self, table: Iterable[tuple[int, int, int, int, int]] | None = None) -> int:
        rows = list(self.mem.table() if table is None else table)
        arr = ffi.new("struct vs_mem_region[]", max(len(rows), 1))
        for i, (g, s, u, o, fd) in enumerate(rows):
            arr[i].guest_phys_addr = g
            arr[i].size = s
            arr[i].user_addr = u
            arr[i].mmap_offset = o
            arr[i].fd = fd
        return int(lib.vs_port_set_mem(self.sw, self.id, arr, len(rows)))

    def setup_queue(self, q: int, base: int = 0) -> None:
        r = self.rings[q]
        if base:
            r.set_base(base)
        assert lib.vs_vring_set_num(self.sw, self.id, q, r.num) == 0
        assert lib.vs_vring_set_base(self.sw, self.id, q, base) == 0
        assert lib.vs_vring_set_addr(self.sw, self.id, q, r.desc_ua, r.used_ua, r.avail_ua) == 0
        assert lib.vs_vring_set_kick(self.sw, self.id, q, self.kick_fds[q]) == 0
        assert lib.vs_vring_set_call(self.sw, self.id, q, self.call_fds[q]) == 0
        assert lib.vs_vring_enable(self.sw, self.id, q, 1) == 0

    def setup(self, base: int = 0) -> None:
        """QEMU's order: features, memory table, then each ring."""
        assert lib.vs_port_set_features(self.sw, self.id, self.features) == 0
        assert self.set_mem() == 0
        for q in range(len(self.rings)):
            self.setup_queue(q, base)
        assert self.up, f"port {self.id} not up after setup: {self.error!r}"

    def reset(self) -> None:
        lib.vs_port_reset(self.sw, self.id)

    def release(self) -> None:
        for fd in self.kick_fds + self.call_fds:
            os.close(fd)
        self.kick_fds = self.call_fds = []
        if self.own_mem:
            self.mem.close()

    # State

    @property
    def state(self) -> int:
        return int(lib.vs_port_state(self.sw, self.id))

    @property
    def up(self) -> bool:
        return bool(self.state & lib.VS_STATE_UP)

    @property
    def broken(self) -> bool:
        return bool(self.state & lib.VS_STATE_BROKEN)

    @property
    def error(self) -> str:
        return str(ffi.string(lib.vs_port_error(self.sw, self.id)).decode())

    def stats(self) -> dict[str, int]:
        st = ffi.new("struct vs_port_stats *")
        lib.vs_port_get_stats(self.sw, self.id, st)
        return {f: getattr(st, f) for f, _ in ffi.typeof("struct vs_port_stats").fields}

    def ready(self, q: int) -> bool:
        return bool(lib.vs_vring_ready(self.sw, self.id, q))

    # Traffic

    def send(self, *frames: bytes, hdr: bytes | None = None, kick: bool = True, pair: int = 0,
             **kw: Any) -> int:
        """Queue frames on the guest's TX ring (of queue pair `pair`); with kick, serve
        them now.  Returns what vs_port_kick returned (0 without kick)."""
        h = net_hdr(self.hdr_len) if hdr is None else hdr
        for f in frames:
            self.rings[2 * pair + Q_TX].add_tx(f, h, **kw)
        return self.kick(2 * pair + Q_TX) if kick else 0

    def kick(self, q: int = Q_TX) -> int:
        os.eventfd_write(self.kick_fds[q], 1)
        return int(lib.vs_port_kick(self.sw, self.id, q))

    def post_rx(self, count: int = 16, size: int = 2048, pair: int = 0, **kw: Any) -> list[int]:
        return self.rings[2 * pair + Q_RX].add_rx(size, count, **kw)

    def calls(self, q: int = Q_RX) -> int:
        """Interrupts the switch sent on queue q since last asked."""
        return eventfd_take(self.call_fds[q])

    def received(self, pair: int = 0) -> list[Received]:
        """Frames the switch put in the RX ring (of queue pair `pair`), reassembled from
        mergeable buffers by num_buffers, as virtio-net's receive path does."""
        out: list[Received] = []
        used = self.rings[2 * pair + Q_RX].reclaim()
        hl = self.hdr_len
        i = 0
        while i < len(used):
            first = used[i]
            data = first.data
            hdr = data[:hl]
            assert len(hdr) == hl, f"used entry shorter than the header: {first}"
            n = int(struct.unpack("<H", hdr[10:12])[0]) if hl == 12 else 1
            assert n >= 1, f"num_buffers {n}"
            bufs = used[i:i + n]
            assert len(bufs) == n, f"num_buffers {n} but only {len(bufs)} used entries"
            frame = data[hl:] + b"".join(u.data for u in bufs[1:])
            out.append(Received(hdr, frame, bufs))
            i += n
        return out

    def frames(self, pair: int = 0) -> list[bytes]:
        return [r.frame for r in self.received(pair)]


def run_bounded(fn: Callable[[], object], timeout: float = 5.0) -> str | None:
    """Run fn in a forked child, for fast path calls that might never return
    (they cannot be interrupted in-process).  None if fn returned in time;
    else "timeout" or the child's traceback."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            fn()
        except BaseException:
            os.write(w, traceback.format_exc().encode())
            code = 1
        os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                with os.fdopen(r, "rb") as f:
                    r = -1
                    err = f.read().decode(errors="replace")
                code = os.waitstatus_to_exitcode(status)
                return None if code == 0 else err or f"exit status {code}"
            time.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return "timeout"
    finally:
        if r >= 0:
            os.close(r)


def wait_for(pred: Callable[[], bool], timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True
