"""scripts/bench's placement method: the probe that runs beside the loop, and
the rule that turns its samples into each measured second's placement and
the per-placement ratios the targets are judged on."""

from __future__ import annotations

import asyncio
import itertools
import os
from pathlib import Path

import pytest
from benchlib import placement
from benchlib.placement import ROUNDS, Placement, by_state
from benchlib.procs import Children
from conftest import need, need_root


def test_probe_samples_the_round_trip_once_a_second(tmp_path: Path) -> None:
    need((os.cpu_count() or 1) >= 2, "the probe needs CPUs 0 and 1")
    need_root()  # real-time priority, as under scripts/bench

    async def run() -> Placement:
        p, kids = Placement(tmp_path), Children(tmp_path)
        p.build()
        assert p.error is None, p.error
        await p.start(kids, 3.5)
        assert p.proc is not None
        await asyncio.wait_for(p.proc.wait(), 15)
        await p.stop(kids)
        return p

    p = asyncio.run(run())
    assert p.proc is not None and p.proc.returncode == 0
    assert len(p.samples) == 3, p.samples
    times = [t for t, _, _ in p.samples]
    assert all(0.9 < b - a < 1.1 for a, b in itertools.pairwise(times)), times
    for _, ns, n in p.samples:
        assert n == ROUNDS
        # A cache line between two cores: tens to hundreds of ns, never 0.
        assert 5 < ns < 5000, ns
    s = p.summary()
    assert s["near_samples"] + s["far_samples"] == 3 and s["timed_out"] == 0


def _probe(samples: list[tuple[float, float, int]]) -> Placement:
    p = Placement(Path("/nonexistent"))
    p.samples = samples
    return p


def test_a_second_is_near_or_far_only_when_every_sample_around_it_agrees() -> None:
    p = _probe([(t, 50.0 if t < 5 else 320.0, ROUNDS) for t in range(10)] + [(10.0, 60, 7)])
    assert p.state(1.0, 2.0) == "near"  # samples 0..3
    assert p.state(7.0, 8.0) == "far"
    assert p.state(4.2, 5.2) == "mixed"  # 4 near, 5 and 6 far
    assert p.state(9.2, 9.9) == "mixed"  # sample 10 timed out (7 round trips)
    assert p.state(30.0, 31.0) == "unknown"


def _rec(system: str, rnd: int, secs: list[tuple[float, str]], size: int = 64) -> dict:
    return {"system": system, "round": rnd, "size": size, "pps": 1,
            "slices": [[i, i + 1, pps, st] for i, (pps, st) in enumerate(secs)]}  # fmt: skip


def test_ratios_compare_seconds_of_one_placement_only() -> None:
    # vswitch drew mostly far seconds, testpmd mostly near ones: the whole
    # measurements would say 0.5x, the same placement says 1.2x near, 1.0x far.
    near, far = "near", "far"
    results = [
        _rec("vswitch", 1, [(12e6, near)] * 3 + [(5e6, far)] * 7),
        _rec("testpmd", 1, [(10e6, near)] * 8 + [(5e6, far)] * 2),
        _rec("vswitch", 2, [(12e6, near)] * 4 + [(5e6, far)] * 6),
        _rec("testpmd", 2, [(10e6, near)] * 9 + [(5e6, "mixed")]),
        _rec("vswitch-100kmac", 1, [(11.4e6, near)] * 10),
    ]
    s = by_state(results, [64], ("vswitch-100kmac",))
    r = s["near"]["ratios"]["64"]["vswitch/testpmd"]
    assert r["median"] == pytest.approx(1.2) and r["n"] == 2
    assert s["far"]["ratios"]["64"]["vswitch/testpmd"]["median"] == pytest.approx(1.0)
    assert s["far"]["ratios"]["64"]["vswitch/testpmd"]["n"] == 0  # round 2: no far testpmd
    assert s["near"]["ratios"]["64"]["vswitch/ovs"] is None
    assert s["near"]["scale"]["vswitch-100kmac"]["median"] == pytest.approx(0.95)
    assert s["near"]["seconds"]["64"] == {"vswitch": 7, "testpmd": 17, "vswitch-100kmac": 10}
    assert s["near"]["pps"]["64"]["testpmd"]["n"] == 17
    assert placement.seconds_by_state(results[3], "mixed") == [5e6]
