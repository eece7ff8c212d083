"""Switch ports, one module per kind; base.py holds the Port interface they share."""

from __future__ import annotations

from vswitch.config import PortConfig
from vswitch.fastpath import Fastpath
from vswitch.ports.base import Port
from vswitch.ports.tap import TapPort
from vswitch.ports.vhost_user import VhostPort
from vswitch.ports.vxlan import VxlanPort

# The Port class of each config `type:`: a new kind of port adds itself here.
KINDS: dict[str, type[Port]] = {"vhost-user": VhostPort, "tap": TapPort, "vxlan": VxlanPort}


def new_port(cfg: PortConfig, dp: Fastpath) -> Port:
    """The (unstarted) port for one `ports:` entry."""
    return KINDS[cfg.type](cfg, dp)


__all__ = ["KINDS", "Port", "TapPort", "VhostPort", "VxlanPort", "new_port"]
