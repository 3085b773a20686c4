"""Where phones on the LAN find this server: its LAN addresses and the Listen page's URLs.

`0.0.0.0` is where the server listens, not an address anyone can open: the startup log, the
`qr` command and the home page's QR code name the machine's LAN addresses instead (read from
its interfaces with ifaddr, the library aioice uses; nothing is sent anywhere).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import quote

import ifaddr

from ..core.config import Settings

ANY_ADDRESS = {"", "0.0.0.0", "::"}


def lan_addresses() -> list[str]:
    """This machine's IPv4 addresses a phone could reach: not loopback, not link-local."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if not isinstance(ip.ip, str):
                continue  # IPv6: (address, flowinfo, scope) - phones on a LAN use IPv4 URLs
            address = ipaddress.ip_address(ip.ip)
            if address.is_loopback or address.is_link_local or str(address) in found:
                continue
            found.append(str(address))
    return found


def listen_urls(settings: Settings, channel: str | None = None) -> list[str]:
    """The Listen page (or one channel's) at each address the server can be reached on."""
    server = settings.server
    scheme = "https" if server.certfile else "http"
    hosts = lan_addresses() if server.host in ANY_ADDRESS else [server.host]
    path = "/listen" + (f"/{quote(channel)}" if channel else "")
    return [f"{scheme}://{host}:{server.port}{path}" for host in hosts or ["127.0.0.1"]]
