"""Network namespaces, named as iproute2 names them (/run/netns/NAME).

Namespaces are entered per thread with setns(2): only a dedicated short-lived thread ever
changes namespace (never the event loop's, never a pool thread), so nothing else is affected
and nothing forks (pyroute2's own netns support forks a helper, which a process with a C poll
thread should not do).  Child processes join one between fork and exec (`netns_preexec`).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vswitch.netsys.libc import check as _call
from vswitch.netsys.libc import libc as _libc

T = TypeVar("T")

# <sched.h>, <sys/mount.h>, <linux/nsfs.h>
CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703

NETNS_RUN_DIR = Path("/run/netns")


def netns_path(name: str) -> Path:
    return NETNS_RUN_DIR / name


def netns_exists(name: str) -> bool:
    """True when /run/netns/NAME is a mounted network namespace (a leftover empty file is not)."""
    try:
        fd = os.open(netns_path(name), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def list_netns() -> list[str]:
    try:
        return sorted(p.name for p in NETNS_RUN_DIR.iterdir())
    except FileNotFoundError:
        return []


def _in_thread(fn: Callable[[], T], name: str) -> T:
    """Run fn in a fresh thread (which may change its namespace and then dies)."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=run, name=name, daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def _enter(netns: str) -> None:
    """setns(2) the calling thread into a named network namespace."""
    try:
        fd = os.open(netns_path(netns), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise OSError(errno.ENOENT, f"network namespace {netns} does not exist") from None
    try:
        _call(_libc.setns(fd, CLONE_NEWNET), f"entering network namespace {netns}")
    finally:
        os.close(fd)


def run_in_netns(netns: str | None, fn: Callable[[], T]) -> T:
    """fn() with the network namespace `netns` (None: ours).  Blocking: use to_thread."""
    if netns is None:
        return fn()

    def inside() -> T:
        _enter(netns)
        return fn()

    return _in_thread(inside, f"netns {netns}")


def _share_run_dir() -> None:
    """As iproute2 does: /run/netns is a shared mount, so namespace mounts propagate."""
    NETNS_RUN_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    d = bytes(NETNS_RUN_DIR)
    if _libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None) == 0:
        return
    if ctypes.get_errno() != errno.EINVAL:  # EINVAL: not a mount point yet
        _call(-1, f"making {NETNS_RUN_DIR} shared")
    _call(_libc.mount(d, d, b"none", MS_BIND | MS_REC, None), f"bind-mounting {NETNS_RUN_DIR}")
    _call(_libc.mount(b"", d, b"none", MS_SHARED | MS_REC, None), f"making {NETNS_RUN_DIR} shared")


def create_netns(name: str, lo_up: bool = True) -> None:
    """Create the named network namespace (like `ip netns add`), with lo up.

    FileExistsError if the name is taken.  Blocking."""
    _share_run_dir()
    path = netns_path(name)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)

    def inside() -> None:
        _call(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
        _call(
            _libc.mount(b"/proc/thread-self/ns/net", bytes(path), b"none", MS_BIND, None),
            f"mounting {path}",
        )
        if lo_up:
            from pyroute2 import IPRoute

            with IPRoute() as ipr:
                ipr.link("set", index=1, state="up")

    try:
        _in_thread(inside, f"netns {name}")
    except BaseException:
        delete_netns(name)
        raise


def delete_netns(name: str) -> bool:
    """Remove the named namespace (like `ip netns del`); False if it was not there."""
    path = netns_path(name)
    _libc.umount2(bytes(path), MNT_DETACH)  # fails harmlessly on a leftover plain file
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True


def netns_pids(name: str) -> list[int]:
    """Processes whose network namespace is the named one."""
    try:
        ino = os.stat(netns_path(name)).st_ino
    except OSError:
        return []
    target = f"net:[{ino}]"
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.readlink(d / "ns" / "net") == target:
                out.append(int(d.name))
    return out


def _enter_netns_child(path: bytes) -> None:
    """In a child between fork and exec: join the namespace, with its own /sys (like
    `ip netns exec`), so /sys/class/net shows the namespace's interfaces."""
    fd = os.open(path, os.O_RDONLY)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "setns")
    os.close(fd)
    if _libc.unshare(CLONE_NEWNS) == 0:
        _libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None)
        _libc.umount2(b"/sys", MNT_DETACH)
        _libc.mount(b"sysfs", b"/sys", b"sysfs", 0, None)


def netns_preexec(netns: str) -> Callable[[], None]:
    """A preexec_fn that moves a child process into the named namespace."""
    path = bytes(netns_path(netns))
    return lambda: _enter_netns_child(path)
