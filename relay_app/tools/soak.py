"""Churn soak: sessions that connect, negotiate and leave in every way, concurrently.

    .venv/bin/python bench/soak.py                       # 1,000 sessions against a fresh server
    .venv/bin/python bench/soak.py --sessions 200 --concurrency 10

Ways to leave, interleaved: a clean close; an abrupt TCP drop (no close frame) while sending or
receiving; a drop after the server's offer, before answering; a drop in the middle of ICE; a
sender leaving while its receivers listen (they must get `stream_ended`). A long-lived sender
keeps a stream up for the receivers throughout. Afterwards every live count in /metrics must be
zero, the relay/aiortc/aioice tasks and the threads back to their baseline, and RSS growth under
20 MB. The RSS curve goes to bench/results/soak-<timestamp>.json.
`tests/scenarios/test_soak.py` runs a short version in `make test`.
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
from aiortc import RTCPeerConnection, RTCSessionDescription

from relay_app.client import RelayClient, ToneTrack
from relay_app.core import protocol as p
from relay_app.core.errors import sole_error
from relay_app.tools.testing import REPO, ServerProcess, wait_idle
from relay_app.webrtc.ice import use_host_addresses

RESULTS = REPO / "bench" / "results"


def _abort(client: RelayClient) -> None:
    """Drop the TCP connection without a close frame, like a client that vanished."""
    client.ws.transport.abort()


async def clean_close(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as client:
        await client.request(p.Ping(), "pong")
        await client.request(p.GetAvailableStreams(), "available_streams")


async def receiver_then_close(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as client:
        await client.start_receiving(stream_id)
        await client.wait_audio(0.2)


async def receiver_abrupt_drop(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as client:
        await client.start_receiving(stream_id)
        await client.wait_audio(0.1)
        _abort(client)


async def drop_after_offer(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as client:
        await client.request(p.StartReceiving(stream_id=stream_id), "offer")
        _abort(client)


async def sender_drop_mid_ice(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as client:
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver(ToneTrack(300), direction="sendonly")
            await pc.setLocalDescription(await pc.createOffer())
            await client.send(p.StartSending(sdp=pc.localDescription.sdp))
            answer = await client.receive(p.AnswerOut)
            await pc.setRemoteDescription(RTCSessionDescription(answer.sdp, "answer"))
            _abort(client)  # ICE has only just started
        finally:
            await pc.close()


async def sender_leaves_receivers_told(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as sender:
        own = await sender.start_sending(ToneTrack(500))
        async with (
            RelayClient.connect(url) as one,
            RelayClient.connect(url) as two,
        ):
            await one.start_receiving(own)
            await two.start_receiving(own)
            await one.wait_audio(0.1)
            _abort(sender)
            for receiver in (one, two):
                ended = await receiver.receive(p.StreamEnded, timeout=10)
                assert ended.stream_id == own


async def sender_abrupt_drop(url: str, stream_id: str) -> None:
    async with RelayClient.connect(url) as client:
        await client.start_sending(ToneTrack(700))
        await anyio.sleep(0.1)
        _abort(client)


# Each gets the server's URL and the long-lived stream to join (the newest stream may be a
# churning sender's).
SCENARIOS: dict[str, Callable[[str, str], Awaitable[None]]] = {
    "clean_close": clean_close,
    "receiver_then_close": receiver_then_close,
    "receiver_abrupt_drop": receiver_abrupt_drop,
    "drop_after_offer": drop_after_offer,
    "sender_drop_mid_ice": sender_drop_mid_ice,
    "sender_leaves_receivers_told": sender_leaves_receivers_told,
    "sender_abrupt_drop": sender_abrupt_drop,
}


def metrics(base_url: str) -> dict[str, Any]:
    return dict(httpx.get(base_url + "/metrics", timeout=10).json())


async def churn(
    url: str,
    base_url: str,
    sessions: int,
    concurrency: int,
    seed: int = 1,
    sample_every: int = 50,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Run `sessions` scenarios (a mix of `names`, default all) at `concurrency`; return counts
    and RSS curve."""
    rng = random.Random(seed)
    names = names or list(SCENARIOS)
    plan = [rng.choice(names) for _ in range(sessions)]
    done: Counter[str] = Counter()
    failures: list[str] = []
    curve: list[tuple[int, float]] = []
    limiter = anyio.Semaphore(concurrency)

    async def run(name: str) -> None:
        async with limiter:
            try:
                with anyio.fail_after(30):
                    await SCENARIOS[name](url, stream_id)
            except Exception as group:  # a failed client scenario is reported, not fatal
                error = sole_error(group)
                failures.append(f"{name}: {type(error).__name__}: {error}")
            done[name] += 1
            total = sum(done.values())
            if total % sample_every == 0:
                process = (await anyio.to_thread.run_sync(metrics, base_url))["process"]
                curve.append((total, process["rss_mb"]))

    async with RelayClient.connect(url) as keeper:  # a stream for the receivers to join
        stream_id = await keeper.start_sending(ToneTrack(440))
        async with anyio.create_task_group() as tg:
            for name in plan:
                tg.start_soon(run, name)
    return {"by_scenario": dict(done), "failures": failures, "rss_curve": curve}


async def settle(base_url: str, baseline: dict[str, Any] | None, timeout: float = 15) -> None:
    """Wait until nothing is held and tasks and threads are back to `baseline`."""
    fetch = functools.partial(metrics, base_url)
    await anyio.to_thread.run_sync(lambda: wait_idle(fetch, baseline, timeout, threads=True))


async def soak(
    url: str,
    base_url: str,
    sessions: int,
    concurrency: int,
    quiet: float = 5.0,
    names: list[str] | None = None,
) -> dict[str, Any]:
    """Warm up, take a baseline, churn, and compare; RSS is read `quiet` seconds after the
    server has settled (at the defaults nothing else hands memory back in between)."""
    use_host_addresses(["127.0.0.1"])
    # Warm up first, so that lazily made pools and caches are in the baseline.
    await churn(url, base_url, min(50, sessions), concurrency, seed=0)
    await settle(base_url, None)
    await anyio.sleep(quiet)
    baseline = await anyio.to_thread.run_sync(metrics, base_url)
    started = time.monotonic()
    result = await churn(url, base_url, sessions, concurrency, names=names)
    try:
        await settle(base_url, baseline)
    except AssertionError as error:  # reported with the numbers below, not raised
        result["failures"].append(str(error))
    await anyio.sleep(quiet)
    after = await anyio.to_thread.run_sync(metrics, base_url)
    result.update(
        sessions=sessions,
        concurrency=concurrency,
        quiet_seconds=quiet,
        seconds=round(time.monotonic() - started, 1),
        baseline={"live": baseline["live"], "process": baseline["process"]},
        after={"live": after["live"], "process": after["process"]},
        rss_growth_mb=round(after["process"]["rss_mb"] - baseline["process"]["rss_mb"], 1),
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--quiet", type=float, default=5.0, help="seconds of quiet before RSS is read"
    )
    parser.add_argument(
        "--only", action="append", choices=list(SCENARIOS), help="these scenarios only"
    )
    parser.add_argument(
        "--trim-interval",
        type=float,
        default=None,
        help="relay.memory_trim_interval for the server (default: the configuration default)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        config: dict[str, Any] = {}
        if args.trim_interval is not None:
            config["relay"] = {"memory_trim_interval": args.trim_interval}
        server = ServerProcess(Path(tmp), config).start()
        try:
            result = anyio.run(
                soak,
                server.ws_url,
                server.base_url,
                args.sessions,
                args.concurrency,
                args.quiet,
                args.only,
            )
        finally:
            server.stop()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"soak-{stamp}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "rss_curve"}, indent=2))
    print(f"results: {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
