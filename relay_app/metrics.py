"""Counters and the live counts that prove teardown, with JSON and Prometheus views.

Stream and connection counts are not kept here: they are read from the StreamRegistry (one truth).
`LiveCounts` is deliberately independent of the registry: it is incremented where a resource is
created and decremented where it is released, so a leak shows as a non-zero count even if the
registry forgot the owner.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class LiveStatistics:
    sessions: int
    session_task_groups: int
    peer_connections: int
    relay_subscriptions: int


@dataclass
class LiveCounts:
    sessions: int = 0
    session_task_groups: int = 0
    peer_connections: int = 0
    relay_subscriptions: int = 0

    def statistics(self) -> LiveStatistics:
        return LiveStatistics(**asdict(self))


@dataclass
class Metrics:
    live: LiveCounts = field(default_factory=LiveCounts)
    started_monotonic: float = field(default_factory=time.monotonic)
    total_audio_bytes: int = 0
    audio_frames: int = 0
    sessions_total: int = 0
    streams_total: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def uptime_seconds(self) -> float:
        return time.monotonic() - self.started_monotonic

    def count_error(self, kind: str) -> None:
        self.errors[kind] += 1
