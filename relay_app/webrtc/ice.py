"""Which local addresses WebRTC gathers host candidates on (`webrtc.ice_addresses`).

aioice asks `aioice.ice.get_host_addresses` for every interface address and always skips
127.0.0.1, and neither aioice nor aiortc takes a list of addresses or a port range. This module
says which addresses and ports; the room of internals (internals/of_aioice.py) hooks them into
aioice, process-wide, which matches the settings (one server process, one list, one range).
With `["127.0.0.1"]` every candidate, and so every media packet, stays on loopback.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import random
import uuid
from collections.abc import Callable, Sequence

import aioice.ice

from ..core.config import WebRTCSettings
from ..internals import of_aioice


def use_host_addresses(addresses: Sequence[str] | None) -> None:
    """Gather on exactly these addresses; None restores aioice's own choice."""
    if addresses is None:
        of_aioice.replace_host_addresses(None)
        return
    chosen = [ipaddress.ip_address(a) for a in addresses]

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        return [
            str(a) for a in chosen if (a.version == 4 and use_ipv4) or (a.version == 6 and use_ipv6)
        ]

    of_aioice.replace_host_addresses(get_host_addresses)


def announce(sdp: str, address: str | None) -> str:
    """The SDP with `address` in place of the address of each host candidate of its family.

    For a server behind a 1:1 NAT (Docker's bridge with `-p`): the sockets stay bound to the
    private address, the client is told the public one, and the NAT maps each port to the
    same port inside. Only the description sent to the client changes, so aioice's own
    candidates, and its pairing, are untouched. The `c=` line follows, as it names the
    default candidate.
    """
    if address is None:
        return sdp
    family = ipaddress.ip_address(address).version

    def swap(host: str) -> str | None:
        return address if _family(host) == family else None

    return _rewrite_addresses(sdp, swap, f"c=IN IP{family} {address}")


def hide_addresses(sdp: str) -> str:
    """The SDP as Chromium sends it: each host candidate's address replaced by a random mDNS
    name, `c=IN IP4 0.0.0.0`, and no `a=end-of-candidates`. The other side cannot reach this
    peer first; it waits for this peer's checks and answers them (peer-reflexive pairs).
    For `python -m relay_app.client --hide-addresses` and the Docker NAT test."""
    hidden = _rewrite_addresses(sdp, lambda host: f"{uuid.uuid4()}.local", "c=IN IP4 0.0.0.0")
    return hidden.replace("a=end-of-candidates\r\n", "")


def _rewrite_addresses(sdp: str, replace: Callable[[str], str | None], c_line: str) -> str:
    lines = []
    for line in sdp.split("\r\n"):
        if line.startswith("a=candidate:"):
            # a=candidate:<foundation> <component> <transport> <priority> <address> <port> typ host
            parts = line.split(" ")
            if len(parts) >= 8 and parts[7] == "host" and (new := replace(parts[4])):
                parts[4] = new
            line = " ".join(parts)
        elif line.startswith("c=IN ") and replace(line.split(" ")[-1]):
            line = c_line
        lines.append(line)
    return "\r\n".join(lines)


def _family(address: str) -> int | None:
    try:
        return ipaddress.ip_address(address).version
    except ValueError:  # an mDNS name or garbage: not ours to rewrite
        return None


def configure_ice(settings: WebRTCSettings) -> None:
    """Apply webrtc.ice_addresses, webrtc.udp_port_range and webrtc.consent_timeout to this
    process."""
    use_host_addresses(settings.ice_addresses)
    use_port_range(settings.udp_port_range)
    of_aioice.set_consent_timeout(settings.consent_timeout)


class NoFreeMediaPort(OSError):
    """Every UDP port of webrtc.udp_port_range is taken by other peer connections."""


def use_port_range(port_range: tuple[int, int] | None) -> None:
    """Bind host candidates only to UDP ports in [low, high]; None restores aioice's choice.

    aioice binds each host candidate to port 0 (any port), so firewalls and `docker run -p`
    cannot be told which ports media uses. Host sockets are opened on the ports of the range
    instead (from a random start, so that concurrent peers do not all probe the same port
    first). Each peer connection needs one port per address. STUN/TURN candidates are not
    gathered with a range (config refuses the combination).
    """
    if port_range is None:
        of_aioice.replace_host_gathering(None)
        return
    low, high = port_range

    async def bind(connection: aioice.ice.Connection, address: str) -> aioice.ice.StunProtocol:
        return await _bind_in_range(connection, address, low, high)

    of_aioice.replace_host_gathering(bind)


async def _bind_in_range(
    connection: aioice.ice.Connection, address: str, low: int, high: int
) -> aioice.ice.StunProtocol:
    loop = asyncio.get_running_loop()
    size = high - low + 1
    start = random.randrange(size)
    for offset in range(size):
        port = low + (start + offset) % size
        try:
            _, protocol = await loop.create_datagram_endpoint(
                lambda: aioice.ice.StunProtocol(connection), local_addr=(address, port)
            )
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                continue
            raise
        return protocol
    raise NoFreeMediaPort(
        errno.EADDRINUSE,
        f"no free UDP port for media on {address} in {low}-{high} (webrtc.udp_port_range): "
        f"all {size} are in use",
    )
