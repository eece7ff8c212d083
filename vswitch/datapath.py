"""The C fast path seen from Python: a switch object and its ports.

Thin on purpose: each method is one call into csrc/ (see fastpath.h), with
negative errno returns turned into OSError.  Nothing here touches a frame.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

from vswitch._fastpath import ffi, lib

# The header's structs are shared with C; a mismatch means a stale build.
assert ffi.sizeof("struct vs_mem_region") == 40
assert ffi.sizeof("struct vs_fdb_entry") == 24
assert ffi.sizeof("struct vs_cap_hdr") == 24

MAX_PORTS: int = lib.VS_MAX_PORTS
MAX_QUEUES: int = lib.VS_MAX_QUEUES
BURST: int = lib.VS_BURST
PORT_VHOST: int = lib.VS_PORT_VHOST
PORT_TAP: int = lib.VS_PORT_TAP
CAP_RX: int = lib.VS_CAP_RX
CAP_TX: int = lib.VS_CAP_TX
CAP_HDR = ffi.sizeof("struct vs_cap_hdr")

PORT_STAT_FIELDS = [f for f, _ in ffi.typeof("struct vs_port_stats").fields]
SWITCH_STAT_FIELDS = [f for f, _ in ffi.typeof("struct vs_switch_stats").fields]


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


class Datapath:
    """One vs_switch.  Call close() (or use `with`) to free it."""

    def __init__(self, fdb_size: int) -> None:
        sw = lib.vs_switch_new(fdb_size)
        if sw == ffi.NULL:
            raise OSError(errno.ENOMEM, f"cannot create a switch with a {fdb_size}-entry MAC table")
        self._sw = sw
        self._free_ids = list(range(MAX_PORTS - 1, -1, -1))

    def close(self) -> None:
        if self._sw is not None:
            lib.vs_switch_free(self._sw)
            self._sw = None

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def handle(self):
        return self._sw

    # Ports

    def open_port(self, mtu: int, kind: int = PORT_VHOST) -> int:
        if not self._free_ids:
            raise OSError(errno.ENOSPC, f"no room for more than {MAX_PORTS} ports")
        port = self._free_ids[-1]
        _check(lib.vs_port_open(self._sw, port, kind, mtu), "open port")
        self._free_ids.pop()
        return port

    def set_fd(self, port: int, fd: int) -> None:
        """TAP ports: the non-blocking tap fd (borrowed), or -1."""
        _check(lib.vs_port_set_fd(self._sw, port, fd), "tap fd")

    def set_mac_limit(self, port: int, limit: int) -> None:
        _check(lib.vs_port_set_mac_limit(self._sw, port, limit), f"MAC limit {limit}")

    def close_port(self, port: int) -> None:
        lib.vs_port_close(self._sw, port)
        self._free_ids.append(port)

    def reset_port(self, port: int) -> None:
        lib.vs_port_reset(self._sw, port)

    def set_mtu(self, port: int, mtu: int) -> None:
        _check(lib.vs_port_set_mtu(self._sw, port, mtu), f"MTU {mtu}")

    def set_features(self, port: int, features: int) -> None:
        _check(lib.vs_port_set_features(self._sw, port, features), "set features")

    def set_mem(self, port: int, regions: Sequence[Region]) -> None:
        arr = ffi.new("struct vs_mem_region[]", len(regions))
        for i, r in enumerate(regions):
            arr[i].guest_phys_addr = r.guest_phys_addr
            arr[i].size = r.size
            arr[i].user_addr = r.user_addr
            arr[i].mmap_offset = r.mmap_offset
            arr[i].fd = r.fd
        _check(lib.vs_port_set_mem(self._sw, port, arr, len(regions)), "map guest memory")

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

    def vring_num(self, port: int, q: int, num: int) -> None:
        _check(lib.vs_vring_set_num(self._sw, port, q, num), f"vring {q} size {num}")

    def vring_addr(self, port: int, q: int, desc: int, used: int, avail: int) -> None:
        _check(lib.vs_vring_set_addr(self._sw, port, q, desc, used, avail), f"vring {q} addresses")

    def vring_base(self, port: int, q: int, base: int) -> None:
        _check(lib.vs_vring_set_base(self._sw, port, q, base), f"vring {q} base {base}")

    def vring_stop(self, port: int, q: int) -> int:
        return _check(lib.vs_vring_stop(self._sw, port, q), f"stop vring {q}")

    def vring_kick_fd(self, port: int, q: int, fd: int) -> None:
        _check(lib.vs_vring_set_kick(self._sw, port, q, fd), f"vring {q} kick fd")

    def vring_call_fd(self, port: int, q: int, fd: int) -> None:
        _check(lib.vs_vring_set_call(self._sw, port, q, fd), f"vring {q} call fd")

    def vring_enable(self, port: int, q: int, enabled: bool) -> None:
        _check(lib.vs_vring_enable(self._sw, port, q, int(enabled)), f"enable vring {q}")

    def vring_ready(self, port: int, q: int) -> bool:
        return bool(lib.vs_vring_ready(self._sw, port, q))

    # Data path entry points

    def kick(self, port: int, q: int) -> int:
        """Serve one queue after its kick eventfd fired; frames taken, or -errno."""
        return lib.vs_port_kick(self._sw, port, q)

    def poll(self, budget: int = BURST) -> int:
        return lib.vs_poll(self._sw, budget)

    # Capture

    def capture_start(self, port: int, dirs: int, snaplen: int, ring_bytes: int) -> None:
        _check(lib.vs_capture_start(self._sw, port, dirs, snaplen, ring_bytes), "start capture")

    def capture_stop(self, port: int) -> None:
        lib.vs_capture_stop(self._sw, port)

    def capture_read(self, port: int, buf: bytearray) -> int:
        """Fills buf with whole records (struct vs_cap_hdr + frame, 8-aligned)."""
        return lib.vs_capture_read(self._sw, port, ffi.from_buffer(buf), len(buf))

    # MAC table

    def fdb_add(self, mac: int, port: int, *, vlan: int = 0, static: bool = True) -> None:
        _check(lib.vs_fdb_add(self._sw, mac, vlan, port, int(static)), f"add MAC {mac:012x}")

    def fdb_del(self, mac: int, *, vlan: int = 0) -> bool:
        return lib.vs_fdb_del(self._sw, mac, vlan) == 0

    def fdb_flush(self, port: int = -1, *, include_static: bool = False) -> int:
        return lib.vs_fdb_flush(self._sw, port, int(include_static))

    def fdb_age(self, max_age: int) -> int:
        return lib.vs_fdb_age(self._sw, max_age)

    def fdb_dump(self) -> list[FdbEntry]:
        n = self.switch_stats()["fdb_entries"]
        buf = ffi.new("struct vs_fdb_entry[]", max(n, 1))
        got = lib.vs_fdb_dump(self._sw, buf, n)
        return [
            FdbEntry(
                mac=buf[i].mac,
                vlan=buf[i].vlan,
                port=buf[i].port,
                age=buf[i].age,
                static=bool(buf[i].flags & lib.VS_FDB_STATIC),
            )
            for i in range(got)
        ]
