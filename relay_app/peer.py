"""An RTCPeerConnection with a bounded, shielded close, and its state as anyio events.

aiortc's callbacks fire from aiortc's own tasks, so they only record facts here (log, set an
event); the session's tasks act on them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from .config import Settings
from .metrics import LiveCounts


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    # Always pass the list, even when empty: aiortc falls back to a public STUN server when
    # iceServers is None, and a LAN relay must not send traffic off the LAN.
    servers = [RTCIceServer(**server) for server in settings.webrtc.ice_servers]
    return RTCConfiguration(iceServers=servers)


class Peer:
    def __init__(self, pc: RTCPeerConnection, log: Any) -> None:
        self.pc = pc
        self.connected = False
        self.failed = anyio.Event()
        self.failure = ""

        @pc.on("connectionstatechange")
        def _state() -> None:
            # The guide greps "ICE connection state ...: connected|failed": those are the
            # peer connection's states; aioice's own (checking/completed) ride along as `ice`.
            state = pc.connectionState
            log.info("ice_connection_state", state=state, ice=pc.iceConnectionState)
            self.connected = state == "connected"
            if state in ("failed", "closed") and not self.failed.is_set():
                self.failure = f"connection {state}"
                self.failed.set()


def _ice_connections(pc: RTCPeerConnection) -> list[Any]:
    connections = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport or transceiver.receiver.transport
        if dtls is not None:
            connections.append(dtls.transport._connection)
    return connections


async def _stop_consent_checks(connections: list[Any]) -> None:
    """Work around an aioice 0.13 race that leaks a task per peer connection.

    If the peer connection closes while aioice's `connect()` is between "check list
    completed" and returning, `connect()` starts its consent-freshness task after `close()`
    has already run, and nothing ever cancels it (it sleeps forever on a closed connection).
    The leak checks after every test (tests/conftest.py) catch it when it comes back.
    """
    for _ in range(3):
        await anyio.sleep(0.01)  # let a connect() that is finishing start its task
        for connection in connections:
            task = getattr(connection, "_query_consent_task", None)
            if task is not None and not task.done():
                task.cancel()


@asynccontextmanager
async def open_peer(settings: Settings, live: LiveCounts, log: Any) -> AsyncIterator[Peer]:
    pc = RTCPeerConnection(rtc_configuration(settings))
    live.peer_connections += 1
    try:
        yield Peer(pc, log)
    finally:
        ice = _ice_connections(pc)
        # Shielded so a cancelled session still closes its transports; bounded because
        # pc.close() has been seen never to return (aiortc issue #283).
        with anyio.move_on_after(settings.relay.teardown_timeout, shield=True) as scope:
            await pc.close()
            await _stop_consent_checks(ice)
        live.peer_connections -= 1
        if scope.cancelled_caught:
            log.warning("cleanup_timeout", resource="peer_connection")
