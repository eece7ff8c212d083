"""The lab's one exception."""

from __future__ import annotations

from vswitch.errors import VswitchError


class LabError(VswitchError):
    """A lab could not be brought up, reached, or torn down; the message names the node."""
