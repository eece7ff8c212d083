"""TAP ports: the kernel side of the switch, and the network namespace helpers they use.

A TapPort opens /dev/net/tun with IFF_TAP|IFF_NO_PI, non-blocking, inside the port's
network namespace (created when missing), configures the interface there with pyroute2
(mtu, mac, addresses, up) and hands the fd to the C fast path, which reads and writes
frames in bursts.  With `switch.datapath: loop` the event loop watches the fd and calls
Datapath.kick(); with the poll thread, the thread watches it itself.

Ownership: an interface the port created is non-persistent (it lives as long as the fd)
and is also deleted explicitly on stop; a namespace the port created is removed on stop.
A pre-existing persistent tap is attached, configured, and left in place on stop.  A tap
deleted from outside takes its port down (logged once); the switch and the other ports go on.

Namespaces are entered per thread with setns(2): only a dedicated short-lived thread ever
changes namespace (never the event loop's, never a pool thread), so nothing else is affected
and nothing forks (pyroute2's own netns support forks a helper, which a process with a C poll
thread should not do).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from vswitch.config_tap import TapPort as TapConfig
from vswitch.errors import StartupError
from vswitch.mac import format_mac

log = logging.getLogger("vswitch.tap")

T = TypeVar("T")

# <linux/if_tun.h>
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000  # not used yet: room for checksum/TSO offloads (virtio-net header)
TAP_FLAGS = IFF_TAP | IFF_NO_PI

# <sched.h>, <sys/mount.h>, <linux/nsfs.h>, <linux/if_addr.h>
CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703
IFA_F_NODAD = 0x02

NETNS_RUN_DIR = Path("/run/netns")

_libc = ctypes.CDLL(None, use_errno=True)


def _call(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


# --------------------------------------------------------------------------- namespaces


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


# --------------------------------------------------------------------------- interfaces


class TapError(OSError):
    pass


def _ifreq(ifname: str, flags: int) -> bytes:
    return struct.pack("16sH22x", ifname.encode(), flags)


def _tap_kind(link: Any) -> str:
    """'tap', 'tun', or the link kind ('veth', 'bridge', ...) of a pyroute2 link message."""
    info = link.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    if kind != "tun":
        return kind or "device"
    data = info.get_attr("IFLA_INFO_DATA")
    tun_type = data.get_attr("IFLA_TUN_TYPE") if data is not None else None
    return "tap" if tun_type == IFF_TAP else "tun"


def configure_link(
    ipr: Any,
    index: int,
    *,
    mtu: int | None = None,
    mac: int | None = None,
    addresses: tuple[str, ...] | list[str] = (),
    up: bool | None = True,
) -> None:
    """Set mtu/mac, add addresses (no duplicate address detection: usable at once), up/down."""
    changes: dict[str, Any] = {}
    if mtu is not None:
        changes["mtu"] = mtu
    if mac is not None:
        changes["address"] = format_mac(mac)
    if changes:
        ipr.link("set", index=index, **changes)
    for a in addresses:
        ip, prefix = a.split("/")
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        try:
            ipr.addr(
                "add",
                index=index,
                address=ip,
                prefixlen=int(prefix),
                family=family,
                flags=IFA_F_NODAD,
            )
        except Exception as exc:  # pyroute2's NetlinkError carries the errno as .code
            if getattr(exc, "code", None) != errno.EEXIST:
                raise
    if up is not None:
        ipr.link("set", index=index, state="up" if up else "down")


def open_tap(cfg: TapConfig) -> tuple[int, bool, int]:
    """In the calling thread's namespace: open (creating if missing) and configure the tap.

    Returns (fd, created, ifindex).  Raises TapError with a message for a person."""
    from pyroute2 import IPRoute

    ifname = cfg.ifname
    with IPRoute() as ipr:
        existing = ipr.link_lookup(ifname=ifname)
        if existing:
            kind = _tap_kind(ipr.link("get", index=existing[0])[0])
            if kind != "tap":
                raise TapError(
                    errno.EEXIST,
                    f"interface {cfg.where} exists and is a {kind}, not a tap "
                    "(choose another ifname, or delete that interface)",
                )
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            try:
                fcntl.ioctl(fd, TUNSETIFF, _ifreq(ifname, TAP_FLAGS))
            except OSError as exc:
                if exc.errno == errno.EBUSY:
                    raise TapError(
                        exc.errno,
                        f"tap {cfg.where} is in use by another process "
                        "(stop it, or choose another ifname)",
                    ) from None
                raise TapError(exc.errno, f"cannot open tap {cfg.where}: {exc.strerror}") from None
            index = ipr.link_lookup(ifname=ifname)[0]
            configure_link(ipr, index, mtu=cfg.mtu, mac=cfg.mac, addresses=cfg.addresses, up=cfg.up)
        except BaseException:
            os.close(fd)  # a tap we just created goes with its last fd
            raise
    return fd, not existing, index


def delete_link(index: int, ifname: str) -> bool:
    """In the calling thread's namespace: delete the interface if it is still ifname at index."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        if index not in ipr.link_lookup(ifname=ifname):
            return False
        try:
            ipr.link("del", index=index)
        except Exception as exc:
            if getattr(exc, "code", None) in (errno.ENODEV, errno.ENOENT):
                return False
            raise
    return True


# --------------------------------------------------------------------------- the port


class TapPort:
    """A switch port whose peer is a kernel TAP interface (`type: tap` in the config).

    Same shape as VhostPort: start(), stop(), check(), info(), `port` (the fast path's id)."""

    def __init__(self, cfg: TapConfig, dp: Any) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.dp = dp
        self.port = -1
        self.session = None  # a tap has no vhost-user front end (reload looks at this)
        self.fd = -1
        self.ifindex = 0
        self.created = False  # we created the interface: we remove it
        self.created_netns = False  # and the namespace
        self.error: str | None = None  # why the port went down for good
        self._reader = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self.link_errors = 0  # times a write failed while the interface was down

    async def start(self) -> None:
        cfg = self.cfg
        self._loop = asyncio.get_running_loop()
        try:
            if cfg.netns is not None and not netns_exists(cfg.netns):
                await asyncio.to_thread(create_netns, cfg.netns)
                self.created_netns = True
                log.info("port %s: created network namespace %s", self.name, cfg.netns)
            self.fd, self.created, self.ifindex = await asyncio.to_thread(
                run_in_netns, cfg.netns, lambda: open_tap(cfg)
            )
        except FileExistsError:
            raise StartupError(
                f"port {self.name}: network namespace {cfg.netns} appeared while it was being "
                "created (try again)"
            ) from None
        except OSError as exc:
            raise StartupError(f"port {self.name}: {exc.strerror or exc}") from None
        from vswitch.datapath import PORT_TAP

        self.port = self.dp.open_port(cfg.mtu, kind=PORT_TAP)
        for mac in cfg.static_macs:
            self.dp.fdb_add(mac, self.port, static=True)
        self.dp.set_fd(self.port, self.fd)
        if not self.dp.threaded:
            self._loop.add_reader(self.fd, self._readable)
            self._reader = True
        self._watch_task = asyncio.create_task(self._watch(), name=f"tap watch {self.name}")
        log.info(
            "port %s: %s tap %s (mtu %d)",
            self.name,
            "created" if self.created else "attached to existing",
            cfg.where,
            cfg.mtu,
        )

    async def stop(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        self._unwatch()
        if self.port >= 0:
            self.dp.close_port(self.port)  # the data path lets go of the fd first
            self.port = -1
        if self.fd >= 0:
            os.close(self.fd)  # a non-persistent tap we created disappears with it
            self.fd = -1
        cfg = self.cfg
        if self.created and self.ifindex:
            # Gone already unless someone made it persistent: then remove it all the same.
            with contextlib.suppress(OSError):
                if await asyncio.to_thread(
                    run_in_netns, cfg.netns, lambda: delete_link(self.ifindex, cfg.ifname)
                ):
                    log.info("port %s: deleted tap %s", self.name, cfg.where)
            self.created = False
        if self.created_netns and cfg.netns is not None:
            await asyncio.to_thread(delete_netns, cfg.netns)
            log.info("port %s: removed network namespace %s", self.name, cfg.netns)
            self.created_netns = False

    def _unwatch(self) -> None:
        if self._reader and self._loop is not None and self.fd >= 0:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.fd)
        self._reader = False

    def _readable(self) -> None:
        """Event-loop mode: the tap fd has frames (or an error); the fast path takes them."""
        if self.port < 0 or self.fd < 0:
            self._unwatch()
            return
        if self.dp.kick(self.port, 1) < 0:
            self.check()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.check()

    def attached(self) -> bool:
        """Whether the fd still has its interface (TUNGETIFF fails with EBADFD once the
        interface is deleted)."""
        try:
            fcntl.ioctl(self.fd, TUNGETIFF, bytes(40))
        except OSError as exc:
            return exc.errno != errno.EBADFD
        return True

    def check(self) -> None:
        """Each second (and when a read fails): notice a tap that broke.

        The fast path marks the port broken on a failed read or write.  If the interface
        is still there the failure was passing (a write while the interface was down
        returns EIO): the port is re-armed.  If it is gone, the port goes down for good."""
        if self.port < 0 or self.fd < 0 or not self.dp.is_broken(self.port):
            return
        why = self.dp.error(self.port)
        if self.attached():
            self.link_errors += 1
            log.debug("port %s: %s while tap %s is down; re-armed", self.name, why, self.cfg.where)
            self.dp.set_fd(self.port, self.fd)
            return
        self._gone(why)

    def _gone(self, why: str) -> None:
        """The interface went away (or its fd failed): this port goes down, nothing else."""
        if self.fd < 0:
            return
        self._unwatch()
        self.dp.set_fd(self.port, -1)  # parks the poll thread: it stops watching the fd
        self.dp.fdb_flush(self.port)
        os.close(self.fd)
        self.fd = -1
        self.created = False  # nothing of it left to remove
        why = why or "tap fd detached"
        self.error = f"tap {self.cfg.where} was deleted, or its namespace removed ({why})"
        log.warning(
            "port %s: %s; the port is down, the switch and the other ports go on",
            self.name,
            self.error,
        )

    def info(self) -> dict[str, Any]:
        cfg = self.cfg
        state = self.dp.state(self.port) if self.port >= 0 else 0
        if self.error is not None or state & 4:
            status = "broken"
        elif state & 2:
            status = "up"
        else:
            status = "down"
        error = self.error or ((self.dp.error(self.port) or None) if state & 4 else None)
        return {
            "name": self.name,
            "type": "tap",
            "ifname": cfg.ifname,
            "netns": cfg.netns,
            "state": status,
            "peer": f"kernel {cfg.where}" if self.fd >= 0 else None,
            "created": self.created,
            "mac": format_mac(cfg.mac) if cfg.mac is not None else None,
            "addresses": list(cfg.addresses),
            "features": [],
            "protocol_features": [],
            "mtu": cfg.mtu,
            "queues": [],
            "counters": self.dp.port_stats(self.port) if self.port >= 0 else {},
            "error": error,
            "static_macs": [format_mac(m) for m in cfg.static_macs],
        }
