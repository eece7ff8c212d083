"""The port models, one per `type:` of a `ports:` entry.

A new kind of port adds its model here and to PORT_TYPES; the Port union follows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from vswitch.config.fields import (
    Address,
    FileMode,
    Mac,
    MacLimit,
    Mtu,
    PortName,
    SocketPath,
    check_bool,
    check_ifname,
    check_netns_name,
    id_lookup,
    iface_mac,
    unique_addresses,
)
from vswitch.config.vlans import AccessVlan, NativeVlan, Trunks
from vswitch.limits import DEFAULT_MAC_LIMIT


class Model(BaseModel):
    """Every configuration model: unknown keys refused, values frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def _sources(v: Any) -> Any:
    if isinstance(v, str):
        v = [v]  # `from: vm1` for `from: [vm1]`
    if isinstance(v, list | tuple):
        if not v:
            raise ValueError("no ports to mirror (name at least one, e.g. `from: [vm1]`)")
        seen = [n for i, n in enumerate(v) if n in v[:i]]
        if seen:
            raise ValueError(f"port {seen[0]!r} is listed twice (name each port once)")
    return v


class MirrorConfig(Model):
    """`mirror:` on a port: it also gets a copy of the frames the switch takes from the
    ports in `from` (direction rx), of those it gives them (tx), or both.  The port stays
    a normal port otherwise: it sends and receives its own frames as before."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    sources: Annotated[tuple[PortName, ...], BeforeValidator(_sources)] = Field(
        alias="from", examples=["[vm1, vm2]"]
    )
    direction: Literal["rx", "tx", "both"] = "both"

    def __str__(self) -> str:
        return f"from [{', '.join(self.sources)}] direction {self.direction}"


class VlanKeys(Model):
    """The 802.1Q keys every kind of port has (vswitch/config/vlans.py)."""

    vlan: AccessVlan = Field(default=0, examples=["10"])
    trunks: Trunks = Field(default=(), examples=['[10, 20, "100-199"]'])
    native_vlan: NativeVlan = Field(default=None, examples=["1"])

    @model_validator(mode="after")
    def _vlan_mode(self) -> VlanKeys:
        if self.vlan and self.trunks:
            raise ValueError(
                "a port is an access port (vlan) or a trunk (trunks), not both: for a trunk "
                "that carries one VLAN untagged, write native_vlan"
            )
        if self.native_vlan is not None and not self.trunks:
            raise ValueError(
                "native_vlan is for trunks: list the tagged VLANs in trunks, or write "
                f"vlan: {self.native_vlan} for an access port"
            )
        if self.trunks and self.native_vlan is None and getattr(self, "static_macs", ()):
            raise ValueError(
                "static_macs on a trunk go on its native_vlan: set native_vlan, or add them "
                "per VLAN with `vswitch fdb add --vlan`"
            )
        return self

    @property
    def home_vlan(self) -> int:
        """The VLAN of the port's untagged frames and static MACs (0: not VLAN-aware)."""
        return self.vlan or self.native_vlan or 0

    @property
    def vlan_aware(self) -> bool:
        return bool(self.vlan or self.trunks)


class VhostUserPort(VlanKeys):
    """A port a QEMU guest attaches to with `-netdev vhost-user`.

    mode server: the switch listens on path and QEMU connects (reconnect=1
    lets QEMU find a restarted switch).  mode client: QEMU serves path
    (`-chardev socket,server=on`) and the switch connects, retrying with
    backoff until it appears and again whenever QEMU goes away."""

    name: PortName = Field(examples=["vm1"])
    type: Literal["vhost-user"] = Field(examples=["vhost-user"])
    path: SocketPath = Field(examples=["/run/vswitch/vm1.sock"])
    mode: Literal["server", "client"] = "server"
    socket_mode: FileMode = 0o600
    owner: Annotated[int | None, BeforeValidator(id_lookup("user"))] = None  # uid
    group: Annotated[int | None, BeforeValidator(id_lookup("group"))] = None  # gid
    mtu: Mtu = 1500
    mac_limit: MacLimit = DEFAULT_MAC_LIMIT
    static_macs: tuple[Mac, ...] = ()  # 48-bit ints
    mirror: MirrorConfig | None = None

    @property
    def socket_paths(self) -> tuple[Path, ...]:
        return (self.path,)

    @property
    def listens(self) -> bool:
        """The switch owns the socket file (mode server): it binds, chmods and removes it."""
        return self.mode == "server"


class TapPort(VlanKeys):
    """A port whose peer is the kernel: a TAP interface, optionally in a network namespace.

    When `ifname` does not exist, the switch creates it (IFF_TAP|IFF_NO_PI) in `netns`
    (creating the namespace if needed), applies mtu, mac, addresses and `up`, and removes
    both when the port stops.  An existing persistent tap of that name is attached and left
    in place when the port stops."""

    name: PortName = Field(examples=["h1"])
    type: Literal["tap"] = Field(examples=["tap"])
    ifname: Annotated[str, BeforeValidator(check_ifname)] = Field(default="", examples=["tap0"])
    netns: Annotated[str | None, BeforeValidator(check_netns_name)] = Field(
        default=None, examples=["h1"]
    )
    mtu: Mtu = 1500
    mac: Annotated[int | None, BeforeValidator(iface_mac)] = Field(
        default=None, examples=['"52:54:00:00:10:01"']
    )  # the interface's own address (48-bit int); the kernel picks one when absent
    addresses: Annotated[tuple[Address, ...], AfterValidator(unique_addresses)] = Field(
        default=(), examples=["[10.0.0.10/24, fd00::10/64]"]
    )
    up: Annotated[bool, BeforeValidator(check_bool)] = True
    mac_limit: MacLimit = DEFAULT_MAC_LIMIT
    static_macs: tuple[Mac, ...] = ()
    mirror: MirrorConfig | None = None

    @model_validator(mode="before")
    @classmethod
    def _default_ifname(cls, data: Any) -> Any:
        # ifname defaults to the port name (both are 1-15 characters).
        if isinstance(data, dict) and "ifname" not in data and isinstance(data.get("name"), str):
            data = {**data, "ifname": data["name"]}
        return data

    @property
    def socket_paths(self) -> tuple[Path, ...]:
        return ()

    @property
    def listens(self) -> bool:
        return False

    @property
    def where(self) -> str:
        """'tap0' or 'tap0 in netns h1', for messages."""
        return f"{self.ifname} in netns {self.netns}" if self.netns else self.ifname


# Every port model, by its `type` tag.
PORT_TYPES: dict[str, type[Model]] = {"vhost-user": VhostUserPort, "tap": TapPort}
PortConfig = VhostUserPort | TapPort
Port = Annotated[PortConfig, Field(discriminator="type")]
