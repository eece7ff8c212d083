"""`vswitch lab`: bring labs up and down, look at them, run commands in their nodes, draw them.

A thin layer over vswitch.lab (lifecycle.Lab, state.py, server.py).  `lab up` starts a
supervisor process (this group's hidden `supervise` command) that owns the lab, prints its
progress, and returns once every node answers; `lab status`, `lab exec` and `lab down` reach
the supervisor through the lab's control socket in its run directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import click

from vswitch.cli.output import EXIT_RUNTIME, EXIT_USAGE, fail, short_duration, table
from vswitch.errors import ConfigError, VswitchError
from vswitch.lab.loader import load_lab
from vswitch.lab.topology import LabSpec
from vswitch.logs import LEVELS


def _load(path: Path) -> LabSpec:
    try:
        return load_lab(path)
    except ConfigError as exc:
        fail(str(exc), EXIT_USAGE)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def lab() -> None:
    """Lab topologies: VMs, namespace hosts and switches from one file (docs/lab.md)."""


# --------------------------------------------------------------------------- up


@lab.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--timeout",
    type=click.FloatRange(min=1),
    default=180.0,
    show_default=True,
    help="Seconds every VM has to boot and answer.",
)
@click.option(
    "--foreground",
    is_flag=True,
    help="Keep the lab in this process until Ctrl-C, instead of a background owner.",
)
@click.option(
    "--switch-log-level",
    type=click.Choice(LEVELS),
    help="Override the switches' log level (logs are in the lab's run directory).",
)
def up(file: Path, timeout: float, foreground: bool, switch_log_level: str | None) -> None:
    """Bring up the lab described by FILE; returns once every node answers.

    Shows each step with its elapsed time.  If a node does not come up in time, says which,
    removes everything that was started, and exits with status 1."""
    spec = _load(file)
    if foreground:
        _up_foreground(spec, timeout, switch_log_level)
        return
    args = [sys.executable, "-m", "vswitch.lab", "supervise", str(file), "--timeout", str(timeout)]
    if switch_log_level:
        args += ["--switch-log-level", switch_log_level]
    proc = subprocess.Popen(
        args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # a Ctrl-C here is ours to handle, not the owner's
    )
    assert proc.stdout is not None
    ready: dict[str, Any] | None = None
    errors: list[str] = []
    try:
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            try:
                event = json.loads(line)
                kind = event.get("event") if isinstance(event, dict) else None
            except ValueError:
                kind = None
            if kind == "progress":
                click.echo(event["line"])
            elif kind == "error":
                errors.append(event["message"])
            elif kind == "ready":
                ready = event
                break
            else:
                click.echo(line, err=True)  # a traceback: show it as it is
    except KeyboardInterrupt:
        click.echo("interrupted: tearing the lab down", err=True)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        for raw in proc.stdout:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                click.echo(json.loads(raw)["line"])
        proc.wait()
        sys.exit(130)
    if ready is None:
        proc.wait()
        fail("\n".join(errors) or f"the lab owner exited with status {proc.returncode}")
    proc.stdout.close()
    click.echo(
        f"\nlab {spec.name} is up: vswitch lab status {spec.name} | "
        f"vswitch lab exec --lab {spec.name} NODE -- CMD | vswitch lab down {spec.name}"
    )


def _up_foreground(spec: LabSpec, timeout: float, level: str | None) -> None:
    from vswitch.lab.lifecycle import Lab

    async def main() -> None:
        lab_ = Lab(spec, boot_timeout=timeout, progress=click.echo, switch_log_level=level)
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await lab_.up_async()
            click.echo(f"lab {spec.name} is up; Ctrl-C brings it down")
            await lab_.wait_down()
        except asyncio.CancelledError:
            pass
        finally:
            await asyncio.shield(lab_.down_async())

    try:
        asyncio.run(main())
    except VswitchError as exc:
        fail(str(exc))


@lab.command(hidden=True)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--timeout", type=float, default=180.0)
@click.option("--switch-log-level", default=None)
def supervise(file: Path, timeout: float, switch_log_level: str | None) -> None:
    """The lab's owner (started by `lab up`): JSON events on stdout until the lab is up."""
    import logging

    from vswitch.lab.lifecycle import Lab

    out = sys.stdout
    quiet = False

    def emit(event: dict[str, Any]) -> None:
        if quiet:
            logging.getLogger("vswitch.lab").info("%s", event.get("line") or event)
            return
        with contextlib.suppress(OSError, ValueError):
            out.write(json.dumps(event) + "\n")
            out.flush()

    async def main() -> int:
        nonlocal quiet
        try:
            lab_ = Lab.from_file(
                file,
                boot_timeout=timeout,
                switch_log_level=switch_log_level,
                progress=lambda line: emit({"event": "progress", "line": line}),
            )
        except VswitchError as exc:
            emit({"event": "error", "message": str(exc)})
            return EXIT_USAGE
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        stopping = False
        tasks: list[asyncio.Task[None]] = []

        def on_signal() -> None:
            nonlocal stopping
            if lab_.state == "up":
                tasks.append(loop.create_task(lab_.down_async()))
            elif not stopping:
                task.cancel()
            stopping = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await lab_.up_async()
        except asyncio.CancelledError:
            emit(
                {
                    "event": "error",
                    "message": "bring-up interrupted (`lab down`, or a signal); "
                    "everything started was removed",
                }
            )
            return 130
        except (VswitchError, OSError) as exc:
            emit({"event": "error", "message": str(exc)})
            return EXIT_RUNTIME
        # Up: from now on nobody reads our stdout.  Log to the lab's run directory.
        logging.basicConfig(
            filename=lab_.run_dir / "lab.log",
            level=logging.INFO,
            format="%(asctime)s %(levelname)s %(message)s",
        )
        emit({"event": "ready"})
        quiet = True
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        await lab_.wait_down()
        return 0

    sys.exit(asyncio.run(main()))


# --------------------------------------------------------------------------- status


@lab.command()
@click.argument("name", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(name: str | None, as_json: bool) -> None:
    """Show the nodes, switches and links of a lab (NAME or FILE), or of every lab up."""
    from vswitch.lab.errors import LabError
    from vswitch.lab.server import lab_call
    from vswitch.lab.state import find_lab, list_labs

    try:
        names = [find_lab(name)] if name else list_labs()
    except (LabError, ConfigError) as exc:
        fail(str(exc))
    if not names:
        click.echo("no lab is up")
        return
    results, failed = [], False
    for n in names:
        try:
            results.append(asyncio.run(lab_call(n, "status", wait=30)))
        except LabError as exc:
            failed = True
            results.append({"name": n, "state": "unreachable", "error": str(exc)})
    if as_json:
        click.echo(json.dumps(results if name is None else results[0], indent=2))
    else:
        click.echo("\n\n".join(format_status(r) for r in results))
    if failed:
        sys.exit(EXIT_RUNTIME)


def format_status(st: dict[str, Any]) -> str:
    if st.get("error"):
        return f"lab {st['name']}: {st['state']}: {st['error']}"
    lines = [
        f"lab {st['name']}: {st['state']}, up {short_duration(st.get('uptime'))}, owner pid "
        f"{st.get('owner')}, run directory {st.get('run_dir')}"
    ]
    rows = []
    for n in st["nodes"]:
        where = (
            f"netns {n['netns']}" if n["type"] == "host" else f"pid {n['pid']}, {n['memory']} MiB"
        )
        for k, i in enumerate(n["interfaces"]):
            rows.append(
                [
                    n["name"] if k == 0 else "",
                    n["type"] if k == 0 else "",
                    n["state"] if k == 0 else "",
                    i["name"],
                    " ".join(i["addresses"]) or "-",
                    f"{i['switch']}:{i['port']} ({i['link']})",
                    where if k == 0 else "",
                ]
            )
    lines += ["", *table(["NODE", "TYPE", "STATE", "IFACE", "ADDRESSES", "LINK", "WHERE"], rows)]
    rows = []
    for s in st["switches"]:
        up_ = sum(1 for p in s["ports"] if p["state"] == "up")
        rows.append(
            [s["name"], s["state"], f"{up_}/{len(s['ports'])}", str(s["pid"]), s["control"]]
        )
    lines += ["", *table(["SWITCH", "STATE", "PORTS UP", "PID", "CONTROL"], rows)]
    if st.get("trunks"):
        rows = [
            [f"{t['a']} - {t['b']}", t["state"],
             f"{t.get('bridge') or 'vxlan vni ' + str(t.get('vni'))} in {t['netns']}"]
            for t in st["trunks"]
        ]  # fmt: skip
        lines += ["", *table(["TRUNK", "STATE", "VIA"], rows)]
    return "\n".join(lines)


# --------------------------------------------------------------------------- exec


@lab.command(name="exec", context_settings={"ignore_unknown_options": True})
@click.option("--lab", "lab_ref", help="The lab (name or file); needed when several are up.")
@click.option(
    "--timeout",
    type=click.FloatRange(min=0.1),
    default=60.0,
    show_default=True,
    help="Seconds the command may run in a VM (it is killed after).",
)
@click.argument("node")
@click.argument("cmd", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(lab_ref: str | None, timeout: float, node: str, cmd: tuple[str, ...]) -> None:
    """Run CMD on NODE: inside the VM (through its agent) or in the host's namespace.

    `vswitch lab exec vm1 -- ping -c1 10.0.0.2`.  Prints the command's stdout and stderr
    and exits with its status.  On a host the command runs here, attached to this terminal;
    one argument is run by sh -c, several are run as they are."""
    from vswitch.lab.errors import LabError
    from vswitch.lab.procs import host_argv
    from vswitch.lab.server import lab_call
    from vswitch.lab.state import CONTROL, find_lab, labs_root, read_state
    from vswitch.netsys.netns import netns_preexec

    try:
        name = find_lab(lab_ref)
    except (LabError, ConfigError) as exc:
        fail(str(exc))
    state = read_state(labs_root() / name) or {}
    nodes = state.get("nodes", {})
    if node not in nodes:
        fail(f"lab {name} has no node {node!r} (nodes: {', '.join(nodes) or 'none'})")
    info = nodes[node]
    command: str | list[str] = cmd[0] if len(cmd) == 1 else list(cmd)
    if info["type"] == "host":
        if not (labs_root() / name / CONTROL).exists():
            fail(f"lab {name} is not up")
        try:
            rc = subprocess.call(host_argv(command), preexec_fn=netns_preexec(info["netns"]))
        except (OSError, subprocess.SubprocessError) as exc:
            fail(f"host {node}: cannot run {cmd[0]}: {exc}")
        except KeyboardInterrupt:
            rc = 130
        sys.exit(rc if rc >= 0 else 128 - rc)
    import shlex

    text = command if isinstance(command, str) else shlex.join(command)
    try:
        r = asyncio.run(
            lab_call(name, "exec", wait=timeout + 15, node=node, command=text, timeout=timeout)
        )
    except LabError as exc:
        fail(str(exc))
    sys.stdout.write(r["stdout"])
    sys.stdout.flush()
    sys.stderr.write(r["stderr"])
    sys.exit(r["rc"])


# --------------------------------------------------------------------------- down


@lab.command()
@click.argument("name", required=False)
@click.option("--all", "all_", is_flag=True, help="Every lab that is up.")
def down(name: str | None, all_: bool) -> None:
    """Bring a lab (NAME or FILE) down and remove everything it made.

    Works also when the lab's owner died: whatever is left (processes, namespaces, the run
    directory) is removed."""
    from vswitch.lab.errors import LabError
    from vswitch.lab.server import lab_call
    from vswitch.lab.state import find_lab, labs_root, list_labs, owner_alive, sweep

    try:
        if all_:
            names = list_labs()
        elif name is not None and name.endswith((".yaml", ".yml")):
            names = [load_lab(name).name]
        else:
            names = [name] if name is not None else [find_lab(None)]
    except (LabError, ConfigError) as exc:
        fail(str(exc))
    for n in names:
        if not (labs_root() / n).exists():
            click.echo(f"lab {n} is not up (nothing to remove)")
            continue
        run_dir = labs_root() / n
        t0 = time.monotonic()
        if owner_alive(run_dir):
            with contextlib.suppress(LabError):
                asyncio.run(lab_call(n, "down", wait=10))
            while owner_alive(run_dir) and time.monotonic() - t0 < 90:
                time.sleep(0.2)
        left = sweep(n, say=lambda line: click.echo(f"  {line}"))
        extra = f" (removed {len(left)} leftover(s))" if left else ""
        click.echo(f"lab {n} is down in {time.monotonic() - t0:.1f}s{extra}")


# --------------------------------------------------------------------------- graph


@lab.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    default=None,
    help="Output file (default: FILE with .svg); the format follows its suffix "
    "(.svg .png .pdf .dot); `-` writes SVG to stdout.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["svg", "png", "pdf", "dot"]),
    default=None,
    help="Output format, if not the output file's suffix.",
)
def graph(file: Path, output: str | None, fmt: str | None) -> None:
    """Draw the lab in FILE: switches, nodes, links, addresses (graphviz)."""
    from vswitch.lab.graph import GraphError, render

    spec = _load(file)
    out = output or str(file.with_suffix(".svg"))
    if fmt is None:
        suffix = Path(out).suffix.lstrip(".").lower()
        fmt = suffix if suffix in ("svg", "png", "pdf", "dot") else "svg"
    try:
        data = render(spec, fmt)
    except GraphError as exc:
        fail(str(exc))
    if out == "-":
        sys.stdout.buffer.write(data)
        return
    try:
        Path(out).write_bytes(data)
    except OSError as exc:
        fail(f"{out}: {exc.strerror}")
    click.echo(f"wrote {out}")
