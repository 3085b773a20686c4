"""A short churn soak (bench/soak.py runs 1,000): nothing is left behind, however clients leave."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from relay_app.tools.soak import SCENARIOS, soak
from relay_app.tools.testing import ServerProcess

pytestmark = pytest.mark.anyio


async def test_churn_of_sessions_leaving_every_way_leaves_nothing_behind(
    make_server: Callable[..., ServerProcess],
) -> None:
    server = make_server({"server": {"max_connections": 200}})  # memory settings at defaults
    result = await soak(server.ws_url, server.base_url, sessions=28, concurrency=8)
    assert not result["failures"], result["failures"]
    assert set(result["by_scenario"]) == set(SCENARIOS)
    live = result["after"]["live"]
    assert not any(v for k, v in live.items() if not k.endswith("_tasks")), live
    for owner in ("relay_app_tasks", "aiortc_tasks", "aioice_tasks"):
        assert live[owner] <= result["baseline"]["live"][owner], (owner, result)
    assert result["after"]["process"]["threads"] <= result["baseline"]["process"]["threads"]
    # 28 sessions are too few for a steady state (heap fragmentation moves RSS by ~20 MB either
    # way): a generous bound here; bench/soak.py measures 1,000 against the 20 MB target.
    assert result["rss_growth_mb"] < 40, result
    assert not server.find("session_crashed")
