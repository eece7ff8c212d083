"""The fast path's dirty log (live migration) and memory hotplug, through cffi with the
test-side virtio driver.

The oracle for the log: snapshot the guest's memory, let the switch write into it, and
compare: every page whose bytes changed must have its bit set, and no other page may (the
log is per page and exact: a used ring's page, a buffer's pages, nothing more).  With
logging switched off (the test knob the QEMU migration test uses too) the same traffic
leaves the log empty, so this oracle does catch a missing write."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import (
    DESC_F_WRITE,
    Q_RX,
    Q_TX,
    GuestMemory,
    Port,
    Switch,
    eth,
    ffi,
    lib,
)

PAGE = 4096
LOG_ALL = 1 << lib.VS_F_LOG_ALL
BCAST = "ff:ff:ff:ff:ff:ff"
MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


class Log:
    """A dirty log as QEMU makes one: a memfd sealed at its size, a bit per page."""

    def __init__(self, size: int, *, sealed: bool = True, file_size: int | None = None) -> None:
        self.fd = os.memfd_create("vhost-log", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self.file_size = file_size or size
        os.ftruncate(self.fd, self.file_size)
        if sealed:
            fcntl.fcntl(self.fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)  # fmt: skip
        self.map = mmap.mmap(self.fd, self.file_size)
        self.size = size

    def pages(self, offset: int = 0) -> set[int]:
        raw = self.map[offset : offset + self.size]
        return {i * 8 + b for i, byte in enumerate(raw) if byte for b in range(8) if byte >> b & 1}

    def clear(self) -> None:
        self.map[:] = bytes(self.file_size)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


def changed_pages(mem: GuestMemory, before: bytes) -> set[int]:
    after = mem.snapshot()
    base = mem.regions[0].gpa - mem.regions[0].file_off
    return {(base + o) // PAGE for o in range(0, len(after), PAGE)
            if after[o : o + PAGE] != before[o : o + PAGE]}  # fmt: skip


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def logging_port(sw: Switch, log: Log, **kw: object) -> Port:
    p = sw.port(**kw)  # type: ignore[arg-type]
    assert lib.vs_port_set_features(sw.sw, p.id, p.features | LOG_ALL) == 0
    assert lib.vs_port_set_log(sw.sw, p.id, log.fd, log.size, 0) == 0
    for q in (Q_RX, Q_TX):
        assert lib.vs_vring_set_log(sw.sw, p.id, q, 1, p.rings[q].used) == 0
    assert lib.vs_port_logging(sw.sw, p.id) == 1
    assert p.up  # LOG_ALL did not stop or reset the rings
    return p


def log_for(mem: GuestMemory) -> Log:
    top = max(r.gpa + r.size for r in mem.regions)
    return Log(-(-top // PAGE // 8))


def test_every_page_written_is_logged_and_no_other(sw: Switch) -> None:
    a = sw.port()
    a.post_rx(8)
    mem = GuestMemory.single()
    log = log_for(mem)
    try:
        b = logging_port(sw, log, mem=mem)
        b.post_rx(64, size=1536)
        # A frame from b (its TX buffer is only read: its page must not be logged),
        # queued before the snapshot: the test's own writes are not the switch's.
        b.send(eth(BCAST, MB, 300), kick=False)
        before = mem.snapshot()
        # Frames into b: RX buffers, header included, used entries and index.
        for n in range(40):
            assert a.send(eth(BCAST, MA, 60 + 37 * n)) == 1
        assert b.kick() == 1
        changed = changed_pages(mem, before)
        logged = log.pages()
        assert changed and changed <= logged, sorted(changed - logged)
        # Logged but unchanged: only the used rings' pages, where the switch rewrote
        # what was there (used->flags); never a TX buffer's page.
        assert logged - changed <= {b.rx.used // PAGE, b.tx.used // PAGE}, sorted(logged - changed)
        assert b.stats()["log_pages"] == len(logged)
        assert b.stats()["log_overflow"] == 0
        assert len(b.frames()) == 40
    finally:
        sw.close()
        log.close()
        mem.close()


def test_buffer_across_a_page_boundary_marks_both_pages(sw: Switch) -> None:
    a = sw.port()
    mem = GuestMemory.single()
    log = log_for(mem)
    try:
        b = logging_port(sw, log, mem=mem)
        # One RX buffer that starts 100 bytes before a page ends.
        area = mem.alloc(3 * PAGE, PAGE)
        start = area + PAGE - 100
        ring = b.rx
        (head,) = ring.take_ids(1)
        ring.write_desc(head, start, 2048, DESC_F_WRITE)
        ring.publish(head)
        log.clear()
        frame = eth(BCAST, MA, 200)
        assert a.send(frame) == 1
        used = ring.used_entry(0)
        assert (used.id, used.len) == (head, b.hdr_len + len(frame))
        assert mem.read(start + b.hdr_len, len(frame)) == frame
        # Exactly: the buffer's two pages (not the third it could have reached) and
        # the used ring's page (entry and index).
        assert log.pages() == {start // PAGE, start // PAGE + 1, ring.used // PAGE}
    finally:
        sw.close()
        log.close()
        mem.close()


def test_logging_off_in_the_fast_path_leaves_writes_unlogged(sw: Switch) -> None:
    """The negative control: the knob the QEMU migration test uses."""
    a = sw.port()
    mem = GuestMemory.single()
    log = log_for(mem)
    try:
        b = logging_port(sw, log, mem=mem)
        b.post_rx(8)
        lib.vs_debug_no_log(sw.sw, 1)
        assert lib.vs_port_logging(sw.sw, b.id) == 0
        before = mem.snapshot()
        assert a.send(eth(BCAST, MA, 100)) == 1
        assert changed_pages(mem, before) and not log.pages()
        lib.vs_debug_no_log(sw.sw, 0)
        assert lib.vs_port_logging(sw.sw, b.id) == 1
    finally:
        sw.close()
        log.close()
        mem.close()


def test_log_all_toggles_while_rings_run(sw: Switch) -> None:
    a = sw.port()
    mem = GuestMemory.single()
    log = log_for(mem)
    try:
        b = logging_port(sw, log, mem=mem)
        b.post_rx(16)
        assert a.send(eth(BCAST, MA)) == 1 and log.pages()
        log.clear()
        # Migration cancelled: LOG_ALL off, the same rings go on, nothing is logged.
        assert lib.vs_port_set_features(sw.sw, b.id, b.features) == 0
        assert b.up and lib.vs_port_logging(sw.sw, b.id) == 0
        assert a.send(eth(BCAST, MA)) == 1
        assert not log.pages()
        # And on again: the indexes carried on (no reset), logging resumes.
        assert lib.vs_port_set_features(sw.sw, b.id, b.features | LOG_ALL) == 0
        assert a.send(eth(BCAST, MA)) == 1
        assert log.pages() and len(b.frames()) == 3
    finally:
        sw.close()
        log.close()
        mem.close()


def test_log_base_refused_or_replaced(sw: Switch) -> None:
    p = sw.port()
    unsealed = Log(1024, sealed=False)
    short = Log(1024)
    first, second = Log(1024), Log(2048, file_size=PAGE * 2)
    try:
        assert lib.vs_port_set_log(sw.sw, p.id, unsealed.fd, 1024, 0) == -errno.EPERM
        assert lib.vs_port_set_log(sw.sw, p.id, short.fd, 2048, 0) == -errno.EINVAL
        assert lib.vs_port_set_log(sw.sw, p.id, short.fd, 0, 0) == -errno.EINVAL
        assert lib.vs_port_set_log(sw.sw, p.id, -1, 0, 0) == 0  # unmap: nothing mapped
        maps = _log_maps()
        assert lib.vs_port_set_log(sw.sw, p.id, first.fd, 1024, 0) == 0
        assert _log_maps() == maps + 1
        # Again (memory grew): the old log goes, the new one is mapped exactly, at its
        # offset (a page in), and used from there.
        assert lib.vs_port_set_log(sw.sw, p.id, second.fd, 2 * PAGE, PAGE) == -errno.EINVAL
        assert lib.vs_port_set_log(sw.sw, p.id, second.fd, 1024, PAGE + 16) == 0
        assert _log_maps() == maps + 1
        assert lib.vs_port_set_features(sw.sw, p.id, p.features | LOG_ALL) == 0
        assert lib.vs_vring_set_log(sw.sw, p.id, Q_RX, 1, p.rx.used) == 0
        p.post_rx(4)
        other = sw.port()
        assert other.send(eth(BCAST, MA)) == 1
        assert p.rx.used // PAGE in second.pages(PAGE + 16) and not first.pages()
        lib.vs_port_reset(sw.sw, p.id)
        assert _log_maps() == maps
    finally:
        sw.close()
        for lg in (unsealed, short, first, second):
            lg.close()


def test_log_smaller_than_memory_is_counted_not_overrun(sw: Switch) -> None:
    a = sw.port()
    mem = GuestMemory.single()
    log = Log(1)  # 8 pages: far below the guest's buffers at 1 MiB and up
    try:
        b = logging_port(sw, log, mem=mem)
        b.post_rx(4)
        assert a.send(eth(BCAST, MA)) == 1
        assert b.stats()["log_overflow"] > 0 and len(b.frames()) == 1
    finally:
        sw.close()
        log.close()
        mem.close()


def _log_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("vhost-log" in line for line in f)


# Memory hotplug


def region(g: int, s: int, u: int, o: int, fd: int) -> object:
    r = ffi.new("struct vs_mem_region *")
    r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset, r.fd = g, s, u, o, fd
    return r


def test_regions_added_and_removed_while_rings_run(sw: Switch) -> None:
    a = sw.port()
    big = GuestMemory.single(size=lib.VS_MAX_MEM_REGIONS * PAGE * 4 + (4 << 20))
    b = sw.port(mem=big, setup=False)
    b.mem = big
    try:
        # The ring memory first (4 MiB at 1 MiB, from the file's start), then many
        # small regions of the same file further on, as DIMMs would come.
        g0, _, u0, o0, fd = big.table()[0]
        ring_region = (g0, 4 << 20, u0, o0, fd)
        assert lib.vs_port_set_features(sw.sw, b.id, b.features) == 0
        assert lib.vs_port_add_mem(sw.sw, b.id, region(*ring_region)) == 0
        for q in (Q_RX, Q_TX):
            b.setup_queue(q)
        assert b.up
        slots = lib.VS_MAX_MEM_REGIONS - 1
        # Two pages each, two apart: no two mappings could merge into one in
        # /proc/self/maps, so the count there is the switch's count.
        extra = [(g0 + (4 << 20) + i * 4 * PAGE, 2 * PAGE, u0 + (4 << 20) + i * 4 * PAGE,
                  (4 << 20) + i * 4 * PAGE, fd) for i in range(slots)]  # fmt: skip
        for r in reversed(extra):  # out of order: the table sorts itself
            assert lib.vs_port_add_mem(sw.sw, b.id, region(*r)) == 0
        assert lib.vs_port_mem_regions(sw.sw, b.id) == lib.VS_MAX_MEM_REGIONS
        assert b.up
        # Refused: past the limit, a duplicate, an overlap; nothing changes.
        past = (g0 + (64 << 20), PAGE, u0 + (64 << 20), 0, fd)
        assert lib.vs_port_add_mem(sw.sw, b.id, region(*past)) == -errno.ENOSPC
        assert lib.vs_port_add_mem(sw.sw, b.id, region(*extra[3])) == -errno.EEXIST
        g, s, u, o, _ = extra[5]
        overlap = region(g + PAGE, s, u + (80 << 20), o, fd)
        assert lib.vs_port_add_mem(sw.sw, b.id, overlap) == -errno.EINVAL
        # A buffer in the last region added: frames land there.
        rx = b.rx
        (head,) = rx.take_ids(1)
        buf = extra[-1][0]
        rx.write_desc(head, buf, 2048, DESC_F_WRITE)
        rx.publish(head)
        frame = eth(BCAST, MA, 300)
        assert a.send(frame) == 1
        assert big.read(buf + b.hdr_len, len(frame)) == frame
        # Removing: not the rings' region, not one that is not there; then one that is.
        assert lib.vs_port_rem_mem(sw.sw, b.id, region(*ring_region)) == -errno.EBUSY
        assert lib.vs_port_rem_mem(sw.sw, b.id, region(*past)) == -errno.ENOENT
        maps = _guest_maps()
        assert maps >= slots
        for r in extra:
            assert lib.vs_port_rem_mem(sw.sw, b.id, region(*r)) == 0
        assert _guest_maps() == maps - slots  # every mapping went
        assert lib.vs_port_mem_regions(sw.sw, b.id) == 1 and b.up
        assert a.send(frame) == 1  # no buffer left: dropped, nothing broke
        assert not b.broken
        # Once the rings are stopped, their region may go too.
        for q in (Q_RX, Q_TX):
            assert lib.vs_vring_stop(sw.sw, b.id, q) >= 0
        assert lib.vs_port_rem_mem(sw.sw, b.id, region(*ring_region)) == 0
        assert lib.vs_port_mem_regions(sw.sw, b.id) == 0
    finally:
        sw.close()
        big.close()


def _guest_maps() -> int:
    with open("/proc/self/maps") as f:
        return sum("guest-ram" in line for line in f)
