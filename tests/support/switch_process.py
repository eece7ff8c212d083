"""Plumbing for end-to-end tests: the real `vswitch run` in a subprocess,
queried through its real control socket."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from vswitch.control import request

ROOT = Path(__file__).resolve().parents[2]


def build_guest_image() -> Path:
    """Builds (or reuses) the guest image; returns its directory."""
    out = Path(os.environ.get("VSWITCH_GUEST_DIR", Path.home() / ".cache/vswitch/guest"))
    subprocess.run([str(ROOT / "scripts/build-guest-image"), str(out)], check=True, timeout=600)
    return out


class SwitchProcess:
    """`vswitch run CONFIG` as a child process; stopped with SIGTERM on exit."""

    def __init__(
        self, workdir: Path, ports: list[dict[str, Any]], log_level: str = "debug", **extra: Any
    ) -> None:
        self.workdir = workdir
        self.log_level = log_level
        self.control = workdir / "ctl.sock"
        self.config = workdir / "vswitch.yaml"
        self.log = workdir / "vswitch.log"
        doc = {"control": str(self.control), "ports": ports, **extra}
        self.config.write_text(yaml.safe_dump(doc))
        self.proc: asyncio.subprocess.Process | None = None

    def sock(self, name: str) -> str:
        return str(self.workdir / f"{name}.sock")

    async def start(self, timeout: float = 20.0) -> None:
        with open(self.log, "ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "vswitch", "run", str(self.config),
                "--log-level", self.log_level,
                stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
            )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc.returncode is not None:
                raise AssertionError(f"vswitch exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                await request(self.control, "version")
                return
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        return self.proc.returncode

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    async def ports(self) -> dict[str, dict[str, Any]]:
        return {p["name"]: p for p in await request(self.control, "ports")}

    async def fdb(self) -> list[dict[str, Any]]:
        return await request(self.control, "fdb")

    async def wait_port(self, name: str, state: str, timeout: float = 60.0) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            port = (await self.ports())[name]
            if port["state"] == state:
                return port
            if loop.time() > deadline:
                raise AssertionError(f"port {name} is {port['state']}, not {state}:\n{self.tail()}")
            await asyncio.sleep(0.2)

    async def __aenter__(self) -> SwitchProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
