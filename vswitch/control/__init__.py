"""The control socket: a generic JSON-lines server and client (server.py, client.py)."""

from vswitch.control.client import Client, CommandFailed, NoServer, request
from vswitch.control.server import ControlServer, Handler, Stream, make_handler

__all__ = [
    "Client",
    "CommandFailed",
    "ControlServer",
    "Handler",
    "NoServer",
    "Stream",
    "make_handler",
    "request",
]
