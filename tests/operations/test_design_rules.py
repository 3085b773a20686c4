"""The design rules, checked on the source: no fire-and-forget tasks, small rooms, imports
that only run down the layers, every door through the one guard, and the libraries' internals
touched only in their room."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

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
    "internals",
    "webrtc",
    "audio",
    "client",
    "plane",
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


# What a single node once left None, and their types: a LocalCluster (streams/cluster_view.py)
# stands there now, so the code asks the cluster instead of asking whether there is one.
CLUSTER_NAMES = ("cluster", "upstreams")
CLUSTER_TYPES = ("ClusterView", "UpstreamOpener")


def _no_cluster_checks(code: str) -> Iterator[tuple[int, str]]:
    """Where code tests for "no cluster": `cluster is None`, `if ctx.upstreams`, a
    `ClusterView | None` or `Optional[UpstreamOpener]` annotation."""

    def names_cluster(node: ast.AST) -> bool:
        dotted = _dotted(node)
        return dotted is not None and dotted.split(".")[-1] in CLUSTER_NAMES

    def none(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value is None

    def truth_tested(test: ast.expr) -> Iterator[ast.expr]:
        yield test
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            yield from truth_tested(test.operand)
        elif isinstance(test, ast.BoolOp):
            for value in test.values:
                yield from truth_tested(value)

    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Compare) and any(
            isinstance(op, ast.Is | ast.IsNot | ast.Eq | ast.NotEq) for op in node.ops
        ):
            sides = [node.left, *node.comparators]
            if any(none(side) for side in sides) and any(names_cluster(side) for side in sides):
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert):
            if any(names_cluster(test) for test in truth_tested(node.test)):
                yield node.lineno, f"tests {ast.unparse(node.test)}"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            sides = [node.left, node.right]
            if any(none(side) for side in sides) and any(
                isinstance(side, ast.Name) and side.id in CLUSTER_TYPES for side in sides
            ):
                yield node.lineno, ast.unparse(node)
        elif (
            isinstance(node, ast.Subscript)
            and ast.unparse(node.value).endswith("Optional")
            and ast.unparse(node.slice) in CLUSTER_TYPES
        ):
            yield node.lineno, ast.unparse(node)


def test_a_single_node_is_a_cluster_of_one_not_a_none() -> None:
    """Every node has a cluster and upstreams (a single node's LocalCluster holds nothing
    elsewhere): nothing in relay_app checks for their absence."""
    checks = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for line, what in _no_cluster_checks(path.read_text())
    ]
    assert not checks, checks


def test_the_cluster_rule_sees_a_none_check() -> None:
    sample = (
        "def health(ctx, registry, upstreams):\n"
        "    cluster: ClusterView | None = ctx.cluster\n"
        "    node_id = ctx.cluster.node_id if ctx.cluster is not None else None\n"
        "    if not upstreams or registry.cluster == None:\n"
        "        return None\n"
        "    opener: Optional[UpstreamOpener] = None\n"
        "    if settings.cluster.redis_url is None and link is None:\n"
        "        return ctx.cluster.view()\n"
    )
    found = sorted(_no_cluster_checks(sample))
    assert found == [
        (2, "ClusterView | None"),
        (3, "ctx.cluster is not None"),
        (4, "registry.cluster == None"),
        (4, "tests not upstreams or registry.cluster == None"),
        (6, "Optional[UpstreamOpener]"),
    ], found


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


# The room of internals (relay_app/internals/), and the libraries whose private names only it
# may touch: aiortc, aioice, pylibsrtp, asyncio, Quart and Hypercorn (with the parts of them
# that come from wsproto and Werkzeug: the WebSocket protocol, the request proxies).
ROOM = PACKAGE / "internals"
INTERNAL_LIBRARIES = (
    "aiortc",
    "aioice",
    "pylibsrtp",
    "asyncio",
    "quart",
    "hypercorn",
    "wsproto",
    "werkzeug",
)
_MANGLED = re.compile(r"_[A-Za-z]\w*__\w*$")  # a class's private `__x`, as Python spells it


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


@cache
def _library_privates() -> tuple[frozenset[str], dict[tuple[str, str], frozenset[str]]]:
    """Every private name the libraries define (methods, attributes, module names; a class's
    `__x` as `_Class__x`), and those each of their classes defines, by (module, class)."""
    everything: set[str] = set()
    by_class: dict[tuple[str, str], frozenset[str]] = {}
    for library in INTERNAL_LIBRARIES:
        root = Path(importlib.import_module(library).__file__ or "").parent
        for path in root.rglob("*.py"):
            parts = path.relative_to(root.parent).with_suffix("").parts
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef):
                    names = _defined_in(node)
                    by_class[(module, node.name)] = frozenset(names)
                    everything |= names
                elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                    if _private(node.name):
                        everything.add(node.name)
                elif (
                    isinstance(node, ast.Attribute)
                    and isinstance(node.ctx, ast.Store)
                    and _private(node.attr)
                ):
                    everything.add(node.attr)
    return frozenset(everything), by_class


def _defined_in(klass: ast.ClassDef) -> set[str]:
    names = set()
    owner = klass.name.lstrip("_")
    for node in ast.walk(klass):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            name = node.name
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            name = node.attr
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            name = node.id
        else:
            continue
        if name.startswith("__") and not name.endswith("__"):
            names.add(f"_{owner}{name}")
        elif _private(name):
            names.add(name)
    return names


def _bindings(tree: ast.Module) -> dict[str, str]:
    """The module's names bound by imports from the libraries -> what they name (dotted)."""
    bound = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in INTERNAL_LIBRARIES:
                    if alias.asname:
                        bound[alias.asname] = alias.name
                    else:
                        bound[alias.name.split(".")[0]] = alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            for alias in node.names if node.module.split(".")[0] in INTERNAL_LIBRARIES else ():
                bound[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return bound


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return f"{base}.{node.attr}" if base else None
    return None


def _library_object(node: ast.AST, bound: dict[str, str]) -> Any:
    """The library module or class an expression names through the module's imports, or
    None (anything of ours, or a local)."""
    dotted = _dotted(node)
    if dotted is None or dotted.split(".")[0] not in bound:
        return None
    path = (bound[dotted.split(".")[0]] + dotted[len(dotted.split(".")[0]) :]).split(".")
    for split in range(len(path), 0, -1):
        try:
            found: Any = importlib.import_module(".".join(path[:split]))
        except ImportError:
            continue
        for name in path[split:]:
            found = getattr(found, name, None)
        return found
    return None


def _inherited_privates(klass: ast.ClassDef, bound: dict[str, str]) -> frozenset[str]:
    """The private names a class of ours inherits from the libraries' classes it extends."""
    _, by_class = _library_privates()
    names: set[str] = set()
    for base in klass.bases:
        found = _library_object(base, bound)
        for ancestor in getattr(found, "__mro__", ()):
            names |= by_class.get((ancestor.__module__, ancestor.__qualname__), frozenset())
    return frozenset(names)


def _reaches(code: str) -> Iterator[tuple[int, str]]:
    """Where a module's code touches a private name of the libraries (see the test below)."""
    everything, _ = _library_privates()
    tree = ast.parse(code)
    bound = _bindings(tree)
    inherited = {
        id(node): _inherited_privates(node, bound)
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef)
    }

    # `privates`: inside a class, the private names it inherits from the libraries (its own
    # `self._x` are ours); outside any class, None (a `self` there is nobody's in particular).
    def visit(node: ast.AST, privates: frozenset[str] | None) -> Iterator[tuple[int, str]]:
        if isinstance(node, ast.ClassDef):
            privates = inherited[id(node)]
        if isinstance(node, ast.ImportFrom) and not node.level and node.module:
            if node.module.split(".")[0] in INTERNAL_LIBRARIES and (
                any(_private(part) for part in node.module.split("."))
                or any(_private(alias.name) for alias in node.names)
            ):
                yield node.lineno, f"imports {ast.unparse(node)}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in INTERNAL_LIBRARIES and any(
                    _private(part) for part in alias.name.split(".")
                ):
                    yield node.lineno, f"imports {alias.name}"
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in (
            privates or ()
        ):
            yield node.lineno, f"overrides {node.name}"
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            mine = isinstance(value, ast.Name) and value.id in ("self", "cls")
            mine = mine or (isinstance(value, ast.Call) and ast.unparse(value.func) == "super")
            if node.attr in (privates if mine and privates is not None else everything):
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if _MANGLED.match(node.value):
                yield node.lineno, repr(node.value)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            arguments = node.args
            if node.func.id in ("getattr", "setattr", "hasattr", "delattr") and arguments:
                name = arguments[1] if len(arguments) > 1 else None
                if isinstance(name, ast.Constant) and name.value in everything:
                    yield node.lineno, ast.unparse(node)
                elif node.func.id in ("setattr", "delattr") and (
                    _library_object(arguments[0], bound) is not None
                ):
                    yield node.lineno, f"patches {ast.unparse(node)}"
        if isinstance(node, ast.Assign | ast.AugAssign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Attribute) and (
                    _library_object(target.value, bound) is not None
                ):
                    yield node.lineno, f"patches {ast.unparse(target)}"
        for child in ast.iter_child_nodes(node):
            yield from visit(child, privates)

    yield from visit(tree, None)


# How audio reaches a listener is decided by the relay settings and, once, by the output
# factory: nothing else tests them, nor the shapes the decision once had.
STRATEGY_TESTS = re.compile(
    r"relay\.mode|relay\.fast_path|relay\.red\b|strategy\.(decode|fast_path|red)\b"
    r"|\.packets is|receiver_source"
)
FACTORY = PACKAGE / "plane" / "factory.py"


def _strategy_tests(source: str) -> Iterator[tuple[int, str]]:
    """Conditions (if, while, a conditional expression, a comparison, and/or) that test
    the relay strategy."""
    for node in ast.walk(ast.parse(source)):
        tests: list[ast.AST] = []
        if isinstance(node, ast.If | ast.While | ast.IfExp):
            tests.append(node.test)
        elif isinstance(node, ast.Compare | ast.BoolOp):
            tests.append(node)
        for test in tests:
            if STRATEGY_TESTS.search(ast.unparse(test)):
                yield node.lineno, ast.unparse(test)


def test_only_the_output_factory_tests_the_relay_strategy() -> None:
    """relay.mode, relay.fast_path and relay.red decide how each output is fed in one place,
    plane/factory.py (`Strategy`), when the output is made; the packet path, the sessions
    and the cluster do what the strategy made, never test it again."""
    offenders = [
        f"{path.relative_to(REPO)}:{line}: {test}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if path != FACTORY and path.name != "config.py"
        for line, test in _strategy_tests(path.read_text())
    ]
    assert not offenders, offenders
    assert list(_strategy_tests("if settings.relay.fast_path and stream.packets is not None: pass"))


def test_a_stream_holds_one_collection_of_outputs() -> None:
    """Who hears a stream (WebRTC listeners, the Ogg pages, the recording, the meter) is one
    collection on `Stream`; no other field holds listeners, queues or senders."""
    from dataclasses import fields

    from relay_app.plane.outputs import Outputs
    from relay_app.streams.stream import Stream

    kinds = {f.name: str(f.type) for f in fields(Stream)}
    assert [name for name, kind in kinds.items() if "Outputs" in kind] == ["outputs"]
    listeners = re.compile(r"dict\[|set\[|Fanout|HttpAudio|Recording|DirectSender|RelayTrack")
    assert not {name: kind for name, kind in kinds.items() if listeners.search(kind)}
    assert Outputs.__module__ == "relay_app.plane.outputs"


def test_library_internals_are_touched_only_in_the_room() -> None:
    """Outside relay_app/internals/ nothing names a private attribute, method or module of
    aiortc, aioice, pylibsrtp, asyncio, Quart or Hypercorn, overrides one in a subclass,
    spells a mangled `_Class__x`, or replaces a library's module or class attribute: an
    upgrade or another event loop breaks in the room, where tests/internals names the
    reach. `self._x` of our own classes is ours (unless the class inherits `_x` from one of
    theirs), as is any name none of the libraries defines."""
    outside = sorted(path for path in PACKAGE.rglob("*.py") if ROOM not in path.parents)
    reaches = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in outside
        for line, what in _reaches(path.read_text())
    ]
    assert not reaches, reaches


def test_the_room_rule_sees_a_reach() -> None:
    """The rule above finds what it is for (a fixture of reaches it must see, and of our own
    names it must let be)."""
    sample = (
        "import aioice.ice\n"
        "from aiortc.mediastreams import MediaStreamTrack\n"
        "from pylibsrtp._binding import lib\n"
        "from hypercorn.protocol import h11\n"
        "def send(transport, dtls, sender):\n"
        "    transport._sock.sendto(b'', None)\n"
        "    getattr(sender, '_RTCRtpSender__stats')\n"
        "    return dtls._state\n"
        "aioice.ice.get_host_addresses = None\n"
        "setattr(h11, 'WSStream', None)\n"
        "def get_component_candidates(self):\n"
        "    self._protocols.append(None)\n"
        "class Track(MediaStreamTrack):\n"
        "    def __init__(self):\n"
        "        self._queue = []\n"
        "        self._id = 1\n"
        "class Ours:\n"
        "    def _state(self):\n"
        "        return self._sock, self._state()\n"
    )
    found = [what for _, what in _reaches(sample)]
    assert found == [
        "imports from pylibsrtp._binding import lib",
        "transport._sock",
        "getattr(sender, '_RTCRtpSender__stats')",
        "'_RTCRtpSender__stats'",
        "dtls._state",
        "patches aioice.ice.get_host_addresses",
        "patches setattr(h11, 'WSStream', None)",
        "self._protocols",
        "self._id",
    ], found
