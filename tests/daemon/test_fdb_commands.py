"""The MAC table commands on a big table: `fdb-del` looks its one entry up
in C (vs_fdb_get) instead of dumping the table (issue 12)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from vswitch.daemon.commands import commands
from vswitch.errors import ControlError
from vswitch.fastpath import Fastpath
from vswitch.testkit.virtio_driver import lib


async def test_fdb_del_on_a_big_table_does_not_dump_it() -> None:
    fp = Fastpath(65536)
    try:
        port = fp.open_port(1500)
        fp.start_thread(idle_us=100)
        with fp.paused():
            for i in range(65536):
                assert lib.vs_fdb_add(fp._sw, 0x020000000000 + i, 0, port, 1) == 0

        def no_dump() -> Any:
            raise AssertionError("fdb-del dumped the whole MAC table")

        fp.fdb_dump = no_dump  # type: ignore[method-assign]
        state = SimpleNamespace(dp=fp, port_name=lambda p: {port: "vm1"}[p])
        cmds = commands(state)  # type: ignore[arg-type]
        out = await cmds["fdb-del"]("02:00:00:00:01:00")
        assert out == {"mac": "02:00:00:00:01:00", "vlan": 0, "port": "vm1"}
        assert fp.fdb_get(0x020000000100) is None
        assert fp.switch_stats()["fdb_entries"] == 65535
        # The poll thread was parked for one lookup and one removal.
        assert fp.switch_stats()["pause_ns_last"] < 5_000_000
        with pytest.raises(ControlError, match="not in the MAC table"):
            await cmds["fdb-del"]("02:00:00:00:01:00")
    finally:
        fp.close()
