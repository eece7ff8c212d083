"""The limits Python and C share are defined once, in csrc/fastpath.h: the places that
must agree with it do."""

from __future__ import annotations

from vswitch._fastpath import lib

from vswitch import limits
from vswitch.config.fields import LEVELS as CONFIG_LEVELS
from vswitch.logs import LEVELS
from vswitch.vhost import protocol as P


def test_limits_come_from_the_header() -> None:
    assert limits.MAX_PORTS == lib.VS_MAX_PORTS
    assert limits.MAX_QUEUES == lib.VS_MAX_QUEUES
    assert limits.MAX_MEM_REGIONS == lib.VS_MAX_MEM_REGIONS
    assert (limits.MIN_MTU, limits.MAX_MTU) == (lib.VS_MIN_MTU, lib.VS_MAX_MTU)


def test_a_full_memory_table_fits_the_fast_path() -> None:
    # Every SET_MEM_TABLE the protocol allows must be mappable by the fast path.
    assert lib.VS_MAX_MEM_REGIONS >= P.MEM_TABLE_MAX_REGIONS


def test_one_list_of_log_levels() -> None:
    assert CONFIG_LEVELS is LEVELS
