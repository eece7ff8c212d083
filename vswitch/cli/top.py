"""`vswitch top`: a live view of per-port rates, like `snabb top` or `ovs-dpctl-top`.

Every interval it asks the daemon for its ports and switch counters over one control
connection, and shows per-port rx/tx packets and bits per second, drops per second and in
total, and the MAC addresses each port owns.  Rates come from counter differences over
the time measured between samples.  On a terminal it draws in place (rich's Live, on the
alternate screen); otherwise it prints one table per interval, like `top -b`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from vswitch.cli.ask import control_path
from vswitch.cli.output import drops, si
from vswitch.control import Client
from vswitch.errors import ControlError


@dataclass
class Sample:
    t: float  # time.monotonic()
    ports: list[dict[str, Any]]
    switch: dict[str, int]


def _rate(cur: int, prev: int, dt: float) -> float:
    return max(0, cur - prev) / dt if dt > 0 else 0.0


def render(path: str | Path, cur: Sample, prev: Sample | None, interval: float) -> RenderableType:
    dt = cur.t - prev.t if prev else 0.0
    before = {p["name"]: p.get("counters") or {} for p in prev.ports} if prev else {}
    prev_queues = (
        {p["name"]: {q["index"]: q for q in p.get("queues") or []} for p in prev.ports}
        if prev
        else {}
    )
    sw, psw = cur.switch, prev.switch if prev else {}
    flooded = si(_rate(sw.get("flooded", 0), psw.get("flooded", 0), dt)) if prev else "-"
    head = Text.assemble(
        ("vswitch top", "bold"),
        f"  {path}  {time.strftime('%H:%M:%S')}  ",
        f"fdb {sw.get('fdb_entries', 0)}/{sw.get('fdb_capacity', 0)}  ",
        f"flooded {flooded}/s  ",
        f"{len(cur.ports)} port(s)  every {interval:g}s, Ctrl-C quits",
    )
    t = Table(box=None, header_style="bold reverse", pad_edge=False, expand=False)
    t.add_column("PORT")
    t.add_column("STATE")
    for col in ("RX PPS", "RX BPS", "TX PPS", "TX BPS", "DROP/S", "DROPS", "MACS"):
        t.add_column(col, justify="right")
    for p in cur.ports:
        c = p.get("counters") or {}
        state = str(p.get("state", "?"))
        style = {"up": "green", "broken": "bold red"}.get(state, "yellow")
        if p["name"] in before:
            b = before[p["name"]]
            rx_pps = si(_rate(c.get("rx_packets", 0), b.get("rx_packets", 0), dt))
            rx_bps = si(8 * _rate(c.get("rx_bytes", 0), b.get("rx_bytes", 0), dt), "b")
            tx_pps = si(_rate(c.get("tx_packets", 0), b.get("tx_packets", 0), dt))
            tx_bps = si(8 * _rate(c.get("tx_bytes", 0), b.get("tx_bytes", 0), dt), "b")
            drop_ps = si(_rate(drops(c), drops(b), dt))
        else:
            rx_pps = rx_bps = tx_pps = tx_bps = drop_ps = "-"
        t.add_row(
            str(p["name"]),
            Text(state, style=style),
            rx_pps,
            rx_bps,
            tx_pps,
            tx_bps,
            Text(drop_ps, style="red" if drop_ps not in ("-", "0") else ""),
            str(drops(c)),
            str(c.get("fdb_count", 0)),
        )
        _queue_rows(t, p, prev_queues.get(p["name"]), dt)
    return Group(head, Text(""), t)


def _queue_rows(t: Table, p: dict[str, Any], prev: dict[int, Any] | None, dt: float) -> None:
    """A multiqueue port's pairs under it: what the switch took from each pair's TX ring
    (RX PPS) and gave each pair's RX ring (TX PPS)."""
    queues = {q["index"]: q for q in p.get("queues") or []}
    pairs = sorted({q["pair"] for q in queues.values() if "pair" in q})
    if len(pairs) < 2:
        return
    for k in pairs:
        cells = []
        for ring in (2 * k + 1, 2 * k):  # the guest's TX ring is what the switch receives
            q = queues.get(ring) or {}
            b = (prev or {}).get(ring)
            if b is None or not q:
                cells += ["-", "-"]
                continue
            cells.append(si(_rate(q.get("packets", 0), b.get("packets", 0), dt)))
            cells.append(si(8 * _rate(q.get("bytes", 0), b.get("bytes", 0), dt), "b"))
        ready = all((queues.get(r) or {}).get("ready") for r in (2 * k, 2 * k + 1))
        t.add_row(f"  queue {k}", Text("ready" if ready else "off", style="dim"), *cells,
                  "", "", "")  # fmt: skip


async def sample(client: Client) -> Sample:
    ports = await client.call("ports")
    stats = await client.call("stats")
    return Sample(time.monotonic(), ports, stats.get("switch") or {})


async def run_top(
    path: str | Path,
    interval: float = 1.0,
    iterations: int | None = None,
    console: Console | None = None,
) -> None:
    """Refresh every `interval` seconds, `iterations` times (None: until Ctrl-C).

    A daemon that goes away is shown as such and retried each interval."""
    console = console or Console()
    client = Client(path)
    prev: Sample | None = None
    live = Live(console=console, screen=True, auto_refresh=False) if console.is_terminal else None
    try:
        if live is not None:
            live.start()
        n = 0
        while iterations is None or n < iterations:
            started = time.monotonic()
            try:
                cur = await sample(client)
                view = render(path, cur, prev, interval)
                prev = cur
            except ControlError as exc:
                await client.close()
                prev = None
                view = Text(f"vswitch top: {exc}; retrying every {interval:g}s", style="red")
            if live is not None:
                live.update(view, refresh=True)
            else:
                console.print(view)
                console.print()
            n += 1
            if iterations is None or n < iterations:
                await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
    finally:
        if live is not None:
            live.stop()
        await client.close()


@click.command()
@click.option("-i", "--interval", type=click.FloatRange(min=0.1), default=1.0, show_default=True,
              help="Seconds between refreshes.")  # fmt: skip
@click.option("-n", "--iterations", type=click.IntRange(min=1), help="Stop after N refreshes.")
@click.option("--control", type=click.Path(path_type=Path), help="The daemon's control socket.")
@click.option("--config", type=click.Path(dir_okay=False, path_type=Path), help="Config file.")
def top(interval: float, iterations: int | None, control: Path | None, config: Path | None) -> None:
    """Live per-port rates: rx/tx packets and bits per second, drops, MACs (Ctrl-C quits)."""
    path = control_path(control, config)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run_top(path, interval, iterations))
