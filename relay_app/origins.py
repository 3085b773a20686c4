"""Which browser pages and which Host names may talk to this server (CSWSH, DNS rebinding).

Shared by /ws, WHIP/WHEP and every HTTP route's Host check (app.py).
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

from .config import Settings


def origin_allowed(origin: str | None, host: str, settings: Settings) -> bool:
    """Cross-site WebSocket protection: a browser page from elsewhere may not open /ws.

    Clients that send no Origin (Python, curl) pass: Origin is what browsers add, and what a
    malicious page cannot forge. Default: only the server's own origin (same host:port).
    """
    if origin is None:
        return True
    allowed = settings.server.allowed_origins
    if allowed is not None:
        return "*" in allowed or origin.rstrip("/") in {o.rstrip("/") for o in allowed}
    return urlsplit(origin).netloc.lower() == host.lower()


def known_hosts(settings: Settings) -> set[str] | None:
    """Host names a request may name (None: any). IP literals always pass (see host_allowed)."""
    allowed = settings.server.allowed_hosts
    if allowed is not None:
        return None if "*" in allowed else {host.lower() for host in allowed}
    hostname = socket.gethostname()
    names = {"localhost", hostname, f"{hostname}.local", socket.getfqdn(), settings.server.host}
    return {name.lower() for name in names if name}


def host_allowed(host_header: str, known: set[str] | None) -> bool:
    """DNS rebinding needs a name the attacker controls: an IP literal cannot be one, so any
    IP passes, and a name must be one this server knows it has (or is configured with)."""
    if known is None:
        return True
    host = urlsplit(f"//{host_header}").hostname or ""
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return host.lower() in known
