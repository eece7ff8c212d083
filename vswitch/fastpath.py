"""The cffi wrapper around the C fast path (csrc/): a switch object and its ports.

Thin on purpose: each method is one call into csrc/ (see fastpath.h), with
negative errno returns turned into OSError.  Nothing here touches a frame.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from vswitch._fastpath import ffi, lib
from vswitch.limits import BURST, MAX_PORTS

# The header's structs are shared with C; a mismatch means a stale build.
assert ffi.sizeof("struct vs_mem_region") == 40
assert ffi.sizeof("struct vs_fdb_entry") == 24
assert ffi.sizeof("struct vs_cap_hdr") == 24
assert ffi.sizeof("struct vs_bpf_insn") == 8  # libpcap's struct bpf_insn

PORT_VHOST: int = lib.VS_PORT_VHOST
PORT_TAP: int = lib.VS_PORT_TAP
PORT_VXLAN: int = lib.VS_PORT_VXLAN
CAP_RX: int = lib.VS_CAP_RX
CAP_TX: int = lib.VS_CAP_TX
CAP_HDR = ffi.sizeof("struct vs_cap_hdr")
MIRROR_RX: int = lib.VS_MIRROR_RX
MIRROR_TX: int = lib.VS_MIRROR_TX

PORT_STAT_FIELDS = [f for f, _ in ffi.typeof("struct vs_port_stats").fields]
SWITCH_STAT_FIELDS = [f for f, _ in ffi.typeof("struct vs_switch_stats").fields]
VXLAN_STAT_FIELDS = [f for f, _ in ffi.typeof("struct vs_vxlan_stats").fields]


log = logging.getLogger("vswitch.fastpath")

# How long the control plane waits for the poll thread to park.  It parks
# within microseconds; a thread that takes this long is held up somewhere
# (see vs_run_pause in csrc/vs_run.c), and the change is refused instead.
PAUSE_TIMEOUT_MS = 200
# How often the watchdog thread looks for a system call on a peer's eventfd
# that does not return (csrc/vs_peer.c).
WATCHDOG_INTERVAL = 0.5


class PollThreadStuck(OSError):
    """The poll thread did not park within PAUSE_TIMEOUT_MS: nothing was changed."""

    def __init__(self, port: int) -> None:
        where = f" (it was serving port {port})" if port >= 0 else ""
        super().__init__(
            errno.ETIMEDOUT,
            f"the poll thread did not park within {PAUSE_TIMEOUT_MS} ms{where}",
        )
        self.port = port


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise OSError(-rc, f"{what}: {os.strerror(-rc)}")
    return rc


@dataclass(frozen=True)
class Region:
    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int
    fd: int


@dataclass(frozen=True)
class FdbEntry:
    mac: int
    vlan: int
    port: int
    age: int
    static: bool
    remote: int = 0  # VXLAN ports: 1 + the remote's index in vxlan_remotes(port), 0 = none


F = TypeVar("F", bound=Callable[..., Any])


def _parked(method: F) -> F:
    """Runs the method with the poll thread (if any) parked: the one way the
    control plane changes what the data path sees: the thread finishes its burst and
    waits, the change is made, the thread goes on.  No locks on the hot path."""

    @functools.wraps(method)
    def wrapper(self: Fastpath, *args: Any, **kwargs: Any) -> Any:
        with self.paused():
            return method(self, *args, **kwargs)

    return wrapper  # type: ignore[return-value]


class Fastpath:
    """One vs_switch.  Call close() (or use `with`) to free it.

    Two ways to drive it: the event loop calls kick() when a kick eventfd or
    tap fd is readable (`threaded` is False), or start_thread() runs the
    adaptive poll loop in its own thread, which watches those fds itself.
    """

    def __init__(self, fdb_size: int) -> None:
        sw = lib.vs_switch_new(fdb_size)
        if sw == ffi.NULL:
            raise OSError(errno.ENOMEM, f"cannot create a switch with a {fdb_size}-entry MAC table")
        self._sw = sw
        self._free_ids = list(range(MAX_PORTS - 1, -1, -1))
        self._thread: threading.Thread | None = None
        self._thread_rc = 0
        self._pauses = 0
        self._watchdog: threading.Thread | None = None
        self._watchdog_stop = threading.Event()

    def close(self) -> None:
        self.stop_thread()
        self.stop_watchdog()
        if self._sw is not None:
            lib.vs_switch_free(self._sw)
            self._sw = None

    # The poll thread

    @property
    def threaded(self) -> bool:
        return self._thread is not None

    def start_thread(self, idle_us: int = 100, linger_ns: int = 3000) -> None:
        def run() -> None:
            # the GIL is released inside
            self._thread_rc = lib.vs_run(self._sw, idle_us, linger_ns)

        self._thread = threading.Thread(target=run, name="vswitch-poll", daemon=True)
        self._thread.start()

    def stop_thread(self) -> None:
        if self._thread is None:
            return
        lib.vs_run_stop(self._sw)
        self._thread.join()
        self._thread = None
        _check(self._thread_rc, "poll thread")

    def start_watchdog(self, interval: float = WATCHDOG_INTERVAL) -> None:
        """A thread that interrupts a read or write of a peer's eventfd that
        does not return (a front end that won the race against the switch's
        non-blocking check: csrc/vs_peer.c), whichever thread made it, the
        poll thread's or the event loop's."""
        if self._watchdog is not None:
            return
        self._watchdog_stop.clear()
        sw = self._sw

        def watch() -> None:
            while not self._watchdog_stop.wait(interval):
                port = lib.vs_watchdog(sw)
                if port >= 0:
                    log.error(
                        "watchdog: a system call on a peer's eventfd (port %d) did not return; "
                        "interrupted",
                        port,
                    )

        self._watchdog = threading.Thread(target=watch, name="vswitch-watchdog", daemon=True)
        self._watchdog.start()

    def stop_watchdog(self) -> None:
        if self._watchdog is None:
            return
        self._watchdog_stop.set()
        self._watchdog.join()
        self._watchdog = None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Parks the poll thread for the duration (nests); no-op without one.
        Parking waits for the current burst at most: microseconds.  A thread
        that does not park within PAUSE_TIMEOUT_MS raises PollThreadStuck
        (nothing runs under the pause; the watchdog in vs_run_pause has
        looked at what held the thread)."""
        if self._thread is None or not self._thread.is_alive():
            yield
            return
        if self._pauses == 0 and lib.vs_run_pause(self._sw, PAUSE_TIMEOUT_MS) < 0:
            raise PollThreadStuck(lib.vs_run_serving(self._sw))
        self._pauses += 1
        try:
            yield
        finally:
            self._pauses -= 1
            if self._pauses == 0:
                lib.vs_run_resume(self._sw)

    def __enter__(self) -> Fastpath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # Ports

    @_parked
    def open_port(self, mtu: int, kind: int = PORT_VHOST) -> int:
        if not self._free_ids:
            raise OSError(errno.ENOSPC, f"no room for more than {MAX_PORTS} ports")
        port = self._free_ids[-1]
        _check(lib.vs_port_open(self._sw, port, kind, mtu), "open port")
        self._free_ids.pop()
        return port

    @_parked
    def set_fd(self, port: int, fd: int) -> None:
        """TAP ports: the non-blocking tap fd (borrowed), or -1."""
        _check(lib.vs_port_set_fd(self._sw, port, fd), "tap fd")

    @_parked
    def set_mac_limit(self, port: int, limit: int) -> None:
        _check(lib.vs_port_set_mac_limit(self._sw, port, limit), f"MAC limit {limit}")

    @_parked
    def close_port(self, port: int) -> None:
        lib.vs_port_close(self._sw, port)
        self._free_ids.append(port)

    @_parked
    def reset_port(self, port: int) -> None:
        lib.vs_port_reset(self._sw, port)

    @_parked
    def set_mtu(self, port: int, mtu: int) -> None:
        _check(lib.vs_port_set_mtu(self._sw, port, mtu), f"MTU {mtu}")

    @_parked
    def set_features(self, port: int, features: int) -> None:
        _check(lib.vs_port_set_features(self._sw, port, features), "set features")

    @_parked
    def set_mem(self, port: int, regions: Sequence[Region]) -> None:
        arr = ffi.new("struct vs_mem_region[]", len(regions))
        for i, r in enumerate(regions):
            arr[i].guest_phys_addr = r.guest_phys_addr
            arr[i].size = r.size
            arr[i].user_addr = r.user_addr
            arr[i].mmap_offset = r.mmap_offset
            arr[i].fd = r.fd
        rc = lib.vs_port_set_mem(self._sw, port, arr, len(regions))
        if rc == -errno.EPERM:
            raise OSError(
                errno.EPERM,
                "map guest memory: a region's file can be sealed but is not sealed against "
                "shrinking (F_SEAL_SHRINK), so it could be truncated under the switch; seal it "
                "as QEMU's memory-backend-memfd does (seal=on, the default)",
            )
        _check(rc, "map guest memory")

    def _region(self, r: Region) -> Any:
        c = ffi.new("struct vs_mem_region *")
        c.guest_phys_addr, c.size, c.user_addr = r.guest_phys_addr, r.size, r.user_addr
        c.mmap_offset, c.fd = r.mmap_offset, r.fd
        return c

    @_parked
    def add_mem(self, port: int, region: Region) -> None:
        """Memory hotplug: one region more, the rings translated again before it returns."""
        rc = lib.vs_port_add_mem(self._sw, port, self._region(region))
        where = f"region at guest address {region.guest_phys_addr:#x} ({region.size >> 20} MiB)"
        if rc == -errno.EEXIST:
            raise OSError(errno.EEXIST, f"{where} is in the memory table already")
        if rc == -errno.EINVAL:
            raise OSError(errno.EINVAL, f"{where} overlaps a region of the table, or is empty")
        if rc == -errno.ENOSPC:
            raise OSError(
                errno.ENOSPC,
                f"{where}: the table has {lib.VS_MAX_MEM_REGIONS} regions already, the most a "
                "port takes (GET_MAX_MEM_SLOTS said so)",
            )
        if rc == -errno.EPERM:
            raise OSError(errno.EPERM, f"{where}: its file is not sealed against shrinking")
        _check(rc, f"map {where}")

    @_parked
    def rem_mem(self, port: int, region: Region) -> None:
        rc = lib.vs_port_rem_mem(self._sw, port, self._region(region))
        where = f"region at guest address {region.guest_phys_addr:#x} ({region.size >> 20} MiB)"
        if rc == -errno.ENOENT:
            raise OSError(errno.ENOENT, f"no {where} in the memory table")
        if rc == -errno.EBUSY:
            raise OSError(errno.EBUSY, f"{where} holds a running ring: stop the ring first")
        _check(rc, f"unmap {where}")

    def mem_regions(self, port: int) -> int:
        return lib.vs_port_mem_regions(self._sw, port)

    @_parked
    def set_log(self, port: int, fd: int, size: int, offset: int) -> None:
        """The dirty log (SET_LOG_BASE): exactly size bytes at offset of fd; fd -1 unmaps."""
        rc = lib.vs_port_set_log(self._sw, port, fd, size, offset)
        if rc == -errno.EPERM:
            raise OSError(
                errno.EPERM,
                "map the dirty log: its file is not a memfd sealed against shrinking "
                "(F_SEAL_SHRINK), so it could be truncated under the switch",
            )
        _check(rc, f"map the dirty log ({size} bytes at offset {offset})")

    def logging(self, port: int) -> bool:
        return bool(lib.vs_port_logging(self._sw, port))

    @_parked
    def vring_log(self, port: int, q: int, enabled: bool, log_guest_addr: int) -> None:
        _check(lib.vs_vring_set_log(self._sw, port, q, int(enabled), log_guest_addr),
               f"vring {q} log address")  # fmt: skip

    @_parked
    def inject(self, port: int, frame: bytes) -> None:
        """Forwards frame as if port had sent it (learned on it, flooded or sent on)."""
        _check(lib.vs_port_inject(self._sw, port, frame, len(frame)), "inject a frame")

    @_parked
    def debug_no_log(self, off: bool) -> None:
        """Tests only: the fast path skips every dirty-log write."""
        lib.vs_debug_no_log(self._sw, int(off))

    @_parked
    def set_mirror(self, port: int, sources: Sequence[int], dirs: int) -> None:
        """Port gets copies of the frames the switch takes from `sources` (dirs has
        MIRROR_RX) and gives them (MIRROR_TX); replaces its mirror, none clears it."""
        arr = ffi.new("uint32_t[]", max(len(sources), 1))
        for i, s in enumerate(sources):
            arr[i] = s
        _check(lib.vs_port_set_mirror(self._sw, port, arr, len(sources), dirs), "set mirror")

    @_parked
    def set_vlans(
        self, port: int, *, vlan: int = 0, trunks: Sequence[int] = (), native_vlan: int = 0
    ) -> int:
        """An access port of `vlan` (0: not VLAN-aware), or a trunk of `trunks` with
        `native_vlan` (0: none) untagged; returns the MAC table entries of the port
        removed because they were on VLANs it no longer carries."""
        arr = ffi.new("uint16_t[]", max(len(trunks), 1))
        for i, v in enumerate(trunks):
            arr[i] = v
        return _check(
            lib.vs_port_set_vlans(self._sw, port, vlan, arr, len(trunks), native_vlan),
            f"set VLANs (vlan {vlan}, trunks {list(trunks)}, native_vlan {native_vlan})",
        )

    def vlan_stats(self) -> dict[int, dict[str, int]]:
        """Drops per VLAN, for the VLANs that had any: not_allowed, tagged."""
        out = ffi.new("struct vs_vlan_stats[]", lib.VS_VLAN_IDS)
        n = lib.vs_vlan_stats(self._sw, out, lib.VS_VLAN_IDS)
        return {
            out[i].vlan: {"not_allowed": out[i].not_allowed, "tagged": out[i].tagged}
            for i in range(n)
        }

    def vxlan_configure(
        self, port: int, *, vni: int, local: str, remotes: Sequence[str], dstport: int,
        learn_remotes: bool, tx_fd: int,
    ) -> None:  # fmt: skip
        """A VXLAN port's settings (its rx socket is set_fd's); a change of remotes forgets
        the remotes and MAC addresses the port learned."""
        c = ffi.new("struct vs_vxlan_config *")
        buf = ffi.new("uint8_t[]", b"".join(_addr16(r) for r in remotes) or bytes(16))
        c.vni, c.ipv6, c.learn_remotes = vni, int(":" in local), int(learn_remotes)
        c.nremotes, c.tx_fd, c.dstport, c.remotes = len(remotes), tx_fd, dstport, buf
        c.local = _addr16(local)
        _check(lib.vs_vxlan_configure(self._sw, port, c), "configure vxlan port")

    def vxlan_stats(self, port: int) -> dict[str, int]:
        st = ffi.new("struct vs_vxlan_stats *")
        lib.vs_vxlan_get_stats(self._sw, port, st)
        return {f: getattr(st, f) for f in VXLAN_STAT_FIELDS}

    @_parked
    def vxlan_remotes(self, port: int, ipv6: bool) -> list[str]:
        """The port's remotes, flood list first, then the learned ones."""
        room = lib.VS_VXLAN_MAX_REMOTES
        out = ffi.new("uint8_t[]", 16 * room)
        n = min(lib.vs_vxlan_remotes(self._sw, port, out, room), room)
        raw = bytes(ffi.buffer(out, 16 * n))
        chunks = [raw[i * 16 : (i + 1) * 16] for i in range(n)]
        return [str(ipaddress.ip_address(c if ipv6 else c[:4])) for c in chunks]

    def vring_stats(self, port: int, q: int) -> dict[str, int]:
        """Frames and bytes ring q carried (no parking: counters only)."""
        st = ffi.new("struct vs_queue_stats *")
        if lib.vs_vring_get_stats(self._sw, port, q, st) < 0:
            return {"packets": 0, "bytes": 0}
        return {"packets": st.packets, "bytes": st.bytes}

    def state(self, port: int) -> int:
        return lib.vs_port_state(self._sw, port)

    def is_up(self, port: int) -> bool:
        return bool(self.state(port) & lib.VS_STATE_UP)

    def is_broken(self, port: int) -> bool:
        return bool(self.state(port) & lib.VS_STATE_BROKEN)

    def error(self, port: int) -> str:
        return ffi.string(lib.vs_port_error(self._sw, port)).decode()

    def port_stats(self, port: int) -> dict[str, int]:
        st = ffi.new("struct vs_port_stats *")
        lib.vs_port_get_stats(self._sw, port, st)
        return {f: getattr(st, f) for f in PORT_STAT_FIELDS}

    def switch_stats(self) -> dict[str, int]:
        st = ffi.new("struct vs_switch_stats *")
        lib.vs_switch_get_stats(self._sw, st)
        return {f: getattr(st, f) for f in SWITCH_STAT_FIELDS}

    # Virtqueues

    @_parked
    def vring_num(self, port: int, q: int, num: int) -> None:
        _check(lib.vs_vring_set_num(self._sw, port, q, num), f"vring {q} size {num}")

    @_parked
    def vring_addr(self, port: int, q: int, desc: int, used: int, avail: int) -> None:
        _check(lib.vs_vring_set_addr(self._sw, port, q, desc, used, avail), f"vring {q} addresses")

    @_parked
    def vring_base(self, port: int, q: int, base: int) -> None:
        _check(lib.vs_vring_set_base(self._sw, port, q, base), f"vring {q} base {base}")

    @_parked
    def vring_stop(self, port: int, q: int) -> int:
        return _check(lib.vs_vring_stop(self._sw, port, q), f"stop vring {q}")

    @_parked
    def vring_kick_fd(self, port: int, q: int, fd: int) -> None:
        _check(lib.vs_vring_set_kick(self._sw, port, q, fd), f"vring {q} kick fd")

    @_parked
    def vring_call_fd(self, port: int, q: int, fd: int) -> None:
        _check(lib.vs_vring_set_call(self._sw, port, q, fd), f"vring {q} call fd")

    @_parked
    def vring_enable(self, port: int, q: int, enabled: bool) -> None:
        _check(lib.vs_vring_enable(self._sw, port, q, int(enabled)), f"enable vring {q}")

    def vring_ready(self, port: int, q: int) -> bool:
        return bool(lib.vs_vring_ready(self._sw, port, q))

    # Data path entry points

    @_parked
    def kick(self, port: int, q: int) -> int:
        """Serve one queue after its kick eventfd fired; frames taken, or -errno."""
        return lib.vs_port_kick(self._sw, port, q)

    @_parked
    def poll(self, budget: int = BURST) -> int:
        return lib.vs_poll(self._sw, budget)

    # Capture

    @_parked
    def capture_start(
        self, port: int, dirs: int, snaplen: int, ring_bytes: int, filter: bytes = b""
    ) -> None:
        """Start the port's capture; `filter` is a classic BPF program (vswitch.bpf), in
        force from the first frame."""
        _check(lib.vs_capture_start(self._sw, port, dirs, snaplen, ring_bytes), "start capture")
        if filter:
            prog = ffi.from_buffer("struct vs_bpf_insn[]", filter)
            rc = lib.vs_capture_set_filter(self._sw, port, prog, len(filter) // 8)
            if rc < 0:
                lib.vs_capture_stop(self._sw, port)
                _check(rc, "set capture filter")

    @_parked
    def capture_stop(self, port: int) -> None:
        lib.vs_capture_stop(self._sw, port)

    def capture_read(self, port: int, buf: bytearray) -> int:
        """Fills buf with whole records (struct vs_cap_hdr + frame, 8-aligned)."""
        return lib.vs_capture_read(self._sw, port, ffi.from_buffer(buf), len(buf))

    # MAC table

    @_parked
    def fdb_add(self, mac: int, port: int, *, vlan: int = 0, static: bool = True) -> None:
        _check(lib.vs_fdb_add(self._sw, mac, vlan, port, int(static)), f"add MAC {mac:012x}")

    @_parked
    def fdb_del(self, mac: int, *, vlan: int = 0) -> FdbEntry | None:
        """Removes one entry; returns it as it was, or None if there was none."""
        out = ffi.new("struct vs_fdb_entry *")
        if lib.vs_fdb_get(self._sw, mac, vlan, out) < 0:
            return None
        lib.vs_fdb_del(self._sw, mac, vlan)
        return _entry(out[0])

    @_parked
    def fdb_get(self, mac: int, *, vlan: int = 0) -> FdbEntry | None:
        out = ffi.new("struct vs_fdb_entry *")
        if lib.vs_fdb_get(self._sw, mac, vlan, out) < 0:
            return None
        return _entry(out[0])

    @_parked
    def fdb_flush(
        self, port: int = -1, *, vlan: int | None = None, include_static: bool = False
    ) -> int:
        """Removes the entries of `port` (every port: -1), on one VLAN or all."""
        if vlan is not None:
            return lib.vs_fdb_flush_vlan(self._sw, port, vlan, int(include_static))
        return lib.vs_fdb_flush(self._sw, port, int(include_static))

    @_parked
    def fdb_age(self, max_age: int) -> int:
        return lib.vs_fdb_age(self._sw, max_age)

    def set_thread_max_age(self, max_age: int) -> None:
        """The poll thread ages the table itself, a slice at a time (0: it does not);
        no parking needed."""
        lib.vs_fdb_set_max_age(self._sw, max_age)

    def fdb_dump(self) -> list[FdbEntry]:
        """The whole table.  The poll thread is parked only while C copies it
        into a buffer (about a millisecond for 65,536 entries); the Python
        objects are made after it runs again."""
        while True:
            # Room for what is there now and some learned meanwhile; if even
            # that is short, try again with the count read under the pause.
            want = self.switch_stats()["fdb_entries"]
            room = want + want // 8 + 64
            buf = ffi.new("struct vs_fdb_entry[]", room)
            with self.paused():
                n = self.switch_stats()["fdb_entries"]
                got = lib.vs_fdb_dump(self._sw, buf, room)
            if n <= room:
                break
        return [_entry(buf[i]) for i in range(got)]

    def efd_signal(self, fd: int) -> bool:
        """Adds 1 to a peer's eventfd without ever blocking on it (see
        vs_efd_signal): False when the counter was full, which is signalled."""
        return _check(lib.vs_efd_signal(self._sw, fd), "eventfd write") > 0


def _entry(e: Any) -> FdbEntry:
    return FdbEntry(
        mac=e.mac, vlan=e.vlan, port=e.port, age=e.age, static=bool(e.flags & lib.VS_FDB_STATIC),
        remote=e.remote,
    )  # fmt: skip


def _addr16(addr: str) -> bytes:
    """An address as vs_vxlan_config has it: IPv6's 16 bytes, or IPv4's 4 then zeros."""
    return ipaddress.ip_address(addr).packed.ljust(16, b"\0")


def bpf_test(prog: bytes, frame: bytes, seg_len: int = 0) -> int:
    """The fast path's BPF interpreter on one frame split into seg_len-byte segments after
    its Ethernet header (0: one segment): the program's return (0 = rejected).  OSError
    EINVAL for a program the fast path refuses."""
    insns = ffi.from_buffer("struct vs_bpf_insn[]", prog)
    return _check(lib.vs_bpf_test(insns, len(prog) // 8, frame, len(frame), seg_len), "bpf")
