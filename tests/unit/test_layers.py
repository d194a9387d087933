"""The layered layout, enforced: the import graph of `orchestrator`, `workers`, `schemas` and `simulation` has
no circle (imports inside functions and under TYPE_CHECKING count too), every import goes down the layers of
docs/ARCHITECTURE.md, nothing imports an entrypoint, the domain imports no I/O library, no `_private` name
is imported across modules, and no module is much longer than 400 lines.

Pure: it reads the source files with `ast`, imports nothing of ours.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOPS = ("orchestrator", "workers", "schemas", "simulation")
MAX_LINES = 420  # "files of about 400 lines at most"

# (module prefix, layer); the longest matching prefix wins. A module may import its own layer and those below.
LAYERS: tuple[tuple[str, int], ...] = (
    ("schemas", 0),
    ("orchestrator.domain", 1),
    ("orchestrator.settings", 2),
    ("orchestrator.ports", 2),
    ("orchestrator.observability", 2),  # metrics, log context, traces: beside the ports (docs/ARCHITECTURE.md)
    ("orchestrator.persistence", 3),
    ("orchestrator.engine", 4),
    ("orchestrator.services", 5),
    ("workers.fleet", 6),  # adapters: the real drivers ...
    ("workers.mail", 6),
    ("workers.webhooks", 6),  # the webhook senders (httpx, in memory) behind ports.WebhookSender
    ("simulation", 6),  # ... and the simulated ones
    ("orchestrator.bootstrap", 7),  # the one composition root
    ("workers", 8),  # the runtime: Celery app, tasks, dispatcher, embedded runner
    ("orchestrator.entrypoints", 9),  # REST, CLI, the Python API, the demo
    ("orchestrator.api", 9),  # the Python API where it always lived (a re-export of entrypoints.api)
    ("orchestrator", 9),  # the package itself
)
# adapters implement ports; they never reach up into the engine or the services
ADAPTER_MAY_NOT_IMPORT = ("orchestrator.engine", "orchestrator.services")
DOMAIN_BANNED = ("sqlalchemy", "celery", "kombu", "redis", "httpx", "fastapi", "os", "socket", "subprocess",
                 "paramiko", "psycopg2", "smtplib")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # a project module, or a third-party/stdlib top-level name
    names: tuple[str, ...]  # names taken with `from target import ...`
    line: int


def modules() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for top in TOPS:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


MODULES = modules()


def imports_of(name: str, path: Path) -> Iterator[Import]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                if full in MODULES:  # `from orchestrator.engine import steps`: the submodule
                    yield Import(name, full, (), node.lineno)
                else:
                    yield Import(name, base, (alias.name,), node.lineno)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, (), node.lineno)


GRAPH: dict[str, list[Import]] = {m: list(imports_of(m, p)) for m, p in MODULES.items()}


def layer_of(module: str) -> int:
    best = max((p for p, _ in LAYERS if module == p or module.startswith(p + ".")), key=len)
    return dict(LAYERS)[best]


def project(target: str) -> bool:
    return target in MODULES


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def project_graph() -> dict[str, set[str]]:
    return {m: {i.target for i in imps if project(i.target) and i.target != m} for m, imps in GRAPH.items()}


def test_the_import_graph_has_no_circle() -> None:
    assert circles(project_graph()) == []


def test_the_circle_finder_finds_a_circle() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def violations() -> list[str]:
    found = []
    for module, imps in GRAPH.items():
        mine = layer_of(module)
        for imp in imps:
            if not project(imp.target) or imp.target == module:
                continue
            theirs = layer_of(imp.target)
            where = f"{module}:{imp.line} imports {imp.target}"
            if theirs > mine:
                found.append(f"{where} (layer {theirs} above {mine})")
            if imp.target.startswith("orchestrator.entrypoints") and not (
                module.startswith("orchestrator.entrypoints") or module == "orchestrator.api"
            ):
                found.append(f"{where}: nothing imports an entrypoint")
            if layer_of(module) == 6 and imp.target.startswith(ADAPTER_MAY_NOT_IMPORT):
                found.append(f"{where}: an adapter imports only ports, domain, settings and persistence")
    return found


def test_every_import_goes_down_the_layers() -> None:
    assert violations() == []


def test_the_layer_rule_would_see_an_upward_import() -> None:
    GRAPH["orchestrator.domain.naming"].append(Import("orchestrator.domain.naming", "orchestrator.engine.steps", (), 1))
    try:
        assert any("orchestrator.domain.naming:1 imports orchestrator.engine.steps" in v for v in violations())
    finally:
        GRAPH["orchestrator.domain.naming"].pop()


def test_the_domain_imports_no_io_library() -> None:
    bad = [
        f"{module}:{imp.line} imports {imp.target}"
        for module, imps in GRAPH.items() if module.startswith("orchestrator.domain")
        for imp in imps if imp.target.split(".")[0] in DOMAIN_BANNED
        or (project(imp.target) and not imp.target.startswith(("orchestrator.domain", "schemas")))
    ]
    assert bad == []


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [
        f"{module}:{imp.line} takes {name} from {imp.target}"
        for module, imps in GRAPH.items() for imp in imps if project(imp.target)
        for name in imp.names if name.startswith("_") and not name.startswith("__")
    ]
    assert bad == []


def private_attribute_uses() -> list[str]:
    """`module._name` where `module` is a project module imported by name (`from x import module`)."""
    found = []
    for module, path in MODULES.items():
        bound = {}
        for imp in GRAPH[module]:
            if project(imp.target) and not imp.names:
                bound[imp.target.rpartition(".")[2]] = imp.target
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for alias_node in ast.walk(tree):
            if isinstance(alias_node, ast.ImportFrom):
                for a in alias_node.names:
                    if a.asname and f"{alias_node.module}.{a.name}" in MODULES:
                        bound[a.asname] = f"{alias_node.module}.{a.name}"
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{module}:{node.lineno} uses {bound[node.value.id]}.{node.attr}")
    return found


def test_no_private_name_of_another_module_is_used() -> None:
    assert private_attribute_uses() == []


def test_files_are_about_400_lines_at_most() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


@pytest.mark.parametrize("top", TOPS)
def test_each_top_level_package_is_scanned(top: str) -> None:
    assert any(m == top or m.startswith(top + ".") for m in MODULES)


def test_orchestrator_has_only_the_composition_root_settings_ports_and_the_api_flat() -> None:
    flat = sorted(p.name for p in (ROOT / "orchestrator").glob("*.py"))
    assert flat == ["__init__.py", "api.py", "bootstrap.py", "ports.py", "settings.py"]
