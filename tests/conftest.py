"""Shared test plumbing.

Tests that need QEMU, DPDK or root call need(); locally they skip with the
reason, but with CI=true a missing peer is a failure: .ci/run installs and
prepares everything, so a skip there would hide a broken setup.
"""

from __future__ import annotations

import os
import shutil

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def need(ok: bool, why: str) -> None:
    """Skip (locally) or fail (CI=true) when a real peer is missing."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"CI=true but {why}; .ci/run should have prepared it")
    pytest.skip(why)


def need_tool(name: str) -> str:
    path = shutil.which(name)
    need(path is not None, f"{name} is not installed")
    assert path is not None
    return path


def need_root() -> None:
    need(os.geteuid() == 0, "needs root")
