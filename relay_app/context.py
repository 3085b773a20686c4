"""RelayContext: what every session and endpoint of one server shares, built by create_app."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio

from .config import Settings
from .metrics import Metrics
from .registry import StreamRegistry


@dataclass(eq=False)
class RelayContext:
    settings: Settings
    registry: StreamRegistry
    metrics: Metrics = field(default_factory=Metrics)
    # Set when the process starts shutting down: sessions close with 1001 instead of waiting
    # for the server to cut them off. Made at lifespan startup: an anyio.Event needs the loop.
    shutting_down: anyio.Event | None = None
    # True between lifespan startup and shutdown: the root task group (sweeper) is running.
    serving: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> RelayContext:
        return cls(settings=settings, registry=StreamRegistry(settings))
