"""The import arrows between our packages run one way.

``slicerank_base`` (class names, version, JSON output, child processes) imports nothing of
ours; every other package may use it; only ``slicerank`` (the console script and the demo)
sits on top and imports the rest, and nothing imports ``slicerank``. ``benchmarks`` sits beside
the product: it may import any package, and the only product file that imports it is the
console script (``slicerank/cli.py``, which registers ``slicerank bench``). Inside ``slicerank`` the
demo's stage modules never import the orchestrator ``slicerank.demo``. Inside
``ranking_scheduler.engine`` the facade sits over the strategies, over the task chooser and
the cut finder, over the posterior (``ENGINE_ARROWS``). Imports inside functions count too: a
lazy import is still an arrow.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BASE = "slicerank_base"
TOP = "slicerank"
BENCH = "benchmarks"
PACKAGES = (BASE, "cmr_ingest", "ranking_scheduler", "ml_backend", "analysis", "ls_config", TOP)
CONSOLE_SCRIPT = "slicerank/cli.py"


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # ``from slicerank import demo`` imports the module slicerank.demo.
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def package_edges(packages=PACKAGES) -> dict[str, dict[str, list[str]]]:
    """package -> {other package it imports: [files that do]}."""
    edges: dict[str, dict[str, list[str]]] = {p: {} for p in packages}
    for package in packages:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(path):
                top = module.split(".")[0]
                if top in packages and top != package:
                    edges[package].setdefault(top, []).append(str(path.relative_to(ROOT)))
    return edges


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle in ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_the_import_scanner_sees_lazy_and_from_imports(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from slicerank import demo\n    import ml_backend.jobs\n")
    assert {"slicerank.demo", "ml_backend.jobs"} <= imported_modules(path)


def test_the_base_imports_nothing_of_ours():
    assert package_edges()[BASE] == {}


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != TOP])
def test_nothing_below_the_top_imports_it(package):
    assert TOP not in package_edges()[package]


def test_arrows_between_packages_run_one_way():
    graph = {p: set(targets) for p, targets in package_edges().items()}
    assert find_cycle(graph) is None


def test_demo_stage_modules_do_not_import_the_orchestrator():
    stages = sorted((ROOT / TOP).glob("demo_*.py"))
    assert len(stages) >= 5  # services, labelling, training, report, ...
    for path in stages:
        assert "slicerank.demo" not in imported_modules(path), path.name


def test_benchmarks_live_beside_the_product():
    edges = package_edges((*PACKAGES, BENCH))
    importers = {f for package in PACKAGES for f in edges[package].get(BENCH, [])}
    assert importers == {CONSOLE_SCRIPT}
    for path in sorted((ROOT / BENCH).rglob("*.py")):
        assert "slicerank.cli" not in imported_modules(path), path.name
    # No harness left in a product room.
    strays = [p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*bench*.py")]
    assert strays == []


ENGINE = "ranking_scheduler.engine"
ENGINE_ARROWS = {
    # module -> the engine modules it may import (the rest of the engine is off limits).
    "ranking": {"strategies", "chooser", "cuts", "posterior", "stacks", "boundary"},
    "strategies": {"chooser", "cuts", "posterior"},
    "chooser": {"posterior", "boundary"},
    "cuts": {"posterior", "boundary", "bayes"},
    "posterior": {"bayes", "glicko", "stacks"},
    "stacks": {"bayes"},
    "bayes": set(),
    "glicko": set(),
    "boundary": set(),
}
"""The engine's parts: the facade (``ranking``) over the strategies, over the task chooser and
the cut finder (siblings), over the posterior, over the rating models and the maths."""


def engine_edges() -> dict[str, set[str]]:
    """Engine module -> the engine modules it imports (``__init__`` left out: it re-exports)."""
    folder = ROOT / "ranking_scheduler" / "engine"
    edges: dict[str, set[str]] = {}
    for path in sorted(folder.glob("*.py")):
        if path.stem == "__init__":
            continue
        targets = set()
        for module in imported_modules(path):
            if module.startswith(ENGINE + "."):
                targets.add(module[len(ENGINE) + 1 :].split(".")[0])
        edges[path.stem] = targets - {path.stem}
    return edges


def test_every_engine_module_has_its_place():
    assert set(engine_edges()) == set(ENGINE_ARROWS)


@pytest.mark.parametrize("module", sorted(ENGINE_ARROWS))
def test_engine_parts_import_only_what_lies_below_them(module):
    assert engine_edges()[module] <= ENGINE_ARROWS[module]


def test_no_engine_part_imports_the_facade():
    assert [m for m, targets in engine_edges().items() if "ranking" in targets] == []
    assert find_cycle(engine_edges()) is None
