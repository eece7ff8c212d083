"""Guest memory that faults (issue 12): a front end that truncates a memory
file the switch has mapped turns the switch's next access into SIGBUS.  The
fast path recovers: the port whose mapping faulted breaks, everyone else
goes on.  A fault anywhere else still kills the process.

(Not named test_fastpath*.py: the sanitizer run replays those under ASan,
which has its own SIGBUS handling.)"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from vswitch.testkit.virtio_driver import (
    Q_RX,
    GuestMemory,
    Switch,
    eth,
    lib,
)

MA, MB = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


@pytest.fixture
def sw() -> Iterator[Switch]:
    with Switch() as s:
        yield s


def test_fault_in_a_destination_breaks_it_and_the_sender_gets_its_buffers_back(
    sw: Switch,
) -> None:
    a = sw.port(mem=GuestMemory.single(seals="unsealable"))
    b = sw.port()
    c = sw.port()
    a.post_rx(16)
    c.post_rx(16)
    a.mem.truncate(0)
    # b floods (a broadcast): the copy into a's RX buffers faults.
    b.send(eth("ff:ff:ff:ff:ff:ff", MB, 64))
    assert a.broken and "SIGBUS" in a.error, a.error
    assert not b.broken and not c.broken
    assert [r.frame for r in c.received()] == [eth("ff:ff:ff:ff:ff:ff", MB, 64)]
    assert len(b.tx.reclaim()) == 1  # its chain came back
    # And on: b and c talk; a is left alone (never touched again).
    b.send(eth(MA, MB, 64), eth("02:00:00:00:00:0c", MB, 64))
    assert len(c.received()) == 2


def test_fault_in_the_sender_breaks_it(sw: Switch) -> None:
    a = sw.port(mem=GuestMemory.single(seals="unsealable"))
    b = sw.port()
    b.post_rx(16)
    a.tx.add_tx(eth(MB, MA, 64), b"\0" * a.hdr_len)
    a.mem.truncate(0)
    assert lib.vs_poll(sw.sw, 32) >= 0
    assert a.broken and "SIGBUS" in a.error
    assert not b.broken and b.received() == []


def test_fault_in_a_control_call_breaks_the_port(sw: Switch) -> None:
    """A ring that becomes ready is read (its used index) and, for an RX ring,
    written (kick suppression) by the control call that readies it: with the
    memory truncated, that faults in the control plane's thread."""
    a = sw.port(mem=GuestMemory.single(seals="unsealable"), setup=False)
    assert a.set_mem() == 0
    assert lib.vs_port_set_features(sw.sw, a.id, a.features) == 0
    a.mem.truncate(0)
    a.setup_queue(Q_RX)  # the last step, enable, readies it
    assert a.broken and "SIGBUS" in a.error, a.error


def test_a_fault_outside_guest_memory_still_kills_the_process() -> None:
    code = textwrap.dedent("""
        import mmap, os
        from vswitch.testkit.virtio_driver import Switch
        with Switch():
            fd = os.memfd_create("not-guest")
            os.ftruncate(fd, 8192)
            m = mmap.mmap(fd, 8192)
            os.ftruncate(fd, 0)
            m[0]  # SIGBUS, in no port's mapping
        print("survived")
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == -7, (r.returncode, r.stdout, r.stderr)  # SIGBUS
    assert "survived" not in r.stdout


def test_a_sealable_unsealed_file_is_refused(sw: Switch) -> None:
    p = sw.port(mem=GuestMemory.single(seals="none"), setup=False)
    assert p.set_mem() == -1  # -EPERM
    q = sw.port(mem=GuestMemory.single(seals="unsealable"), setup=False)
    assert q.set_mem() == 0
