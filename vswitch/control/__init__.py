"""The control socket: a generic JSON-lines server and client (server.py, client.py)."""

from vswitch.control.client import Client, request
from vswitch.control.server import ControlServer, Handler, Stream, make_handler

__all__ = ["Client", "ControlServer", "Handler", "Stream", "make_handler", "request"]
