"""The port models, one per `type:` of a `ports:` entry.

A new kind of port adds its model here and to PORT_TYPES; the Port union follows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from vswitch.config.fields import (
    Address,
    FileMode,
    IpAddress,
    Mac,
    MacLimit,
    Mtu,
    PortName,
    QueuePairs,
    SocketPath,
    check_bool,
    check_ifname,
    check_netns_name,
    id_lookup,
    iface_mac,
    int_in,
    unique_addresses,
)
from vswitch.config.vlans import AccessVlan, NativeVlan, Trunks
from vswitch.limits import DEFAULT_MAC_LIMIT, MAX_MTU, MAX_QUEUE_PAIRS, MIN_MTU


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
    # Queue pairs the front end may set up (GET_QUEUE_NUM); default: switch.queues.
    queues: QueuePairs = MAX_QUEUE_PAIRS

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


def _remote_list(v: Any) -> Any:
    if isinstance(v, str):
        v = [v]  # `remotes: 192.0.2.2` for `remotes: [192.0.2.2]`
    return v


VXLAN_PORT = 4789  # the IANA port (RFC 7348 5)
MAX_VNI = 2**24 - 1


class VxlanPort(VlanKeys):
    """A tunnel port (RFC 7348): the switch's frames carried in UDP to other hosts' switches
    or kernel vxlan devices.  `remotes` is the flood list (broadcast, multicast and unknown
    unicast go to each); a learned MAC goes to the one remote it was seen behind.  The UDP
    sockets are opened in `netns` (the underlay's namespace; the switch's own without it),
    bound to `local`.  The inner MTU is the underlay's (the routes to the remotes) minus 50
    (IPv4) or 70 (IPv6) unless `mtu` asks for less."""

    name: PortName = Field(examples=["vx1"])
    type: Literal["vxlan"] = Field(examples=["vxlan"])
    vni: Annotated[int, BeforeValidator(int_in(0, MAX_VNI, "a 24-bit VXLAN network id, e.g. 42"))]
    local: IpAddress = Field(examples=["192.0.2.1"])
    remotes: Annotated[tuple[IpAddress, ...], BeforeValidator(_remote_list)] = Field(
        default=(), examples=["[192.0.2.2, 192.0.2.3]"]
    )
    dstport: Annotated[int, BeforeValidator(int_in(1, 65535, "the UDP port, e.g. 4789"))] = (
        VXLAN_PORT
    )
    netns: Annotated[str | None, BeforeValidator(check_netns_name)] = Field(
        default=None, examples=["underlay"]
    )
    learn_remotes: Annotated[bool, BeforeValidator(check_bool)] = False
    mtu: Annotated[int | None, BeforeValidator(lambda v: v if v is None else _mtu(v))] = None
    mac_limit: MacLimit = DEFAULT_MAC_LIMIT
    static_macs: tuple[Mac, ...] = ()
    mirror: MirrorConfig | None = None

    @field_validator("remotes")
    @classmethod
    def _remotes(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        local = info.data.get("local")
        for i, r in enumerate(v):
            if r in v[:i]:
                raise ValueError(f"{r} is listed twice (name each remote once)")
            if r == local:
                raise ValueError(f"{r} is the local address (remotes are the other hosts)")
            if local is not None and (":" in r) != (":" in local):
                fam = "IPv6" if ":" in local else "IPv4"
                raise ValueError(
                    f"{r} is not {fam} like local {local} (one underlay family per port)"
                )
        return v

    @model_validator(mode="after")
    def _some_remote(self) -> VxlanPort:
        if not self.remotes and not self.learn_remotes:
            raise ValueError(
                "remotes: no remotes, and learn_remotes is off: the port could reach no one "
                "(list the other hosts' underlay addresses, e.g. `remotes: [192.0.2.2]`)"
            )
        return self

    @property
    def socket_paths(self) -> tuple[Path, ...]:
        return ()

    @property
    def listens(self) -> bool:
        return False

    @property
    def ipv6(self) -> bool:
        return ":" in self.local

    @property
    def overhead(self) -> int:
        """Outer headers: IP, UDP, VXLAN and the inner Ethernet header (RFC 7348 4)."""
        return 70 if self.ipv6 else 50

    @property
    def where(self) -> str:
        """'192.0.2.1:4789 in netns underlay', for messages."""
        host = f"[{self.local}]" if self.ipv6 else self.local
        return f"{host}:{self.dstport}" + (f" in netns {self.netns}" if self.netns else "")


def _mtu(v: Any) -> int:
    return int_in(MIN_MTU, MAX_MTU, "the inner MTU, at most the underlay's minus 50 (70 IPv6)")(v)


# Every port model, by its `type` tag.
PORT_TYPES: dict[str, type[Model]] = {
    "vhost-user": VhostUserPort,
    "tap": TapPort,
    "vxlan": VxlanPort,
}
PortConfig = VhostUserPort | TapPort | VxlanPort
Port = Annotated[PortConfig, Field(discriminator="type")]
