"""Unix socket files the switch listens on: free a stale path, bind with a mode and an
owner, and the directory of a default path.  Shared by the control socket and the
vhost-user ports."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
from pathlib import Path

from vswitch.errors import StartupError

log = logging.getLogger("vswitch")


def prepare_socket_path(path: str | Path) -> None:
    """Make `path` free for bind(): remove a stale socket file, refuse a live one.

    Raises StartupError when a process listens on it, when it is not a socket, or when it
    cannot be checked.  Never blocks: the probe is a non-blocking connect().
    """
    path = Path(path)
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
        os.chmod(path, mode)
        if uid is not None or gid is not None:
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
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
