"""Exceptions shared across vswitch; each carries a message meant for a person."""

from __future__ import annotations


class VswitchError(Exception):
    """Base class: str(exc) is a complete message for the user."""


class ConfigError(VswitchError):
    """The configuration is invalid: one line per problem, `file: field: problem (fix)`."""


class StartupError(VswitchError):
    """The switch could not start (a socket in use, a directory missing, ...)."""


class ControlError(VswitchError):
    """A control-socket request failed: the daemon's message or a connection problem."""
