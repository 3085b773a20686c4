"""Chromium on the one UDP port (`webrtc.udp_port`): a speaker's page, a Listen page and a
WHEP player (plain fetch) reach the server on one port and hear the tone; the server's
process has one UDP socket."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from relay_app.client import RelayClient, ToneTrack
from relay_app.tools.testing import ServerProcess, deep_merge, free_udp_port

from ..scenarios.test_one_udp_port import udp_ports_of
from .test_browser import (
    BROWSER_CONFIG,
    WHEP_JS,
    browser,
    open_page,
    settled_tone,
    start_sender_page,
    wait_state,
)

pytestmark = pytest.mark.anyio
__all__ = ["browser"]  # (the fixture, shared with test_browser.py)


async def test_chromium_speaker_listener_and_whep_player_on_one_udp_port_hear_the_tone(
    make_forward_server: Callable[..., ServerProcess], browser: Any
) -> None:
    port = free_udp_port()
    server = make_forward_server(deep_merge(BROWSER_CONFIG, {"webrtc": {"udp_port": port}}))
    assert server.proc is not None
    sender_page, stream_id = await start_sender_page(browser, server)
    listener = await open_page(browser, server.base_url + "/listen")
    await wait_state(listener, "playing")
    assert await listener.text_content("#stream-id") == stream_id
    heard = await settled_tone(listener, 440)
    assert abs(heard["freq"] - 440) <= 10, heard
    async with RelayClient.connect(server.ws_url) as other:
        await other.start_sending(ToneTrack(660), channel="whep-test")
        player = await open_page(browser, server.base_url + "/health")
        started = await player.evaluate(WHEP_JS, "whep-test")
        assert started["status"] == 201, started
        heard = await settled_tone(player, 660)
        assert abs(heard["freq"] - 660) <= 10, heard
        assert udp_ports_of(server.proc.pid) == [port]
        assert server.metrics()["media_port"]["connections"] == 4
        deleted = await player.evaluate(
            "async () => (await fetch(window.whep.location, {method: 'DELETE'})).status"
        )
        assert deleted == 200
        await player.context.close()
    for page in (sender_page, listener):
        await page.context.close()
