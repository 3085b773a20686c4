"""relay_app: a LAN voice relay. WebRTC senders, relayed to many receivers."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "create_app"]


def __getattr__(name: str) -> object:
    # Lazy, so that `python -m relay_app.client` does not import Quart.
    if name == "create_app":
        from .app import create_app

        return create_app
    raise AttributeError(name)
