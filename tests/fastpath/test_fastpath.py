"""The C fast path as a switch: forwarding, flooding, learning, the MAC table,
frame size limits and counters, through cffi with a test-side virtio driver.

Ring-level behaviour (buffer layouts, notifications, malformed rings) is in
test_fastpath_ring.py.  VSWITCH_FASTPATH_DIR runs all of it against another
build of the module (test_fastpath_sanitizers.py uses it for ASan/UBSan).
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import (
    F_MRG_RXBUF,
    F_VERSION_1,
    MODERN,
    Q_RX,
    Q_TX,
    GuestMemory,
    Port,
    Switch,
    eth,
    features_id,
    ffi,
    lib,
    mac,
    mac_int,
    net_hdr,
    run_bounded,
    wait_for,
)

BCAST = "ff:ff:ff:ff:ff:ff"
MA, MB, MC, MD = (f"02:00:00:00:00:0{c}" for c in "abcd")
UNKNOWN = "02:00:00:00:99:99"


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def ports(sw: Switch, n: int, rx: int = 32, **kw: object) -> list[Port]:
    out = []
    for _ in range(n):
        p = sw.port(**kw)  # type: ignore[arg-type]
        p.post_rx(rx)
        out.append(p)
    return out


def announce(sw: Switch, *pairs: tuple[Port, str]) -> None:
    """Each port sends a broadcast from its MAC; then everything is drained."""
    for p, m in pairs:
        assert p.send(eth(BCAST, m)) == 1
    drain(sw)


def drain(sw: Switch) -> None:
    for p in sw.ports:
        p.received()
        p.tx.reclaim()
        p.calls(Q_RX)
        p.calls(Q_TX)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


MEMORIES = {
    "one-region": lambda: GuestMemory.single(),
    "mmap-offset": lambda: GuestMemory.single(file_off=0x23000),
    # Not page-aligned: the switch maps from the page below and adds the rest.
    "unaligned-mmap-offset": lambda: GuestMemory.single(file_off=0x23010),
    "three-regions": GuestMemory.three,
}


@pytest.mark.parametrize("layout", list(MEMORIES))
def test_unicast_to_learned_port(sw: Switch, layout: str) -> None:
    mems = [MEMORIES[layout]() for _ in range(3)]
    try:
        a, b, c = (sw.port(mem=m) for m in mems)
        for p in (a, b, c):
            p.post_rx(8)
        announce(sw, (b, MB), (c, MC))
        before = {p.id: p.stats() for p in (a, b, c)}
        frame = eth(MB, MA, 200)

        head = a.tx.add_tx(frame, net_hdr(12))
        assert a.kick() == 1

        got = b.received()
        assert [r.frame for r in got] == [frame]
        r = got[0]
        assert r.hdr == net_hdr(12, num_buffers=1)
        assert [u.len for u in r.buffers] == [12 + len(frame)]
        assert c.received() == [] and a.received() == []
        assert b.calls(Q_RX) == 1 and c.calls(Q_RX) == 0
        # The guest's TX buffer comes back, with its own interrupt.
        assert [(u.id, u.len) for u in a.tx.reclaim()] == [(head, 0)]
        assert a.calls(Q_TX) == 1
        assert delta(a.stats(), before[a.id]) == {
            "rx_packets": 1, "rx_bytes": 200, "kicks": 1, "calls": 1, "fdb_learned": 1,
            "fdb_count": 1, "descs": 1,
        }
        assert delta(b.stats(), before[b.id]) == {"tx_packets": 1, "tx_bytes": 200, "calls": 1,
                                                  "descs": 1}
        assert delta(c.stats(), before[c.id]) == {}
        assert sw.fdb()[mac_int(MA)] == (a.id, 0)
    finally:
        sw.close()
        for m in mems:
            m.close()


def test_tx_buffers_returned_in_order(sw: Switch) -> None:
    a, b = ports(sw, 2)
    heads = [a.tx.add_tx(eth(BCAST, MA, 60 + i), net_hdr(12)) for i in range(5)]
    assert a.kick() == 5
    used = a.tx.reclaim()
    assert [(u.id, u.len) for u in used] == [(h, 0) for h in heads]
    assert len(b.frames()) == 5


@pytest.mark.parametrize("dst", [UNKNOWN, BCAST, "01:00:5e:00:00:fb", "33:33:00:00:00:01"])
def test_flood_to_every_other_up_port(sw: Switch, dst: str) -> None:
    a, b, c = ports(sw, 3)
    down = sw.port(setup=False)  # opened, rings never set up
    half = sw.port()  # RX ring stopped: cannot take frames
    lib.vs_vring_stop(sw.sw, half.id, Q_RX)
    frame = eth(dst, MA, 100)

    assert a.send(frame) == 1

    assert b.frames() == [frame] and c.frames() == [frame]
    assert a.frames() == [] and half.frames() == []
    for p in (b, c):
        assert p.stats()["tx_flood"] == 1 and p.stats()["tx_packets"] == 1
    for p in (a, down, half):
        st = p.stats()
        assert st["tx_flood"] == 0 and st["tx_packets"] == 0 and st["tx_drop_port_down"] == 0
    assert sw.stats()["flooded"] == 1


def test_learned_destination_down_is_dropped_not_flooded(sw: Switch) -> None:
    a, b, c = ports(sw, 3)
    announce(sw, (b, MB))
    assert lib.vs_vring_stop(sw.sw, b.id, Q_RX) >= 0
    assert not b.up

    assert a.send(eth(MB, MA)) == 1

    assert b.stats()["tx_drop_port_down"] == 1
    assert c.frames() == [] and c.stats()["tx_flood"] == 1  # only the announce
    assert sw.stats()["flooded"] == 1


def test_frame_to_own_port_goes_nowhere(sw: Switch) -> None:
    a, b = ports(sw, 2)
    announce(sw, (a, MA))
    assert a.send(eth(MA, MD)) == 1  # MA lives behind a: hairpin, dropped
    assert a.frames() == [] and b.frames() == []
    assert a.stats()["rx_packets"] == 2


def test_learning_and_fdb_dump(sw: Switch) -> None:
    a, b, _c = ports(sw, 3)
    announce(sw, (a, MA), (b, MB), (a, MD))
    assert sw.fdb() == {mac_int(MA): (a.id, 0), mac_int(MB): (b.id, 0), mac_int(MD): (a.id, 0)}
    assert a.stats()["fdb_learned"] == 2 and a.stats()["fdb_count"] == 2
    assert b.stats()["fdb_learned"] == 1
    assert sw.stats()["fdb_entries"] == 3
    out = ffi.new("struct vs_fdb_entry[]", 2)
    assert lib.vs_fdb_dump(sw.sw, out, 2) == 2  # bounded by max
    assert out[0].age == 0 and out[0].vlan == 0


def test_group_and_zero_sources_are_not_learned(sw: Switch) -> None:
    a, b = ports(sw, 2)
    announce(sw, (a, "01:00:5e:00:00:01"), (a, "00:00:00:00:00:00"), (a, BCAST))
    assert sw.fdb() == {}
    assert b.stats()["tx_packets"] == 3


def test_station_that_moves_is_relearned_at_once(sw: Switch) -> None:
    a, b, c = ports(sw, 3)
    announce(sw, (a, MA))
    assert c.send(eth(MA, MC)) == 1
    assert a.frames() == [eth(MA, MC)] and b.frames() == []

    announce(sw, (b, MA))  # MA now speaks from b
    assert sw.fdb()[mac_int(MA)] == (b.id, 0)
    assert b.stats()["fdb_moved"] == 1 and b.stats()["fdb_count"] == 1
    assert a.stats()["fdb_count"] == 0
    assert c.send(eth(MA, MC, 70)) == 1
    assert b.frames() == [eth(MA, MC, 70)] and a.frames() == []


def test_aging_removes_dynamic_keeps_static(sw: Switch) -> None:
    a, b = ports(sw, 2)
    announce(sw, (a, MA), (b, MB))
    assert lib.vs_fdb_add(sw.sw, mac_int(MC), 0, b.id, 1) == 0
    assert lib.vs_fdb_age(sw.sw, 3600) == 0
    assert len(sw.fdb()) == 3
    assert lib.vs_fdb_age(sw.sw, 0) == 2
    assert sw.fdb() == {mac_int(MC): (b.id, lib.VS_FDB_STATIC)}
    assert sw.stats()["fdb_aged"] == 2
    assert a.stats()["fdb_count"] == 0 and b.stats()["fdb_count"] == 0


def test_flush_per_port_and_all(sw: Switch) -> None:
    a, b, c = ports(sw, 3)
    announce(sw, (a, MA), (a, MD), (b, MB), (c, MC))
    assert lib.vs_fdb_add(sw.sw, mac_int(UNKNOWN), 0, a.id, 1) == 0
    assert lib.vs_fdb_flush(sw.sw, a.id, 0) == 2
    assert set(sw.fdb()) == {mac_int(MB), mac_int(MC), mac_int(UNKNOWN)}
    assert lib.vs_fdb_flush(sw.sw, -1, 0) == 2
    assert sw.fdb() == {mac_int(UNKNOWN): (a.id, lib.VS_FDB_STATIC)}
    assert lib.vs_fdb_flush(sw.sw, -1, 1) == 1
    assert sw.fdb() == {} and sw.stats()["fdb_entries"] == 0


def test_static_entry_is_not_overwritten_by_learning(sw: Switch) -> None:
    a, b, c = ports(sw, 3)
    assert lib.vs_fdb_add(sw.sw, mac_int(MC), 0, c.id, 1) == 0
    announce(sw, (a, MC))  # a spoofs c's address
    assert sw.fdb() == {mac_int(MC): (c.id, lib.VS_FDB_STATIC)}
    assert a.stats()["fdb_moved"] == 0 and a.stats()["fdb_learned"] == 0
    assert b.send(eth(MC, MB)) == 1
    assert c.frames() == [eth(MC, MB)] and a.frames() == []


def test_fdb_del(sw: Switch) -> None:
    a, _b = ports(sw, 2)
    announce(sw, (a, MA))
    assert lib.vs_fdb_del(sw.sw, mac_int(MA), 0) == 0
    assert lib.vs_fdb_del(sw.sw, mac_int(MA), 0) < 0
    assert sw.fdb() == {} and a.stats()["fdb_count"] == 0


@pytest.mark.parametrize(("mac_", "vlan"), [(1 << 48, 0), (1, 4096)])
def test_fdb_add_rejects_bad_keys(sw: Switch, mac_: int, vlan: int) -> None:
    assert lib.vs_fdb_add(sw.sw, mac_, vlan, 0, 1) < 0
    assert sw.fdb() == {}


def test_fdb_add_for_a_port_not_open(sw: Switch) -> None:
    """An entry for a port that is not open either is refused or is counted
    consistently once the port opens: fdb_count never wraps."""
    rc = lib.vs_fdb_add(sw.sw, mac_int(MD), 0, 7, 0)
    p = sw.port(7)
    if rc == 0:
        lib.vs_fdb_flush(sw.sw, -1, 0)
    assert p.stats()["fdb_count"] == 0
    assert sw.fdb() == {}


def test_fdb_full_still_floods() -> None:
    with Switch(fdb_size=2) as sw:
        a, b, c = ports(sw, 3)
        announce(sw, (a, MA), (b, MB), (c, MC))
        st = sw.stats()
        assert st["fdb_capacity"] == 2 and st["fdb_entries"] == 2
        assert st["fdb_full"] == 1
        assert mac_int(MC) not in sw.fdb()
        assert a.send(eth(MC, MA)) == 1  # unknown: flooded, still delivered
        assert c.frames() == [eth(MC, MA)] and b.frames() == [eth(MC, MA)]
        assert lib.vs_fdb_add(sw.sw, mac_int(MD), 0, a.id, 1) < 0


def test_mac_limit_per_port(sw: Switch) -> None:
    a, b = ports(sw, 2)
    assert lib.vs_port_set_mac_limit(sw.sw, a.id, 2) == 0
    announce(sw, (a, MA), (a, MC), (a, MD))
    assert set(sw.fdb()) == {mac_int(MA), mac_int(MC)}
    assert a.stats()["fdb_limit"] == 1 and a.stats()["fdb_count"] == 2
    assert b.stats()["tx_packets"] == 3  # frames still go out
    announce(sw, (b, MB))  # other ports are unaffected
    assert mac_int(MB) in sw.fdb()


def test_close_port_forgets_its_addresses(sw: Switch) -> None:
    a, b = ports(sw, 2)
    announce(sw, (a, MA), (b, MB))
    assert lib.vs_fdb_add(sw.sw, mac_int(MD), 0, b.id, 1) == 0
    lib.vs_port_close(sw.sw, b.id)
    assert sw.fdb() == {mac_int(MA): (a.id, 0)}
    assert b.state == 0
    assert a.send(eth(MB, MA)) == 1  # unknown again, nobody to flood to
    assert sw.stats()["flooded"] == 3


# Frame sizes and headers


@pytest.mark.parametrize(
    ("size", "counter"),
    [(0, "rx_drop_runt"), (13, "rx_drop_runt"), (14, None), (1518, None),
     (1519, "rx_drop_too_long"), (4000, "rx_drop_too_long")],
)
def test_frame_size_limits(sw: Switch, size: int, counter: str | None) -> None:
    a, b = ports(sw, 2, rx=4, num=64)
    b.post_rx(4, 9216)
    frame = eth(BCAST, MA, size)
    hdr = net_hdr(12)
    a.tx.add_chain([(hdr, False)] + [(frame[i:i + 1000], False)
                                     for i in range(0, len(frame), 1000)])
    got = a.kick()
    st = a.stats()
    if counter is None:
        assert got == 1 and b.frames() == [frame]
        assert st["rx_packets"] == 1 and st["rx_bytes"] == size
    else:
        assert got == 0 and b.frames() == [] and st[counter] == 1
        assert st["rx_packets"] == 0 and sw.fdb() == {}
        # The buffer is returned all the same, and the port goes on.
        assert [u.len for u in a.tx.reclaim()] == [0]
        assert a.send(eth(BCAST, MA)) == 1 and len(b.frames()) == 1
    assert not a.broken


def test_jumbo_mtu_and_egress_mtu(sw: Switch) -> None:
    a = sw.port(mtu=9000)
    b = sw.port(mtu=1500)
    c = sw.port(mtu=9000)
    for p in (a, b, c):
        p.post_rx(4, 9100)
    big = eth(BCAST, MA, 9018)
    assert a.send(big, split=[4000, 8000]) == 1
    assert c.frames() == [big]
    assert b.frames() == [] and b.stats()["tx_drop_too_long"] == 1
    assert a.send(eth(BCAST, MA, 9019), split=[4000, 8000]) == 0
    assert a.stats()["rx_drop_too_long"] == 1
    assert lib.vs_port_set_mtu(sw.sw, b.id, 9000) == 0
    assert a.send(big, split=[4000, 8000]) == 1
    assert b.frames() == [big]
    for bad in (0, lib.VS_MIN_MTU - 1, lib.VS_MAX_MTU + 1):
        assert lib.vs_port_set_mtu(sw.sw, b.id, bad) < 0


@pytest.mark.parametrize("hdr", [net_hdr(12, flags=1), net_hdr(12, gso_type=1),
                                 net_hdr(12, gso_type=4), b"\0" * 11])
def test_header_asking_for_offloads_is_dropped(sw: Switch, hdr: bytes) -> None:
    a, b = ports(sw, 2)
    frame = eth(BCAST, MA)
    if len(hdr) < 12:  # the chain ends inside the header
        a.tx.add_chain([(hdr, False)])
    else:
        a.tx.add_tx(frame, hdr)
    assert a.kick() == 0
    assert a.stats()["rx_drop_bad_hdr"] == 1 and b.frames() == []
    assert not a.broken
    assert a.send(frame) == 1 and b.frames() == [frame]


def test_port_open_rejects_bad_arguments(sw: Switch) -> None:
    assert lib.vs_port_open(sw.sw, lib.VS_MAX_PORTS, lib.VS_PORT_VHOST, 1500) < 0
    assert lib.vs_port_open(sw.sw, 3, 99, 1500) < 0
    assert lib.vs_port_open(sw.sw, 3, lib.VS_PORT_VHOST, 10) < 0
    assert lib.vs_port_open(sw.sw, 3, lib.VS_PORT_VHOST, 1500) == 0
    assert lib.vs_port_open(sw.sw, 3, lib.VS_PORT_VHOST, 1500) < 0
    assert lib.vs_port_state(sw.sw, 3) == lib.VS_STATE_OPEN
    assert lib.vs_port_state(sw.sw, 4) == 0
    assert lib.vs_vring_set_num(sw.sw, 4, 0, 256) < 0
    assert lib.vs_vring_set_num(sw.sw, 3, lib.VS_MAX_QUEUES, 256) < 0
    assert lib.vs_port_kick(sw.sw, 3, lib.VS_MAX_QUEUES) < 0
    assert lib.vs_port_kick(sw.sw, 4, 1) < 0


def test_counters_agree_both_ways(sw: Switch) -> None:
    a, b = ports(sw, 2, rx=64)
    announce(sw, (a, MA), (b, MB))
    sizes = [60, 64, 128, 511, 1000, 1514]
    for s in sizes:
        assert a.send(eth(MB, MA, s)) == 1
        assert b.send(eth(MA, MB, s + 1)) == 1
    assert [len(f) for f in b.frames()] == sizes
    assert [len(f) for f in a.frames()] == [s + 1 for s in sizes]
    sa, sb = a.stats(), b.stats()
    # Each side also sent, and the other received, one 64-byte announce.
    assert sa["rx_packets"] == sb["tx_packets"] == len(sizes) + 1
    assert sa["rx_bytes"] == sb["tx_bytes"] == sum(sizes) + 64
    assert sb["rx_bytes"] == sa["tx_bytes"] == sum(sizes) + len(sizes) + 64


def test_poll_serves_every_port_without_kicks(sw: Switch) -> None:
    a, b, c = ports(sw, 3)
    a.send(eth(BCAST, MA), eth(BCAST, MA, 65), kick=False)
    b.send(eth(BCAST, MB), kick=False)
    assert sw.poll() == 3
    assert len(c.frames()) == 3
    assert a.stats()["kicks"] == 0
    assert sw.poll() == 0


@pytest.mark.parametrize("features", [MODERN, F_VERSION_1, F_MRG_RXBUF, 0], ids=features_id)
def test_feature_sets_interoperate(sw: Switch, features: int) -> None:
    """A legacy guest and a modern one on the same switch: each gets its own
    header size, the frame is the same."""
    a = sw.port(features=features)
    b = sw.port(features=MODERN)
    for p in (a, b):
        p.post_rx(4)
    f1, f2 = eth(BCAST, MA, 99), eth(BCAST, MB, 101)
    assert a.send(f1) == 1 and b.send(f2) == 1
    assert b.frames() == [f1]
    got = a.received()
    assert [r.frame for r in got] == [f2]
    assert len(got[0].hdr) == (12 if features & (F_MRG_RXBUF | F_VERSION_1) else 10)
    assert got[0].buffers[0].len == len(got[0].hdr) + len(f2)


def test_macs_helper_roundtrip() -> None:
    assert mac_int(MA) == 0x02000000000A and mac(MA)[5] == 0x0A


# The poll thread (vs_run).  Each scenario runs in a forked child: a loop
# that never parks or never returns must fail the test, not hang the suite.


def _send_kicked(p: Port, frame: bytes) -> None:
    """What a guest does: add a frame and write the kick eventfd (the poll
    thread reads it, not vs_port_kick)."""
    p.tx.add_tx(frame, net_hdr(p.hdr_len))
    os.eventfd_write(p.kick_fds[Q_TX], 1)


class _Runner:
    def __init__(self, sw: Switch, idle_us: int) -> None:
        self.sw = sw
        self.rc: int | None = None
        self.thread = threading.Thread(target=self._run, args=(idle_us,), daemon=True)
        self.thread.start()

    def _run(self, idle_us: int) -> None:
        self.rc = lib.vs_run(self.sw.sw, idle_us, 1000)

    def stop(self) -> int | None:
        lib.vs_run_stop(self.sw.sw)
        self.thread.join(3)
        assert not self.thread.is_alive(), "vs_run did not return after vs_run_stop"
        return self.rc


def _poll_thread_scenario() -> None:
    with Switch() as sw:
        a, b, c = ports(sw, 3)
        run = _Runner(sw, idle_us=2000)
        _send_kicked(a, eth(BCAST, MA, 70))
        assert wait_for(lambda: b.rx.pending_used() == 1), "busy loop forwarded nothing"
        assert wait_for(lambda: sw.stats()["poll_sleeps"] >= 1), "never went to sleep when idle"
        sleeps = sw.stats()["poll_sleeps"]
        _send_kicked(a, eth(BCAST, MA, 71))  # the kick wakes it from epoll
        assert wait_for(lambda: b.rx.pending_used() == 2), "a kick did not wake the loop"
        assert wait_for(lambda: sw.stats()["poll_sleeps"] > sleeps)
        assert a.stats()["kicks"] >= 1

        # Returns once parked: the control plane owns the switch.
        assert lib.vs_run_pause(sw.sw, 5000) == 0
        _send_kicked(a, eth(BCAST, MA, 72))
        time.sleep(0.05)
        assert b.rx.pending_used() == 2, "frames moved while the loop was parked"
        assert lib.vs_port_kick(sw.sw, c.id, Q_TX) == 0  # other calls are allowed now
        lib.vs_run_resume(sw.sw)
        assert wait_for(lambda: b.rx.pending_used() == 3), "nothing moved after resume"
        assert [len(f) for f in b.frames()] == [70, 71, 72]
        assert run.stop() == 0
        assert sw.stats()["poll_loops"] > 0


def test_poll_thread_forwards_sleeps_and_parks() -> None:
    err = run_bounded(_poll_thread_scenario, timeout=20)
    assert err is None, err


def _poll_thread_restart_scenario() -> None:
    with Switch() as sw:
        a, b = ports(sw, 2)
        assert _Runner(sw, idle_us=100).stop() == 0
        run = _Runner(sw, idle_us=100)
        time.sleep(0.05)
        assert run.thread.is_alive(), f"vs_run returned {run.rc} at once after a restart"
        _send_kicked(a, eth(BCAST, MA, 80))
        assert wait_for(lambda: b.rx.pending_used() == 1), "a restarted loop forwards nothing"
        assert lib.vs_run_pause(sw.sw, 5000) == 0
        lib.vs_run_resume(sw.sw)
        assert run.stop() == 0


def test_poll_thread_can_be_started_again_after_stop() -> None:
    err = run_bounded(_poll_thread_restart_scenario, timeout=20)
    assert err is None, err


def _poll_thread_busy_scenario() -> None:
    with Switch() as sw:
        ports(sw, 1)
        run = _Runner(sw, idle_us=100)
        assert wait_for(lambda: sw.stats()["poll_loops"] > 0)
        assert lib.vs_run(sw.sw, 100, 1000) == -errno.EBUSY
        assert run.stop() == 0


def test_second_poll_thread_is_refused() -> None:
    err = run_bounded(_poll_thread_busy_scenario, timeout=20)
    assert err is None, err
