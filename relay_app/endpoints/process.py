"""What the process itself shows a leak by: memory, threads, tasks by owner, and whether
WebRTC can work here at all (`/health`, `/metrics`, the Prometheus collector)."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any


def webrtc_available() -> bool:
    """aiortc imported and PyAV has the Opus codec the relay needs."""
    try:
        import av

        av.codec.Codec("opus", "r")
        av.codec.Codec("libopus", "w")
    except (ImportError, ValueError):  # PyAV missing, or built without (lib)opus
        return False
    return True


WEBRTC_AVAILABLE = webrtc_available()


# Worker pools grow on demand and keep their threads (asyncio's default executor, where
# aiortc encodes in transcode mode; anyio's to_thread): not a leak, so counted apart.
POOL_THREAD_PREFIXES = ("asyncio_", "AnyIO worker thread", "ThreadPoolExecutor")


def process_stats() -> dict[str, Any]:
    """Resident memory and threads: what a leak would grow."""
    try:
        resident_pages = int(Path("/proc/self/statm").read_text().split()[1])
        rss_mb = round(resident_pages * os.sysconf("SC_PAGE_SIZE") / 1024**2, 1)
    except (OSError, ValueError, IndexError):
        rss_mb = None
    threads = threading.enumerate()
    pooled = sum(1 for t in threads if t.name.startswith(POOL_THREAD_PREFIXES))
    return {"rss_mb": rss_mb, "threads": len(threads) - pooled, "pool_threads": pooled}


TASK_OWNERS = ("relay_app", "aiortc", "aioice")


def tasks_by_owner() -> dict[str, int]:
    """Tasks running code of this package, aiortc and aioice: the ones a leaked session leaves.

    HTTP connection tasks of Hypercorn linger a few seconds after each request (keep-alive), so
    the total task count is noisy; these are not.
    """
    counts = dict.fromkeys(TASK_OWNERS, 0)
    for task in asyncio.all_tasks():
        coro: Any = task.get_coro()
        code = getattr(coro, "cr_code", None) or getattr(coro, "gi_code", None)
        filename = code.co_filename if code is not None else ""
        for owner in TASK_OWNERS:
            if f"/{owner}/" in filename:
                counts[owner] += 1
                break
    return counts
