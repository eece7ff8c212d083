"""802.1Q keys of a port: `vlan:` (access), `trunks:` and `native_vlan:` (trunk).

A port with none of them is not VLAN-aware (VLAN 0): its frames pass untouched, as on a
switch without VLANs.  The checks turn the YAML into clean values or raise ValueError
saying what to write instead.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from vswitch.config.fields import describe

VLAN_MIN, VLAN_MAX = 1, 4094  # 0 and 4095 are reserved (IEEE 802.1Q, 9.6)
_RANGE_RE = re.compile(r"^\s*(\d{1,4})\s*-\s*(\d{1,4})\s*$")


def _vid(v: Any, fix: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"expected a VLAN ID, got {describe(v)} ({fix})")
    if not VLAN_MIN <= v <= VLAN_MAX:
        raise ValueError(f"VLAN {v} is out of range {VLAN_MIN}..{VLAN_MAX} ({fix})")
    return v


def access_vlan(v: Any) -> int:
    """`vlan: 10`; 0 is the default, a port that is not VLAN-aware."""
    if v == 0 and not isinstance(v, bool):
        return 0
    return _vid(v, "an access port's VLAN, e.g. vlan: 10")


def native_vlan(v: Any) -> int:
    return _vid(v, "the VLAN a trunk carries untagged, e.g. native_vlan: 1")


def trunk_list(v: Any) -> tuple[int, ...]:
    """`trunks: [10, 20, "100-199"]` -> the VLAN IDs, sorted, each once."""
    fix = 'list VLAN IDs or ranges, e.g. trunks: [10, 20, "100-199"]'
    if isinstance(v, int | str) and not isinstance(v, bool):
        v = [v]
    if not isinstance(v, list | tuple):
        raise ValueError(f"expected a list of VLANs, got {describe(v)} ({fix})")
    if not v:
        raise ValueError(f"a trunk carries at least one VLAN ({fix})")
    out: set[int] = set()
    for item in v:
        if isinstance(item, str):
            m = _RANGE_RE.match(item)
            if not m:
                raise ValueError(f"{item!r} is not a VLAN range ({fix})")
            lo, hi = _vid(int(m.group(1)), fix), _vid(int(m.group(2)), fix)
            if lo > hi:
                raise ValueError(f"range {item!r} runs backwards (write {hi}-{lo})")
            out.update(range(lo, hi + 1))
        else:
            out.add(_vid(item, fix))
    return tuple(sorted(out))


def format_trunks(vlans: tuple[int, ...]) -> str:
    """(10, 20, 21, 22) -> '10,20-22', for messages and tables."""
    parts: list[str] = []
    i = 0
    while i < len(vlans):
        j = i
        while j + 1 < len(vlans) and vlans[j + 1] == vlans[j] + 1:
            j += 1
        parts.append(str(vlans[i]) if i == j else f"{vlans[i]}-{vlans[j]}")
        i = j + 1
    return ",".join(parts)


AccessVlan = Annotated[int, BeforeValidator(access_vlan)]
NativeVlan = Annotated[int | None, BeforeValidator(native_vlan)]
Trunks = Annotated[tuple[int, ...], BeforeValidator(trunk_list)]
