"""Cluster mode: three real node processes and a real Redis, all on loopback.

A sender on node A, receivers on B and C: B and C relay A's stream over one upstream each,
whichever door a listener comes in by (/ws, WHEP, plain-HTTP Ogg).
Faults are real too: A killed with SIGKILL, Redis killed and started again.
"""

from __future__ import annotations

import io
import json
import shutil
import signal
import socket
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import anyio
import av
import httpx
import numpy as np
import pytest
from redis import Redis

from relay_app.client import RelayClient, ServerError, ToneTrack, dominant_frequency
from relay_app.client.whip import WhipError, WhipSession, whep_play
from relay_app.core import protocol as p
from relay_app.core.auth import mint, verify
from relay_app.core.errors import sole_error
from relay_app.tools.ogg_listener import ogg_listener
from relay_app.tools.testing import RedisProcess, ServerProcess, cluster_config, free_udp_port

from ..helpers import SECRET, finish_server, server_event, wait_until

pytestmark = pytest.mark.anyio

NODE_TTL = 2.0
NODES = ("a", "b", "c")


@pytest.fixture(scope="module")
def relay_mode() -> str:
    return "forward"  # every scenario here is about links, not codecs; one runs in both


@pytest.fixture
def redis() -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is missing: apt-get install redis-server (.ci/run does)")
    server = RedisProcess().start()
    try:
        yield server
    finally:
        server.stop()


Cluster = dict[str, ServerProcess]


@pytest.fixture
def make_cluster(
    tmp_path: Path, redis: RedisProcess, relay_mode: str
) -> Iterator[Callable[..., Cluster]]:
    """Nodes on one Redis (three unless asked for fewer); after the test, every node still
    running is idle."""
    started: list[ServerProcess] = []

    def _make(
        config: dict[str, Any] | None = None,
        per_node: dict[str, dict[str, Any]] | None = None,
        count: int = len(NODES),
    ) -> Cluster:
        """`count` nodes (a, b[, c]): a test that never needs c starts two."""
        nodes = {}
        for name in NODES[:count]:
            node_config = cluster_config(redis.url, name, node_ttl=NODE_TTL)
            node_config["relay"] = {"mode": relay_mode}
            for key, value in [*(config or {}).items(), *(per_node or {}).get(name, {}).items()]:
                node_config[key] = {**node_config.get(key, {}), **value}
            nodes[name] = ServerProcess(tmp_path, node_config)
        started.extend(nodes.values())
        with ThreadPoolExecutor(len(nodes)) as pool:  # three processes starting at once
            list(pool.map(ServerProcess.start, nodes.values()))
        for node in nodes.values():
            node.wait_event("cluster_joined")
            node.take_baseline()
        wait_for(lambda: all(len(nodes_seen(node)) == count for node in nodes.values()))
        return nodes

    yield _make
    try:
        for node in started:
            if node.proc is not None and node.proc.poll() is None:
                node.wait_idle(timeout=10)
    finally:
        for node in started:
            node.stop()  # every node, whatever a check above found
        for node in started:
            if node.proc is not None and node.proc.returncode != -signal.SIGKILL:
                finish_server(node)  # (a node the test killed has nothing left to check)


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll until `condition` holds (AssertionError after `timeout`): for the fixture, where
    no client runs yet. A scenario uses helpers.wait_until."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def nodes_seen(node: ServerProcess) -> list[str]:
    return list(node.get("/health").json()["cluster"]["nodes"])


def listed(node: ServerProcess, stream_id: str) -> bool:
    streams = node.get("/stream/status", status_port=True).json()["streams"]
    return any(s["stream_id"] == stream_id for s in streams)


async def hears(client: RelayClient, frequency: float, seconds: float = 1.0) -> None:
    start = client.recorder.seconds
    await client.wait_audio(start + seconds + 0.5)
    heard = dominant_frequency(client.recorder.audio(seconds), client.recorder.sample_rate)
    assert abs(heard - frequency) <= 10, f"heard {heard:.1f} Hz, expected {frequency}"


async def test_sender_on_a_receivers_on_b_and_c_hear_it_over_one_upstream_per_node(
    make_cluster: Callable[..., Cluster], redis: RedisProcess
) -> None:
    nodes = make_cluster()
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    # Keys under the prefix that are not ours (another program, an old version) are skipped.
    with Redis.from_url(redis.url) as junk:
        junk.set("relay_app:stream:junk", "not json")
        junk.set("relay_app:node:junk", '{"receivers": "three"}')
        junk.publish("relay_app:events", "not json either")
    async with RelayClient.connect(a.ws_url) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        await wait_until(lambda: listed(b, stream_id) and listed(c, stream_id), timeout=5)
        # B lists A's stream, with its node, before anyone listens on B.
        async with RelayClient.connect(b.ws_url) as probe:
            available = await probe.request(p.GetAvailableStreams(), "available_streams")
            assert isinstance(available, p.AvailableStreams)
            assert [(s.stream_id, s.node) for s in available.streams] == [(stream_id, "a")]
        async with (
            RelayClient.connect(b.ws_url) as b1,
            RelayClient.connect(b.ws_url) as b2,
            RelayClient.connect(c.ws_url) as c1,
        ):
            for receiver in (b1, b2, c1):
                assert await receiver.start_receiving(stream_id) == stream_id
            for receiver in (b1, b2, c1):
                await hears(receiver, 440)
            # One upstream per node, however many receivers: B's metrics say so, and A
            # serves exactly two links (B's and C's) besides its sender.
            assert b.metrics()["live"]["upstreams"] == 1
            scrape = b.get("/metrics", headers={"Accept": "text/plain"}).text
            assert "relay_upstreams 1.0" in scrape
            assert f'relay_cluster_stream_receivers{{node="a",stream_id="{stream_id}"}}' in scrape
            assert c.metrics()["live"]["upstreams"] == 1
            assert a.metrics()["active_receivers"] == 2
            # Every node counts the stream's listeners cluster-wide (A's links are not).
            await wait_until(
                lambda: all(
                    n.get("/stream/status", status_port=True).json()["streams"][0]["receivers"] == 3
                    for n in (a, b, c)
                ),
                timeout=5,
            )
            await b1.send(p.Stop())
            await b1.expect("stopped")
            await hears(b2, 440)  # B's other receiver goes on over the same upstream
            assert b.metrics()["live"]["upstreams"] == 1
        # The last receiver on B left: its upstream closes after the linger (1 s here).
        event = await server_event(b, "upstream_closed", stream_id=stream_id, timeout=5)
        assert event["reason"] == "no receivers left on this node"
        await wait_until(lambda: b.metrics()["live"]["upstreams"] == 0, timeout=5)
        await wait_until(lambda: a.metrics()["active_receivers"] == 0, timeout=5)


async def test_on_the_one_udp_port_two_streams_of_a_reach_b_over_two_links(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Every node on webrtc.udp_port (a port each, all on loopback): B's two links to A are
    client peer connections in B's process; on B's port both would join A's port from the
    same address, so they gather sockets of their own, and each listener hears its stream."""
    nodes = make_cluster(
        per_node={n: {"webrtc": {"udp_port": free_udp_port()}} for n in NODES}, count=2
    )
    a, b = nodes["a"], nodes["b"]
    async with (
        RelayClient.connect(a.ws_url) as low,
        RelayClient.connect(a.ws_url) as high,
    ):
        low_id = await low.start_sending(ToneTrack(440))
        high_id = await high.start_sending(ToneTrack(660))
        await wait_until(lambda: listed(b, low_id) and listed(b, high_id), timeout=5)
        async with (
            RelayClient.connect(b.ws_url) as hears_low,
            RelayClient.connect(b.ws_url) as hears_high,
        ):
            await hears_low.start_receiving(low_id)
            await hears_high.start_receiving(high_id)
            await hears(hears_low, 440)
            await hears(hears_high, 660)
            assert b.metrics()["live"]["upstreams"] == 2
            # A serves B's two links and its two speakers on its port; B its two listeners.
            assert a.metrics()["media_port"]["connections"] == 4
            assert b.metrics()["media_port"]["connections"] == 2


def ogg_audio(body: bytes) -> np.ndarray:
    """The decoded mono samples (48 kHz) of an Ogg/Opus stream's bytes so far."""
    with av.open(io.BytesIO(bytes(body))) as container:
        frames = [f.to_ndarray().mean(axis=0) for f in container.decode(audio=0)]
    return np.concatenate(frames).astype(np.float32) if frames else np.zeros(0, np.float32)


async def whep_hears(player: WhipSession, frequency: float) -> None:
    """Within a generous bound, the player's last second is `frequency`."""
    recorder, heard = player.recorder, 0.0
    with anyio.move_on_after(15):
        while abs(heard - frequency) > 10:
            await recorder.wait_seconds(max(recorder.seconds + 0.5, 1.5))
            heard = dominant_frequency(recorder.audio(1.0), recorder.sample_rate)
    assert abs(heard - frequency) <= 10, f"WHEP heard {heard:.1f} Hz, expected {frequency}"


async def ogg_hears(body: bytearray, frequency: float) -> None:
    """Within a generous bound, the Ogg body's last second so far is `frequency`."""
    heard = 0.0
    with anyio.move_on_after(15):
        while abs(heard - frequency) > 10:
            await anyio.sleep(0.25)
            assert not body.startswith(b"HTTP "), bytes(body)
            audio = ogg_audio(body)
            if len(audio) >= 2 * 48000:
                heard = dominant_frequency(audio[-48000:], 48000)
    assert abs(heard - frequency) <= 10, f"Ogg heard {heard:.1f} Hz, expected {frequency}"


async def test_a_whep_player_and_an_ogg_listener_on_b_hear_a_sender_on_a_over_one_upstream(
    make_cluster: Callable[..., Cluster],
) -> None:
    """Every door looks a stream up the same way: WHEP and Ogg on node B play node A's
    stream through B's one upstream, as /ws does, and refuse one nowhere with a 404."""
    nodes = make_cluster(count=2)
    a, b = nodes["a"], nodes["b"]
    async with RelayClient.connect(a.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="hall")
        await wait_until(lambda: listed(b, "hall"), timeout=5)
        async with whep_play(f"{b.base_url}/whep/hall") as player:
            with ogg_listener(f"{b.status_url}/stream/hall.ogg") as ogg:
                await whep_hears(player, 440)
                await ogg_hears(ogg, 440)
                # One link from A to B for both (A serves it as its only receiver).
                assert b.metrics()["live"]["upstreams"] == 1
                assert len(b.find("upstream_opened")) == 1
                assert a.metrics()["active_receivers"] == 1
        # A stream on no node: the same 404 on B by either door.
        with pytest.raises(WhipError) as refused:
            async with whep_play(f"{b.base_url}/whep/nowhere"):
                pass
        assert refused.value.status == 404
        missing = b.get("/stream/nowhere.ogg", status_port=True)
        assert missing.status_code == 404, missing.text
    await wait_until(lambda: b.metrics()["live"]["upstreams"] == 0, timeout=5)


async def test_a_whep_player_and_an_ogg_listener_on_b_follow_the_channel_to_another_node(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The channel's sender leaves node A and the next one speaks on node C: the WHEP player
    and the Ogg listener on B hear C on the connections they have (the Ogg body one stream)."""
    nodes = make_cluster()
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    async with RelayClient.connect(a.ws_url) as first:
        await first.start_sending(ToneTrack(440), channel="hall")
        await wait_until(lambda: listed(b, "hall"), timeout=5)
        async with whep_play(f"{b.base_url}/whep/hall") as player:
            with ogg_listener(f"{b.status_url}/stream/hall.ogg") as ogg:
                await whep_hears(player, 440)
                await ogg_hears(ogg, 440)
                await first.send(p.Stop())
                await first.expect("stopped")
                await wait_until(lambda: not listed(b, "hall"), timeout=5)
                async with RelayClient.connect(c.ws_url) as second:
                    await second.start_sending(ToneTrack(660), channel="hall")
                    await whep_hears(player, 660)
                    await ogg_hears(ogg, 660)
                    assert b.find("http_listener_followed")
                    assert len(b.find("upstream_opened")) == 2  # A's, then C's
    await wait_until(lambda: b.metrics()["live"]["upstreams"] == 0, timeout=5)


async def test_with_auth_whep_and_ogg_on_b_play_a_with_their_tokens_scope_and_no_further(
    make_cluster: Callable[..., Cluster],
) -> None:
    """With auth on, a WHEP player and an Ogg listener on B holding a receive token scoped to
    A's channel hear it (B links with a node token); a token scoped to another channel is
    refused by both doors before B opens anything toward A."""
    nodes = make_cluster({"auth": {"secret": SECRET, "protect_metrics": False}}, count=2)
    a, b = nodes["a"], nodes["b"]
    hall = mint(SECRET, "receive", 600, stream="hall")
    foyer = mint(SECRET, "receive", 600, stream="foyer")
    async with RelayClient.connect(a.ws_url, token=mint(SECRET, "send", 600)) as sender:
        await sender.start_sending(ToneTrack(440), channel="hall")
        await wait_until(lambda: listed(b, "hall"), timeout=5)
        with pytest.raises(WhipError) as refused:
            async with whep_play(f"{b.base_url}/whep/hall", token=foyer):
                pass
        assert refused.value.status == 403
        other = b.get(f"/stream/hall.ogg?token={foyer}", status_port=True)
        assert other.status_code == 403, other.text
        assert not b.find("upstream_requested") and not b.find("upstream_opened")
        async with whep_play(f"{b.base_url}/whep/hall", token=hall) as player:
            with ogg_listener(f"{b.status_url}/stream/latest.ogg?token={hall}") as ogg:
                await whep_hears(player, 440)
                await ogg_hears(ogg, 440)  # (its "latest" is the stream its token names)
                assert b.metrics()["live"]["upstreams"] == 1
                link = await server_event(a, "client_authenticated", role="node")
                assert link["subject"] == "b"
    await wait_until(lambda: b.metrics()["live"]["upstreams"] == 0, timeout=5)


async def test_node_killed_its_stream_vanishes_and_its_listeners_follow_the_channel(
    make_cluster: Callable[..., Cluster],
) -> None:
    nodes = make_cluster()
    a, b, c = nodes["a"], nodes["b"], nodes["c"]
    async with RelayClient.connect(a.ws_url) as sender:
        await sender.start_sending(ToneTrack(440), channel="hall")
        await wait_until(lambda: listed(b, "hall") and listed(c, "hall"), timeout=5)
        async with RelayClient.connect(b.ws_url) as on_b, RelayClient.connect(c.ws_url) as on_c:
            await on_b.start_receiving("hall")
            await on_c.start_receiving("hall")
            await hears(on_b, 440)
            assert a.proc is not None
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()
            killed = time.monotonic()
            for receiver in (on_b, on_c):
                ended = await receiver.receive(p.StreamEnded, timeout=NODE_TTL + 3)
                assert ended.stream_id == "hall" and ended.waiting
            # Gone from every other node's listing within node_ttl (+ one beat of slack).
            await wait_until(lambda: not listed(b, "hall") and not listed(c, "hall"), timeout=5)
            assert time.monotonic() - killed <= NODE_TTL + 1.5
            for node in (b, c):
                await wait_until(lambda node=node: nodes_seen(node) == ["b", "c"])
            # The channel's next sender, on C: the listener on B follows it over a new
            # upstream, the one on C locally, both on the sockets they had.
            async with RelayClient.connect(c.ws_url) as next_sender:
                await next_sender.start_sending(ToneTrack(660), channel="hall")
                for receiver in (on_b, on_c):
                    await receiver.follow_channel(timeout=10)
                    await hears(receiver, 660)
                assert b.metrics()["live"]["upstreams"] == 1


async def test_a_takeover_on_the_origin_plays_on_over_the_same_upstream(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The channel changes hands on node A; the listener on B stays on its connection and
    B's upstream follows on its own (no second link, no new offer)."""
    nodes = make_cluster(count=2)
    a, b = nodes["a"], nodes["b"]
    async with RelayClient.connect(a.ws_url) as first, RelayClient.connect(a.ws_url) as second:
        await first.start_sending(ToneTrack(440), channel="hall")
        await wait_until(lambda: listed(b, "hall"), timeout=5)
        async with RelayClient.connect(b.ws_url) as on_b:
            await on_b.start_receiving("hall")
            await hears(on_b, 440)
            pc = on_b.pc
            await second.start_sending(ToneTrack(660), channel="hall", takeover=True)
            await hears(on_b, 660)
            assert on_b.pc is pc
            # Told as A's own listeners are (who took over), never let go: no new offer.
            ended = [m for m in on_b.messages if isinstance(m, p.StreamEnded)]
            assert ended and all(m.waiting and "took over" in m.message for m in ended)
            assert any(isinstance(m, p.StreamStarted) for m in on_b.messages)
            assert sum(isinstance(m, p.Offer) for m in on_b.messages) == 1
            assert b.find("upstream_opened") and len(b.find("upstream_opened")) == 1


async def test_between_speakers_on_a_the_next_speaker_on_b_gets_the_channel_and_b_hears_them(
    make_cluster: Callable[..., Cluster],
) -> None:
    """The channel's speaker on A stops: B's listener waits on its upstream of A (the link
    stays while nobody speaks), the channel is free, and a speaker on B takes it without a
    takeover; B's listener hears them on the connection it has, and B's link to A goes."""
    nodes = make_cluster(count=2)
    a, b = nodes["a"], nodes["b"]
    async with RelayClient.connect(a.ws_url) as first:
        await first.start_sending(ToneTrack(440), channel="hall")
        await wait_until(lambda: listed(b, "hall"), timeout=5)
        async with RelayClient.connect(b.ws_url) as on_b:
            await on_b.start_receiving("hall")
            await hears(on_b, 440)
            await first.send(p.Stop())
            await first.expect("stopped")
            await wait_until(lambda: not listed(b, "hall"), timeout=5)
            assert b.metrics()["live"]["upstreams"] == 1  # (waiting on A for the next)
            async with RelayClient.connect(b.ws_url) as second:
                await second.start_sending(ToneTrack(660), channel="hall")
                await hears(on_b, 660)
                assert sum(isinstance(m, p.Offer) for m in on_b.messages) == 1
                await wait_until(lambda: b.metrics()["live"]["upstreams"] == 0, timeout=5)


async def test_redis_away_local_audio_goes_on_and_the_cluster_comes_back(
    make_cluster: Callable[..., Cluster], redis: RedisProcess
) -> None:
    nodes = make_cluster()
    a, b = nodes["a"], nodes["b"]
    async with (
        RelayClient.connect(a.ws_url) as remote_sender,
        RelayClient.connect(b.ws_url) as local_sender,
    ):
        remote_id = await remote_sender.start_sending(ToneTrack(660))
        local_id = await local_sender.start_sending(ToneTrack(440))
        await wait_until(lambda: listed(b, remote_id), timeout=5)
        async with RelayClient.connect(b.ws_url) as local, RelayClient.connect(b.ws_url) as relayed:
            await local.start_receiving(local_id)
            await relayed.start_receiving(remote_id)
            await hears(local, 440)
            await hears(relayed, 660)
            redis.stop(signal.SIGKILL)
            await wait_until(lambda: b.get("/health").json()["cluster"]["redis"] == "unreachable")
            health = b.get("/health")
            assert health.status_code == 200 and health.json()["status"] == "healthy"
            # The listing degrades to B's own streams; the audio on B never stops, and the
            # open upstream (a direct link to A) goes on too.
            assert listed(b, local_id)
            await hears(local, 440)
            await hears(relayed, 660)
            await server_event(b, "cluster_redis_unreachable")
            # The same port, empty: every node writes its streams again.
            await anyio.to_thread.run_sync(redis.start)
            await wait_until(
                lambda: b.get("/health").json()["cluster"]["redis"] == "connected", timeout=15
            )
            await wait_until(
                lambda: listed(a, local_id) and listed(nodes["c"], remote_id), timeout=10
            )
            await hears(local, 440)
    for node in nodes.values():
        assert node.get("/health").status_code == 200


async def test_with_auth_links_use_node_tokens_and_a_receive_token_opens_no_upstream(
    make_cluster: Callable[..., Cluster],
) -> None:
    # Transcode mode here: a relayed stream is decoded once on the relaying node (the other
    # scenarios run in forward mode, where nothing is decoded there).
    nodes = make_cluster(
        {"auth": {"secret": SECRET, "protect_metrics": False}, "relay": {"mode": "transcode"}}
    )
    a, b = nodes["a"], nodes["b"]
    send = mint(SECRET, "send", 600)
    receive = mint(SECRET, "receive", 600)
    async with RelayClient.connect(a.ws_url, token=send) as sender:
        stream_id = await sender.start_sending(ToneTrack(440))
        await wait_until(lambda: listed(b, stream_id), timeout=5)
        async with RelayClient.connect(b.ws_url, token=receive) as listener:
            await listener.start_receiving(stream_id)
            await hears(listener, 440)
            link = await server_event(a, "client_authenticated", role="node")
            assert link["subject"] == "b"
            # A node token cannot chain a stream B only relays (links never loop).
            node = mint(SECRET, "node", 600, stream=stream_id, subject="x", to="b")
            async with RelayClient.connect(b.ws_url, token=node) as chained:
                await chained.send(p.StartReceiving(stream_id=stream_id, upstream=True))
                with pytest.raises(ServerError, match="relayed here from node a"):
                    await chained.expect("offer")
            # A node token opens nothing on a node it was not made for, and nothing but links.
            for_c = mint(SECRET, "node", 600, stream=stream_id, subject="x", to="c")
            async with RelayClient.connect(a.ws_url, token=for_c) as stray:
                await stray.send(p.StartReceiving(stream_id=stream_id, upstream=True))
                with pytest.raises(ServerError, match="made for node 'c'"):
                    await stray.expect("offer")
            for_a = mint(SECRET, "node", 600, stream=stream_id, subject="x", to="a")
            async with RelayClient.connect(a.ws_url, token=for_a) as player:
                await player.send(p.StartReceiving(stream_id=stream_id))
                with pytest.raises(ServerError, match="only opens upstreams"):
                    await player.expect("offer")
        # A client with a receive token cannot pose as a node.
        async with RelayClient.connect(a.ws_url, token=receive) as impostor:
            await impostor.send(p.StartReceiving(stream_id=stream_id, upstream=True))
            with pytest.raises(ServerError, match="only a node token opens an upstream"):
                await impostor.expect("offer")


async def test_a_record_planted_in_redis_redirects_no_node_and_blocks_no_channel(
    make_cluster: Callable[..., Cluster], redis: RedisProcess
) -> None:
    """Whoever can write to Redis plants a stream record pointing at their own server: with
    auth.secret the nodes sign their records, so the planted one is ignored (and logged),
    no node connects there with a node token, and the channel's real sender is not busy."""
    nodes = make_cluster(
        {"auth": {"secret": SECRET, "protect_metrics": False}, "streams": {"max_streams": 5}},
        count=2,
    )
    a, b = nodes["a"], nodes["b"]
    with socket.socket() as trap:  # the attacker's "node": counts who connects
        trap.bind(("127.0.0.3", 0))
        trap.listen(8)
        trap.settimeout(0.2)
        planted = {
            "stream_id": "english",
            "node_id": "evil",
            "advertise_url": f"ws://127.0.0.3:{trap.getsockname()[1]}/ws",
            "started_at": time.time(),
            "channel": "english",
        }
        Redis.from_url(redis.url).set("relay_app:stream:english", json.dumps(planted), px=60000)
        rejected = await server_event(b, "cluster_record_rejected", key="relay_app:stream:english")
        assert rejected["reason"] == "bad or no signature"
        assert "english" not in b.get("/stream/status").json()["active_streams"]
        async with RelayClient.connect(b.ws_url, token=mint(SECRET, "receive", 600)) as victim:
            with pytest.raises(ServerError, match="No audio stream available"):
                await victim.start_receiving("english")
        with pytest.raises(TimeoutError):
            trap.accept()  # nobody came: no node token was sent anywhere
        async with RelayClient.connect(a.ws_url, token=mint(SECRET, "send", 600)) as sender:
            assert await sender.start_sending(ToneTrack(440), channel="english") == "english"


async def test_a_token_removed_on_one_node_is_refused_and_cut_on_every_node(
    make_cluster: Callable[..., Cluster], redis: RedisProcess
) -> None:
    """The operator's Remove on node A: the token is withdrawn in Redis for its remaining
    lifetime (signed; expiring with it); node B ends the connection that holds it there and
    refuses it from then on, in the same words; a withdrawal planted in Redis without the
    secret's signature withdraws nothing."""
    nodes = make_cluster({"auth": {"secret": SECRET, "protect_metrics": False}})
    a, b = nodes["a"], nodes["b"]
    admin = {"Authorization": f"Bearer {mint(SECRET, 'admin', 600)}"}
    marie = mint(SECRET, "receive", 600, name="Marie")
    kept = mint(SECRET, "receive", 600)
    planted = {"token_id": verify(SECRET, kept).token_id, "until": time.time() + 600}
    key = f"relay_app:revoked:{planted['token_id']}"
    Redis.from_url(redis.url).set(key, json.dumps(planted), px=60000)
    await server_event(b, "cluster_record_rejected", key=key)
    async with (
        RelayClient.connect(a.ws_url, token=marie) as on_a,
        RelayClient.connect(b.ws_url, token=marie) as on_b,
        RelayClient.connect(b.ws_url, token=kept) as other,
    ):
        pressed = time.monotonic()
        removed = a.post(f"/admin/sessions/{on_a.connection_id}/remove", headers=admin)
        assert removed.status_code == 200 and removed.json()["withdrawn"] == "token"
        for client in (on_a, on_b):  # B hears of it through Redis, at once
            told = await client.receive(p.Disconnected, timeout=5)
            assert told.reason == "removed"
            await client.closed.wait()
        print(f"removed on A, told on B after {time.monotonic() - pressed:.3f} s")
        ttl = Redis.from_url(redis.url).pttl(f"relay_app:revoked:{verify(SECRET, marie).token_id}")
        assert 590_000 < ttl <= 600_000, ttl
        for node in (a, b, nodes["c"]):  # every door of every node: WHEP and /ws here
            whep = httpx.post(
                f"{node.base_url}/whep/english",
                content=b"v=0",
                headers={"Authorization": f"Bearer {marie}", "Content-Type": "application/sdp"},
            )
            assert whep.status_code == 403, whep.text
            assert whep.json()["message"] == "This invitation was withdrawn by the operator."
            with pytest.raises(BaseExceptionGroup) as refused:
                async with RelayClient.connect(node.ws_url, token=marie):
                    pass
            assert "withdrawn by the operator" in str(sole_error(refused.value))
        await other.request(p.Ping(), "pong")  # the planted withdrawal withdrew nothing
    assert b.find("cluster_token_withdrawn")
