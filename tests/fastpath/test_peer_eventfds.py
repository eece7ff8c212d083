"""A front end racing the switch's non-blocking check on an eventfd it
shares (issue 12): it fills the counter between the switch's poll() and its
write(), so that one write blocks.  The watchdog (vs_watchdog, from
Fastpath's watchdog thread) interrupts it: no call lasts much longer than
the watchdog's period, where without it the write waits for as long as the
front end likes (3 s here, every time it wins)."""

from __future__ import annotations

import contextlib
import os
import threading
import time

from vswitch.fastpath import Fastpath, lib

FULL = (0xFFFFFFFFFFFFFFFE).to_bytes(8, "little")


def test_a_write_blocked_by_a_racing_front_end_is_interrupted() -> None:
    fp = Fastpath(16)
    fp.start_watchdog(0.2)
    fd = os.eventfd(0, 0)  # blocking, as the front end may leave it
    stop = threading.Event()

    def hostile() -> None:
        while not stop.is_set():
            os.read(fd, 8)  # empties the counter: the switch's poll says "writable"...
            if stop.is_set():
                break
            os.write(fd, FULL)  # ...and its write, if it comes now, blocks
            stop.wait(3)

    t = threading.Thread(target=hostile, daemon=True)
    t.start()
    worst = 0.0
    try:
        end = time.monotonic() + 4
        while time.monotonic() < end:
            t0 = time.monotonic()
            assert lib.vs_efd_signal(fp._sw, fd) >= 0
            worst = max(worst, time.monotonic() - t0)
    finally:
        stop.set()
        fp.close()
        # Free the thread wherever it waits (a write on a full counter: empty it; a read
        # on an empty one: add 1), then wait for it: it must be gone before fd is closed,
        # or it could write into whatever file reuses the number.
        os.set_blocking(fd, False)
        deadline = time.monotonic() + 5
        while t.is_alive() and time.monotonic() < deadline:
            with contextlib.suppress(BlockingIOError):
                os.read(fd, 8)
            with contextlib.suppress(BlockingIOError):
                os.eventfd_write(fd, 1)
            t.join(0.05)
    assert not t.is_alive(), "the hostile thread did not end"
    os.close(fd)
    assert worst < 1.5, f"an eventfd write blocked for {worst:.2f} s"
