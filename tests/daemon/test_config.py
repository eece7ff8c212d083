"""Config loading: the minimal file, defaults, and one exact message per kind of mistake."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from vswitch.config import Config, default_control_path, load_config
from vswitch.errors import ConfigError
from vswitch.mac import format_mac, parse_mac

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).replace("TMP", str(tmp_path)))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


PORTS = """\
ports:
  - name: vm1
    type: vhost-user
    path: TMP/vm1.sock
"""


def test_minimal_config_loads() -> None:
    os.makedirs("/run/vswitch", exist_ok=True)
    cfg = load_config(REPO / "configs" / "minimal.yaml")
    assert cfg.control == Path("/run/vswitch/ctl.sock")
    assert not cfg.control_is_default
    assert [p.name for p in cfg.ports] == ["vm1", "vm2"]
    assert cfg.ports[1].path == Path("/run/vswitch/vm2.sock")
    assert cfg.ports[0].type == "vhost-user"
    hash(cfg)  # frozen and hashable, for reload diffing


def test_example_config_loads(tmp_path: Path) -> None:
    text = (REPO / "configs" / "example.yaml").read_text().replace("/run/vswitch", str(tmp_path))
    cfg = load_config(write(tmp_path, text))
    assert cfg.control_mode == 0o600
    vm1 = next(p for p in cfg.ports if p.name == "vm1")
    assert (vm1.socket_mode, vm1.owner, vm1.group, vm1.mtu) == (0o660, 0, 0, 1500)
    assert vm1.static_macs == (parse_mac("52:54:00:00:00:01"),)
    vm2 = next(p for p in cfg.ports if p.name == "vm2")
    assert vm2.mirror is not None
    assert (vm2.mirror.sources, vm2.mirror.direction) == (("vm1",), "both")
    assert (vm1.vlan, vm1.trunks, vm1.home_vlan) == (10, (), 10)
    assert vm2.trunks == (10, *range(20, 30)) and vm2.native_vlan == 1 == vm2.home_vlan


def test_defaults(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, PORTS))
    assert cfg.control == default_control_path()
    assert cfg.control_is_default
    assert cfg.control_mode == 0o600
    assert (cfg.switch.mac_age, cfg.switch.fdb_size, cfg.switch.log_level) == (300, 65536, "info")
    port = cfg.ports[0]
    assert (port.socket_mode, port.owner, port.group, port.mtu, port.static_macs) == (
        0o600,
        None,
        None,
        1500,
        (),
    )
    assert cfg == load_config(write(tmp_path, PORTS))


def test_default_control_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(os, "getuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_control_path() == Path("/run/user/1000/vswitch/ctl.sock")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_control_path() == Path("/tmp/vswitch-1000/ctl.sock")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_control_path() == Path("/run/vswitch/ctl.sock")


def test_values_and_modes(tmp_path: Path) -> None:
    cfg = load_config(
        write(
            tmp_path,
            """\
            control: ctl.sock
            control_mode: 0640
            switch: {mac_age: 0, fdb_size: 16, log_level: DEBUG}
            ports:
              - {name: a.b_c-1, type: vhost-user, path: a.sock, socket_mode: "0o660", owner: "0",
                 group: 0, mtu: 9000, static_macs: [52:54:00:00:00:01, "52-54-00-AB-CD-EF"]}
            """,
        )
    )
    assert cfg.control == tmp_path / "ctl.sock"
    assert cfg.control_mode == 0o640
    assert (cfg.switch.mac_age, cfg.switch.fdb_size, cfg.switch.log_level) == (0, 16, "debug")
    port = cfg.ports[0]
    assert (port.socket_mode, port.owner, port.group, port.mtu) == (0o660, 0, 0, 9000)
    assert [format_mac(m) for m in port.static_macs] == ["52:54:00:00:00:01", "52:54:00:ab:cd:ef"]


def test_relative_path_resolved_against_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "sub" / "socks").mkdir(parents=True)
    path = write(tmp_path / "sub", PORTS.replace("TMP/vm1.sock", "socks/vm1.sock"))
    monkeypatch.chdir("/")
    assert load_config(path).ports[0].path == tmp_path / "sub" / "socks" / "vm1.sock"


def test_mac_helpers() -> None:
    assert parse_mac("52:54:00:00:00:01") == 0x525400000001
    assert parse_mac("AA:bb:CC:dd:EE:ff") == 0xAABBCCDDEEFF
    assert format_mac(0x525400000001) == "52:54:00:00:00:01"
    for bad in ("52:54:00:00:00", "52:54:00:00:00:0g", "525400000001", "52:54-00:00:00:01"):
        with pytest.raises(ValueError):
            parse_mac(bad)


# Each case: (config text, the one expected message line after "config.yaml: ").
BAD = {
    "unknown top-level key": (
        PORTS + "controll: x\n",
        "controll: unknown key (did you mean 'control'? "
        "known keys here: control, control_mode, metrics, ports, switch)",
    ),
    "unknown port key": (
        PORTS + "    mtux: 1500\n",
        "ports[0] (vm1).mtux: unknown key (did you mean 'mtu'? "
        "known keys here: group, mac_limit, mirror, mode, mtu, name, native_vlan, owner, path, "
        "queues, socket_mode, static_macs, trunks, type, vlan)",
    ),
    "wrong type": (
        PORTS + '    mtu: "1500"\n',
        "ports[0] (vm1).mtu: expected a whole number, got the string '1500' (e.g. 1500)",
    ),
    "out of range": (
        PORTS + "    mtu: 9001\n",
        "ports[0] (vm1).mtu: 9001 is out of range 68..9000 (e.g. 1500)",
    ),
    "bad name": (
        PORTS.replace("vm1", "a-very-long-port-name", 1),
        "ports[0] (a-very-long-port-name).name: the string 'a-very-long-port-name' is not a "
        "valid port name (use 1-15 characters from A-Z a-z 0-9 _ . -, e.g. vm1)",
    ),
    "missing key": (
        "ports:\n  - {name: vm1, type: vhost-user}\n",
        "ports[0] (vm1).path: required key is missing (add `path: /run/vswitch/vm1.sock`)",
    ),
    "no ports": ("ports: []\n", "ports: no ports (add at least one; see configs/minimal.yaml)"),
    "duplicate name": (
        PORTS + PORTS.removeprefix("ports:\n").replace("vm1.sock", "vm2.sock"),
        "ports[1] (vm1).name: port name 'vm1' is already used by ports[0] (vm1) "
        "(give each port a unique name)",
    ),
    "duplicate path": (
        PORTS + PORTS.removeprefix("ports:\n").replace("name: vm1", "name: vm2"),
        "ports[1] (vm2).path: TMP/vm1.sock is already used by ports[0] (vm1).path "
        "(give each socket its own path)",
    ),
    "port path equals control": (
        "control: vm1.sock\n" + PORTS,
        "ports[0] (vm1).path: TMP/vm1.sock is already used by control "
        "(give each socket its own path)",
    ),
    "missing directory": (
        PORTS.replace("TMP/vm1.sock", "TMP/nope/vm1.sock"),
        "ports[0] (vm1).path: directory TMP/nope does not exist (create it, or fix the path)",
    ),
    "missing control directory": (
        "control: TMP/nope/ctl.sock\n" + PORTS,
        "control: directory TMP/nope does not exist (create it, or fix the path)",
    ),
    "bad MAC": (
        PORTS + "    static_macs: [52:54:00:00:00]\n",
        "ports[0] (vm1).static_macs[0]: '52:54:00:00:00' is not a MAC address "
        '(write it as a quoted string like "52:54:00:00:00:01")',
    ),
    "multicast MAC": (
        PORTS + '    static_macs: ["52:54:00:00:00:02", "01:00:5E:00:00:01"]\n',
        "ports[0] (vm1).static_macs[1]: 01:00:5E:00:00:01 is a multicast address; only unicast "
        "addresses can be static (the first octet must be even, e.g. 52:54:00:...)",
    ),
    "broadcast MAC": (
        PORTS + '    static_macs: ["ff:ff:ff:ff:ff:ff"]\n',
        "ports[0] (vm1).static_macs[0]: ff:ff:ff:ff:ff:ff is a broadcast address; only unicast "
        "addresses can be static (the first octet must be even, e.g. 52:54:00:...)",
    ),
    "zero MAC": (
        PORTS + '    static_macs: ["00:00:00:00:00:00"]\n',
        "ports[0] (vm1).static_macs[0]: 00:00:00:00:00:00 is the all-zero address "
        "(give the guest's own unicast MAC)",
    ),
    "MAC on two ports": (
        PORTS
        + '    static_macs: ["52:54:00:00:00:01"]\n'
        + "  - {name: vm2, type: vhost-user, path: vm2.sock, static_macs: [52:54:00:00:00:01]}\n",
        "ports[1] (vm2).static_macs[0]: 52:54:00:00:00:01 is already used by "
        "ports[0] (vm1).static_macs (a MAC can be static on one port of a VLAN only)",
    ),
    "vlan out of range": (
        PORTS + "    vlan: 4095\n",
        "ports[0] (vm1).vlan: VLAN 4095 is out of range 1..4094 "
        "(an access port's VLAN, e.g. vlan: 10)",
    ),
    "vlan and trunks": (
        PORTS + "    vlan: 10\n    trunks: [20]\n",
        "ports[0] (vm1): a port is an access port (vlan) or a trunk (trunks), not both: for a "
        "trunk that carries one VLAN untagged, write native_vlan",
    ),
    "native without trunks": (
        PORTS + "    native_vlan: 5\n",
        "ports[0] (vm1): native_vlan is for trunks: list the tagged VLANs in trunks, or write "
        "vlan: 5 for an access port",
    ),
    "bad trunk range": (
        PORTS + '    trunks: [10, "30-x"]\n',
        "ports[0] (vm1).trunks: '30-x' is not a VLAN range "
        '(list VLAN IDs or ranges, e.g. trunks: [10, 20, "100-199"])',
    ),
    "same static MAC, two VLANs is fine; same VLAN is not": (
        PORTS
        + '    vlan: 10\n    static_macs: ["52:54:00:00:00:01"]\n'
        + "  - {name: vm2, type: vhost-user, path: vm2.sock, vlan: 20,"
        + " static_macs: [52:54:00:00:00:01]}\n"
        + "  - {name: vm3, type: vhost-user, path: vm3.sock, trunks: [10], native_vlan: 10,"
        + " static_macs: [52:54:00:00:00:01]}\n",
        "ports[2] (vm3).static_macs[0]: 52:54:00:00:00:01 is already used by "
        "ports[0] (vm1).static_macs (a MAC can be static on one port of a VLAN only)",
    ),
    "world-writable mode": (
        PORTS + '    socket_mode: "0666"\n',
        "ports[0] (vm1).socket_mode: mode 0666 is world-writable: any local user could connect "
        "to the socket and control the switch or its guests (drop the o+w bit, e.g. 0660, "
        "and share with `group`)",
    ),
    "decimal mode": (
        PORTS + "    socket_mode: 660\n",
        "ports[0] (vm1).socket_mode: 660 is octal 1224: bits beyond rwxrwxrwx "
        '(write it as a quoted octal string, e.g. "0660")',
    ),
    "mirror of an unknown port": (
        PORTS + "    mirror: {from: [vm1x]}\n",
        "ports[0] (vm1).mirror.from[0]: no port 'vm1x' to mirror (ports: none; fix the name, "
        "or add that port)",
    ),
    "mirror of itself": (
        PORTS + "    mirror: {from: [vm1]}\n",
        "ports[0] (vm1).mirror.from[0]: port vm1 cannot mirror itself (name the ports whose "
        "traffic it should see)",
    ),
    "mirror of nothing": (
        PORTS + "    mirror: {from: []}\n",
        "ports[0] (vm1).mirror.from: no ports to mirror (name at least one, e.g. `from: [vm1]`)",
    ),
    "mirror lists a port twice": (
        PORTS + "  - {name: vm2, type: vhost-user, path: vm2.sock, mirror: {from: [vm1, vm1]}}\n",
        "ports[1] (vm2).mirror.from: port 'vm1' is listed twice (name each port once)",
    ),
    "mirror direction": (
        PORTS + "    mirror: {from: [vm1], direction: in}\n",
        "ports[0] (vm1).mirror.direction: the string 'in' is not allowed "
        "(use one of 'rx', 'tx' or 'both')",
    ),
    "mirror key misspelt": (
        PORTS + "  - {name: vm2, type: vhost-user, path: vm2.sock, "
        "mirror: {from: [vm1], dirction: tx}}\n",
        "ports[1] (vm2).mirror.dirction: unknown key (did you mean 'direction'? "
        "known keys here: direction, from)",
    ),
    "unknown type": (
        "ports:\n  - {name: t1, type: geneve}\n",
        "ports[0] (t1).type: unknown port type 'geneve' (known types: vhost-user, tap, vxlan)",
    ),
    "missing type": (
        "ports:\n  - {name: t1, path: x.sock}\n",
        "ports[0] (t1).type: required key is missing "
        "(add `type: vhost-user`; known types: vhost-user, tap, vxlan)",
    ),
    "unknown owner": (
        PORTS + "    owner: no-such-user-here\n",
        "ports[0] (vm1).owner: unknown user 'no-such-user-here' "
        "(create it, or give an existing user name or numeric id)",
    ),
    "unknown group": (
        PORTS + "    group: no-such-group-here\n",
        "ports[0] (vm1).group: unknown group 'no-such-group-here' "
        "(create it, or give an existing group name or numeric id)",
    ),
    "bad log level": (
        PORTS + "switch: {log_level: loud}\n",
        "switch.log_level: the string 'loud' is not a log level "
        "(use one of debug, info, warning, error)",
    ),
    "section not a mapping": (
        PORTS + "switch: 3\n",
        "switch: expected a mapping of `key: value` lines, got the number 3 (see docs/config.md)",
    ),
    "ports not a list": (
        "ports: vm1\n",
        "ports: expected a list, got the string 'vm1' (write `- item` lines or [a, b])",
    ),
    "YAML syntax error": (
        "ports:\n  - name: vm1\n   type: vhost-user\n",
        "line 3, column 4: YAML syntax error: expected <block end>, "
        "but found '<block mapping start>' (fix the YAML there)",
    ),
    "duplicate YAML key": (
        PORTS + "    path: TMP/vm2.sock\n",
        "line 5, column 5: duplicate key 'path' (first at line 4; keep only one)",
    ),
    "empty file": ("", "the file is empty (add a `ports:` list; see configs/minimal.yaml)"),
    "comments only": (
        "# nothing\n",
        "the file is empty (add a `ports:` list; see configs/minimal.yaml)",
    ),
    "top level list": (
        "- vm1\n",
        "the top level is a list, not a mapping (start with `ports:`; see configs/minimal.yaml)",
    ),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_config_gives_one_line(tmp_path: Path, case: str) -> None:
    text, expected = BAD[case]
    path = write(tmp_path, text)
    msg = error_of(path)
    assert msg == f"{path}: " + expected.replace("TMP", str(tmp_path))
    assert "pydantic" not in msg and "http" not in msg


def test_several_problems_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, PORTS + "    mtu: 1\n    socket_mode: 0777\n    bogus: 1\n")
    lines = error_of(path).splitlines()
    assert len(lines) == 3
    assert all(line.startswith(f"{path}: ports[0] (vm1).") for line in lines)


def test_unreadable_and_non_utf8(tmp_path: Path) -> None:
    missing = tmp_path / "missing.yaml"
    assert error_of(missing) == (
        f"{missing}: cannot read the file: No such file or directory (check the path)"
    )
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"ports: \xff\n")
    assert error_of(binary) == f"{binary}: byte 7: not valid UTF-8 (save it as UTF-8)"


def test_config_objects_are_frozen(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, PORTS))
    with pytest.raises(ValueError):
        cfg.ports[0].mtu = 9000  # type: ignore[misc]
    assert isinstance(cfg, Config)


def test_yaml_too_large_to_be_a_configuration_is_refused(tmp_path: Path) -> None:
    # Issue 12: a document of more values than any configuration has (here 150,000, in
    # 300 KB; aliases and `<<` merges count what they expand to) is refused while it is
    # read, before validation renders an error per value on the daemon's reload.
    path = write(tmp_path, "ports: [" + "1, " * 150_000 + "1]\n")
    with pytest.raises(ConfigError, match=r"expands to more than 100000 values") as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: line 1, column ")
    assert len(str(e.value).splitlines()) == 1


def test_yaml_merges_count_what_they_expand_to(tmp_path: Path) -> None:
    # 18 levels, each merging the one before twice: PyYAML >= 6.0.4 merges each key once,
    # so this stays small; what it expands to is counted all the same.
    lines = ["a0: &a0 {k: v}"]
    lines += [f"a{i}: &a{i} {{<<: [*a{i - 1}, *a{i - 1}], k{i}: v}}" for i in range(1, 19)]
    path = write(tmp_path, "\n".join(lines) + "\nports: []\n")
    with pytest.raises(ConfigError, match="a0: unknown key"):
        load_config(path)


def test_yaml_nested_too_deep_or_too_big_is_refused(tmp_path: Path) -> None:
    # 5000 levels made PyYAML's composer raise RecursionError, which is no ConfigError.
    path = write(tmp_path, "ports: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested more than 64 levels deep"):
        load_config(path)
    path = write(tmp_path, "# " + "x" * (5 << 20) + "\nports: []\n")
    with pytest.raises(ConfigError, match="more than the 4194304 a configuration may have"):
        load_config(path)
