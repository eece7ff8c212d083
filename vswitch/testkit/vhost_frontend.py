"""A test-side vhost-user front end: the mirror image of QEMU's
tests/qtest/vhost-user-test.c, which fakes a back end to test QEMU.

It speaks the protocol to the real server (vswitch/vhost), with guest
memory in a memfd and real eventfds, and plays QEMU's message order, so the
protocol and the data path can be tested without a VM.  It can also send
anything at all: malformed messages are part of what it is for.
"""

from __future__ import annotations

import array
import asyncio
import os
import socket
import struct
from collections.abc import Sequence

from vswitch.vhost import protocol as P
from vswitch.vhost.protocol import PF, F, Req
from vswitch.vhost.transport import recv_message

QEMU_FEATURES = P.bits(
    F.VERSION_1, F.MRG_RXBUF, F.INDIRECT_DESC, F.EVENT_IDX, F.MTU, F.PROTOCOL_FEATURES
)
QEMU_PROTOCOL_FEATURES = P.bits(PF.MQ, PF.REPLY_ACK, PF.MTU, PF.STATUS)


class Frontend:
    def __init__(self, path: str) -> None:
        self.path = path
        self.sock: socket.socket | None = None
        self.acks = False

    async def connect(self, timeout: float = 5.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, self.path)
                self.sock = sock
                return
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.05)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    async def __aenter__(self) -> Frontend:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # Raw messages

    async def send_raw(self, data: bytes, fds: Sequence[int] = ()) -> None:
        assert self.sock is not None
        anc = []
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        # Messages are small: a non-blocking sendmsg completes or fails at once.
        sent = self.sock.sendmsg([data], anc)
        if sent < len(data):
            await asyncio.get_running_loop().sock_sendall(self.sock, data[sent:])

    async def send(
        self, req: int, payload: bytes = b"", fds: Sequence[int] = (), need_reply: bool = False
    ) -> None:
        await self.send_raw(P.encode(req, payload, need_reply=need_reply), fds)

    async def recv(self, timeout: float = 5.0) -> P.Message:
        assert self.sock is not None
        msg = await asyncio.wait_for(recv_message(self.sock), timeout)
        assert msg.flags & P.FLAG_REPLY, f"not a reply: flags {msg.flags:#x}"
        return msg

    async def call(self, req: int, payload: bytes = b"", fds: Sequence[int] = ()) -> P.Message:
        """A GET-style request: always answered."""
        await self.send(req, payload, fds)
        reply = await self.recv()
        assert reply.request == req, f"reply to {reply.name}, want {P.request_name(req)}"
        return reply

    async def set(self, req: int, payload: bytes = b"", fds: Sequence[int] = ()) -> int:
        """A SET-style request; with REPLY_ACK returns the ack (0 = success)."""
        await self.send(req, payload, fds, need_reply=self.acks)
        if not self.acks:
            return 0
        reply = await self.recv()
        assert reply.request == req
        return reply.u64()

    # QEMU's sequence (hw/virtio/vhost-user.c, vhost_dev_init / vhost_dev_start)

    async def negotiate(
        self, features: int = QEMU_FEATURES, protocol_features: int = QEMU_PROTOCOL_FEATURES
    ) -> tuple[int, int]:
        offered = (await self.call(Req.GET_FEATURES)).u64()
        acked_pf = 0
        if offered & features & (1 << F.PROTOCOL_FEATURES):
            offered_pf = (await self.call(Req.GET_PROTOCOL_FEATURES)).u64()
            acked_pf = offered_pf & protocol_features
            await self.set(Req.SET_PROTOCOL_FEATURES, P.U64.pack(acked_pf))
            self.acks = bool(acked_pf & (1 << PF.REPLY_ACK))
            if acked_pf & (1 << PF.MQ):
                await self.call(Req.GET_QUEUE_NUM)
        await self.set(Req.SET_OWNER)
        acked = offered & features
        assert await self.set(Req.SET_FEATURES, P.U64.pack(acked)) == 0
        return acked, acked_pf

    async def set_mem_table(self, regions: Sequence[tuple[int, int, int, int, int]]) -> int:
        """regions: (guest_phys_addr, size, user_addr, mmap_offset, fd)."""
        payload = P.MEM_HEADER.pack(len(regions), 0)
        payload += b"".join(P.MEM_REGION.pack(g, s, u, o) for g, s, u, o, _ in regions)
        return await self.set(Req.SET_MEM_TABLE, payload, [r[4] for r in regions])

    async def setup_vring(
        self,
        index: int,
        num: int,
        desc: int,
        used: int,
        avail: int,
        kick_fd: int,
        call_fd: int,
        base: int = 0,
        enable: bool = True,
    ) -> None:
        assert await self.set(Req.SET_VRING_NUM, P.VRING_STATE.pack(index, num)) == 0
        assert await self.set(Req.SET_VRING_BASE, P.VRING_STATE.pack(index, base)) == 0
        assert (
            await self.set(Req.SET_VRING_ADDR, P.VRING_ADDR.pack(index, 0, desc, used, avail, 0))
            == 0
        )
        assert await self.set(Req.SET_VRING_KICK, P.U64.pack(index), [kick_fd]) == 0
        assert await self.set(Req.SET_VRING_CALL, P.U64.pack(index), [call_fd]) == 0
        if enable:
            assert await self.set(Req.SET_VRING_ENABLE, P.VRING_STATE.pack(index, 1)) == 0

    async def get_vring_base(self, index: int) -> int:
        reply = await self.call(Req.GET_VRING_BASE, P.VRING_STATE.pack(index, 0))
        got_index, base = reply.vring_state()
        assert got_index == index
        return base


def eventfd() -> int:
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def eventfd_read(fd: int) -> int:
    try:
        return struct.unpack("<Q", os.read(fd, 8))[0]
    except BlockingIOError:
        return 0
