"""The one design rule, checked on the source: no fire-and-forget tasks in relay_app."""

from __future__ import annotations

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
