"""The benchmark harness behind scripts/bench.py (its entry point), in modules:
config (constants), procs (child processes, CPU meters), systems (the switches
under test and the generator), runner (the bench itself) and report (bench.md)."""
