"""Lab topologies: switches, QEMU VMs and namespace hosts described in one file.

    from vswitch.lab import Lab
    with Lab.from_file("configs/labs/star.yaml") as lab:
        lab.exec("vm1", "ping -c1 10.0.0.2").check()

docs/lab.md describes the lab file, the commands and how a lab is built.
"""

from vswitch.lab.errors import LabError
from vswitch.lab.guest import ExecResult
from vswitch.lab.lifecycle import Lab
from vswitch.lab.loader import load_lab, parse_lab
from vswitch.lab.state import sweep
from vswitch.lab.topology import LabSpec

__all__ = ["ExecResult", "Lab", "LabError", "LabSpec", "load_lab", "parse_lab", "sweep"]
