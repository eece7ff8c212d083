"""The limits a person or a guest can hit, read from csrc/fastpath.h through cffi.

Defined once, in C: Python never restates them (tests/fastpath/test_limits.py checks the places
that must agree, such as the vhost-user protocol's region limit)."""

from __future__ import annotations

from vswitch._fastpath import lib

MAX_PORTS: int = lib.VS_MAX_PORTS
MAX_QUEUES: int = lib.VS_MAX_QUEUES
MAX_MEM_REGIONS: int = lib.VS_MAX_MEM_REGIONS
MAX_RING_SIZE: int = lib.VS_MAX_RING_SIZE
MIN_MTU: int = lib.VS_MIN_MTU
MAX_MTU: int = lib.VS_MAX_MTU
BURST: int = lib.VS_BURST

# Dynamic MAC addresses one port may own by default (0 = no limit): a policy of the
# configuration, not of the C table, which takes any limit.
DEFAULT_MAC_LIMIT = 4096
