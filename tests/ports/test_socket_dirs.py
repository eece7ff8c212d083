"""Socket files and their directories (issue 12): the switch listens only where no other
user can replace its sockets, and sets modes on the socket itself, never through a link."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from conftest import need_root
from support.ops import config

from vswitch.config import parse_config
from vswitch.daemon.switch import Switch
from vswitch.errors import StartupError

NOBODY = 65534


def one_port(sock_dir: Path, ctl_dir: Path) -> dict[str, object]:
    return {
        "control": str(ctl_dir / "ctl.sock"),
        "ports": [{"name": "a", "type": "vhost-user", "path": str(sock_dir / "a.sock")}],
    }


async def test_world_writable_socket_dir_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "socks"
    d.mkdir()
    d.chmod(0o777)  # no sticky bit: anyone may replace a.sock
    with pytest.raises(StartupError, match=rf"{d} .* is writable by every user.*chmod o-w"):
        async with Switch(parse_config(one_port(d, tmp_path))):
            pass
    assert not (d / "a.sock").exists()
    d.chmod(0o1777)  # sticky, like /tmp: only the owner of a file may remove it
    async with Switch(parse_config(one_port(d, tmp_path))) as sw:
        assert sw.ports["a"].state == "listening"


async def test_socket_dir_of_another_user_is_refused(tmp_path: Path) -> None:
    need_root()  # to give a directory away
    d = tmp_path / "theirs"
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    with pytest.raises(StartupError, match=rf"{d} .* belongs to uid {NOBODY}"):
        async with Switch(parse_config(one_port(d, tmp_path))):
            pass
    # Above the socket's own directory counts too: whoever owns it can swap the directory.
    inner = d / "inner"
    inner.mkdir()
    with pytest.raises(StartupError, match=rf"{d} .* belongs to uid {NOBODY}"):
        async with Switch(parse_config(one_port(inner, tmp_path))):
            pass


async def test_group_writable_socket_dir_warns_with_the_group(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = tmp_path / "shared"
    d.mkdir()
    d.chmod(0o770)
    caplog.set_level(logging.WARNING)
    async with Switch(parse_config(one_port(d, tmp_path))) as sw:
        assert sw.ports["a"].state == "listening"
    assert f"{d} is writable by group" in caplog.text


async def test_reload_never_chmods_through_a_symlink(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["a"])
    victim = tmp_path / "victim"
    victim.write_text("secret")
    victim.chmod(0o600)
    async with Switch(cfg) as sw:
        sock = sw.ports["a"].cfg.path
        sock.unlink()
        sock.symlink_to(victim)  # someone swapped the socket for a link to another file
        new = cfg.model_copy(
            update={"ports": (cfg.ports[0].model_copy(update={"socket_mode": 0o666}),)}
        )
        with pytest.raises(Exception, match="is not a socket"):
            await sw.reload(new)
        sock.unlink()
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600


async def test_reload_changes_the_socket_mode_in_place(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["a"])
    async with Switch(cfg) as sw:
        sock = sw.ports["a"].cfg.path
        new = cfg.model_copy(
            update={"ports": (cfg.ports[0].model_copy(update={"socket_mode": 0o660}),)}
        )
        result = await sw.reload(new)
        assert result["changes"] == ["port a: socket_mode 0600 -> 0660"]
        assert stat.S_IMODE(sock.stat().st_mode) == 0o660
        assert stat.S_ISSOCK(sock.stat().st_mode)
