"""One vhost-user connection: the device side of the protocol.

Shaped after libvhost-user: one method per message, a table from request to
(method, descriptors expected), strict checks on every field before anything
changes, and one reply path that honours REPLY_ACK.  The session never
touches a frame: it tells the fast path (vswitch/fastpath.py) what the front end set
up, watches the kick eventfds, and calls into C when one fires.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from vswitch.fastpath import Fastpath, PollThreadStuck, Region
from vswitch.limits import MAX_QUEUES, is_tx_ring
from vswitch.vhost import migration
from vswitch.vhost import protocol as P
from vswitch.vhost.migration import MigrationHandlers
from vswitch.vhost.protocol import PF, F, Message, ProtocolError, Req
from vswitch.vhost.transport import PeerClosed, close_fds, recv_message, send

log = logging.getLogger("vswitch.vhost")

# A TX ring with no kick eventfd is polled (vhost-user.rst, SET_VRING_KICK):
# in event-loop mode this often, once it is empty.  (The poll thread has its
# own timer, POLL_NOFD_MS in csrc/vs_run.c.)
POLL_INTERVAL = 0.001


class Refused(Exception):
    """A well-formed request we will not carry out: NACKed when the front end
    asked for a reply, otherwise the connection is closed."""


@dataclass
class Vring:
    kick: int = -1
    call: int = -1
    err: int = -1
    enabled: bool = False  # as set by SET_VRING_ENABLE
    started: bool = False
    held: bool = False  # disabled by RESET_OWNER until the ring is started again
    num: int = 0

    def close_fds(self) -> None:
        for name in ("kick", "call", "err"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


# The rings' eventfds are the front end's: it shares their open file
# description, so O_NONBLOCK set here could be cleared there at any time.
# Nothing relies on it: the fast path reads and writes them with calls that
# never wait (csrc/vs_peer.c), and so does check_broken (Fastpath.efd_signal).


class VhostSession(MigrationHandlers):
    """Serves one front end on an accepted socket until it goes away (the
    migration and hotplug messages are in vswitch/vhost/migration.py)."""

    def __init__(
        self,
        name: str,
        sock: socket.socket,
        dp: Fastpath,
        port: int,
        mtu: int,
        on_state: Callable[[], None] | None = None,
        queue_pairs: int = 1,
    ) -> None:
        self.name = name
        self.sock = sock
        self.dp = dp
        self.port = port
        self.max_mtu = mtu
        self.mem_refs = {}
        self.queue_pairs = queue_pairs
        self.offered = P.offered_features(queue_pairs)
        self.on_state = on_state or (lambda: None)
        self.loop = asyncio.get_running_loop()
        self.features = 0
        self.protocol_features = 0
        self.status = 0
        self.mtu = mtu
        self.backend_fd = -1
        self.vrings = [Vring() for _ in range(MAX_QUEUES)]
        self._was_up = False
        self.came_up = False  # the port was up at least once in this session
        self._broken_logged = False
        self.messages = 0
        self._watched: set[int] = set()
        self._polls: dict[int, asyncio.TimerHandle] = {}

    # Life cycle

    async def run(self) -> None:
        try:
            while True:
                msg = await recv_message(self.sock)
                self.messages += 1
                if self.messages == 1:
                    log.info("port %s: front end connected", self.name)
                try:
                    await self._dispatch(msg)
                finally:
                    close_fds(msg.fds)
        except PeerClosed:
            # A connection that never spoke is a liveness probe (another
            # vswitch checking the path), not a front end.
            level = logging.INFO if self.messages else logging.DEBUG
            log.log(level, "port %s: front end disconnected", self.name)
        except ProtocolError as e:
            log.error("port %s: %s; closing the connection", self.name, e)
        except OSError as e:
            log.error("port %s: connection error: %s", self.name, e)
        finally:
            self.teardown()

    def teardown(self) -> None:
        """Drop everything the front end gave us; the port goes down."""
        for q in range(len(self.vrings)):
            self._unwatch(q)
        # The fast path lets go of the rings' fds (and the memory) before they are closed.
        try:
            self.dp.reset_port(self.port)
        except PollThreadStuck as e:
            # The poll thread may still use the fds: closing them would let their
            # numbers be reused under it.  They stay open (a leak, logged) instead.
            log.error("port %s: %s; its ring descriptors stay open", self.name, e)
        else:
            for vr in self.vrings:
                vr.close_fds()
        self.vrings = [Vring() for _ in range(MAX_QUEUES)]
        if self.backend_fd >= 0:
            os.close(self.backend_fd)
            self.backend_fd = -1
        self.dp.set_mtu(self.port, self.max_mtu)
        self.sock.close()
        self._state_changed()

    # Dispatch

    async def _dispatch(self, msg: Message) -> None:
        entry = _HANDLERS.get(msg.request)
        if entry is None:
            if msg.need_reply:
                log.warning("port %s: unsupported %s; refused", self.name, msg.name)
                await send(self.sock, P.reply_u64(msg.request, 1))
                return
            raise ProtocolError(f"unsupported {msg.name}")
        handler, fds = entry
        want = fds(msg) if callable(fds) else fds
        if want is not None and len(msg.fds) != want:
            raise ProtocolError(f"{msg.name}: {len(msg.fds)} file descriptors, want {want}")
        log.debug("port %s: %s", self.name, msg.name)
        try:
            reply = handler(self, msg)
        except (Refused, OSError) as e:
            if not msg.need_reply or not self._acks:
                raise ProtocolError(f"{msg.name} refused: {e}") from e
            log.warning("port %s: %s refused: %s", self.name, msg.name, e)
            await send(self.sock, P.reply_u64(msg.request, 1))
            return
        if reply is not None:
            await send(self.sock, reply)
        elif msg.need_reply and self._acks:
            await send(self.sock, P.reply_u64(msg.request, 0))
        self._state_changed()

    @property
    def _acks(self) -> bool:
        return bool(self.protocol_features & (1 << PF.REPLY_ACK))

    def _vring_index(self, index: int, msg: Message) -> int:
        rings = min(MAX_QUEUES, 2 * self.queue_pairs)
        if index >= rings:
            raise ProtocolError(
                f"{msg.name}: vring {index} (this port has {rings}: {self.queue_pairs} queue "
                "pair(s), the `queues` it was told with GET_QUEUE_NUM)"
            )
        return index

    # Features

    def _get_features(self, msg: Message) -> bytes:
        return P.reply_u64(msg.request, self.offered)

    def _set_features(self, msg: Message) -> None:
        features = msg.u64()
        extra = features & ~self.offered
        if extra:
            raise Refused(f"features never offered: {P.feature_names(extra, F)}")
        self.features = features
        self.dp.set_features(self.port, features)
        log.info(
            "port %s: features %s", self.name, " ".join(P.feature_names(features, F)) or "none"
        )
        self._apply_enable()

    def _get_protocol_features(self, msg: Message) -> bytes:
        return P.reply_u64(msg.request, P.OFFERED_PROTOCOL_FEATURES)

    def _set_protocol_features(self, msg: Message) -> None:
        pf = msg.u64()
        extra = pf & ~P.OFFERED_PROTOCOL_FEATURES
        if extra:
            raise Refused(f"protocol features never offered: {P.feature_names(extra, PF)}")
        self.protocol_features = pf

    def _set_owner(self, msg: Message) -> None:
        """Nothing to record: one front end per connection is the only owner there is."""

    def _reset_owner(self, msg: Message) -> None:
        # Deprecated; vhost-user.rst: back ends should ignore it or disable
        # every ring, and must not drop the connection's state (features,
        # memory), which front ends go on to use.
        for vr in self.vrings:
            vr.enabled = False
            vr.held = True
        self._apply_enable()
        log.info("port %s: RESET_OWNER: every ring disabled", self.name)

    def _get_queue_num(self, msg: Message) -> bytes:
        return P.reply_u64(msg.request, self.queue_pairs)

    def _net_set_mtu(self, msg: Message) -> None:
        mtu = msg.u64()
        if not 68 <= mtu <= self.max_mtu:
            raise Refused(
                f"MTU {mtu} is outside 68..{self.max_mtu} (raise the port's mtu in the config)"
            )
        self.mtu = mtu
        self.dp.set_mtu(self.port, mtu)

    def _set_status(self, msg: Message) -> None:
        self.status = msg.u64() & 0xFF

    def _get_status(self, msg: Message) -> bytes:
        return P.reply_u64(msg.request, self.status)

    def _set_backend_req_fd(self, msg: Message) -> None:
        if self.backend_fd >= 0:
            os.close(self.backend_fd)
        self.backend_fd = msg.fds.pop()

    # Memory

    def _set_mem_table(self, msg: Message) -> None:
        regions = P.parse_mem_table(msg)
        self.dp.set_mem(
            self.port,
            [
                Region(r.guest_phys_addr, r.size, r.user_addr, r.mmap_offset, fd)
                for r, fd in zip(regions, msg.fds, strict=True)
            ],
        )
        self.mem_refs = {}  # the whole table replaced what ADD_MEM_REG built
        # The mappings keep the memory; the descriptors close with the message.
        log.info(
            "port %s: memory table of %d region(s), %d MiB",
            self.name,
            len(regions),
            sum(r.size for r in regions) >> 20,
        )

    # Vrings

    def _set_vring_num(self, msg: Message) -> None:
        index, num = msg.vring_state()
        q = self._vring_index(index, msg)
        self.dp.vring_num(self.port, q, num)
        self.vrings[q].num = num

    def _set_vring_addr(self, msg: Message) -> None:
        a = P.parse_vring_addr(msg)
        q = self._vring_index(a.index, msg)
        # The log part first: the ring logs from its first write at the new address.
        self._set_vring_log(q, a)
        self.dp.vring_addr(self.port, q, a.desc, a.used, a.avail)

    def _set_vring_base(self, msg: Message) -> None:
        index, base = msg.vring_state()
        q = self._vring_index(index, msg)
        self.dp.vring_base(self.port, q, base)

    def _get_vring_base(self, msg: Message) -> bytes:
        index, _ = msg.vring_state()
        q = self._vring_index(index, msg)
        self._unwatch(q)
        base = self.dp.vring_stop(self.port, q)
        vr = self.vrings[q]
        vr.close_fds()
        vr.started = False
        return P.reply_vring_state(msg.request, q, base)

    def _vring_fd(self, msg: Message) -> tuple[int, int]:
        value = msg.u64()
        q = self._vring_index(value & P.VRING_IDX_MASK, msg)
        if value & P.VRING_NOFD:
            return q, -1
        # Only an eventfd: a pipe could block our interrupt writes (stalling
        # every port) or sit at EOF and wake us forever.
        if os.readlink(f"/proc/self/fd/{msg.fds[-1]}") != "anon_inode:[eventfd]":
            raise Refused(f"vring {q}: the descriptor is not an eventfd")
        return q, msg.fds.pop()

    def _set_vring_kick(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        vr = self.vrings[q]
        self._unwatch(q)
        old, vr.kick = vr.kick, fd
        vr.started = True
        vr.held = False
        if fd < 0 and is_tx_ring(q):
            log.info("port %s: vring %d has no kick eventfd: polled", self.name, q)
        # The fast path lets go of the old fd before it is closed: once closed, its
        # number can be reused by any other open().
        self.dp.vring_kick_fd(self.port, q, fd)
        if old >= 0:
            os.close(old)
        self._apply_enable()
        if not self.dp.threaded:
            if fd >= 0:
                self.loop.add_reader(fd, self._kick, q)
                self._watched.add(fd)
            elif is_tx_ring(q):
                self._polls[q] = self.loop.call_later(POLL_INTERVAL, self._poll, q)
            # Serve what the guest queued before we were told where to look.
            self.loop.call_soon(self._kick, q)

    def _set_vring_call(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        vr = self.vrings[q]
        # C stops writing the old fd before we close it.
        self.dp.vring_call_fd(self.port, q, fd)
        if vr.call >= 0:
            os.close(vr.call)
        vr.call = fd

    def _set_vring_err(self, msg: Message) -> None:
        q, fd = self._vring_fd(msg)
        vr = self.vrings[q]
        if vr.err >= 0:
            os.close(vr.err)
        vr.err = fd

    def _set_vring_enable(self, msg: Message) -> None:
        index, enable = msg.vring_state()
        q = self._vring_index(index, msg)
        if enable not in (0, 1):
            raise Refused(f"enable value {enable}")
        self.vrings[q].enabled = bool(enable)
        if enable:
            self.vrings[q].held = False
        self._apply_enable()
        if enable and not self.dp.threaded:
            self.loop.call_soon(self._kick, q)

    def _apply_enable(self) -> None:
        # vhost-user.rst "Ring states": without PROTOCOL_FEATURES a ring is
        # enabled as soon as it starts; with it, only SET_VRING_ENABLE enables.
        negotiated = bool(self.features & (1 << F.PROTOCOL_FEATURES))
        for q, vr in enumerate(self.vrings):
            self.dp.vring_enable(self.port, q, vr.enabled if negotiated else not vr.held)

    # Data path wake-ups

    def _kick(self, q: int) -> None:
        if self.sock.fileno() < 0:
            return
        n = self.dp.kick(self.port, q)
        if n < 0:
            self.check_broken()
        elif n > 0:
            # The ring may hold more than one call's budget: come back after
            # the loop has had a turn; an empty ring answers 0 and rearms.
            self.loop.call_soon(self._kick, q)

    def _poll(self, q: int) -> None:
        """Event-loop mode: a ring with no kick eventfd gets a timer for a
        kick; _kick drains it and reports a broken ring as for any kick."""
        self._polls.pop(q, None)
        if self.sock.fileno() < 0:
            return
        self._kick(q)
        self._polls[q] = self.loop.call_later(POLL_INTERVAL, self._poll, q)

    def check_broken(self) -> None:
        """Logs a ring the fast path stopped (once per breakage) and tells
        the front end through the rings' error eventfds (SET_VRING_ERR).
        Called after a failed kick, and periodically when a poll thread runs."""
        if self.dp.is_broken(self.port):
            if not self._broken_logged:
                self._broken_logged = True
                log.error(
                    "port %s: ring stopped: %s (the guest must reset the device)",
                    self.name,
                    self.dp.error(self.port),
                )
                for vr in self.vrings:
                    if vr.err >= 0:
                        # Never os.eventfd_write: a full counter with O_NONBLOCK
                        # cleared by the front end would block the event loop.
                        try:
                            if not self.dp.efd_signal(vr.err):
                                log.debug("port %s: error eventfd full: signalled", self.name)
                        except OSError as e:
                            log.debug("port %s: error eventfd: %s", self.name, e)
            self._state_changed()

    def _unwatch(self, q: int) -> None:
        fd = self.vrings[q].kick
        if fd in self._watched:
            self.loop.remove_reader(fd)
            self._watched.discard(fd)
        poll = self._polls.pop(q, None)
        if poll is not None:
            poll.cancel()

    def _state_changed(self) -> None:
        up = self.dp.is_up(self.port)
        if up != self._was_up:
            self._was_up = up
            log.info("port %s: link %s", self.name, "up" if up else "down")
            if up:
                self._broken_logged = False
                self.came_up = True
        self.on_state()


def _fd_if_present(msg: Message) -> int:
    if len(msg.payload) != P.U64.size:
        return len(msg.fds)  # let the size check report it
    return 0 if P.U64.unpack(msg.payload)[0] & P.VRING_NOFD else 1


_Handler = Callable[[VhostSession, Message], "bytes | None"]
# The descriptors each message carries: a count, a function of the message, or None
# where the handler checks them against the payload (a memory table: one per region).
_HANDLERS: dict[int, tuple[_Handler, int | Callable[[Message], int] | None]] = {
    Req.GET_FEATURES: (VhostSession._get_features, 0),
    Req.SET_FEATURES: (VhostSession._set_features, 0),
    Req.SET_OWNER: (VhostSession._set_owner, 0),
    Req.RESET_OWNER: (VhostSession._reset_owner, 0),
    Req.SET_MEM_TABLE: (VhostSession._set_mem_table, None),
    Req.SET_VRING_NUM: (VhostSession._set_vring_num, 0),
    Req.SET_VRING_ADDR: (VhostSession._set_vring_addr, 0),
    Req.SET_VRING_BASE: (VhostSession._set_vring_base, 0),
    Req.GET_VRING_BASE: (VhostSession._get_vring_base, 0),
    Req.SET_VRING_KICK: (VhostSession._set_vring_kick, _fd_if_present),
    Req.SET_VRING_CALL: (VhostSession._set_vring_call, _fd_if_present),
    Req.SET_VRING_ERR: (VhostSession._set_vring_err, _fd_if_present),
    Req.GET_PROTOCOL_FEATURES: (VhostSession._get_protocol_features, 0),
    Req.SET_PROTOCOL_FEATURES: (VhostSession._set_protocol_features, 0),
    Req.GET_QUEUE_NUM: (VhostSession._get_queue_num, 0),
    Req.SET_VRING_ENABLE: (VhostSession._set_vring_enable, 0),
    Req.NET_SET_MTU: (VhostSession._net_set_mtu, 0),
    Req.SET_BACKEND_REQ_FD: (VhostSession._set_backend_req_fd, 1),
    Req.SET_STATUS: (VhostSession._set_status, 0),
    Req.GET_STATUS: (VhostSession._get_status, 0),
    **migration.HANDLERS,
}
