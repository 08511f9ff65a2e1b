"""The layer order of DESIGN.md, read from the source (ast: nothing is imported or run).

"Dependencies point one way: api, payments (minus chain I/O), registry records and
engines base import nothing from node, gateway or cli; those compose the lower layers;
cli, agents and dashboard are thin shells." And ``agoranet.testing`` (cheats, chaos) is
used by tests and the demo, never by production code. Every import counts, also one
inside a function (a lazy import that hides a dependency is still one); only imports
under ``if TYPE_CHECKING:`` are left out, as they never run.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "agoranet"

# Packages (first part below agoranet) by layer, lowest first.
FOUNDATION = {"errors", "config", "market", "request_ids", "sqlite_store",
              "sqlite_checkpoints", "store_writer", "loop_batch", "file_sync", "api", "proofs",
              "tinymodel"}
LOWER = {"chain", "payments", "registry", "engines", "tuning", "verify"}
COMPOSERS = {"node", "gateway"}
# ``tools`` (the paid tool server) is the sellers' half of DESIGN's agents/: a shell over
# the node's payment parts (acceptor, ledger, settlement loop), as agents is over the gateway.
SHELLS = {"cli", "agents", "dashboard", "demo", "tools", "__main__", "__init__"}
TESTING = "testing"
# The demo is a scripted show of cheats and chaos being caught: it may use them.
MAY_USE_TESTING = {TESTING, "demo"}

# Edges that break the order today, each a known defect to remove (the test fails once
# one is gone, so the list cannot go stale).
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


def _modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _runtime_imports(module: str, path: Path) -> Iterator[str]:
    """The agoranet modules ``module`` imports anywhere, except under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    base = module if path.name == "__init__.py" else module.rpartition(".")[0]
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                parts = base.split(".")
                target = ".".join(parts[: len(parts) - node.level + 1] + ([target] if target else []))
            names = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        for name in names:
            resolved = _resolve(name)
            if resolved and resolved != module and not module.startswith(resolved + "."):
                yield resolved


GRAPH = {m: set(_runtime_imports(m, p)) - {PACKAGE} for m, p in MODULES.items()}
EDGES = {(a, b) for a, targets in GRAPH.items() for b in targets}


def layer_of(module: str) -> str:
    """The package right below agoranet (``__init__`` for agoranet itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _violations() -> set[tuple[str, str]]:
    bad = set()
    for a, b in EDGES:
        src, dst = layer_of(a), layer_of(b)
        if dst == TESTING and src not in MAY_USE_TESTING:
            bad.add((a, b))  # production code never uses the test-only wrappers
        elif src in FOUNDATION | LOWER and dst in COMPOSERS | SHELLS | {TESTING}:
            bad.add((a, b))  # the lower layers know nothing of what composes them
        elif src in FOUNDATION and dst in LOWER:
            bad.add((a, b))  # wire types, errors, settings, market words: the bottom
        elif src in COMPOSERS and (dst in SHELLS or (dst in COMPOSERS and dst != src)):
            bad.add((a, b))  # node and gateway are independent, and below the shells
    return bad


def test_every_package_has_a_layer() -> None:
    packages = {layer_of(m) for m in MODULES}
    unplaced = packages - FOUNDATION - LOWER - COMPOSERS - SHELLS - {TESTING}
    assert not unplaced, f"place these packages in a layer of tests/test_layers.py: {unplaced}"


def test_dependencies_point_one_way() -> None:
    found = _violations()
    new = sorted(found - KNOWN_VIOLATIONS)
    assert not new, "imports against the layer order of DESIGN.md:\n" + "\n".join(
        f"  {a} -> {b}" for a, b in new)
    fixed = sorted(KNOWN_VIOLATIONS - found)
    assert not fixed, f"no longer violated, remove from KNOWN_VIOLATIONS: {fixed}"


@pytest.mark.parametrize("module", ["agoranet.engines.hf", "agoranet.config",
                                    "agoranet.node.app", "agoranet.cli.node"])
def test_production_modules_carry_no_cheats_or_chaos(module: str) -> None:
    """The cheats and chaos live in agoranet.testing, as wrappers: the engine, the
    settings, the node app and its command know no names of them."""
    text = MODULES[module].read_text(encoding="utf-8").lower()
    assert "cheat" not in text and "chaos" not in text


def test_no_import_cycles() -> None:
    """Tarjan's strongly connected components over every module's imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(GRAPH):
        if module not in index:
            visit(module)
    assert not cycles, "import cycles:\n" + "\n".join("  " + " <-> ".join(c) for c in cycles)


def test_the_checker_sees_lazy_imports() -> None:
    """A function-level import counts (the node's test-only wrappers were reached so)."""
    assert ("agoranet.cli.node", "agoranet.node.app") in EDGES  # imported inside serve()
    assert "agoranet.testing.node" in MODULES and ("agoranet.testing.node",
                                                   "agoranet.cli.node") in EDGES


def test_the_two_sides_of_payments_are_independent() -> None:
    """``payments.accept`` (a seller's: vouchers checked, held, charged, claimed) and
    ``payments.pay`` (a buyer's: vouchers signed, receipts checked) share only what lies
    beside them in ``payments`` (amounts, receipts, the wire, channels, vouchers, schemes)."""
    sides = {"agoranet.payments.accept", "agoranet.payments.pay"}

    def side(module: str) -> str | None:
        return next((s for s in sides if module == s or module.startswith(s + ".")), None)

    crossing = sorted((a, b) for a, b in EDGES
                      if side(a) and side(b) and side(a) != side(b))
    assert not crossing, crossing
