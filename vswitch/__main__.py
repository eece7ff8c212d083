"""`python -m vswitch` runs the `vswitch` command."""

from vswitch.cli import main

if __name__ == "__main__":
    main(prog_name="vswitch")
