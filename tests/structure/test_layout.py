"""The package's shape (issue 11), kept by a test: no import cycles between modules, the
layers import only downwards, the test kit stays out of the product, modules stay small."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "vswitch"

# Modules allowed past ~500 lines, and why.
LONG = {
    "vswitch.testkit.virtio_driver": "a whole test-side virtio driver: rings, chains, memory",
    "vswitch.fastpath": "the one wrapper of the C API (fastpath.h): a method per C call",
}
# Each layer may import the ones below it, never one above (a package's own modules may
# import each other, as long as there is no cycle).
LAYERS = [
    {"errors", "mac", "text", "logs", "limits", "pcap", "bpf", "_fastpath", "_pcap"},
    {"fastpath", "config"},
    {"vhost", "netsys"},
    {"control", "ports"},
    {"daemon", "lab", "client"},
    {"cli"},
    {"__main__"},
]


def modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """Every vswitch module `name` imports, at module level or inside functions."""
    found: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("vswitch"):
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    g = {n: imports(n, p, known) for n, p in known.items()}
    # A package's __init__ re-exports its modules: importing a module imports its package
    # first, but that is Python's order, not a dependency of the module on its package.
    return {n: {t for t in deps if not n.startswith(t + ".")} for n, deps in g.items()}


def test_no_import_cycles() -> None:
    g = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(g.get(n, ())):
            if state.get(m) == 1:
                cycles.append([*path[path.index(m) :], m] if m in path else [n, m])
            elif m not in state:
                visit(m, [*path, m])
        state[n] = 2

    for n in sorted(g):
        if n not in state:
            visit(n, [n])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def layer(module: str) -> int:
    if module.endswith(".__main__"):  # an entry point (`python -m ...`) is above everything
        return len(LAYERS) - 1
    top = module.split(".")[1] if "." in module else module
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: not in any layer of tests/structure/test_layout.py")


def test_layers_import_only_downwards() -> None:
    wrong = [
        f"{n} -> {m}"
        for n, deps in graph().items()
        if not n.startswith("vswitch.testkit") and n != "vswitch"
        for m in deps
        if not m.startswith("vswitch.testkit") and layer(m) > layer(n)
    ]
    assert not wrong, wrong


def test_the_product_never_imports_the_test_kit() -> None:
    wrong = [
        f"{n} -> {m}"
        for n, deps in graph().items()
        if not n.startswith("vswitch.testkit")
        for m in deps
        if m.startswith("vswitch.testkit")
    ]
    assert not wrong, wrong


def test_modules_stay_small() -> None:
    long = {
        n: len(p.read_text().splitlines())
        for n, p in modules().items()
        if len(p.read_text().splitlines()) > 500
    }
    assert set(long) <= set(LONG), {n: c for n, c in long.items() if n not in LONG}


def test_test_modules_have_unique_names() -> None:
    """tests/ has no packages, so pytest imports each test file by its basename: two of
    one name in different folders stop the whole run at collection."""
    seen: dict[str, Path] = {}
    clashes = []
    for path in sorted((ROOT / "tests").rglob("test_*.py")):
        if path.name in seen:
            clashes.append(f"{seen[path.name].relative_to(ROOT)} and {path.relative_to(ROOT)}")
        seen.setdefault(path.name, path)
    assert not clashes, clashes
