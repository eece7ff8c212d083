"""Changing the ports of a configuration: in a running Config (what the daemon's
`port-add` / `port-del` apply) and in the YAML file (`vswitch port add --save`).

- `with_port_added` / `with_port_removed` return a new Config, validated exactly as a file
  is (the same models, the same checks across ports, the same one-line errors).
- `FileEdit` rewrites the file safely: the new text goes to a temporary file in the same
  directory, is loaded back with the daemon's own loader (it must load, and hold exactly
  the old data plus or minus that port), and only then renamed over the file, keeping its
  mode and owner.  The file is edited round-trip with ruamel.yaml: comments, key order,
  quoting and indentation of the rest of the file are kept.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from vswitch.config.loader import _convert, load_config, read_yaml
from vswitch.config.model import Config
from vswitch.errors import ConfigError


def _validated(cfg: Config, ports: list[Any], name: str) -> Config:
    data = {
        "control": str(cfg.control),
        "control_mode": cfg.control_mode,
        "switch": cfg.switch,
        "metrics": cfg.metrics,
        "ports": ports,
    }
    base = cfg.source.parent if cfg.source else Path.cwd()
    try:
        new = Config.model_validate(data, context={"base_dir": base})
    except ValidationError as exc:
        raise ConfigError("\n".join(f"{name}: {line}" for line in _convert(exc, data))) from None
    return cfg.model_copy(update={"ports": new.ports})  # keeps the source and defaults


def with_port_added(cfg: Config, raw: dict[str, Any]) -> Config:
    """cfg with one more port, given as its mapping in a file; ConfigError if the result
    would not load.  Relative paths are relative to the config file's directory."""
    if not isinstance(raw, dict):
        raise ConfigError(f"port-add: a port is a mapping of its keys, got {raw!r}")
    return _validated(cfg, [*cfg.ports, raw], "port-add")


def with_port_removed(cfg: Config, name: str) -> Config:
    if name not in {p.name for p in cfg.ports}:
        known = ", ".join(p.name for p in cfg.ports) or "none"
        raise ConfigError(f"port-del: no port {name!r} (ports: {known})")
    return _validated(cfg, [p for p in cfg.ports if p.name != name], "port-del")


# --------------------------------------------------------------------------- the file


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never fold a long line the user wrote on one
    return y


class FileEdit:
    """A change of the config file, prepared (written beside it and checked) before the
    daemon is asked, committed (renamed into place) once it agreed, or abandoned.

    `with FileEdit.add_port(path, raw) as edit: ...; edit.commit()`; leaving the block
    without commit() removes the temporary file."""

    def __init__(self, path: str | Path, text: str, expected: Any) -> None:
        self.path = Path(path)
        self.tmp: Path | None = None
        st = os.stat(self.path)
        fd, tmp = tempfile.mkstemp(
            prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent
        )
        self.tmp = Path(tmp)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(self.tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(self.tmp, st.st_uid, st.st_gid)
            # It must load as a config, and hold exactly what we meant.
            load_config(self.tmp)
            if read_yaml(self.tmp) != expected:
                raise ConfigError(
                    f"{self.path}: the rewritten file would not hold the same data "
                    "(not saved; edit the file by hand)"
                )
        except BaseException:
            self.abandon()
            raise

    @classmethod
    def add_port(cls, path: str | Path, raw: dict[str, Any]) -> FileEdit:
        data, doc, y = cls._load(path)
        ports = doc.get("ports")
        if ports is None or not hasattr(ports, "append"):
            raise ConfigError(f"{path}: no `ports:` list to add the port to")
        ports.append(dict(raw))
        return cls(path, cls._dump(y, doc), {**data, "ports": [*data["ports"], dict(raw)]})

    @classmethod
    def remove_port(cls, path: str | Path, name: str) -> FileEdit:
        data, doc, y = cls._load(path)
        ports = doc.get("ports") or []
        idx = [i for i, p in enumerate(ports) if isinstance(p, dict) and p.get("name") == name]
        if not idx:
            raise ConfigError(f"{path}: no port {name!r} in the file (nothing to save)")
        del ports[idx[0]]
        left = [p for p in data["ports"] if not (isinstance(p, dict) and p.get("name") == name)]
        return cls(path, cls._dump(y, doc), {**data, "ports": left})

    @staticmethod
    def _load(path: str | Path) -> tuple[Any, Any, Any]:
        from ruamel.yaml.util import load_yaml_guess_indent

        data = read_yaml(path)  # the daemon's loader: what the file means today
        if not isinstance(data, dict) or not isinstance(data.get("ports"), list):
            raise ConfigError(f"{path}: no `ports:` list in the file")
        text = Path(path).read_text(encoding="utf-8-sig")
        # The sequences' indentation as the file has it ("  - name:" is 4 and 2);
        # mappings are indented by what the items' keys are past their dash.
        _, seq, offset = load_yaml_guess_indent(text)
        seq, offset = seq or 2, offset or 0
        y = _yaml()
        y.indent(mapping=max(2, seq - offset), sequence=seq, offset=offset)
        return data, y.load(text), y

    @staticmethod
    def _dump(y: Any, doc: Any) -> str:
        out = io.StringIO()
        y.dump(doc, out)
        return out.getvalue()

    def commit(self) -> None:
        assert self.tmp is not None
        os.replace(self.tmp, self.path)
        self.tmp = None
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def abandon(self) -> None:
        if self.tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
            self.tmp = None

    def __enter__(self) -> FileEdit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abandon()
