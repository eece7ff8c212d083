"""The limits a person or a guest can hit, read from csrc/fastpath.h through cffi.

Defined once, in C: Python never restates them (tests/fastpath/test_limits.py checks the places
that must agree, such as the vhost-user protocol's region limit)."""

from __future__ import annotations

from vswitch._fastpath import lib

MAX_PORTS: int = lib.VS_MAX_PORTS
MAX_QUEUES: int = lib.VS_MAX_QUEUES  # rings of a port
MAX_QUEUE_PAIRS: int = lib.VS_MAX_QUEUES // lib.VS_QUEUES_PER_PAIR
MAX_MEM_REGIONS: int = lib.VS_MAX_MEM_REGIONS
MAX_RING_SIZE: int = lib.VS_MAX_RING_SIZE
MIN_MTU: int = lib.VS_MIN_MTU
MAX_MTU: int = lib.VS_MAX_MTU
BURST: int = lib.VS_BURST
MAX_FDB_SIZE: int = lib.VS_MAX_FDB_SIZE
DEFAULT_MAC_LIMIT: int = lib.VS_DEFAULT_MAC_LIMIT  # dynamic MACs one port may own; 0 = no limit
CAP_MIN_RING: int = lib.VS_CAP_MIN_RING
CAP_MAX_RING: int = lib.VS_CAP_MAX_RING

# Ring 2k is queue pair k's guest RX ring (the switch writes it), 2k+1 its TX ring.
QUEUE_RX: int = lib.VS_QUEUE_RX
QUEUE_TX: int = lib.VS_QUEUE_TX
QUEUES_PER_PAIR: int = lib.VS_QUEUES_PER_PAIR


def is_tx_ring(q: int) -> bool:
    """A ring the guest fills and the switch drains (the guest's TX)."""
    return q % QUEUES_PER_PAIR == QUEUE_TX
