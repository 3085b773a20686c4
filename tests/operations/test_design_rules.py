"""The design rules, checked on the source: no fire-and-forget tasks, small rooms, imports
that only run down the layers, and every door through the one guard."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from relay_app.core.config import Settings
from relay_app.endpoints.guard import GUARDED
from relay_app.server.app import build_context, create_app, create_status_app
from relay_app.tools.testing import REPO

PACKAGE = REPO / "relay_app"
# Lowest first: a module may import its own package and the packages before it, never one
# after it. The top-level modules (the CLI, the Hypercorn entry, the `python -m` shims)
# stand above them all; `relay_app` itself (the version) is below everything.
LAYERS = (
    "core",
    "webrtc",
    "audio",
    "client",
    "streams",
    "media",
    "cluster",
    "signaling",
    "endpoints",
    "server",
    "tools",
)
TOP = len(LAYERS)


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(REPO).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The package modules `name` imports at run time (under TYPE_CHECKING aside)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]

    def visit(node: ast.AST) -> Iterator[str]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    parent = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(parent + ([child.module] if child.module else []))
                for alias in child.names:
                    target = f"{base}.{alias.name}"
                    yield target if target in known else base
            elif isinstance(child, ast.Import):
                yield from (alias.name for alias in child.names)
            yield from visit(child)

    yield from (target for target in visit(ast.parse(path.read_text())) if target in known)


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: set(_imports(name, path, set(modules))) - {name} for name, path in modules.items()
    }


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) == 1:
        return -1  # relay_app: the version, imports nothing
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else TOP


def test_imports_only_run_down_the_layers() -> None:
    upward = [
        f"{name} ({LAYERS[_layer(name)] if _layer(name) < TOP else 'top'}) imports {target}"
        for name, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(name)
    ]
    assert not upward, upward


def test_no_import_cycles_between_modules_or_packages() -> None:
    graph = _graph()
    packages: dict[str, set[str]] = {}
    for name, targets in graph.items():
        home = ".".join(name.split(".")[:2])
        packages.setdefault(home, set()).update(".".join(t.split(".")[:2]) for t in targets)
    for edges in (graph, packages):
        for start in edges:
            stack, seen = [(start, [start])], set()
            while stack:
                node, path = stack.pop()
                for target in edges.get(node, ()):
                    assert target != start or len(path) == 1, " -> ".join([*path, target])
                    if target not in seen and target != node:
                        seen.add(target)
                        stack.append((target, [*path, target]))


def test_the_top_of_the_package_is_entry_points_only() -> None:
    top = sorted(path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py")
    assert len(top) <= 6, top
    init = ast.parse((PACKAGE / "__init__.py").read_text())
    assert not [node for node in ast.walk(init) if isinstance(node, ast.Import | ast.ImportFrom)]


def test_a_single_node_imports_neither_the_cluster_nor_redis() -> None:
    code = (
        "import sys, relay_app.asgi, relay_app.server.app as a; "
        "from relay_app.core.config import Settings; a.create_asgi_app(Settings()); "
        "print(sorted(m for m in sys.modules if m == 'redis' or m.startswith('relay_app.cluster')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.stdout.strip() == "[]", result.stderr[-2000:]


def test_every_route_on_both_ports_goes_through_the_guard() -> None:
    settings = Settings()
    ctx = build_context(settings)
    unguarded = [
        f"{rule.rule} {sorted(rule.methods or ())}"
        for app in (create_app(settings, ctx), create_status_app(ctx))
        for rule in app.url_map.iter_rules()
        if not hasattr(app.view_functions[rule.endpoint], GUARDED)
    ]
    assert not unguarded, unguarded


def test_only_the_guard_reads_a_bearer_token() -> None:
    compares = re.compile(r"""==\s*["']bearer["']|["']bearer["']\s*==""", re.IGNORECASE)
    readers = sorted(
        str(path.relative_to(REPO))
        for path in PACKAGE.rglob("*.py")
        if compares.search(path.read_text())
    )
    assert readers == ["relay_app/endpoints/guard.py"], readers


def test_no_fire_and_forget_tasks_in_relay_app() -> None:
    pattern = re.compile(r"create_task\(|ensure_future\(|run_forever\(|get_event_loop\(")
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_rooms_stay_small_one_job_each() -> None:
    """Classes up to 300 lines, functions up to 60, the WebSocket session under 400."""
    too_big = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > (300 if isinstance(node, ast.ClassDef) else 60):
                    too_big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({size})")
    assert not too_big, too_big
    assert len((PACKAGE / "signaling" / "session.py").read_text().splitlines()) < 400


def test_bench_and_tests_share_relay_app_tools_without_path_hacks() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for folder in ("bench", "tests", "relay_app")
        for path in sorted((REPO / folder).rglob("*.py"))
        for line in path.read_text().splitlines()
        if ("sys.path" in line and path.name != "test_design_rules.py")
        or (folder in ("bench", "relay_app") and re.match(r"\s*(from|import) tests\b", line))
        or (folder == "tests" and re.match(r"\s*(from|import) bench\b", line))
    ]
    assert not offenders, offenders
