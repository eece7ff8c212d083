"""Prometheus metrics: `metrics: {listen: HOST:PORT}` serves /metrics.

prometheus_client's own HTTP server runs in its thread; at each scrape a custom Collector
asks the event loop for a snapshot (the port table belongs to the loop: a reload may be
changing it) and turns the fast path's counters into metric families.  Nothing is kept
between scrapes and nothing runs on the loop but taking the snapshot (microseconds).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from vswitch import __version__
from vswitch.errors import StartupError

log = logging.getLogger("vswitch.metrics")

SNAPSHOT_TIMEOUT = 5.0

# struct vs_port_stats field -> (metric family, extra labels, help).  Counters get the
# _total suffix from prometheus_client.  Fields missing here are still exported, as
# vswitch_port_<field>_total, so a new C counter is never silently dropped.
_RX_DROP = "Frames from the port dropped by the switch, by reason"
_TX_DROP = "Frames for the port the switch could not deliver, by reason"
PORT_COUNTERS: dict[str, tuple[str, dict[str, str], str]] = {
    "rx_packets": ("vswitch_port_rx_packets", {}, "Frames the switch took from the port"),
    "rx_bytes": ("vswitch_port_rx_bytes", {}, "Bytes the switch took from the port"),
    "tx_packets": ("vswitch_port_tx_packets", {}, "Frames the switch gave to the port"),
    "tx_bytes": ("vswitch_port_tx_bytes", {}, "Bytes the switch gave to the port"),
    "rx_drop_runt": ("vswitch_port_rx_drops", {"reason": "runt"}, _RX_DROP),
    "rx_drop_too_long": ("vswitch_port_rx_drops", {"reason": "too_long"}, _RX_DROP),
    "rx_drop_bad_hdr": ("vswitch_port_rx_drops", {"reason": "bad_hdr"}, _RX_DROP),
    "rx_drop_bad_desc": ("vswitch_port_rx_drops", {"reason": "bad_desc"}, _RX_DROP),
    "tx_drop_no_buffer": ("vswitch_port_tx_drops", {"reason": "no_buffer"}, _TX_DROP),
    "tx_drop_port_down": ("vswitch_port_tx_drops", {"reason": "port_down"}, _TX_DROP),
    "tx_drop_too_long": ("vswitch_port_tx_drops", {"reason": "too_long"}, _TX_DROP),
    "rx_drop_desc_limit": ("vswitch_port_rx_drops", {"reason": "desc_limit"}, _RX_DROP),
    "rx_drop_disabled": ("vswitch_port_rx_drops", {"reason": "ring_disabled"}, _RX_DROP),
    "tx_drop_desc_limit": ("vswitch_port_tx_drops", {"reason": "desc_limit"}, _TX_DROP),
    "rx_drop_vlan": ("vswitch_port_rx_drops", {"reason": "vlan_not_allowed"}, _RX_DROP),
    "rx_drop_vlan_tagged": ("vswitch_port_rx_drops", {"reason": "tagged_on_access"}, _RX_DROP),
    "rx_drop_qinq": ("vswitch_port_rx_drops", {"reason": "qinq"}, _RX_DROP),
    "descs": (
        "vswitch_port_descriptors",
        {},
        "Descriptors read from the port's rings (the work its buffers cost)",
    ),
    "tx_flood": ("vswitch_port_tx_flood", {}, "Copies sent to the port by flooding"),
    "ring_errors": ("vswitch_port_ring_errors", {}, "Times a ring of the port was stopped"),
    "kicks": ("vswitch_port_kicks", {}, "Wake-ups from the guest"),
    "calls": ("vswitch_port_calls", {}, "Interrupts sent to the guest"),
    "fdb_learned": ("vswitch_port_fdb_learned", {}, "MAC addresses learned on the port"),
    "fdb_moved": ("vswitch_port_fdb_moved", {}, "MAC addresses that moved to the port"),
    "fdb_limit": (
        "vswitch_port_fdb_limit_hits",
        {},
        "Source addresses not learned: the port's mac_limit was reached",
    ),
    "cap_packets": ("vswitch_port_capture_packets", {}, "Frames copied to a capture"),
    "cap_drops": ("vswitch_port_capture_drops", {}, "Frames a capture missed (slow reader)"),
    "cap_filtered": (
        "vswitch_port_capture_filtered",
        {},
        "Frames a capture's filter left out (never copied)",
    ),
    "tx_mirror": ("vswitch_port_tx_mirror", {}, "Mirror copies given to the port (mirror:)"),
    "mirror_drops": (
        "vswitch_port_mirror_drops",
        {},
        "Mirror copies the port had no room for (also counted in its tx drops)",
    ),
    # VXLAN ports (struct vs_vxlan_stats)
    "rx_datagrams": ("vswitch_port_vxlan_rx_datagrams", {}, "VXLAN datagrams read"),
    "tx_datagrams": (
        "vswitch_port_vxlan_tx_datagrams",
        {},
        "VXLAN datagrams sent (a flooded frame: one per remote)",
    ),
    "rx_drop_vxlan_short": ("vswitch_port_rx_drops", {"reason": "vxlan_short"}, _RX_DROP),
    "rx_drop_vxlan_flags": ("vswitch_port_rx_drops", {"reason": "vxlan_flags"}, _RX_DROP),
    "rx_drop_vxlan_vni": ("vswitch_port_rx_drops", {"reason": "vxlan_vni"}, _RX_DROP),
    "rx_drop_vxlan_remote": ("vswitch_port_rx_drops", {"reason": "vxlan_remote"}, _RX_DROP),
    "rx_drop_vxlan_remotes_full": (
        "vswitch_port_rx_drops",
        {"reason": "vxlan_remotes_full"},
        _RX_DROP,
    ),
    "rx_drop_vxlan_trunc": ("vswitch_port_rx_drops", {"reason": "vxlan_truncated"}, _RX_DROP),
    "tx_drop_vxlan_send": ("vswitch_port_tx_drops", {"reason": "vxlan_send"}, _TX_DROP),
    "remotes_learned": ("vswitch_port_vxlan_remotes_learned", {}, "Remotes learned"),
}
PORT_GAUGES = {"fdb_count": ("vswitch_port_fdb_entries", "Dynamic MAC addresses on the port")}
# struct vs_switch_stats field -> (family, kind, help)
SWITCH_METRICS = {
    "fdb_entries": ("vswitch_fdb_entries", "gauge", "Entries in the MAC table"),
    "fdb_capacity": ("vswitch_fdb_capacity", "gauge", "Capacity of the MAC table"),
    "fdb_full": ("vswitch_fdb_full", "counter", "Sources not learned: the MAC table was full"),
    "fdb_aged": ("vswitch_fdb_aged", "counter", "Dynamic MAC addresses aged out"),
    "flooded": ("vswitch_flooded_frames", "counter", "Frames flooded (unknown/broadcast)"),
    "poll_sleeps": ("vswitch_poll_sleeps", "counter", "Times the poll thread went to sleep"),
    "poll_loops": ("vswitch_poll_loops", "counter", "Busy-poll iterations of the poll thread"),
    "pause_ns_last": (
        "vswitch_poll_pause_last_seconds",
        "gauge",
        "How long the poll thread stayed parked for the control plane, last time",
    ),
    "pause_ns_max": (
        "vswitch_poll_pause_max_seconds",
        "gauge",
        "The longest the poll thread stayed parked for the control plane",
    ),
}

Snapshot = dict[str, Any]


class SwitchCollector(Collector):
    """Reads the switch at scrape time through `snapshot()`, run on the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot: Callable[[], Snapshot]) -> None:
        self.loop = loop
        self.snapshot = snapshot

    def _take(self) -> Snapshot:
        """Runs snapshot() on the loop and waits for it: call from another thread only."""
        fut: concurrent.futures.Future[Snapshot] = concurrent.futures.Future()

        def take() -> None:
            try:
                fut.set_result(self.snapshot())
            except BaseException as exc:
                fut.set_exception(exc)

        self.loop.call_soon_threadsafe(take)
        return fut.result(SNAPSHOT_TIMEOUT)

    def collect(self) -> Iterator[Metric]:
        return iter(families(self._take()))


def families(snap: Snapshot) -> list[Metric]:
    """The metric families for one snapshot (see Switch.metrics_snapshot)."""
    out: dict[str, Metric] = {}

    def counter(name: str, doc: str, labels: list[str]) -> Metric:
        if name not in out:
            out[name] = CounterMetricFamily(name, doc, labels=labels)
        return out[name]

    def gauge(name: str, doc: str, labels: list[str]) -> Metric:
        if name not in out:
            out[name] = GaugeMetricFamily(name, doc, labels=labels)
        return out[name]

    info = InfoMetricFamily("vswitch_build", "vswitch version")
    info.add_metric([], {"version": __version__})
    out["vswitch_build"] = info
    gauge("vswitch_start_time_seconds", "When the switch started (Unix time)", []).add_metric(
        [], snap["start_time"]
    )
    rl = snap["reloads"]
    fam = counter("vswitch_config_reloads", "Configuration reloads, by result", ["result"])
    fam.add_metric(["success"], rl["ok"])
    fam.add_metric(["failure"], rl["failed"])
    gauge(
        "vswitch_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully (Unix time)",
        [],
    ).add_metric([], rl["last_ok"])
    for field, value in snap["switch"].items():
        name, kind, doc = SWITCH_METRICS.get(field, (f"vswitch_{field}", "counter", field))
        if field.startswith("pause_ns"):
            value = value / 1e9  # nanoseconds in C, seconds in Prometheus
        (gauge if kind == "gauge" else counter)(name, doc, []).add_metric([], value)

    for p in snap["ports"]:
        name = p["name"]
        up = gauge("vswitch_port_up", "1 when the port's link is up", ["port"])
        up.add_metric([name], 1 if p["state"] == "up" else 0)
        gauge("vswitch_port_info", "Port type and state", ["port", "type", "state"]).add_metric(
            [name, p["type"], p["state"]], 1
        )
        gauge("vswitch_port_mtu", "The port's MTU", ["port"]).add_metric([name], p["mtu"])
        doc = "Dynamic MAC addresses the port may own (0 = no limit)"
        gauge("vswitch_port_mac_limit", doc, ["port"]).add_metric([name], p["mac_limit"])
        for field, value in p["counters"].items():
            if field in PORT_GAUGES:
                fname, doc = PORT_GAUGES[field]
                gauge(fname, doc, ["port"]).add_metric([name], value)
                continue
            fname, extra, doc = PORT_COUNTERS.get(field, (f"vswitch_port_{field}", {}, field))
            fam = counter(fname, doc, ["port", *extra])
            fam.add_metric([name, *extra.values()], value)
    doc = "Frames dropped on a VLAN: not allowed on the trunk, or tagged on an access port"
    for vlan, c in snap.get("vlans", {}).items():
        fam = counter("vswitch_vlan_drops", doc, ["vlan", "reason"])
        fam.add_metric([str(vlan), "not_allowed"], c["not_allowed"])
        fam.add_metric([str(vlan), "tagged_on_access"], c["tagged"])
    return list(out.values())


class MetricsServer:
    """prometheus_client's HTTP server on HOST:PORT, started and stopped from the loop."""

    def __init__(self, host: str, port: int, snapshot: Callable[[], Snapshot]) -> None:
        self.host = host
        self.port = port
        self._snapshot = snapshot
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """Where it listens (with the real port when 0 was asked)."""
        port = self._httpd.server_address[1] if self._httpd else self.port
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{port}"

    async def start(self) -> None:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(SwitchCollector(asyncio.get_running_loop(), self._snapshot))
        ProcessCollector(namespace="vswitch", registry=registry)
        try:
            # Binding may resolve a host name: not on the loop.
            self._httpd, self._thread = await asyncio.to_thread(
                start_http_server, self.port, self.host, registry
            )
        except OSError as exc:
            raise StartupError(
                f"metrics: cannot listen on {self.host}:{self.port}: {exc.strerror or exc} "
                "(fix metrics.listen, or stop what uses that port)"
            ) from None
        log.info("metrics: serving Prometheus metrics on http://%s/metrics", self.address)

    async def stop(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        # shutdown() waits for serve_forever to notice (up to its 0.5 s poll): off the loop.
        await asyncio.to_thread(httpd.shutdown)
        httpd.server_close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5)
            self._thread = None
