"""The one design rule, checked on the source: no fire-and-forget tasks in relay_app."""

from __future__ import annotations

import ast
import re

from relay_app.testing import REPO


def test_no_fire_and_forget_tasks_in_relay_app() -> None:
    pattern = re.compile(r"create_task\(|ensure_future\(|run_forever\(|get_event_loop\(")
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in sorted((REPO / "relay_app").rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, offenders


def test_rooms_stay_small_one_job_each() -> None:
    """Classes up to 300 lines, functions up to 60, session.py under 400 (issue 9)."""
    too_big = []
    for path in sorted((REPO / "relay_app").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                size = (node.end_lineno or node.lineno) - node.lineno + 1
                if size > (300 if isinstance(node, ast.ClassDef) else 60):
                    too_big.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({size})")
    assert not too_big, too_big
    assert len((REPO / "relay_app" / "session.py").read_text().splitlines()) < 400


def test_bench_and_tests_share_relay_app_testing_without_path_hacks() -> None:
    offenders = [
        f"{path.relative_to(REPO)}: {line.strip()}"
        for folder in ("bench", "tests", "relay_app")
        for path in sorted((REPO / folder).rglob("*.py"))
        for line in path.read_text().splitlines()
        if ("sys.path" in line and path.name != "test_design_rules.py")
        or (folder == "bench" and re.match(r"\s*(from|import) tests\b", line))
    ]
    assert not offenders, offenders
