"""The process's descriptor limit: a connected vhost-user port holds about ten fds
(socket, kick/call/err eventfds, memory files), and the default soft limit of 1024 runs
out long before the config's port limit."""

from __future__ import annotations

import logging
import resource

from vswitch.limits import MAX_PORTS

log = logging.getLogger("vswitch")

FDS_PER_PORT = 16  # a vhost-user port at its worst: socket, 3 eventfds per ring, 8 regions
FDS_SPARE = 256  # control clients, captures, metrics, the loop's own


def fds_needed(ports: int = MAX_PORTS) -> int:
    return ports * FDS_PER_PORT + FDS_SPARE


def raise_fd_limit(ports: int) -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; warn when even that is short of
    what `ports` ports (and the reloads that add more) may need.  Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = fds_needed() if hard == resource.RLIM_INFINITY else hard
        if target > soft:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft < fds_needed(ports):
        log.warning(
            "only %d file descriptors allowed (RLIMIT_NOFILE): %d port(s) may need %d; "
            "raise the limit (LimitNOFILE=%d under systemd, ulimit -n otherwise)",
            soft, ports, fds_needed(ports), fds_needed(),
        )  # fmt: skip
    return soft
