"""The C fast path under AddressSanitizer and UBSan, and fuzzed.

1. The fast path tests (test_fastpath*.py) run again in a subprocess against
   a build made with -fsanitize=address,undefined (scripts/build-inplace
   OUTDIR, loaded through VSWITCH_FASTPATH_DIR), with libasan preloaded into
   the interpreter, which is not itself instrumented.
2. csrc/fuzz/fuzz_vring.c, a libFuzzer harness, replays its seeds and then runs
   for a bounded time (scripts/fuzz).

`PYTHONPATH=tests python tests/fastpath/test_fastpath_sanitizers.py seeds` rewrites the
seed inputs in tests/corpus/fuzz_vring/ (layout documented in csrc/fuzz/fuzz_vring.c).
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
SEEDS = ROOT / "tests" / "corpus" / "fuzz_vring"
SAN_CFLAGS = "-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -O1 -g"
# How long the bounded fuzzing run lasts; raise it for a longer campaign.
FUZZ_SECONDS = int(os.environ.get("VSWITCH_FUZZ_SECONDS", "30"))
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer",
                   "SUMMARY: UndefinedBehaviorSanitizer")


def _libasan() -> str:
    gcc = shutil.which("gcc")
    need(gcc is not None, "gcc is not installed")
    assert gcc is not None
    path = subprocess.run([gcc, "-print-file-name=libasan.so"], capture_output=True,
                          text=True, check=True).stdout.strip()
    need(os.path.isabs(path) and os.path.exists(path), "libasan is not installed (libasan8)")
    return os.path.realpath(path)


@pytest.fixture(scope="module")
def asan_build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fastpath-asan")
    env = dict(os.environ, VSWITCH_CFLAGS=SAN_CFLAGS,
               VSWITCH_LDFLAGS="-fsanitize=address,undefined", PYTHON=sys.executable)
    r = subprocess.run([str(ROOT / "scripts" / "build-inplace"), str(out)], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"sanitizer build failed:\n{r.stdout}\n{r.stderr}"
    assert list((out / "vswitch").glob("_fastpath*.so"))
    return out


def test_fastpath_tests_pass_under_asan_and_ubsan(asan_build: Path) -> None:
    env = dict(os.environ)
    env.pop("PYTEST_ADDOPTS", None)
    env.update(
        VSWITCH_FASTPATH_DIR=str(asan_build),
        LD_PRELOAD=_libasan(),
        # CPython leaks by design at exit; the fuzzer checks the C side for leaks.
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0:halt_on_error=1",
        UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1",
    )
    tests = sorted(str(p) for p in Path(__file__).parent.glob("test_fastpath*.py")
                   if p.name != Path(__file__).name)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o",
         "addopts=", *tests],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    out = r.stdout + r.stderr
    found = [m for m in SANITIZER_MARKS if m in out]
    assert not found, f"sanitizer reports ({found}):\n{out[-20000:]}"
    assert r.returncode == 0, f"fast path tests failed under ASan/UBSan:\n{out[-20000:]}"
    assert " passed" in r.stdout


def _clang() -> str:
    path = shutil.which("clang-14") or shutil.which("clang")
    need(path is not None, "clang is not installed (Debian: clang libclang-rt-14-dev)")
    assert path is not None
    return path


@pytest.fixture(scope="module")
def fuzz_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _fuzz(fuzz_out: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CLANG=_clang(), FUZZ_OUT=str(fuzz_out))
    return subprocess.run([str(ROOT / "scripts" / "fuzz"), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_fuzz_seeds_replay_clean(fuzz_out: Path) -> None:
    seeds = sorted(str(p) for p in SEEDS.iterdir())
    assert len(seeds) >= 3
    r = _fuzz(fuzz_out, "repro", *seeds, timeout=300)
    assert r.returncode == 0, f"a seed input fails:\n{r.stdout}\n{r.stderr[-20000:]}"


def test_fuzz_vring_bounded(fuzz_out: Path) -> None:
    r = _fuzz(fuzz_out, str(FUZZ_SECONDS), timeout=FUZZ_SECONDS + 300)
    tail = r.stderr[-20000:]
    assert r.returncode == 0, (
        f"the fuzzer found a problem; reproduce with scripts/fuzz repro "
        f"{fuzz_out}/artifacts/<file>:\n{tail}"
    )
    assert "Done" in r.stderr and "stat::number_of_executed_units" in r.stderr, tail


# Seed inputs for csrc/fuzz/fuzz_vring.c


_MODERN, _LEGACY = 0b1111, 0b0000  # harness feature bits: MRG, INDIRECT, EVENT_IDX, VERSION_1
_NUM = 8
_GPA0 = 0x1000  # region 0's guest-physical base: (byte 12 = 1) pages


def _ring_offsets(num: int) -> list[tuple[int, int, int]]:
    """The harness's packed layout: (desc, avail, used) of rings 0..3 in region 0."""
    out, pos = [], 0
    for _ in range(4):
        desc = pos
        avail = desc + 16 * num
        used = (avail + 6 + 2 * num + 3) & ~3
        pos = (used + 6 + 8 * num + 15) & ~15
        out.append((desc, avail, used))
    return out


class _Image:
    """Region 0's content, built like a driver would."""

    def __init__(self, hdr_len: int) -> None:
        self.rings = _ring_offsets(_NUM)
        self.brk = self.rings[-1][2] + 6 + 8 * _NUM  # readable data from here on
        self.mem = bytearray(self.brk)
        self.high = 16 << 10  # writable buffers: past the input, zeros
        self.hdr_len = hdr_len
        self.next_id = [0, 0, 0, 0]
        self.avail = [0, 0, 0, 0]

    def put(self, data: bytes) -> int:
        off = (self.brk + 15) & ~15
        self.brk = off + max(len(data), 1)
        self.mem[len(self.mem):] = bytes(self.brk - len(self.mem))
        self.mem[off:off + len(data)] = data
        return _GPA0 + off

    def reserve(self, size: int) -> int:
        off = self.high
        self.high += (size + 15) & ~15
        assert self.high <= 32 << 10
        return _GPA0 + off

    def desc(self, k: int, i: int, addr: int, ln: int, flags: int, nxt: int) -> None:
        d = self.rings[k][0] + 16 * i
        self.mem[d:d + 16] = struct.pack("<QIHH", addr, ln, flags, nxt)

    def publish(self, k: int, head: int) -> None:
        a = self.rings[k][1]
        slot = a + 4 + 2 * (self.avail[k] % _NUM)
        self.mem[slot:slot + 2] = struct.pack("<H", head)
        self.avail[k] += 1
        self.mem[a + 2:a + 4] = struct.pack("<H", self.avail[k])

    def chain(self, k: int, segs: list[tuple[bytes | int, int]], indirect: bool = False) -> None:
        """segs: (readable bytes, flags) or (writable size, flags), or
        (gpa, size, flags) with a given address."""
        descs = []
        for seg, flags in segs:
            if isinstance(seg, int):
                descs.append((self.reserve(seg), seg, flags))
            else:
                descs.append((self.put(seg), len(seg), flags))
        if indirect:
            table = b"".join(
                struct.pack("<QIHH", a, ln, f | (1 if i < len(descs) - 1 else 0), i + 1)
                for i, (a, ln, f) in enumerate(descs))
            head = self.next_id[k]
            self.next_id[k] += 1
            self.desc(k, head, self.put(table), len(table), 4, 0)
        else:
            head = self.next_id[k]
            for i, (a, ln, f) in enumerate(descs):
                last = i == len(descs) - 1
                self.desc(k, head + i, a, ln, f | (0 if last else 1), 0 if last else head + i + 1)
            self.next_id[k] += len(descs)
        self.publish(k, head)

    def tx(self, k: int, frame: bytes, split: bool = False, indirect: bool = False) -> None:
        hdr = bytes(self.hdr_len)
        segs = [(hdr, 0), (frame[:20], 0), (frame[20:], 0)] if split else [(hdr + frame, 0)]
        self.chain(k, segs, indirect)

    def rx(self, k: int, count: int, size: int, indirect: bool = False) -> None:
        for _ in range(count):
            self.chain(k, [(size, 2)], indirect)

    def rx_at(self, k: int, gpa: int, size: int) -> None:
        head = self.next_id[k]
        self.next_id[k] += 1
        self.desc(k, head, gpa, size, 2, 0)
        self.publish(k, head)


def _eth(dst: str, src: str, n: int) -> bytes:
    head = bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + b"\x88\xb5"
    return head + bytes(i & 0xFF for i in range(n - 14))


def _header(nreg: int, feats: tuple[int, int], ops: list[tuple[int, int]],
            log2_num: int = 3, vlans: int = 0, log: int = 0) -> bytes:
    h = bytes([nreg - 1, 0, feats[0], feats[1], log2_num, log2_num])  # 3 = log2(_NUM)
    h += struct.pack("<HH", 1500 - 68, 1500 - 68)
    h += bytes([7 | vlans << 4, 0])  # fdb size 8 and the VLAN modes, packed ring layout
    # gpa base 1 page, the dirty log (byte 13); regions 1, 2: adjacent, 2 and 3 pages
    h += bytes([1, log, 0, 1, 0, 2])
    h += bytes(24)  # raw ring offsets (unused with the packed layout)
    h += bytes(8)  # bases
    h += bytes([len(ops)]) + b"".join(bytes(op) for op in ops)
    assert len(h) == 51 + 2 * len(ops)
    return h


def fuzz_seeds() -> dict[str, bytes]:
    a, b, bc = "02:00:00:00:00:0a", "02:00:00:00:00:0b", "ff:ff:ff:ff:ff:ff"
    seeds = {}
    # Broadcast one way, unicast back: learning, flooding, both directions.
    img = _Image(12)
    img.tx(1, _eth(bc, a, 60))
    img.tx(1, _eth(b, a, 200), split=True)
    img.tx(3, _eth(a, b, 100))
    img.rx(0, 4, 256)
    img.rx(2, 4, 512)
    ops = [(0, 0), (0, 1), (5, 1), (4, 31), (6, 5), (0, 0)]
    seeds["modern-both-ways"] = _header(1, (_MODERN, _MODERN), ops) + bytes(img.mem)
    # Indirect chains and mergeable buffers a big frame must span.
    img = _Image(12)
    img.tx(1, _eth(bc, a, 1400), indirect=True)
    img.tx(1, _eth(bc, a, 64), split=True, indirect=True)
    img.rx(2, 6, 300, indirect=True)
    img.rx(0, 2, 2048)
    ops = [(9, 0x43), (0, 0), (10, 0), (7, 2), (0, 1), (12, 0), (8, 4)]
    seeds["indirect-mergeable-capture"] = _header(1, (_MODERN, _MODERN), ops) + bytes(img.mem)
    # Legacy 10-byte headers, three regions (the rest of memory in 1 and 2).
    img = _Image(10)
    img.tx(1, _eth(bc, a, 90))
    img.tx(3, _eth(bc, b, 1514), split=True)
    img.rx(0, 3, 1600)
    # Receive buffers across the boundary of regions 0 and 1 (adjacent in
    # guest-physical space, apart in the file), and inside region 2.
    img.rx_at(2, _GPA0 + (32 << 10) - 700, 1600)
    img.rx_at(2, _GPA0 + (32 << 10) + 2 * 4096 + 100, 1600)
    ops = [(0, 0), (0, 1), (11, 0x1F), (0, 0), (13, 40), (3, 1)]
    seeds["legacy-three-regions"] = _header(3, (_LEGACY, 0b0100), ops) + bytes(img.mem)
    # Rings of 256 and the harness's own long chains (op 224: a chain from
    # head 0, arg = ring | direct length << 2 | table size << 5 | misaligned
    # table 0x80) and runs of tiny heads (op 225: ring | count << 2): a frame
    # through a misaligned indirect table, TX chains past the frame's
    # descriptor limit (direct and indirect parts), RX buffers past its head
    # limit.
    ops = [(224, 0x01 | 0x20 | 0x80), (0, 0), (225, 0x02 | 15 << 2),
           (224, 0x01 | 7 << 2 | 3 << 5), (0, 0), (224, 0x03 | 3 << 2 | 2 << 5), (0, 1),
           (224, 0x00 | 7 << 2 | 3 << 5), (4, 200)]
    seeds["long-chains-and-tiny-heads"] = _header(1, (_MODERN, _MODERN), ops, 8)
    # VLANs: port 0 a trunk of 10 and 20, port 1 an access port of 10 (byte 10's high bits:
    # 2 | 1 << 2);
    # tagged, untagged, QinQ and runt-tagged frames from the trunk, one with its tag cut
    # across descriptors, and the trunk turned into one with a native VLAN mid-run (op 8,
    # arg 0x10 | mode << 5).
    img = _Image(12)
    vlan = _eth(bc, a, 80)
    tagged = vlan[:12] + b"\x81\x00\x00\x0a" + vlan[12:]
    img.tx(1, tagged, split=True)
    img.tx(1, vlan[:12] + b"\x81\x00\x60\x14" + vlan[12:])
    img.tx(1, vlan[:12] + b"\x88\xa8\x00\x0a\x81\x00\x00\x0a" + vlan[12:])
    img.tx(1, tagged[:17])
    img.tx(3, _eth(bc, b, 70))
    img.tx(1, vlan)
    img.rx(0, 4, 256)
    img.rx(2, 4, 256)
    ops = [(0, 0), (0, 1), (8, 0x10 | 3 << 5), (5, 1), (0, 0), (0, 1)]
    seeds["vlans"] = _header(1, (_MODERN, _MODERN), ops, vlans=2 | 1 << 2) + bytes(img.mem)
    # Migration: LOG_ALL (features bit 4) with a dirty log of 3 bytes at offset 24 of
    # its file (bit 7 on, offset 3 * 8, size 1 + 2), so the pages past 24 are past its
    # end (log_overflow), mergeable buffers across regions 0 and 1, a reconnect (the
    # log mapped again), and LOG_ALL turned off and on while the rings run (op 11).
    img = _Image(12)
    img.tx(1, _eth(bc, a, 1400))
    img.tx(3, _eth(a, b, 100))
    img.rx(0, 4, 700)
    img.rx_at(2, _GPA0 + (32 << 10) - 300, 1600)
    img.rx(2, 2, 400)
    ops = [(0, 0), (0, 1), (11, (_MODERN | 0x10) << 1), (0, 1), (7, 2), (0, 0),
           (11, _MODERN << 1 | 1), (0, 1), (6, 4)]
    seeds["dirty-log"] = _header(1, (_MODERN | 0x10, _MODERN | 0x10), ops,
                                 log=0x80 | 3 | 2 << 3) + bytes(img.mem)
    for data in seeds.values():
        assert len(data) <= 4096, "scripts/fuzz runs with -max_len=4096"
    return seeds


def test_seed_files_are_current() -> None:
    for name, data in fuzz_seeds().items():
        path = SEEDS / name
        assert path.exists() and path.read_bytes() == data, (
            f"{path} is stale: run PYTHONPATH=tests python "
            "tests/fastpath/test_fastpath_sanitizers.py seeds")


if __name__ == "__main__":
    if sys.argv[1:] != ["seeds"]:
        sys.exit("usage: PYTHONPATH=tests python tests/fastpath/test_fastpath_sanitizers.py seeds")
    SEEDS.mkdir(parents=True, exist_ok=True)
    for name, data in fuzz_seeds().items():
        (SEEDS / name).write_bytes(data)
        print(SEEDS / name, len(data))
