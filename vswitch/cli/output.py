"""Human output of the CLI: aligned tables for ports, the MAC table, counters, reloads,
durations, and the one way a command fails (an `error:` line per message line, then an
exit code)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click

from vswitch.config.vlans import format_trunks

EXIT_RUNTIME = 1  # startup failed, daemon unreachable, the daemon refused a command
EXIT_USAGE = 2  # bad config or command line (click uses 2 too)
IDLE_NOTE = 10.0  # seconds without a front end before `vswitch ports` says so


def fail(msg: str, code: int = EXIT_RUNTIME) -> NoReturn:
    for line in msg.splitlines() or [""]:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


def table(header: Sequence[str], rows: list[list[str]], right: set[int] = frozenset()) -> list[str]:
    """Columns padded to their widest cell, two spaces apart; `right` columns right-aligned."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def fmt(cells: Sequence[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return [fmt(header)] + [fmt(r) for r in rows]


def drops(counters: dict[str, Any]) -> int:
    """Frames the switch dropped on the port (a capture's own drops are not the port's)."""
    return sum(
        v for k, v in counters.items() if "drop" in k and k != "cap_drops" and isinstance(v, int)
    )


def format_ports(ports: list[dict[str, Any]]) -> str:
    """The human table for `vswitch ports`."""
    header = ["NAME", "TYPE", "STATE", "RX-PKTS", "RX-BYTES", "TX-PKTS", "TX-BYTES", "DROPS"]
    rows, details = [], []
    for p in ports:
        c = p.get("counters") or {}
        nums = [c.get("rx_packets", 0), c.get("rx_bytes", 0), c.get("tx_packets", 0)]
        nums += [c.get("tx_bytes", 0), drops(c)]
        rows.append(
            [str(p.get("name", "?")), str(p.get("type", "?")), str(p.get("state", "?"))]
            + [str(n) for n in nums]
        )
        name = p.get("name", "?")
        pad = " " * len(str(name))
        feats = " ".join(p.get("features") or []) or "-"
        proto = " ".join(p.get("protocol_features") or []) or "-"
        peer = p.get("peer") or "none"
        details.append(
            f"{name}: peer {peer}, mtu {p.get('mtu', '?')}, features {feats}, "
            f"protocol features {proto}"
        )
        queues = p.get("queues") or []
        if queues:
            qs = ", ".join(
                f"{q.get('index')} (size {q.get('size')}"
                + (", enabled" if q.get("enabled") else "")
                + (", ready" if q.get("ready") else "")
                + ")"
                for q in queues
            )
            details.append(f"{pad}  queues {qs}")
        extra = []
        if p.get("vlan_mode") == "trunk":
            native = f", native {p['native_vlan']}" if p.get("native_vlan") else ""
            extra.append(f"trunk {format_trunks(tuple(p.get('trunks') or ()))}{native}")
        elif p.get("vlan"):
            extra.append(f"vlan {p['vlan']}")
        if "mac_limit" in p:
            limit = p["mac_limit"] or "none"
            extra.append(f"macs {c.get('fdb_count', 0)} (limit {limit})")
        if p.get("capture"):
            extra.append("capture running")
        mig = p.get("migration") or {}
        if mig.get("logging"):
            extra.append(f"migrating: dirty logging on, {mig.get('pages_marked', 0)} pages marked")
        elif mig.get("pages_marked"):
            extra.append(f"dirty logging off ({mig['pages_marked']} pages marked while it was on)")
        mirror = p.get("mirror")
        if mirror:
            extra.append(
                f"mirror of {', '.join(mirror['from'])} ({mirror['direction']}): "
                f"{c.get('tx_mirror', 0)} copies, {c.get('mirror_drops', 0)} dropped"
            )
        if extra:
            details.append(f"{pad}  {', '.join(extra)}")
        if p.get("error"):
            details.append(f"{pad}  error: {p['error']}")
        idle = p.get("idle_seconds")
        if idle is not None and idle >= IDLE_NOTE:
            details.append(f"{pad}  {idle_note(p, idle)}")
    lines = table(header, rows, right=set(range(3, 8)))
    return "\n".join(lines + (["", *details] if details else []))


def idle_note(p: dict[str, Any], idle: float) -> str:
    """Why a vhost-user port may have no front end: how long, and who can reach its socket
    (QEMU retries a socket it may not open for ever, and says so only in its own log)."""
    secs = int(idle)
    note = f"no front end for {secs} s" if secs < 60 else f"no front end for {short_duration(secs)}"
    sock = p.get("socket")
    path = p.get("path", "?")
    if p.get("mode") == "client":
        if not sock:
            return f"{note}; no socket at {path} yet (the front end listens there)"
        return f"{note}; the front end's socket {sock_desc(sock)}"
    if not sock:
        return f"{note}; the socket {path} is missing (removed from outside?)"
    line = f"{note}; socket {sock_desc(sock)}: {who_can_connect(sock)}"
    if not _mode(sock) & 0o022:  # nobody but its owner (and root)
        line += " (libvirt runs QEMU as libvirt-qemu: see docs/libvirt.md)"
    return line


def sock_desc(sock: dict[str, Any]) -> str:
    return f"{sock.get('owner', '?')}:{sock.get('group', '?')} {sock.get('mode', '?')}"


def who_can_connect(sock: dict[str, Any]) -> str:
    """Connecting to a unix socket takes write permission on its file (root always can)."""
    mode = _mode(sock)
    who = [f"user {sock.get('owner')}"] if mode & 0o200 else []
    if mode & 0o020:
        who.append(f"group {sock.get('group')}")
    if mode & 0o002:
        who.append("every user")
    if who in ([], ["user root"]):
        return "only root can connect"
    return " and ".join(who) + " can connect"


def _mode(sock: dict[str, Any]) -> int:
    try:
        return int(str(sock.get("mode")), 8)
    except ValueError:
        return 0


def format_fdb(entries: list[dict[str, Any]]) -> str:
    """The human table for `vswitch fdb`."""
    header = ["MAC", "VLAN", "PORT", "TYPE", "AGE"]
    ordered = sorted(entries, key=lambda e: (e.get("vlan", 0), str(e.get("mac", ""))))
    rows = [
        [
            str(e.get("mac", "?")),
            str(e.get("vlan", 0)),
            str(e.get("port", "?")),
            str(e.get("type", "?")),
            "-" if e.get("type") == "static" else str(e.get("age", "?")),
        ]
        for e in ordered
    ]
    if any("remote" in e for e in ordered):  # VXLAN ports: the host each MAC is behind
        header.append("REMOTE")
        for row, e in zip(rows, ordered, strict=True):
            row.append(str(e.get("remote") or "-"))
    return "\n".join(table(header, rows, right={1, 4}))


def format_stats(stats: dict[str, Any]) -> str:
    """`vswitch stats`: switch-wide counters, then one row per counter, one column per port."""
    sw = stats.get("switch") or {}
    lines = []
    uptime = stats.get("uptime")
    if uptime is not None:
        lines.append(f"uptime {duration(float(uptime))}")
    rl = stats.get("reloads") or {}
    if rl:
        lines.append(f"reloads {rl.get('ok', 0)} ok, {rl.get('failed', 0)} failed")
    if stats.get("metrics"):
        lines.append(f"metrics http://{stats['metrics']}/metrics")
    for port, cap in (stats.get("captures") or {}).items():
        lines.append(f"capture on {port}: {cap.get('frames', 0)} frame(s) sent")
    rows = [[k, str(v)] for k, v in sw.items()]
    if rows:
        lines += ["" if lines else None, *table(["SWITCH", "VALUE"], rows, right={1})]
    ports = stats.get("ports") or {}
    names = list(ports)
    fields: list[str] = []
    for c in ports.values():
        fields += [f for f in c if f not in fields]
    if names:
        prow = [[f] + [str(ports[n].get(f, 0)) for n in names] for f in fields]
        lines += ["", *table(["COUNTER", *names], prow, right=set(range(1, len(names) + 1)))]
    vlans = stats.get("vlans") or {}
    if vlans:
        vrows = [
            [v, str(c.get("not_allowed", 0)), str(c.get("tagged", 0))]
            for v, c in sorted(vlans.items(), key=lambda kv: int(kv[0]))
        ]
        header = ["VLAN", "DROPS-NOT-ALLOWED", "DROPS-TAGGED-ON-ACCESS"]
        lines += ["", *table(header, vrows, right={1, 2})]
    return "\n".join(line for line in lines if line is not None)


def format_reload(result: dict[str, Any]) -> str:
    out = [f"reloaded {result.get('file') or 'the configuration'}"]
    changes = result.get("changes") or []
    out += [f"  {c}" for c in changes] or ["  no changes"]
    out += [f"  not applied: {w}" for w in result.get("warnings") or []]
    return "\n".join(out)


def duration(s: float) -> str:
    """12345 -> '03:25:45' (days first when there are any): the daemon's uptime."""
    d, rest = divmod(int(s), 86400)
    h, rest = divmod(rest, 3600)
    m, sec = divmod(rest, 60)
    return (f"{d}d " if d else "") + f"{h:02d}:{m:02d}:{sec:02d}"


def short_duration(s: float | None) -> str:
    """125 -> '2m05s', 3725 -> '1h02m', None -> '-': a lab's uptime in `lab status`."""
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def si(value: float, unit: str = "") -> str:
    """1234567 -> '1.23M'; for pps and bit rates in `vswitch top`."""
    for factor, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.2f}{prefix}{unit}"
    return f"{value:.0f}{unit}"
