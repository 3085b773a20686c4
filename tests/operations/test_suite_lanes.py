"""The suite's own promise: `make test`'s parallel part gives a worker a whole file (or a
Chromium lane) at a time, so a module's server stays one and browsers never pile up. xdist's
`loadgroup` silently stopped doing that under pytest 9 (every test ran wherever there was
room, three browsers at once); this runs the parallel part's own options on two small files
and reads which worker ran what."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict

from relay_app.tools.testing import REPO

from ..conftest import CHROMIUM_LANES, FileLanes, lane

FILES = ("tests/signaling/test_session.py", "tests/webrtc/test_udp_mux.py")


def test_the_parallel_part_gives_each_file_to_one_worker() -> None:
    makefile = (REPO / "Makefile").read_text()
    options = re.search(r"^PARALLEL := -n \$\(TEST_WORKERS\) (.*)$", makefile, re.M)
    assert options, "Makefile: PARALLEL changed shape"
    command = [sys.executable, "-m", "pytest", "-n", "2", *options.group(1).split()]
    command += ["-v", "-p", "no:cacheprovider", "-m", "not serial", *FILES]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    workers = defaultdict(set)
    for worker, nodeid in re.findall(r"^\[(gw\d+)\] .*?PASSED (\S+)", done.stdout, re.M):
        workers[nodeid.split("::")[0]].add(worker)
    assert sorted(workers) == sorted(FILES), done.stdout[-3000:]
    assert all(len(ran_on) == 1 for ran_on in workers.values()), dict(workers)


def test_browser_files_of_a_lane_are_one_unit_of_work_and_other_files_their_own() -> None:
    """What FileLanes gives xdist as each test's scope (a parametrize id may hold '::')."""
    scope = FileLanes._split_scope  # (it reads nothing of the scheduler's state)
    entrance = scope(None, "tests/browser/test_entrance.py::test_a[x::y]")
    hall = scope(None, "tests/browser/test_hall.py::test_b")
    browser = scope(None, "tests/browser/test_browser.py::test_c[forward]")
    session = scope(None, "tests/signaling/test_session.py::test_d[a::b]")
    assert entrance == hall == CHROMIUM_LANES["tests/browser/test_hall.py"]
    assert browser != entrance and browser.startswith("chromium")
    assert session == "tests/signaling/test_session.py"


def test_every_browser_file_has_a_lane() -> None:
    browser_files = sorted(
        path.relative_to(REPO).as_posix() for path in (REPO / "tests/browser").glob("test_*.py")
    )
    lanes = {lane(f"{path}::t") for path in browser_files if path in CHROMIUM_LANES}
    assert [path for path in browser_files if path not in CHROMIUM_LANES] == [
        "tests/browser/test_speakers.py"  # (serial: it runs alone)
    ]
    assert len(lanes) == 2
