"""The package layout's rules (docs/ARCHITECTURE.md, "Layers"), checked over the AST of every
module under kaizenlm/, imports inside functions included. No process is started and nothing
is imported: the modules are parsed, not run.

A unit is the first name after `kaizenlm` (`kaizenlm.datasets.pairs` -> `datasets`); the
top-level modules (`config`, `auth`, `errors`, `logs`, `ports`, `command`, `cli`) are units
of their own. A unit may import itself and units in strictly lower layers, nothing else.
"""

from __future__ import annotations

import ast
import functools
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "kaizenlm"

# Top to bottom. Keep this list and the one in docs/ARCHITECTURE.md ("Layers") the same.
LAYERS: list[list[str]] = [
    ["cli"],
    ["demo"],
    ["server"],
    ["dashboard", "retrain", "serving"],
    ["eval"],
    ["knowledge", "review", "annotate"],
    ["abtest", "base", "datasets", "jobs"],
    ["feedback", "registry"],
    ["ingest", "keys"],
    ["auth", "command", "config", "errors", "logs", "ports"],
]
# Imports inside one layer that are allowed: `kaizen init` (config/cli.py) is a Command and
# raises UsageError.
SAME_LAYER_ALLOWED = {("config", "command"), ("config", "errors")}
# Units nothing else may import (besides cli.py, the top).
ONLY_CLI_IMPORTS = {"cli", "server"}
# Optional units: listed so that they are placed when they appear, not required to exist.
OPTIONAL_UNITS = {"annotate"}

LAYER_OF = {unit: depth for depth, layer in enumerate(LAYERS) for unit in layer}


@dataclass(frozen=True)
class Edge:
    importer: str  # module name, e.g. kaizenlm.datasets.pairs
    imported: str  # the module imported, e.g. kaizenlm.demo.domain
    line: int
    names: tuple[str, ...] = ()  # for `from X import a, b`: a, b

    @property
    def source_unit(self) -> str:
        return unit_of(self.importer)

    @property
    def target_unit(self) -> str:
        return unit_of(self.imported)

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.importer} (line {self.line}) imports {self.imported}{names}"


def unit_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "kaizenlm"


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(module: str, path: Path) -> list[Edge]:
    """Every kaizenlm import in the module, at any depth (functions, classes, if blocks)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    is_package = path.name == "__init__.py"
    edges: list[Edge] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            edges += [Edge(module, alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: strip `level` components from the importing package.
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from kaizenlm import demo` imports kaizenlm.demo: name the unit, not just the root.
            if target == "kaizenlm":
                edges += [Edge(module, f"kaizenlm.{alias.name}", node.lineno) for alias in node.names]
            else:
                edges.append(Edge(module, target, node.lineno, tuple(a.name for a in node.names)))
    return [e for e in edges if e.imported == "kaizenlm" or e.imported.startswith("kaizenlm.")]


@functools.cache
def all_edges() -> list[Edge]:
    return [e for module, path in all_modules().items() for e in imports_of(module, path)]


def units() -> set[str]:
    return {unit_of(m) for m in all_modules()} - {"kaizenlm"}


def fail_if_any(title: str, bad: list) -> None:
    """Fail with one line per offending import (no repr of the list: the lines are the message)."""
    if bad:
        pytest.fail(f"{title} ({len(bad)}):\n  " + "\n  ".join(str(b) for b in bad), pytrace=False)


# ------------------------------------------------------------------------------ the walker itself


def test_walker_sees_imports_inside_functions_and_relative_ones(tmp_path):
    pkg = tmp_path / "kaizenlm" / "datasets"
    pkg.mkdir(parents=True)
    src = pkg / "x.py"
    src.write_text(
        "import os\n"
        "from . import pairs\n"
        "from ..demo import domain\n"
        "from kaizenlm import errors, logs\n"
        "def f():\n"
        "    import kaizenlm.registry.versions\n"
        "    if True:\n"
        "        from kaizenlm.ingest.store import connect\n"
    )
    got = {(e.imported, e.target_unit) for e in imports_of("kaizenlm.datasets.x", src)}
    assert got == {
        ("kaizenlm.datasets", "datasets"), ("kaizenlm.demo", "demo"), ("kaizenlm.errors", "errors"),
        ("kaizenlm.logs", "logs"), ("kaizenlm.registry.versions", "registry"), ("kaizenlm.ingest.store", "ingest"),
    }
    init = pkg / "__init__.py"
    init.write_text("from .pairs import build\nfrom .. import config\n")
    got = {e.imported for e in imports_of("kaizenlm.datasets", init)}
    assert got == {"kaizenlm.datasets.pairs", "kaizenlm.config"}


def test_the_walker_finds_the_packages():
    found = units()
    assert {"cli", "config", "server", "ingest", "datasets", "demo"} <= found, found
    assert len(all_edges()) > 100


# ------------------------------------------------------------------------------ the rules


def test_every_unit_is_placed_in_a_layer():
    unplaced = sorted(units() - set(LAYER_OF))
    assert not unplaced, (
        f"kaizenlm has units that are in no layer: {unplaced}. Place each new package (or top-level "
        "module) in LAYERS in tests/test_layout.py and in the layer list of docs/ARCHITECTURE.md: "
        "a unit may import only units in lower layers."
    )
    missing = sorted(set(LAYER_OF) - units() - OPTIONAL_UNITS)
    assert not missing, f"LAYERS names units that no longer exist: {missing}; remove them from tests/test_layout.py"


def demo_imports(edges: list[Edge]) -> list[Edge]:
    # cli.py names the demo's commands as strings ('kaizenlm.demo.cli:DEMO'), not imports.
    return [e for e in edges if e.target_unit == "demo" and e.source_unit != "demo"]


def upward_imports(edges: list[Edge]) -> list[str]:
    bad = []
    for e in edges:
        src, dst = e.source_unit, e.target_unit
        if src == dst or src not in LAYER_OF or dst not in LAYER_OF:
            continue  # unplaced units fail test_every_unit_is_placed_in_a_layer
        if LAYER_OF[dst] > LAYER_OF[src] or (src, dst) in SAME_LAYER_ALLOWED:
            continue
        where = "the same layer as" if LAYER_OF[dst] == LAYER_OF[src] else "a higher layer than"
        bad.append(f"{e}  [{dst} is in {where} {src}]")
    return bad


def config_imports(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if e.source_unit == "config" and e.target_unit not in {"config", "command", "errors"}]


def cli_or_server_imports(edges: list[Edge]) -> list[Edge]:
    return [e for e in edges if e.target_unit in ONLY_CLI_IMPORTS and e.source_unit not in {e.target_unit, "cli"}]


def test_nothing_outside_demo_imports_the_demo():
    fail_if_any("the demo is an input, imported by nothing outside kaizenlm/demo", demo_imports(all_edges()))


def test_imports_only_go_down_the_layers():
    fail_if_any("imports that do not go down the layers (tests/test_layout.py LAYERS)", upward_imports(all_edges()))


def test_config_imports_no_other_package():
    fail_if_any("kaizenlm.config may import only kaizenlm.command and kaizenlm.errors", config_imports(all_edges()))


def test_no_package_imports_the_cli_or_a_server_module():
    fail_if_any("only kaizenlm/cli.py may import kaizenlm.cli or kaizenlm.server", cli_or_server_imports(all_edges()))


def test_each_rule_catches_what_it_forbids():
    """The rules on made-up imports: each forbidden kind is caught, each allowed kind passes."""
    def edge(importer: str, imported: str) -> Edge:
        return Edge(importer, imported, 1)

    assert demo_imports([edge("kaizenlm.retrain.anchor", "kaizenlm.demo.general")])
    assert not demo_imports([edge("kaizenlm.demo.run", "kaizenlm.demo.domain")])
    assert upward_imports([edge("kaizenlm.eval.cli", "kaizenlm.demo.domain")])  # up
    assert upward_imports([edge("kaizenlm.datasets.snapshots", "kaizenlm.jobs.runner")])  # sideways
    assert upward_imports([edge("kaizenlm.logs", "kaizenlm.ports")])  # sideways in the bottom layer
    assert not upward_imports([edge("kaizenlm.server.gateway", "kaizenlm.serving.chat"),
                               edge("kaizenlm.config.cli", "kaizenlm.command"),
                               edge("kaizenlm.config.cli", "kaizenlm.errors")])
    assert config_imports([edge("kaizenlm.config.cron", "kaizenlm.jobs.scheduler")])
    assert not config_imports([edge("kaizenlm.config.cli", "kaizenlm.command")])
    assert cli_or_server_imports([edge("kaizenlm.registry.api", "kaizenlm.server.controller")])
    assert cli_or_server_imports([edge("kaizenlm.demo.run", "kaizenlm.cli")])
    assert not cli_or_server_imports([edge("kaizenlm.cli", "kaizenlm.config"),
                                      edge("kaizenlm.server.up", "kaizenlm.server.gateway")])


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the directed graph as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycle_between_packages():
    graph: dict[str, set[str]] = defaultdict(set)
    witness: dict[tuple[str, str], Edge] = {}
    for e in all_edges():
        if e.source_unit != e.target_unit and e.target_unit != "kaizenlm":
            graph[e.source_unit].add(e.target_unit)
            witness.setdefault((e.source_unit, e.target_unit), e)
    cycle = find_cycle(graph)
    if cycle:
        fail_if_any("import cycle between packages: " + " -> ".join(cycle),
                    [witness[(a, b)] for a, b in zip(cycle, cycle[1:])])


def test_test_fakes_live_under_tests():
    bad = [str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*")
           if any(word in p.name.lower() for word in ("echo", "fake"))]
    fail_if_any("test fakes belong under tests/, not in the package", bad)
