"""The vhost-user messages of live migration and memory hotplug, for VhostSession.

Migration (vhost-user.rst, "Migration"): QEMU hands over a dirty log
(SET_LOG_BASE), turns LOG_ALL on (SET_FEATURES) and asks for the used rings'
writes to be logged too (SET_VRING_ADDR with VHOST_VRING_F_LOG); the fast path
then marks every page it writes (csrc/vs_log.c).  On the destination, QEMU asks
the switch to announce the guest (SEND_RARP).  Hotplug (CONFIGURE_MEM_SLOTS):
regions come and go one at a time (ADD_MEM_REG, REM_MEM_REG) while the rings run.

Each handler finishes its change in the fast path before it returns, so the
change is in force before the next message is read: QEMU without REPLY_ACK
uses the next GET_FEATURES as its barrier.
"""

from __future__ import annotations

import logging

from vswitch.fastpath import Fastpath, Region
from vswitch.limits import MAX_MEM_REGIONS
from vswitch.mac import format_mac
from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import Message, ProtocolError, Req

log = logging.getLogger("vswitch.vhost")


class MigrationHandlers:
    """Mixed into VhostSession: the state and handlers of migration and hotplug."""

    name: str
    dp: Fastpath
    port: int
    log_size: int = 0  # bytes of dirty log mapped, 0 for none
    log_bases: int = 0  # SET_LOG_BASE messages taken this session
    announces: int = 0  # SEND_RARP messages taken
    # ADD_MEM_REG'd regions (guest address, size, front-end address) -> how many times.
    # QEMU keeps a vhost device per queue pair on the one connection, and each sends
    # every region (QEMU 7.2 does not count ADD/REM_MEM_REG as one-time requests): a
    # region is mapped on its first ADD and unmapped on its last REM.
    mem_refs: dict[tuple[int, int, int], int]

    def _set_log_base(self, msg: Message) -> bytes:
        size, offset = P.parse_log_base(msg)
        # Mapped exactly (the memfd is sealed at its size); a repeat after the
        # memory grew (hotplug) replaces the old log, which C unmaps.
        self.dp.set_log(self.port, msg.fds[0], size, offset)
        self.log_size = size
        self.log_bases += 1
        log.info(
            "port %s: dirty log of %d bytes (%d MiB of guest memory) at offset %d",
            self.name,
            size,
            size * 8 * 4096 >> 20,
            offset,
        )
        # With LOG_SHMFD the front end waits for a reply: a header of the same
        # request and no payload (QEMU's vhost_user_set_log_base).
        return P.encode(msg.request, reply=True)

    def _set_vring_log(self, q: int, addr: P.VringAddr) -> None:
        """SET_VRING_ADDR's log part: re-sent when migration starts and ends."""
        enabled = bool(addr.flags & P.VRING_F_LOG)
        self.dp.vring_log(self.port, q, enabled, addr.log)
        if enabled:
            log.debug("port %s: vring %d logs its used ring at %#x", self.name, q, addr.log)

    def _send_rarp(self, msg: Message) -> None:
        # The MAC is the payload's first six bytes, in wire order.
        mac = msg.payload[:6] if len(msg.payload) == P.U64.size else b""
        if len(mac) != 6:
            raise ProtocolError(f"{msg.name}: payload is {len(msg.payload)} bytes, want 8")
        # Forwarded as if the guest had sent it: its MAC is learned on this
        # port (moved from the port it left) and the broadcast reaches every
        # other port, so peers and switches further on learn the move at once.
        self.dp.inject(self.port, P.rarp_frame(mac))
        self.announces += 1
        mac_s = format_mac(int.from_bytes(mac, "big"))
        level = logging.INFO if self.announces == 1 else logging.DEBUG
        log.log(level, "port %s: guest %s announced (SEND_RARP): its MAC is here now",
                self.name, mac_s)  # fmt: skip

    def _get_max_mem_slots(self, msg: Message) -> bytes:
        return P.reply_u64(msg.request, MAX_MEM_REGIONS)

    def _mem_region(self, msg: Message, fd: int) -> Region:
        r = P.parse_mem_single(msg)
        return Region(r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset, fd)

    def _add_mem_reg(self, msg: Message) -> None:
        region = self._mem_region(msg, msg.fds[0])
        key = (region.guest_phys_addr, region.size, region.user_addr)
        if key in self.mem_refs:
            self.mem_refs[key] += 1
            log.debug("port %s: memory region at %#x added again (another queue pair's)",
                      self.name, region.guest_phys_addr)  # fmt: skip
            return
        self.dp.add_mem(self.port, region)
        self.mem_refs[key] = 1
        # The mapping keeps the memory; the descriptor closes with the message.
        log.info(
            "port %s: memory region added at %#x, %d MiB (%d regions)",
            self.name,
            region.guest_phys_addr,
            region.size >> 20,
            self.dp.mem_regions(self.port),
        )

    def _rem_mem_reg(self, msg: Message) -> None:
        # QEMU sends no descriptor; one that comes is closed with the message
        # (vhost-user.rst: the back end must close it).
        region = self._mem_region(msg, -1)
        key = (region.guest_phys_addr, region.size, region.user_addr)
        if self.mem_refs.get(key, 0) > 1:
            self.mem_refs[key] -= 1
            return
        self.dp.rem_mem(self.port, region)
        self.mem_refs.pop(key, None)
        log.info(
            "port %s: memory region at %#x removed (%d regions)",
            self.name,
            region.guest_phys_addr,
            self.dp.mem_regions(self.port),
        )

    def migration_info(self) -> dict[str, object]:
        """What `vswitch ports` shows: logging means a migration is under way."""
        stats = self.dp.port_stats(self.port)
        return {
            "logging": self.dp.logging(self.port),
            "log_bytes": self.log_size,
            "pages_marked": stats.get("log_pages", 0),
            "log_overflow": stats.get("log_overflow", 0),
            "announces": self.announces,
            "mem_regions": self.dp.mem_regions(self.port),
        }


def rem_mem_fds(msg: Message) -> int:
    """REM_MEM_REG may carry the region's descriptor or none."""
    return min(len(msg.fds), 1)


HANDLERS = {
    Req.SET_LOG_BASE: (MigrationHandlers._set_log_base, 1),
    Req.SEND_RARP: (MigrationHandlers._send_rarp, 0),
    Req.GET_MAX_MEM_SLOTS: (MigrationHandlers._get_max_mem_slots, 0),
    Req.ADD_MEM_REG: (MigrationHandlers._add_mem_reg, 1),
    Req.REM_MEM_REG: (MigrationHandlers._rem_mem_reg, rem_mem_fds),
}
