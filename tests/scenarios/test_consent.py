"""ICE consent freshness (`webrtc.consent_timeout`): a listener whose network vanishes says no
goodbye (its process frozen, the kernel keeps its WebSocket open), so the server finds out
when its consent checks go unanswered: after the setting, not 30 s later, while the speaker
and the other listeners play on."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import ServerProcess

from ..helpers import wait_until
from .test_faults import client_process

pytestmark = [pytest.mark.anyio, pytest.mark.mode_independent]

CONSENT_TIMEOUT = 6.0


async def test_a_frozen_listener_is_dropped_once_its_consent_times_out(
    make_forward_server: Callable[..., ServerProcess],
) -> None:
    server = make_forward_server(
        # (a long keepalive: consent, not the session's idle watchdog, must find it)
        {"webrtc": {"consent_timeout": CONSENT_TIMEOUT, "connection_timeout": 120}}
    )
    async with RelayClient.connect(server.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        async with RelayClient.connect(server.ws_url) as other:
            await other.start_receiving(stream_id)
            with client_process(server, "listen", "--stream-id", stream_id) as frozen:
                # Frozen once connected: consent checks start with the connection (frozen
                # while ICE still checks, it would take ICE's own give-up, much later).
                await wait_until(lambda: len(connections(server, "connected")) == 3, 20)
                frozen.send_signal(signal.SIGSTOP)  # no more answers to consent checks
                heard = other.recorder.seconds
                took = await wait_until(
                    lambda: server.metrics()["live"]["peer_connections"] == 2, 30
                )
                # Six checks ~1 s apart (0.8-1.2 s) go unanswered, each waiting 0.5 s for its
                # answer: ~8-10 s; generous on top for a busy machine (30 s before).
                assert CONSENT_TIMEOUT - 2 <= took <= CONSENT_TIMEOUT + 9, took
                ended = {e["state"] for e in server.find("ice_connection_state")}
                assert ended & {"failed", "closed"}, ended
                await other.wait_audio(heard + took * 0.9, timeout=2)


def connections(server: ServerProcess, state: str) -> list[dict[str, object]]:
    """The server's peer connections that reached `state`, as its log says."""
    return server.find("ice_connection_state", state=state)
