"""Fixtures: real servers on 127.0.0.1, real aiortc clients, and the leak check after each test
(the helpers they use are in helpers.py)."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from relay_app.internals import of_aioice
from relay_app.tools.testing import ServerProcess, deep_merge
from relay_app.webrtc.ice import use_host_addresses

from .helpers import SECRET, assert_no_leaks, finish_server, serving, token

# The test clients gather media candidates on loopback only, like the server under test.
use_host_addresses(["127.0.0.1"])


@pytest.fixture(scope="session")  # (session: so a module may hold an async fixture)
def anyio_backend() -> str:
    return "asyncio"  # aiortc is asyncio-only


RELAY_MODES = ["forward", "transcode"]


@pytest.fixture(scope="module", params=RELAY_MODES)
def relay_mode(request: pytest.FixtureRequest) -> str:
    """Every scenario runs against both relay modes (relay.mode)."""
    return str(request.param)


@pytest.fixture(scope="module")
def shared_server(
    tmp_path_factory: pytest.TempPathFactory, relay_mode: str
) -> Iterator[ServerProcess]:
    yield from serving(tmp_path_factory.mktemp("server"), {"relay": {"mode": relay_mode}})


@pytest.fixture
def server(shared_server: ServerProcess) -> Iterator[ServerProcess]:
    """The module's server; after the test, every live count must be back to zero."""
    yield shared_server
    assert_no_leaks(shared_server)


@pytest.fixture
def make_server(tmp_path: Path, relay_mode: str) -> Iterator[Callable[..., ServerProcess]]:
    """Start a server with extra config for this test only; checked and stopped after it."""
    yield from _servers(tmp_path, relay_mode)


@pytest.fixture
def make_forward_server(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """`make_server` in forward mode only: for scenarios about the WebSocket, limits and
    sessions that the relay mode does not touch (each run costs suite time)."""
    yield from _servers(tmp_path, "forward")


@pytest.fixture(autouse=True)
def _frozen_heap(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that measures time runs its speakers and listeners in this process, which by
    then has run many scenarios: a full garbage collection of all that would stop them for a
    moment and show as the server's gap. Collected before the test, and what is left frozen
    (gc.freeze) so that the collections during it look only at what it made."""
    if request.node.get_closest_marker("serial") is None:
        yield
        return
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


CONSENT_TIMEOUT = 6.0  # webrtc.consent_timeout's least


@pytest.fixture
def short_consent() -> Iterator[dict[str, Any]]:
    """Settings for a server that gives up on ICE consent after CONSENT_TIMEOUT (checks ~1 s
    apart, not 30 s), this process's clients doing the same meanwhile: a flood that costs a
    peer its consent shows in seconds."""
    before = of_aioice.consent_timeout()
    of_aioice.set_consent_timeout(CONSENT_TIMEOUT)
    try:
        yield {"webrtc": {"consent_timeout": CONSENT_TIMEOUT}}
    finally:
        of_aioice.set_consent_timeout(before)


def _servers(tmp_path: Path, relay_mode: str) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def _make(config: dict[str, Any] | None = None, **kwargs: Any) -> ServerProcess:
        config = deep_merge({"relay": {"mode": relay_mode}}, config or {})
        server = ServerProcess(tmp_path, config, **kwargs).start()
        started.append(server)
        server.take_baseline()
        return server

    try:
        yield _make
        for server in started:
            if server.proc is not None and server.proc.poll() is None:
                server.wait_idle()
                finish_server(server)
    finally:
        for server in started:  # a failed check must not leave a server running
            server.stop()


# Run alone (`make test`'s second part, marked `serial`): what measures time against tight
# bounds (hand-over gaps, latencies, cleanup and notice deadlines, loss as heard by Chromium)
# and floods, which a busy machine would stretch. Whole files here; a test elsewhere that
# measures time says so itself with `@pytest.mark.serial`. The rest, Chromium pages included,
# runs on every core (`make test`'s first part).
SERIAL = (
    "tests/browser/test_speakers.py",
    "tests/scenarios/test_handover_gap.py",
    "tests/scenarios/test_faults.py",
)

# The first part hands each worker a file at a time, longest first, so no long file starts
# last and runs on alone, and a module's server stays one. Chromium pages run in two lanes, so
# at most two browsers run at once (three beside the other workers on two cores starved a page
# past its 30 s waits about one run in three). A file's lane is its unit of work (FileLanes).
CHROMIUM_LANES = {
    "tests/browser/test_entrance.py": "chromium-1",
    "tests/browser/test_hall.py": "chromium-1",
    "tests/browser/test_admin_link.py": "chromium-1",
    "tests/browser/test_wifi_loss.py": "chromium-1",
    "tests/browser/test_browser.py": "chromium-2",
    "tests/browser/test_operator.py": "chromium-2",
    "tests/browser/test_third_party_players.py": "chromium-2",
    "tests/browser/test_browsers_on_one_udp_port.py": "chromium-2",
    "tests/browser/test_phone.py": "chromium-2",
}
LONGEST_FIRST = (
    "chromium-1",
    "chromium-2",
    "tests/cluster/test_cluster.py",
    "tests/operations/test_event_cli.py",
    "tests/endpoints/test_http_listening.py",
    "tests/scenarios/test_vlc_late_joiner.py",
)


def lane(nodeid: str) -> str:
    """The unit of work a test belongs to: its file's, or its Chromium lane."""
    path = nodeid.split("::", 1)[0]
    return CHROMIUM_LANES.get(path, path)


class FileLanes(LoadScopeScheduling):
    """xdist's scheduler by scope, with our lanes for scopes. (xdist's own `loadgroup` marks
    a test's group by renaming its node id, which pytest 9 no longer lets it do: every test
    ran wherever there was room, three browsers at once among them.)"""

    def _split_scope(self, nodeid: str) -> str:
        return lane(nodeid)


@pytest.hookimpl(optionalhook=True)  # (the serial part runs without xdist)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> LoadScopeScheduling | None:
    """FileLanes for `--dist loadscope` (`make test`'s); xdist's own for any other mode."""
    return FileLanes(config, log) if config.getvalue("dist") == "loadscope" else None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Scenarios marked `mode_independent` (page logic, the HTTP path, which both relay modes
    share) run in forward mode only: the transcode copy would test the same code again and
    cost suite time. Deselected, not skipped: nothing here depends on the machine. Tests in
    SERIAL are marked `serial`; lanes are ordered longest first (see above)."""
    root = config.rootpath
    keep, drop = [], []
    for item in items:
        path = item.path.relative_to(root).as_posix()
        if path.startswith(SERIAL):
            item.add_marker(pytest.mark.serial)
        callspec = getattr(item, "callspec", None)
        mode = callspec.params.get("relay_mode") if callspec is not None else None
        once = item.get_closest_marker("mode_independent") is not None
        (drop if once and mode == "transcode" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)

    def rank(item: pytest.Item) -> int:
        group = lane(item.nodeid)
        return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)

    items[:] = sorted(keep, key=rank)  # (stable: a file's own order stays)


@pytest.fixture(scope="module")
def secure_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[ServerProcess]:
    """The module's server with auth on (helpers.SECRET), the module's `SECURE_CONFIG` on
    top; its baseline and leak checks read /metrics with a metrics token."""
    extra = getattr(request.module, "SECURE_CONFIG", {})
    config = deep_merge({"auth": {"secret": SECRET}}, extra)
    metrics = {"Authorization": f"Bearer {token('metrics')}"}
    yield from serving(tmp_path_factory.mktemp("secure"), config, metrics)
