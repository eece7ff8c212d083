"""The C fast path calls downwards only: no two files of csrc/ call each other in a loop.

A file here is a source with its own header (vs_capture.c with vs_capture.h); a file that
includes a header takes the header's calls (its inline functions) as its own.  An arrow runs
from a file to the one that defines a function it calls, and from a file to a header it
includes; the graph of those arrows must have no cycle (issue 11: the MAC table does not
reach into the switch, a port kind does not call back into forwarding)."""

from __future__ import annotations

import re
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
DEFINITION = re.compile(r"^(?!static\b)[A-Za-z_][\w \*]*?\b(vs_\w+)\s*\([^;]*$", re.M)
CALL = re.compile(r"\b(vs_\w+)\s*\(")
INCLUDE = re.compile(r'^#include "([\w.]+)"', re.M)
COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
# A prototype names a function without calling it.
DECLARATION = re.compile(r"^[A-Za-z_][\w \*]*?\bvs_\w+\s*\([^;{]*\)\s*;", re.M)


def room(name: str) -> str:
    stem = name.rsplit(".", 1)[0]
    return stem if (CSRC / f"{stem}.c").exists() else name


def graph() -> dict[str, set[str]]:
    files = [*sorted(CSRC.glob("vs_*.[ch]")), CSRC / "fastpath.h"]
    text = {f.name: COMMENT.sub("", f.read_text()) for f in files}
    defined: dict[str, str] = {}
    for name, body in text.items():
        if name.endswith(".c"):
            for fn in DEFINITION.findall(body):
                defined.setdefault(fn, room(name))
    edges: dict[str, set[str]] = {}
    for name, body in text.items():
        me = room(name)
        out = edges.setdefault(me, set())
        out.update(room(h) for h in INCLUDE.findall(body) if h in text)
        calls = CALL.findall(DECLARATION.sub("", body))
        out.update(defined[fn] for fn in calls if fn in defined)
        out.discard(me)
    return edges


def test_the_graph_sees_the_calls() -> None:
    edges = graph()
    assert "vs_vring_rx" in edges["vs_forward"], edges["vs_forward"]
    assert "vs_fdb" in edges["vs_switch"], edges["vs_switch"]
    assert "vs_capture" in edges["vs_vring_rx"], edges["vs_vring_rx"]


def test_no_c_file_calls_back_into_one_that_calls_it() -> None:
    try:
        list(TopologicalSorter(graph()).static_order())
    except CycleError as e:
        raise AssertionError(f"csrc/ files call each other in a loop: {e.args[1]}") from None
