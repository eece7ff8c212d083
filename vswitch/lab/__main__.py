"""`python -m vswitch.lab` is `vswitch lab` (and runs the lab owner that `lab up` starts)."""

from vswitch.cli.lab import lab

if __name__ == "__main__":
    lab(prog_name="vswitch lab")
