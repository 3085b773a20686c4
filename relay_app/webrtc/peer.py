"""An RTCPeerConnection with a bounded, shielded close, and its state as anyio events.

aiortc's callbacks fire from aiortc's own tasks, so they only record facts here (log, set an
event); the session's tasks act on them.
"""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection

from ..core.config import Settings
from ..core.metrics import LiveCounts
from ..internals import of_aioice, of_aiortc
from .ice import announce
from .sdp import negotiated_red, with_opus_fec, with_red


def rtc_configuration(settings: Settings) -> RTCConfiguration:
    # Always pass the list, even when empty: aiortc falls back to a public STUN server when
    # iceServers is None, and a LAN relay must not send traffic off the LAN.
    servers = [RTCIceServer(**server) for server in settings.webrtc.ice_servers]
    return RTCConfiguration(iceServers=servers)


class Peer:
    def __init__(self, pc: RTCPeerConnection, log: Any, announced: str | None = None) -> None:
        self.pc = pc
        self.announced = announced
        # Whether our descriptions offer (or accept) RED over Opus (red.py): set by the media
        # task before it describes anything, where relay_app itself reads or writes RED.
        self.red = False
        self.connected = False
        # When we last heard from the remote peer's media (RTP from a sender, RTCP receiver
        # reports from a receiver): the session's idle watchdog counts it as activity.
        self.last_heard = anyio.current_time()
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

    @property
    def hung_up(self) -> bool:
        """The remote peer closed the connection itself (a listener hanging up, a sender
        leaving): an ordinary end, not a failure."""
        return self.failure == "connection closed"

    @property
    def local_sdp(self) -> str:
        """Our description as the client must see it: webrtc.announced_address applied,
        Opus asking for in-band FEC and, where `red`, RED over Opus (webrtc/sdp.py)."""
        remote = self._remote_sdp
        sdp = with_opus_fec(announce(self.pc.localDescription.sdp, self.announced), remote)
        return with_red(sdp, remote) if self.red else sdp

    @property
    def _remote_sdp(self) -> str | None:
        return self.pc.remoteDescription.sdp if self.pc.remoteDescription else None

    @property
    def red_payload_type(self) -> int | None:
        """RED's payload type once both sides' descriptions carry it, else None."""
        return negotiated_red(self.local_sdp, self._remote_sdp) if self.red else None

    async def refresh_last_heard(self) -> float:
        """Update `last_heard` from the newest RTCP report the peer sent about our audio.

        Receivers report about once a second; one that is paused or whose network vanished
        stops long before ICE consent expires (~30 s). Asked for only when the idle watchdog
        is about to fire, so it costs one stats query per receiver per timeout, not per second.
        """
        now_wall, now = datetime.datetime.now(datetime.UTC), anyio.current_time()
        for sender in self.pc.getSenders():
            report = await sender.getStats()
            for stats in report.values():
                if stats.type == "remote-inbound-rtp":
                    age = (now_wall - stats.timestamp).total_seconds()
                    self.last_heard = max(self.last_heard, now - max(0.0, age))
        return self.last_heard


def ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """aioice's connection behind each transceiver (one, when bundled)."""
    connections = []
    for transceiver in pc.getTransceivers():
        dtls = transceiver.sender.transport or transceiver.receiver.transport
        if dtls is not None:
            connections.append(of_aiortc.ice_connection(dtls))
    return connections


async def _stop_late_starters(pc: RTCPeerConnection, connections: list[Any]) -> None:
    """Work around two aiortc 1.16 / aioice 0.13 races that leak tasks past `pc.close()`.

    When a peer connection closes while it is still connecting, code that was awaiting the
    handshake resumes after `close()` has run and starts tasks nobody stops: aioice's
    `connect()` starts its consent-freshness task, and aiortc's `__connect()` calls
    `sender.send()` (an RTCP task that loops forever on the closed transport). So, after a
    few ticks, cancel a late consent task and stop every sender and receiver again (their
    `stop()` is public and idempotent). The leak checks after every test and in
    bench/soak.py catch it if this comes back.
    """
    for _ in range(3):
        await anyio.sleep(0.01)  # let a connect() that is finishing start its tasks
        for connection in connections:
            of_aioice.cancel_consent_check(connection)
    for transceiver in pc.getTransceivers():
        await transceiver.sender.stop()
        await transceiver.receiver.stop()


@asynccontextmanager
async def open_peer(settings: Settings, live: LiveCounts, log: Any) -> AsyncIterator[Peer]:
    pc = RTCPeerConnection(rtc_configuration(settings))
    live.peer_connections += 1
    try:
        yield Peer(pc, log, settings.webrtc.announced_address)
    finally:
        ice = ice_connections(pc)
        # Shielded so a cancelled session still closes its transports; bounded because
        # pc.close() has been seen never to return (aiortc issue #283).
        with anyio.move_on_after(settings.relay.teardown_timeout, shield=True) as scope:
            await pc.close()
            await _stop_late_starters(pc, ice)
        live.peer_connections -= 1
        if scope.cancelled_caught:
            log.warning("cleanup_timeout", resource="peer_connection")
