"""`metrics: {listen: ...}`: Prometheus text scraped over HTTP, checked against the counters."""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.ops import VGuest, config, frames, wait_until

from vswitch.control import request
from vswitch.daemon.switch import Switch
from vswitch.errors import StartupError

MA, MB, MC = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "02:00:00:00:00:0c"


def fetch(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.headers.get("Content-Type", ""), r.read().decode()


async def scrape(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of one scrape."""
    ctype, text = await asyncio.to_thread(fetch, f"http://{address}/metrics")
    assert ctype.startswith("text/plain; version=0.0.4")
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def port_metric(m: dict[Any, float], name: str, port: str, **labels: str) -> float:
    return m[(name, tuple(sorted({"port": port, **labels}.items())))]


async def test_metrics_match_the_counters(tmp_path: Path) -> None:
    cfg = config(tmp_path, ["a", "b"], metrics={"listen": "127.0.0.1:0"}, switch={"mac_age": 1})
    async with Switch(cfg) as sw:
        address = (await request(sw.config.control, "stats"))["metrics"]
        assert address.startswith("127.0.0.1:") and not address.endswith(":0")
        a, b = VGuest(sw.ports["a"].cfg.path), VGuest(sw.ports["b"].cfg.path)
        await a.start()
        await b.start()
        try:
            b.post_rx(20)  # room for 20 frames: the rest is dropped (no_buffer)
            await wait_until(lambda: all(p.info()["state"] == "up" for p in sw.ports.values()))
            await a.send(*frames(MB, MA, 30, size=128))
            await a.send(*frames(MB, MC, 1, size=128))
            await a.drain_tx()
            await wait_until(lambda: sw.ports["b"].info()["counters"]["tx_drop_no_buffer"] == 11)
            ports = {p["name"]: p for p in await request(sw.config.control, "ports")}
            st = await request(sw.config.control, "stats")
            m = await scrape(address)

            for name in ("a", "b"):
                c = ports[name]["counters"]
                for field, metric in [
                    ("rx_packets", "vswitch_port_rx_packets_total"),
                    ("rx_bytes", "vswitch_port_rx_bytes_total"),
                    ("tx_packets", "vswitch_port_tx_packets_total"),
                    ("tx_bytes", "vswitch_port_tx_bytes_total"),
                    ("tx_flood", "vswitch_port_tx_flood_total"),
                    ("fdb_learned", "vswitch_port_fdb_learned_total"),
                    ("fdb_count", "vswitch_port_fdb_entries"),
                    ("kicks", "vswitch_port_kicks_total"),
                ]:
                    assert port_metric(m, metric, name) == c[field], (name, metric)
                assert port_metric(m, "vswitch_port_up", name) == 1
                assert port_metric(m, "vswitch_port_info", name, type="vhost-user", state="up")
                assert port_metric(m, "vswitch_port_mac_limit", name) == 4096
                assert port_metric(m, "vswitch_port_mtu", name) == 1500
            assert port_metric(m, "vswitch_port_rx_packets_total", "a") == 31
            assert port_metric(m, "vswitch_port_rx_bytes_total", "a") == 31 * 128
            assert port_metric(m, "vswitch_port_tx_packets_total", "b") == 20
            drops = "vswitch_port_tx_drops_total"
            assert port_metric(m, drops, "b", reason="no_buffer") == 11
            assert port_metric(m, drops, "b", reason="port_down") == 0
            assert port_metric(m, "vswitch_port_rx_drops_total", "a", reason="runt") == 0
            assert port_metric(m, "vswitch_port_fdb_learned_total", "a") == 2
            assert m[("vswitch_fdb_entries", ())] == st["switch"]["fdb_entries"] == 2
            assert m[("vswitch_fdb_capacity", ())] == st["switch"]["fdb_capacity"]
            assert m[("vswitch_flooded_frames_total", ())] == st["switch"]["flooded"] == 31
            assert m[("vswitch_build_info", (("version", "0.1.0"),))] == 1
            assert m[("vswitch_config_reloads_total", (("result", "success"),))] == 0
            assert m[("vswitch_process_open_fds", ())] > 0

            # Aging events: mac_age is 1 s, so both addresses go within a few seconds.
            await wait_until(lambda: sw.dp is not None and sw.dp.switch_stats()["fdb_aged"] == 2)
            m = await scrape(address)
            assert m[("vswitch_fdb_aged_total", ())] == 2
            assert m[("vswitch_fdb_entries", ())] == 0
            assert port_metric(m, "vswitch_port_fdb_entries", "a") == 0
        finally:
            a.close()
            b.close()
        # A port that goes away leaves the scrape; the server keeps serving.
        await sw.remove_port("b")
        m = await scrape(address)
        assert ("vswitch_port_up", (("port", "b"),)) not in m
        assert port_metric(m, "vswitch_port_up", "a") == 0  # its guest left


async def test_metrics_listen_errors_are_clear(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        cfg = config(tmp_path, ["a"], metrics={"listen": f"127.0.0.1:{port}"})
        with pytest.raises(StartupError, match=f"metrics: cannot listen on 127.0.0.1:{port}"):
            async with Switch(cfg):
                pass
    assert not (tmp_path / "ctl.sock").exists()  # nothing is half-started
