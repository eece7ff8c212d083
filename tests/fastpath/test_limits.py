"""The limits Python and C share are defined once, in csrc/fastpath.h: the places that
must agree with it do."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from vswitch._fastpath import lib

from vswitch import limits
from vswitch.config import Config, ConfigError, parse_config
from vswitch.config.fields import LEVELS as CONFIG_LEVELS
from vswitch.logs import LEVELS
from vswitch.vhost import protocol as P


def test_limits_come_from_the_header() -> None:
    assert limits.MAX_PORTS == lib.VS_MAX_PORTS
    assert limits.MAX_QUEUES == lib.VS_MAX_QUEUES
    assert limits.MAX_MEM_REGIONS == lib.VS_MAX_MEM_REGIONS
    assert (limits.MIN_MTU, limits.MAX_MTU) == (lib.VS_MIN_MTU, lib.VS_MAX_MTU)
    assert limits.DEFAULT_MAC_LIMIT == lib.VS_DEFAULT_MAC_LIMIT
    assert limits.MAX_FDB_SIZE == lib.VS_MAX_FDB_SIZE


def test_config_takes_the_limits(tmp_path: Path) -> None:
    def load(port: str, switch: str = "") -> Config:
        return parse_config(
            yaml.safe_load(f"{switch}ports:\n  - {{name: p, type: tap, {port}}}\n"),
            base_dir=tmp_path,
        )

    assert load("mtu: 1500").ports[0].mac_limit == lib.VS_DEFAULT_MAC_LIMIT
    load(f"mtu: {lib.VS_MAX_MTU}")
    for bad in (lib.VS_MIN_MTU - 1, lib.VS_MAX_MTU + 1):
        with pytest.raises(ConfigError, match="out of range"):
            load(f"mtu: {bad}")
    load("mtu: 1500", f"switch: {{fdb_size: {lib.VS_MAX_FDB_SIZE}}}\n")
    with pytest.raises(ConfigError, match="out of range"):
        load("mtu: 1500", f"switch: {{fdb_size: {lib.VS_MAX_FDB_SIZE + 1}}}\n")


def test_queue_numbering() -> None:
    # Ring 2k is pair k's guest RX ring, 2k+1 its TX ring, as virtio-net numbers them.
    assert [limits.is_tx_ring(q) for q in range(4)] == [False, True, False, True]


def test_a_full_memory_table_fits_the_fast_path() -> None:
    # Every SET_MEM_TABLE the protocol allows must be mappable by the fast path.
    assert lib.VS_MAX_MEM_REGIONS >= P.MEM_TABLE_MAX_REGIONS


def test_one_list_of_log_levels() -> None:
    assert CONFIG_LEVELS is LEVELS
