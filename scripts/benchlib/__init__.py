"""The benchmark harness behind scripts/bench.py (its entry point), in modules:
config (constants), procs (child processes, CPU meters), systems (the switches
under test and the generator), runner (the bench itself) and report (bench.md)."""

import sys

from .config import ROOT

sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # vswitch; the test-side front end, testpmd
