"""The package's imports go one way: concept modules, then profiles, then the stages in pipeline order,
then the runner. No module imports one above it, and nothing imports in a circle.

Every ``import`` statement of every module under ``utils/`` counts, wherever it stands: at the top, inside a
function (a lazy import is still a dependency, and lazy imports are exactly how the old six-module cycle
pipeline -> sft -> reward_model -> ppo -> evaluation -> pipeline stayed hidden), and inside
``if TYPE_CHECKING:`` blocks. Type-checking imports count too: a type-only dependency on a higher layer is
still the wrong direction, and letting them through would let a later edit turn one into a runtime import
without this test noticing.

One thing does not count: the import of a package's ``__init__`` that Python performs before a submodule
(``import utils.stages.data`` runs ``utils/stages/__init__.py`` first). Counting it would make every
package whose ``__init__`` re-exports its submodules a cycle by definition.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

UTILS = Path(__file__).resolve().parents[1] / "utils"

# Layers, lowest first. A module may import modules of its own layer or below, never above.
RUNNER = {"utils.pipeline"}  # runs the stages; nothing imports it
PROFILES = {"utils.profiles"}  # gathers the concept modules' configs into named profiles
STAGE_ORDER = (
    "utils.stages.profile",
    "utils.stages.data",
    "utils.stages.lm",
    "utils.stages.sft",
    "utils.stages.rm",
    "utils.stages.policy_eval",  # the measurement every policy stage (ppo, dpo, rloo, ...) shares
    "utils.stages.ppo",
    "utils.stages.evaluation",
    "utils.stages.dpo",
    "utils.stages.group_rl",
    "utils.stages.rlaif",
    "utils.stages.limits",
    "utils.stages.methods",  # reads every method stage: last
    "utils.stages.hub",  # the hub profiles' own stages (GPT-2 on real text); imports no other stage
)
STAGES = {"utils.stages", *STAGE_ORDER}


def layer(module: str) -> int:
    if module in RUNNER:
        return 3
    if module in STAGES:
        return 2
    if module in PROFILES:
        return 1
    return 0  # a concept module: attention, sft, ppo, evaluation, ...


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted name -> file of every module in the package at ``root`` (``__init__.py`` names the package)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join((package, *parts))] = path
    return names


def imports_of(path: Path, module: str, known: set[str]) -> list[tuple[str, int]]:
    """(imported module, line) for every import statement anywhere in the file, resolved to known modules.

    ``from a.b import c`` imports ``a.b.c`` when that is a module, else ``a.b`` (``c`` is a name in it).
    Relative imports are resolved against ``module``'s package.
    """
    is_package = path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        found += [(target, node.lineno) for target in targets if target in known]
    return found


def import_graph(root: Path, package: str) -> dict[str, dict[str, int]]:
    """module -> {imported module: line of the first import of it}, within the package."""
    names = module_names(root, package)
    graph: dict[str, dict[str, int]] = {}
    for module, path in names.items():
        edges: dict[str, int] = {}
        for target, line in imports_of(path, module, set(names)):
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle (a list of modules, the first repeated at the end) per strongly connected component
    that has one (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)

    return [_shortest_cycle(graph, set(component)) for component in components]


def _shortest_cycle(graph: dict[str, dict[str, int]], members: set[str]) -> list[str]:
    """A shortest cycle through the alphabetically first member of a strongly connected component
    (breadth first inside the component), e.g. ``[a, b, c, a]``."""
    start = min(members)
    parent: dict[str, str | None] = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node]):
                if target == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if target in members and target not in parent:
                    parent[target] = node
                    following.append(target)
        frontier = following
    raise AssertionError(f"{sorted(members)} is not a strongly connected component")


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    return "\n".join(f"  {a} imports {b} (line {graph[a][b]})" for a, b in zip(cycle, cycle[1:]))


# ------------------------------------------------------------------------------------------------
# The checker, on a package made up for the purpose
# ------------------------------------------------------------------------------------------------
def write_package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "pkg"


def test_checker_sees_imports_in_functions_and_type_checking_blocks(tmp_path):
    package = write_package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": "def f():\n    from pkg.c import thing\n    return thing\n",
            "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import pkg.a\nthing = 1\n",
            "d.py": "from . import a\nfrom .sub import e\n",
            "sub/__init__.py": "from pkg.sub.e import x\n",
            "sub/e.py": "x = 1\n",
        },
    )
    graph = import_graph(package, "pkg")
    assert graph["pkg.a"] == {"pkg.b": 1}
    assert graph["pkg.b"] == {"pkg.c": 2}  # inside a function
    assert graph["pkg.c"] == {"pkg.a": 3}  # inside `if TYPE_CHECKING:`
    assert graph["pkg.d"] == {"pkg.a": 1, "pkg.sub.e": 2}  # relative imports
    assert graph["pkg.sub"] == {"pkg.sub.e": 1}  # the package's own re-export is no cycle
    cycles = find_cycles(graph)
    assert cycles == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
    assert describe(cycles[0], graph).splitlines() == [
        "  pkg.a imports pkg.b (line 1)",
        "  pkg.b imports pkg.c (line 2)",
        "  pkg.c imports pkg.a (line 3)",
    ]


def test_checker_finds_no_cycle_in_a_one_way_package(tmp_path):
    package = write_package(tmp_path, {"__init__.py": "", "a.py": "import pkg.b\n", "b.py": "import os\n"})
    assert find_cycles(import_graph(package, "pkg")) == []


# ------------------------------------------------------------------------------------------------
# The course's package
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(UTILS, "utils")


def test_every_stage_module_is_placed_in_the_order(graph):
    stage_modules = {m for m in graph if m.startswith("utils.stages.")}
    assert stage_modules == set(STAGE_ORDER), "a new stage module must be added to STAGE_ORDER, in pipeline order"
    assert set(RUNNER | PROFILES) <= set(graph)


def test_no_import_cycle(graph):
    cycles = find_cycles(graph)
    assert not cycles, "import cycle(s) in utils/:\n" + "\n\n".join(describe(c, graph) for c in cycles)


def test_no_module_imports_a_layer_above_it(graph):
    names = {0: "concept module", 1: "profiles", 2: "stage", 3: "runner"}
    wrong = [
        f"  {module} ({names[layer(module)]}) imports {target} ({names[layer(target)]}), line {line}"
        for module, edges in sorted(graph.items())
        for target, line in sorted(edges.items())
        if layer(target) > layer(module)
    ]
    assert not wrong, (
        "imports against the layering (concept < profiles < stages < runner); a concept "
        "function that needs a config takes the config, not a profile:\n" + "\n".join(wrong)
    )


def test_a_stage_imports_only_the_stages_before_it(graph):
    wrong = [
        f"  {module} imports {target}, line {line}"
        for module in STAGE_ORDER
        for target, line in sorted(graph[module].items())
        if target in STAGE_ORDER and STAGE_ORDER.index(target) > STAGE_ORDER.index(module)
    ]
    assert not wrong, f"a stage may import only earlier stages ({' < '.join(STAGE_ORDER)}):\n" + "\n".join(wrong)
