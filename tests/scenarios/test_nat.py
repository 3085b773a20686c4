"""Docker's bridge with `-p` port mapping, rebuilt from network namespaces.

Three namespaces stand for three machines, on addresses from the documentation ranges so they
can never collide with a real network:

    client 198.51.100.2 ── 198.51.100.1  host (NAT)  192.0.2.1 ── 192.0.2.2 server
           (the LAN)          DNAT :8080/tcp and the media UDP range to 192.0.2.2,
                              MASQUERADE what leaves 192.0.2.0/24 (as Docker does)

The client has no route to 192.0.2.0/24, as a LAN client has none to Docker's 172.17.0.0/16,
and like a browser it hides its own address behind an mDNS name, so the server cannot open the
path from its side (with the client's real address, the server's checks would leave through the
MASQUERADE rule and ICE would find the way by itself). The client reaches the server only
through the published ports, so it gets audio only when the server announces the host's
address in its candidates (`webrtc.announced_address`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from relay_app.tools.testing import ServerProcess

from ..helpers import require_namespaces

CLIENT_IP, HOST_LAN_IP = "198.51.100.2", "198.51.100.1"
HOST_BRIDGE_IP, SERVER_IP = "192.0.2.1", "192.0.2.2"
MEDIA_PORTS = (40000, 40020)
TONE_HZ = 440


@dataclass
class Namespaces:
    client: str
    host: str
    server: str

    def run(self, namespace: str, *command: str) -> None:
        subprocess.run(["ip", "netns", "exec", namespace, *command], check=True, timeout=30)


@pytest.fixture(scope="module")
def namespaces() -> Iterator[Namespaces]:
    require_namespaces(("ip", "nft"))
    tag = str(os.getpid())[-6:]
    ns = Namespaces(client=f"rlc{tag}", host=f"rlh{tag}", server=f"rls{tag}")
    lan_client, lan_host = f"rlc{tag}a", f"rlh{tag}a"
    bridge_server, bridge_host = f"rls{tag}b", f"rlh{tag}b"
    try:
        for name in (ns.client, ns.host, ns.server):
            subprocess.run(["ip", "netns", "add", name], check=True)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        for here, there, a, b in [
            (ns.client, ns.host, lan_client, lan_host),
            (ns.server, ns.host, bridge_server, bridge_host),
        ]:
            subprocess.run(
                ["ip", "link", "add", a, "netns", here, "type", "veth", "peer", b, "netns", there],
                check=True,
            )
        for namespace, device, address in [
            (ns.client, lan_client, f"{CLIENT_IP}/24"),
            (ns.host, lan_host, f"{HOST_LAN_IP}/24"),
            (ns.host, bridge_host, f"{HOST_BRIDGE_IP}/24"),
            (ns.server, bridge_server, f"{SERVER_IP}/24"),
        ]:
            subprocess.run(
                ["ip", "-n", namespace, "addr", "add", address, "dev", device], check=True
            )
            subprocess.run(["ip", "-n", namespace, "link", "set", device, "up"], check=True)
        subprocess.run(
            ["ip", "-n", ns.server, "route", "add", "default", "via", HOST_BRIDGE_IP], check=True
        )
        ns.run(ns.host, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        low, high = MEDIA_PORTS
        rules = f"""
table ip relaynat {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    iifname "{lan_host}" ip daddr {HOST_LAN_IP} tcp dport 8080 dnat to {SERVER_IP}
    iifname "{lan_host}" ip daddr {HOST_LAN_IP} udp dport {low}-{high} dnat to {SERVER_IP}
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr 192.0.2.0/24 oifname "{lan_host}" masquerade
  }}
}}
"""
        subprocess.run(
            ["ip", "netns", "exec", ns.host, "nft", "-f", "-"], input=rules, text=True, check=True
        )
        yield ns
    finally:
        for name in (ns.client, ns.host, ns.server):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _server(
    tmp_path: Path, ns: Namespaces, announced: str | None, one_port: bool = False
) -> ServerProcess:
    """The server in its namespace, on the published media range (or, `one_port`, on the
    range's first port for every peer: webrtc.udp_port)."""
    media: dict[str, Any] = (
        {"udp_port": MEDIA_PORTS[0]} if one_port else {"udp_port_range": list(MEDIA_PORTS)}
    )
    config: dict[str, Any] = {
        "server": {"host": "0.0.0.0", "port": 8080, "audio_port": 8081},
        "webrtc": {"ice_addresses": [SERVER_IP], "announced_address": announced, **media},
    }
    server = ServerProcess(tmp_path, config)
    server.command = ["ip", "netns", "exec", ns.server, *server.command]
    return server.start()


def _client(ns: Namespaces, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns.client,
            sys.executable,
            "-m",
            "relay_app.client",
            "--url",
            f"ws://{HOST_LAN_IP}:8080/ws",
            "--ice-address",
            CLIENT_IP,
            "--hide-addresses",  # as browsers do: the server cannot reach the client first
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _listen_through_the_nat(tmp_path: Path, ns: Namespaces) -> dict[str, Any] | None:
    """A sender and a listener on the LAN side; the listener's `recorded` event, if any."""
    sender = _client(ns, "send", "--tone", str(TONE_HZ), "--duration", "20")
    wav = tmp_path / "heard.wav"
    listener = _client(ns, "listen", "--out", str(wav), "--duration", "4")
    try:
        out, _ = listener.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        listener.kill()
        out, _ = listener.communicate()
    finally:
        sender.kill()
        sender.communicate()
    events = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return next((e for e in events if e["event"] == "recorded"), None)


def test_docker_bridge_nat_carries_audio_only_with_announced_address(
    tmp_path: Path, namespaces: Namespaces
) -> None:
    server = _server(tmp_path, namespaces, announced=HOST_LAN_IP)
    try:
        recorded = _listen_through_the_nat(tmp_path, namespaces)
        assert recorded is not None, server.lines[-20:]
        assert recorded["seconds"] >= 2.5, server.lines[-20:]
        assert abs(recorded["dominant_hz"] - TONE_HZ) <= 10
        answer_logged = server.find("ice_connection_state", state="connected")
        assert answer_logged, "media went through the NAT"
    finally:
        assert server.stop() == 0

    # The same network without it: the candidates name 192.0.2.2, which the LAN cannot reach.
    server = _server(tmp_path, namespaces, announced=None)
    try:
        recorded = _listen_through_the_nat(tmp_path, namespaces)
        assert recorded is None or recorded["seconds"] < 0.5, recorded
        assert not server.find("ice_connection_state", state="connected")
    finally:
        server.stop()


def test_docker_bridge_nat_carries_audio_through_the_one_udp_port(
    tmp_path: Path, namespaces: Namespaces
) -> None:
    """As `docker run -p 3478:3478/udp` with webrtc.udp_port: both clients' checks come
    through the one mapped port and are told apart by their username fragments."""
    server = _server(tmp_path, namespaces, announced=HOST_LAN_IP, one_port=True)
    try:
        recorded = _listen_through_the_nat(tmp_path, namespaces)
        assert recorded is not None, server.lines[-20:]
        assert recorded["seconds"] >= 2.5, server.lines[-20:]
        assert abs(recorded["dominant_hz"] - TONE_HZ) <= 10
        assert server.wait_event("media_port_open")["port"] == MEDIA_PORTS[0]
    finally:
        assert server.stop() == 0
