"""csrc/fuzz/fuzz_vxlan.c, the libFuzzer harness of VXLAN ports (decapsulation of hostile
datagrams through loopback sockets, learning behind remotes, flooding and encapsulation),
under ASan and UBSan: its seeds replay clean, then it runs for a bounded time.

`PYTHONPATH=tests python tests/fastpath/test_fuzz_vxlan.py seeds` rewrites the seed inputs
in tests/corpus/fuzz_vxlan/ (layout documented in csrc/fuzz/fuzz_vxlan.c).
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import need

ROOT = Path(__file__).resolve().parents[2]
SEEDS = ROOT / "tests" / "corpus" / "fuzz_vxlan"
FUZZ_SECONDS = int(os.environ.get("VSWITCH_FUZZ_SECONDS", "30"))

BCAST, M2, M3, H = "ff" * 6, "525400420002", "525400420003", "525400420009"


def _clang() -> str:
    path = shutil.which("clang-14") or shutil.which("clang")
    need(path is not None, "clang is not installed (Debian: clang libclang-rt-14-dev)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def fuzz_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-vxlan")


def _fuzz(fuzz_out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CLANG=_clang(), FUZZ_OUT=str(fuzz_out))
    return subprocess.run([str(ROOT / "scripts" / "fuzz"), "vxlan", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_fuzz_vxlan_seeds_replay_clean(fuzz_out: Path) -> None:
    seeds = sorted(str(p) for p in SEEDS.iterdir())
    assert len(seeds) >= 4
    r = _fuzz(fuzz_out, "repro", *seeds, timeout=300)
    assert r.returncode == 0, f"a seed input fails:\n{r.stdout}\n{r.stderr[-20000:]}"


def test_fuzz_vxlan_bounded(fuzz_out: Path) -> None:
    r = _fuzz(fuzz_out, str(FUZZ_SECONDS), timeout=FUZZ_SECONDS + 300)
    tail = r.stderr[-20000:]
    assert r.returncode == 0, (
        f"the fuzzer found a problem; reproduce with scripts/fuzz vxlan repro "
        f"{fuzz_out}/artifacts/<file>:\n{tail}"
    )
    assert "Done" in r.stderr and "stat::number_of_executed_units" in r.stderr, tail


# Seed inputs


def _head(flags: int = 0, mtu: int = 1500, vni: int = 42, mac_limit: int = 0) -> bytes:
    return bytes([flags]) + struct.pack("<H", mtu - 68) + vni.to_bytes(3, "little") + bytes(
        [mac_limit]
    )


def _op(op: int, data: bytes = b"") -> bytes:
    return bytes([op]) + struct.pack("<H", len(data)) + data


def _vx(vni: int = 42, flags: int = 0x08, rsv: bytes = b"\0\0\0", last: int = 0) -> bytes:
    return bytes([flags]) + rsv + vni.to_bytes(3, "big") + bytes([last])


def _frame(dst: str, src: str, size: int = 60, tag: int | None = None) -> bytes:
    f = bytes.fromhex(dst) + bytes.fromhex(src)
    if tag is not None:
        f += struct.pack(">HH", 0x8100, tag)
    # IPv4/UDP, so the flow hash reads addresses and ports
    ip = bytes([0x45, 0, 0, 28, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 10, 0, 0, 9])
    f += b"\x08\x00" + ip + struct.pack(">HHHH", 1234, 5678, 8, 0)
    return f + bytes(max(size - len(f), 0))


def fuzz_seeds() -> dict[str, bytes]:
    seeds: dict[str, bytes] = {}
    seeds["flood-then-unicast"] = _head() + b"".join([
        _op(0, _vx() + _frame(BCAST, M2)), _op(3, b"\x20"),
        _op(2, _frame(M2, H)), _op(2, _frame(BCAST, H)), _op(3, b"\x20"),
    ])  # fmt: skip
    good = _frame(BCAST, M2)
    seeds["each-bad-datagram"] = _head(mtu=600) + b"".join([
        _op(0, _vx(flags=0x0C) + good), _op(0, _vx(rsv=b"\0\1\0") + good),
        _op(0, _vx(last=1) + good), _op(0, _vx(vni=43) + good), _op(0, b"\x08\0\0"),
        _op(0, b""), _op(0, _vx() + good[:10]), _op(0, _vx() + _frame(BCAST, M2, 615)),
        _op(1, _vx() + good), _op(0, _vx() + _frame(BCAST, M2, 614)),
        _op(0, _vx() + _frame(BCAST, M2, 618, tag=10)), _op(3, b"\x40"),
    ])  # fmt: skip
    seeds["learn-and-reconfigure"] = _head(flags=1) + b"".join([
        _op(1, _vx() + _frame(BCAST, M3)), _op(0, _vx() + _frame(BCAST, M2)), _op(3, b"\x20"),
        _op(2, _frame(M3, H)), _op(2, _frame(M2, H)), _op(3, b"\x20"),
        _op(5, b"\x02"), _op(2, _frame(M3, H)), _op(3, b"\x20"),
        _op(5, b"\x05"), _op(1, _vx() + _frame(M2, M3)), _op(3, b"\x20"),
    ])  # fmt: skip
    seeds["over-the-buffer"] = _head(mtu=9000) + b"".join([
        _op(4, _vx() + _frame(BCAST, M2, 100)[:100]),
        _op(4, (_vx() + _frame(BCAST, M2, 100)).ljust(300, b"\0")), _op(3, b"\x20"),
    ])  # fmt: skip
    seeds["mac-limit"] = _head(mac_limit=1, flags=2) + b"".join(
        _op(0, _vx() + _frame(BCAST, f"5254004201{i:02x}")) for i in range(8)
    ) + _op(3, b"\x20")  # fmt: skip
    # Port 1 (VNI 7) shares the socket, learning remotes (header bit 2): its datagrams,
    # port 0's, and one of a VNI neither has, interleaved in one read.
    seeds["two-vnis-one-socket"] = _head(flags=4) + b"".join([
        _op(0, _vx(vni=7) + _frame(BCAST, M3)), _op(0, _vx() + _frame(BCAST, M2)),
        _op(1, _vx(vni=9) + _frame(BCAST, M2)), _op(0, _vx(vni=7) + _frame(M2, M3)),
        _op(3, b"\x20"), _op(2, _frame(M3, H)), _op(2, _frame(M2, H)), _op(3, b"\x20"),
    ])  # fmt: skip
    for data in seeds.values():
        assert len(data) <= 4096, "scripts/fuzz runs with -max_len=4096"
    return seeds


def test_seed_files_are_current() -> None:
    for name, data in fuzz_seeds().items():
        path = SEEDS / name
        assert path.exists() and path.read_bytes() == data, (
            f"{path} is stale: run PYTHONPATH=tests python tests/fastpath/test_fuzz_vxlan.py seeds"
        )


if __name__ == "__main__":
    if sys.argv[1:] != ["seeds"]:
        sys.exit("usage: PYTHONPATH=tests python tests/fastpath/test_fuzz_vxlan.py seeds")
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, data in fuzz_seeds().items():
        (SEEDS / name).write_bytes(data)
        print(SEEDS / name, len(data))
