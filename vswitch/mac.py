"""MAC address helpers: 48-bit ints with the first octet in the top byte (as in fastpath.h)."""

from __future__ import annotations

import re

_MAC_RE = re.compile(r"^[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}$")

BROADCAST = 0xFFFF_FFFF_FFFF
MAC_FIX = 'write it as a quoted string like "52:54:00:00:00:01"'


def parse_mac(s: str) -> int:
    """Parse "52:54:00:00:00:01" (or with dashes, any case) into a 48-bit int.

    Raises ValueError for anything else.
    """
    if not isinstance(s, str) or not _MAC_RE.match(s):
        raise ValueError(f"{s!r} is not a MAC address like 52:54:00:12:34:56")
    return int(s.replace(":", "").replace("-", ""), 16)


def format_mac(mac: int) -> str:
    """Format a 48-bit int as "52:54:00:00:00:01" (lower case)."""
    if not 0 <= mac <= BROADCAST:
        raise ValueError(f"{mac:#x} is not a 48-bit MAC address")
    raw = f"{mac:012x}"
    return ":".join(raw[i : i + 2] for i in range(0, 12, 2))


def is_multicast(mac: int) -> bool:
    """True for group addresses (the I/G bit of the first octet), broadcast included."""
    return bool((mac >> 40) & 0x01)


def is_valid_unicast(mac: int) -> bool:
    """True for an address a port may own: not zero, not multicast, not broadcast."""
    return mac != 0 and not is_multicast(mac)


def parse_static_mac(s: str) -> int:
    """Parse an address a port may own; ValueError "problem (fix)" for anything else."""
    try:
        mac = parse_mac(s.strip())
    except ValueError:
        raise ValueError(f"{s!r} is not a MAC address ({MAC_FIX})") from None
    if mac == 0:
        raise ValueError(f"{s} is the all-zero address (give the guest's own unicast MAC)")
    if is_multicast(mac):
        what = "broadcast" if mac == BROADCAST else "multicast"
        raise ValueError(
            f"{s} is a {what} address; only unicast addresses can be static "
            "(the first octet must be even, e.g. 52:54:00:...)"
        )
    return mac
