"""`hypercorn -c hypercorn.toml relay_app.asgi:app`: settings from config.json and the env.

hypercorn.toml's `bind` must name server.port and server.audio_port (8080 and 8081 by default);
`python -m relay_app` (make run) binds them from the settings itself.
"""

from __future__ import annotations

from .app import create_asgi_app
from .config import load_settings
from .ice import configure_ice
from .logs import configure_logging

settings = load_settings()
configure_logging(settings.logging)
configure_ice(settings.webrtc)
app = create_asgi_app(settings)
