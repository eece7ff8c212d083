"""The systemd notification protocol (sd_notify(3)): READY=1 once every port listens and
the control socket is up, RELOADING=1 / READY=1 around a reload, STOPPING=1, and STATUS=
with the ports' states.  Datagrams on $NOTIFY_SOCKET; without it, nothing is sent."""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("vswitch")


class Notifier:
    def __init__(self, address: str | None) -> None:
        self._sock: socket.socket | None = None
        self._address: str | bytes | None = None
        self._status = ""
        if not address:
            return
        if address.startswith("@"):  # an abstract socket
            self._address = "\0" + address[1:]
        elif address.startswith("/"):
            self._address = address
        else:
            log.warning("NOTIFY_SOCKET=%s is neither a path nor @abstract: not notifying", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)

    @classmethod
    def from_env(cls) -> Notifier:
        """The service manager's socket; taken out of the environment, as sd_notify's
        unset_environment does, so that nothing vswitch starts notifies in its name."""
        return cls(os.environ.pop("NOTIFY_SOCKET", None))

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, **fields: str | int) -> None:
        if self._sock is None or self._address is None:
            return
        text = "\n".join(f"{k.upper()}={v}" for k, v in fields.items())
        try:
            self._sock.sendto(text.encode(), self._address)
        except OSError as exc:  # the manager went away or is slow: never the switch's problem
            log.debug("cannot notify the service manager: %s", exc)

    def ready(self, status: str) -> None:
        self._status = status
        self.send(ready=1, status=status)

    def reloading(self) -> None:
        self.send(reloading=1, monotonic_usec=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> None:
        self.send(stopping=1, status="stopping")

    def status(self, status: str) -> None:
        if status != self._status:
            self._status = status
            self.send(status=status)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
