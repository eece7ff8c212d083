"""The benchmark's constants (root, cores, MACs, systems and their labels)
and --nice's shared setting."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent  # scripts/benchlib/ -> the repository
GEN_CORE = 0  # the generator's forwarding lcore
SUT_CORE = 1  # the switch under test (whole process), and the generator's main lcore
MAC = ("02:00:00:00:00:01", "02:00:00:00:00:02")
QUEUE_SIZE = 1024
TX_FIRST = 32
SYSTEMS = ("vswitch", "testpmd", "ovs", "vswitch-100kmac", "vswitch-64port", "vswitch-vlan",
           "vswitch-vlan-anchor")
SCALE = ("vswitch-100kmac", "vswitch-64port")
# Variants of vswitch measured at every frame size and reported as a ratio to their anchor at
# the same size: the VLAN access/trunk pair (a tag pushed on one leg, popped on the other)
# against ports without VLANs carrying the same tagged frames, the generator doing the same
# tag work for both.
VARIANTS = {"vswitch-vlan": "vswitch-vlan-anchor"}
LABEL = {
    "vswitch": "vswitch",
    "testpmd": "testpmd io-fwd",
    "ovs": "OVS-DPDK",
    "vswitch-100kmac": "vswitch, 100k learned MACs",
    "vswitch-64port": "vswitch, 64 ports (62 idle)",
    "vswitch-vlan": "vswitch, VLAN access + trunk",
    "vswitch-vlan-anchor": "vswitch, no VLANs, same tagged frames",
}
LEARN_MACS = 100_000
IDLE_PORTS = 62
OVS_VSWITCHD = "/usr/lib/openvswitch-switch-dpdk/ovs-vswitchd-dpdk"
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
CLK_TCK = os.sysconf("SC_CLK_TCK")
NICE = [0]  # --nice: the switches' and the generator's niceness
