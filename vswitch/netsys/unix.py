"""Unix socket files the switch listens on: free a stale path, bind with a mode and an
owner, and the directory of a default path.  Shared by the control socket and the
vhost-user ports.

Whoever can replace a socket file the switch listens on gets what the next client sends
through it: QEMU's guest memory for a vhost-user port, the switch for the control socket.
So the directory of every socket the switch listens on (and each directory above it) must
be one only root or the switch's user can change, and modes are set on the socket itself,
never through a path an attacker could turn into a symlink.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import logging
import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any

from vswitch.errors import StartupError

log = logging.getLogger("vswitch")


_warned_dirs: set[Path] = set()


def check_socket_dir(path: str | Path) -> None:
    """Refuse (StartupError) to listen on `path` when a user other than root or ours could
    replace the socket: its directory or one above it belongs to someone else, or is
    writable by others without the sticky bit.  A group-writable one is allowed with a
    warning naming the group (libvirt setups share the directory with QEMU's group)."""
    d = Path(os.path.abspath(Path(path).parent))
    me = os.geteuid()
    for level in (d, *d.parents):
        try:
            st = os.stat(level)
        except OSError as exc:
            raise StartupError(f"{level}: cannot check the directory: {exc.strerror}") from None
        sticky = bool(st.st_mode & stat.S_ISVTX)
        if st.st_uid not in (0, me):
            raise StartupError(
                f"{level} (the directory of {path}) belongs to uid {st.st_uid}, who could "
                "replace the socket (use a directory owned by root or by vswitch's user, "
                "e.g. /run/vswitch)"
            )
        if st.st_mode & stat.S_IWOTH and not sticky:
            raise StartupError(
                f"{level} (the directory of {path}) is writable by every user, who could "
                f"replace the socket (chmod o-w {level}, or use /run/vswitch)"
            )
        if st.st_mode & stat.S_IWGRP and not sticky and level not in _warned_dirs:
            _warned_dirs.add(level)
            try:
                group = grp.getgrgid(st.st_gid).gr_name
            except KeyError:
                group = str(st.st_gid)
            log.warning(
                "%s is writable by group %s: its members can replace %s (fine if they are "
                "trusted, as libvirt's QEMU group is meant to be)", level, group, path
            )  # fmt: skip


def set_socket_mode(
    path: str | Path, mode: int, uid: int | None = None, gid: int | None = None
) -> None:
    """chmod (and chown) the socket file at `path`, never what a symlink there points to:
    the file is opened with O_PATH|O_NOFOLLOW, checked to be a socket, and changed through
    its descriptor.  OSError when it is not a socket."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise OSError(errno.ENOTSOCK, f"{path} is not a socket (left unchanged)")
        # /proc/self/fd/N names the inode the descriptor holds, not a path to re-resolve.
        os.chmod(f"/proc/self/fd/{fd}", mode)
        if uid is not None or gid is not None:
            os.chown(f"/proc/self/fd/{fd}", -1 if uid is None else uid, -1 if gid is None else gid)
    finally:
        os.close(fd)


def socket_file(path: str | Path) -> dict[str, Any] | None:
    """Who can reach the socket file at `path` (not following a symlink there): its owner
    and group (names, or the numbers when they have none) and mode ("0660"); None when
    there is no file.  Connecting to a unix socket needs write permission on it."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return {
        "owner": owner,
        "group": group,
        "uid": st.st_uid,
        "gid": st.st_gid,
        "mode": f"{stat.S_IMODE(st.st_mode):04o}",
        "is_socket": stat.S_ISSOCK(st.st_mode),
    }


def prepare_socket_path(path: str | Path) -> None:
    """Make `path` free for bind(): remove a stale socket file, refuse a live one.

    Raises StartupError when a process listens on it, when it is not a socket, when its
    directory is not a safe place for it (check_socket_dir), or when it cannot be checked.
    Never blocks: the probe is a non-blocking connect().
    """
    path = Path(path)
    check_socket_dir(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StartupError(f"{path}: cannot check the socket path: {exc.strerror}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise StartupError(f"{path} exists and is not a socket (remove it, or choose another path)")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.setblocking(False)
        err = probe.connect_ex(str(path))
    if err in (0, errno.EAGAIN, errno.EINPROGRESS):
        raise StartupError(
            f"{path} is in use by a live process: another vswitch is running on {path}? "
            "(stop it, or choose another path)"
        )
    if err != errno.ECONNREFUSED:
        raise StartupError(f"{path}: cannot check the socket: {os.strerror(err)}")
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise StartupError(f"{path}: cannot remove the stale socket: {exc.strerror}") from None
    log.info("removed stale socket %s", path)


def listen_unix(
    path: str | Path,
    *,
    mode: int = 0o600,
    uid: int | None = None,
    gid: int | None = None,
    backlog: int = 16,
) -> socket.socket:
    """Bind and listen on a unix stream socket at `path` with the given mode and owner.

    The file is chmod-ed (and chown-ed) after bind() but before listen(): until then
    connect() is refused, so there is no window with a wider mode.  Returns a non-blocking
    listening socket; raises StartupError with the path and the reason.
    """
    path = Path(path)
    prepare_socket_path(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise StartupError(f"{path}: cannot bind: {exc.strerror or exc}") from None
    try:
        set_socket_mode(path, mode, uid, gid)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        with contextlib.suppress(OSError):
            path.unlink()
        raise StartupError(f"{path}: cannot set up the socket: {exc.strerror or exc}") from None
    return sock


def ensure_socket_dir(path: str | Path) -> None:
    """Create the directory of a default socket path (0755) if missing.

    An existing directory must be ours (or root's) and not a symlink: in /tmp, someone else
    could have created it to intercept the socket.
    """
    d = Path(path).parent
    try:
        d.mkdir(mode=0o755, parents=True, exist_ok=True)
        st = d.lstat()
    except OSError as exc:
        raise StartupError(f"{d}: cannot create the directory: {exc.strerror}") from None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid not in (0, os.geteuid()):
        raise StartupError(
            f"{d} is not a directory owned by you (remove it, or set `control:` in the config)"
        )
