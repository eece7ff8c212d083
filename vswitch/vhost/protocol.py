"""vhost-user wire format (QEMU docs/interop/vhost-user.rst).

Every message is a 12-byte header (request, flags, payload size) followed by
the payload; file descriptors ride along as SCM_RIGHTS on the first byte.
This module only parses and builds bytes: what a message does lives in
session.py.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct("<III")
U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")
MEM_HEADER = struct.Struct("<II")
MEM_REGION = struct.Struct("<QQQQ")
# SET_LOG_BASE: the log's size and offset in its file.
LOG_BASE = struct.Struct("<QQ")
# ADD_MEM_REG / REM_MEM_REG: 8 bytes of padding, then one region.
MEM_SINGLE = struct.Struct("<QQQQQ")
# SET_VRING_ADDR flags: log the used ring's writes at log_guest_addr.
VRING_F_LOG = 0x1

VERSION = 0x1
FLAG_VERSION_MASK = 0x3
FLAG_REPLY = 0x4
FLAG_NEED_REPLY = 0x8

# The largest payload any message we accept can have (a full memory table).
MAX_PAYLOAD = 4096
MAX_FDS = 8
# A SET_MEM_TABLE carries at most this many regions (VHOST_MEMORY_BASELINE_NREGIONS);
# the fast path's VS_MAX_MEM_REGIONS must hold them (tests/fastpath/test_limits.py).
MEM_TABLE_MAX_REGIONS = 8

# SET_VRING_KICK/CALL/ERR payload: vring index in bits 0-7, "no fd" in bit 8.
VRING_IDX_MASK = 0xFF
VRING_NOFD = 0x100


class Req(enum.IntEnum):
    """Front-end requests (vhost-user.rst, "Front-end message types")."""

    GET_FEATURES = 1
    SET_FEATURES = 2
    SET_OWNER = 3
    RESET_OWNER = 4
    SET_MEM_TABLE = 5
    SET_LOG_BASE = 6
    SET_LOG_FD = 7
    SET_VRING_NUM = 8
    SET_VRING_ADDR = 9
    SET_VRING_BASE = 10
    GET_VRING_BASE = 11
    SET_VRING_KICK = 12
    SET_VRING_CALL = 13
    SET_VRING_ERR = 14
    GET_PROTOCOL_FEATURES = 15
    SET_PROTOCOL_FEATURES = 16
    GET_QUEUE_NUM = 17
    SET_VRING_ENABLE = 18
    SEND_RARP = 19
    NET_SET_MTU = 20
    SET_BACKEND_REQ_FD = 21
    IOTLB_MSG = 22
    SET_VRING_ENDIAN = 23
    GET_CONFIG = 24
    SET_CONFIG = 25
    CREATE_CRYPTO_SESSION = 26
    CLOSE_CRYPTO_SESSION = 27
    POSTCOPY_ADVISE = 28
    POSTCOPY_LISTEN = 29
    POSTCOPY_END = 30
    GET_INFLIGHT_FD = 31
    SET_INFLIGHT_FD = 32
    GPU_SET_SOCKET = 33
    RESET_DEVICE = 34
    VRING_KICK = 35
    GET_MAX_MEM_SLOTS = 36
    ADD_MEM_REG = 37
    REM_MEM_REG = 38
    SET_STATUS = 39
    GET_STATUS = 40


def request_name(request: int) -> str:
    try:
        return Req(request).name
    except ValueError:
        return f"request {request}"


class F(enum.IntEnum):
    """Virtio and vhost feature bits (virtio 1.2 5.1.3 and 6; vhost-user.rst)."""

    CSUM = 0
    GUEST_CSUM = 1
    MTU = 3
    MAC = 5
    GUEST_TSO4 = 7
    GUEST_TSO6 = 8
    GUEST_ECN = 9
    GUEST_UFO = 10
    HOST_TSO4 = 11
    HOST_TSO6 = 12
    HOST_ECN = 13
    HOST_UFO = 14
    MRG_RXBUF = 15
    STATUS = 16
    CTRL_VQ = 17
    CTRL_RX = 18
    CTRL_VLAN = 19
    GUEST_ANNOUNCE = 21
    MQ = 22
    NOTIFY_ON_EMPTY = 24
    LOG_ALL = 26
    ANY_LAYOUT = 27
    INDIRECT_DESC = 28
    EVENT_IDX = 29
    PROTOCOL_FEATURES = 30
    VERSION_1 = 32
    ACCESS_PLATFORM = 33
    RING_PACKED = 34
    IN_ORDER = 35


class PF(enum.IntEnum):
    """vhost-user protocol feature bits."""

    MQ = 0
    LOG_SHMFD = 1
    RARP = 2
    REPLY_ACK = 3
    MTU = 4
    BACKEND_REQ = 5
    CROSS_ENDIAN = 6
    CRYPTO_SESSION = 7
    PAGEFAULT = 8
    CONFIG = 9
    BACKEND_SEND_FD = 10
    HOST_NOTIFIER = 11
    INFLIGHT_SHMFD = 12
    RESET_DEVICE = 13
    INBAND_NOTIFICATIONS = 14
    CONFIGURE_MEM_SLOTS = 15
    STATUS = 16


def bits(*names: enum.IntEnum) -> int:
    mask = 0
    for n in names:
        mask |= 1 << n
    return mask


def feature_names(mask: int, kind: type[enum.IntEnum]) -> list[str]:
    names = []
    for bit in range(64):
        if mask & (1 << bit):
            try:
                names.append(kind(bit).name)
            except ValueError:
                names.append(f"bit{bit}")
    return names


# What the switch implements and therefore offers; never more (QEMU uses
# whatever is offered and acked).
# CTRL_VQ and MQ: QEMU (and DPDK's virtio-user) runs the control queue itself and turns the
# guest's queue-pair changes into SET_VRING_ENABLE; the rings of every pair are ours.
OFFERED_FEATURES = bits(
    F.VERSION_1,
    F.MRG_RXBUF,
    F.INDIRECT_DESC,
    F.EVENT_IDX,
    F.GUEST_ANNOUNCE,
    F.MTU,
    F.IN_ORDER,
    F.CTRL_VQ,
    F.MQ,
    F.PROTOCOL_FEATURES,
    F.LOG_ALL,
)
OFFERED_PROTOCOL_FEATURES = bits(
    PF.MQ,
    PF.LOG_SHMFD,
    PF.RARP,
    PF.REPLY_ACK,
    PF.MTU,
    PF.BACKEND_REQ,
    PF.CONFIGURE_MEM_SLOTS,
    PF.STATUS,
)


def offered_features(queue_pairs: int) -> int:
    """What a port of that many queue pairs offers: MQ only with more than one."""
    return OFFERED_FEATURES if queue_pairs > 1 else OFFERED_FEATURES & ~bits(F.MQ)


class ProtocolError(Exception):
    """A message that breaks the protocol: the connection is closed."""


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int] = field(default_factory=list)

    @property
    def name(self) -> str:
        return request_name(self.request)

    @property
    def need_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def u64(self) -> int:
        self.expect_size(U64.size)
        return U64.unpack(self.payload)[0]

    def vring_state(self) -> tuple[int, int]:
        self.expect_size(VRING_STATE.size)
        return VRING_STATE.unpack(self.payload)

    def expect_size(self, size: int) -> None:
        if len(self.payload) != size:
            raise ProtocolError(f"{self.name}: payload is {len(self.payload)} bytes, want {size}")


@dataclass(frozen=True)
class VringAddr:
    index: int
    flags: int
    desc: int
    used: int
    avail: int
    log: int


def parse_vring_addr(msg: Message) -> VringAddr:
    msg.expect_size(VRING_ADDR.size)
    return VringAddr(*VRING_ADDR.unpack(msg.payload))


@dataclass(frozen=True)
class MemRegion:
    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int


def parse_mem_table(msg: Message) -> list[MemRegion]:
    if len(msg.payload) < MEM_HEADER.size:
        raise ProtocolError(f"{msg.name}: payload of {len(msg.payload)} bytes is too short")
    n, _padding = MEM_HEADER.unpack_from(msg.payload)
    if not 1 <= n <= MEM_TABLE_MAX_REGIONS:
        raise ProtocolError(f"{msg.name}: {n} regions (1 to {MEM_TABLE_MAX_REGIONS} supported)")
    # QEMU sends the full 8-slot array; the count says how many are meant.
    if len(msg.payload) < MEM_HEADER.size + n * MEM_REGION.size:
        raise ProtocolError(f"{msg.name}: payload too short for {n} regions")
    if len(msg.fds) != n:
        raise ProtocolError(f"{msg.name}: {n} regions but {len(msg.fds)} file descriptors")
    return [
        MemRegion(*MEM_REGION.unpack_from(msg.payload, MEM_HEADER.size + i * MEM_REGION.size))
        for i in range(n)
    ]


def parse_mem_single(msg: Message) -> MemRegion:
    """ADD_MEM_REG / REM_MEM_REG: one region after 8 bytes of padding."""
    msg.expect_size(MEM_SINGLE.size)
    _padding, *region = MEM_SINGLE.unpack(msg.payload)
    return MemRegion(*region)


def parse_log_base(msg: Message) -> tuple[int, int]:
    """SET_LOG_BASE: (size, offset) of the log in the file that comes with it."""
    msg.expect_size(LOG_BASE.size)
    size, offset = LOG_BASE.unpack(msg.payload)
    return size, offset


def rarp_frame(mac: bytes) -> bytes:
    """The announcement QEMU itself sends for a migrated guest (net/announce.c):
    a broadcast RARP "reverse request" (ethertype 0x8035) from the guest's MAC,
    padded to the 60-byte minimum, so switches on the way learn where it went."""
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 3) + mac + bytes(4) + mac + bytes(4)
    frame = b"\xff" * 6 + mac + struct.pack("!H", 0x8035) + arp
    return frame.ljust(60, b"\0")


def encode(
    request: int, payload: bytes = b"", *, reply: bool = False, need_reply: bool = False
) -> bytes:
    flags = VERSION | (FLAG_REPLY if reply else 0) | (FLAG_NEED_REPLY if need_reply else 0)
    return HEADER.pack(request, flags, len(payload)) + payload


def reply_u64(request: int, value: int) -> bytes:
    return encode(request, U64.pack(value), reply=True)


def reply_vring_state(request: int, index: int, num: int) -> bytes:
    return encode(request, VRING_STATE.pack(index, num), reply=True)
