"""Reading a lab file: `load_lab(path)` returns a checked, resolved `LabSpec` or raises
`ConfigError` with one line per problem, `FILE: FIELD: problem (fix)`, like the switch's
config (vswitch.config.loader reads the YAML and renders pydantic's errors for both)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from vswitch.config.fields import describe
from vswitch.config.loader import loc_text, read_yaml, render_errors
from vswitch.config.model import Loc, Problems
from vswitch.errors import ConfigError
from vswitch.lab.model import MODELS, LabFile, lab_name
from vswitch.lab.topology import LabSpec, resolve

__all__ = ["load_lab", "parse_lab"]

DOCS = "docs/lab.md"


def _locate(err: dict[str, Any]) -> tuple[Loc, type[BaseModel] | None]:
    """pydantic's location without its dict-key and link-validator markers, and the model
    that owns its last key."""
    loc = tuple(p for p in err["loc"] if p not in ("[key]", "function-before[_link()]"))
    if len(loc) == 1:
        return loc, LabFile
    parents = [p for p in loc[:-1] if isinstance(p, str) and p in MODELS]
    return loc, MODELS.get(parents[-1]) if parents else None


def _special(err: dict[str, Any], model: type[BaseModel] | None, key: str) -> str | None:
    if err["type"] == "string_type":
        return f"expected a string, got {describe(err.get('input'))}"
    return None


def parse_lab(data: Any, *, name: str = "lab", path: Path | None = None) -> LabSpec:
    """Validate parsed YAML into a LabSpec; ConfigError (one line per problem) otherwise."""
    if data is None:
        raise ConfigError(f"{name}: the file is empty (see configs/labs/two-vms.yaml)")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{name}: the top level is {describe(data)}, not a mapping "
            "(start with `switches:`; see configs/labs/two-vms.yaml)"
        )
    try:
        f = LabFile.model_validate(data)
    except ValidationError as exc:
        lines = render_errors(exc, locate=_locate, docs=DOCS, special=_special, suggest=False)
        raise ConfigError("\n".join(f"{name}: {line}" for line in lines)) from None
    lab = f.name
    if lab is None:
        stem = path.stem if path is not None else ""
        try:
            lab = lab_name(stem)
        except ValueError:
            raise ConfigError(
                f"{name}: name: the file name {stem!r} is no valid lab name (add `name: mylab`: "
                "1-16 characters from A-Z a-z 0-9 _ -)"
            ) from None
    try:
        return resolve(f, lab, path)
    except Problems as p:
        raise ConfigError(
            "\n".join(f"{name}: {loc_text(loc)}: {m}" for loc, m in p.problems)
        ) from None


def load_lab(path: str | Path) -> LabSpec:
    """Read and check a lab file (YAML).  Blocking."""
    data = read_yaml(path, syntax="")
    return parse_lab(data, name=str(path), path=Path(path).absolute())
