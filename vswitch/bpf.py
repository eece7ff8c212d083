"""Capture filters: tcpdump's expressions (pcap-filter(7)) compiled to classic BPF by
libpcap's own compiler, through vswitch._pcap (csrc/build_pcap.py).

`compile_filter("icmp or arp")` returns a `Filter` whose `insns` are the program as the
fast path takes it (struct vs_bpf_insn, the layout of libpcap's struct bpf_insn); the fast
path runs it over each frame before copying it into a capture (csrc/vs_capture.c).  A bad
expression raises FilterError with libpcap's message.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass

from vswitch._pcap import ffi, lib

SNAPLEN = 262144  # what tcpdump uses: the programs return it for "keep the frame"
MAX_EXPRESSION = 4096  # characters; a real filter is a line
INSN = struct.Struct("=HBBI")
assert ffi.sizeof("struct bpf_insn") == INSN.size == 8

# pcap_compile() has been thread-safe since libpcap 1.8, but one pcap_t is not: one per
# compile, and a lock so that an old libpcap is safe too.
_lock = threading.Lock()


class FilterError(ValueError):
    """libpcap refused the expression; the message is libpcap's."""


@dataclass(frozen=True)
class Filter:
    expression: str
    insns: bytes  # len(insns) // 8 instructions

    @property
    def count(self) -> int:
        return len(self.insns) // INSN.size

    def instructions(self) -> list[tuple[int, int, int, int]]:
        """(code, jt, jf, k) per instruction, as `tcpdump -dd` prints them."""
        return [INSN.unpack_from(self.insns, i) for i in range(0, len(self.insns), INSN.size)]

    def matches(self, frame: bytes) -> bool:
        """libpcap's own bpf_filter() on one frame (the reference the fast path is
        tested against)."""
        prog = ffi.from_buffer("struct bpf_insn[]", self.insns)
        return lib.bpf_filter(prog, frame, len(frame), len(frame)) != 0


def compile_filter(expression: str) -> Filter:
    """Compile a pcap filter expression for Ethernet frames; FilterError if libpcap refuses."""
    if not isinstance(expression, str):
        raise FilterError(f"a filter is a string, got {expression!r}")
    if len(expression) > MAX_EXPRESSION:
        raise FilterError(f"the filter is longer than {MAX_EXPRESSION} characters")
    if "\0" in expression:
        raise FilterError("the filter contains a NUL character")
    with _lock:
        p = lib.pcap_open_dead(lib.DLT_EN10MB, SNAPLEN)
        if p == ffi.NULL:
            raise MemoryError("pcap_open_dead failed")
        try:
            prog = ffi.new("struct bpf_program *")
            rc = lib.pcap_compile(p, prog, expression.encode(), 1, lib.PCAP_NETMASK_UNKNOWN)
            if rc != 0:
                raise FilterError(ffi.string(lib.pcap_geterr(p)).decode(errors="replace"))
            try:
                insns = bytes(ffi.buffer(prog.bf_insns, prog.bf_len * INSN.size))
            finally:
                lib.pcap_freecode(prog)
        finally:
            lib.pcap_close(p)
    return Filter(expression, insns)


def libpcap_version() -> str:
    return ffi.string(lib.pcap_lib_version()).decode()
