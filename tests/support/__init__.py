"""Test-only helpers, imported as `support.*` (pyproject puts tests/ on pytest's path).

- switch_process: the real `vswitch run` in a subprocess, queried through its control
  socket, and the guest image for QEMU tests;
- peers: a software guest behind the test-side front end, misbehaving half-peers, and
  process resource probes (failure and ring tests);
- ops: helpers of the operations tests (tests/daemon/test_ops_*.py): a guest without QEMU,
  exact frames, a switch in a thread, the daemon in a subprocess.

The virtio driver, vhost-user front end and testpmd console they build on are in
vswitch.testkit, which scripts/bench uses too.
"""
