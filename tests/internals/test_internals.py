"""The room of internals (relay_app/internals/): one row per private reach into aiortc, aioice,
pylibsrtp, asyncio, Quart and Hypercorn, and the versions the room was written for.

An upgrade that moves what the room reaches for fails here, by the row's name, with the room's
function that uses it and what for; not later, in a hall, as silence. Each row reads the
library's own source or objects, never a copy of ours. Then the room's functions are run on
real peers: on asyncio's loop (the fast path's send is the socket's own) and on uvloop (the
fallback: no batched reads, the transport's public sendto).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import inspect
import re
import select
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aioice.ice
import aiortc.rtcpeerconnection
import anyio
import hypercorn.protocol as hypercorn_protocol
import pylibsrtp
import pytest
import quart
import werkzeug.local
from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceGatherer, RTCIceTransport
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.asyncio import task_group as hypercorn_task_group
from hypercorn.asyncio import tcp_server as hypercorn_tcp_server
from hypercorn.asyncio.tcp_server import TCPServer
from hypercorn.config import Config as HypercornConfig
from hypercorn.protocol import h2 as hypercorn_h2
from hypercorn.protocol import h11 as hypercorn_h11
from hypercorn.protocol import ws_stream as hypercorn_ws_stream
from hypercorn.protocol.http_stream import HTTPStream
from quart.asgi import ASGIWebsocketConnection

from relay_app.client import ToneTrack
from relay_app.internals import WRITTEN_FOR, of_aioice, of_aiortc, of_asyncio, of_hypercorn
from relay_app.internals.of_pylibsrtp import InPlaceSrtp
from relay_app.tools.testing import REPO, free_port
from relay_app.webrtc.rtp_tap import audio_receiver, negotiated_opus_payload_type

pytestmark = pytest.mark.anyio


@dataclass(frozen=True)
class Reach:
    library: str  # as in WRITTEN_FOR ("Python" for asyncio)
    name: str  # what is reached, as the library spells it
    used_by: str  # the room's function that reaches, and what for
    check: Callable[[], None]  # raises when the reach moved


def source(obj: Any) -> str:
    return inspect.getsource(obj)


def contains(obj: Any, *parts: str) -> Callable[[], None]:
    """A check: `obj`'s source still has each of `parts`."""

    def check() -> None:
        text = source(obj)
        missing = [part for part in parts if part not in text]
        assert not missing, f"{getattr(obj, '__qualname__', obj)} no longer has {missing}"

    return check


def all_of(*checks: Callable[[], None]) -> Callable[[], None]:
    def check() -> None:
        for one in checks:
            one()

    return check


def holds(condition: Callable[[], bool], what: str) -> Callable[[], None]:
    def check() -> None:
        assert condition(), what

    return check


def parameters(function: Any, expected: list[str]) -> Callable[[], None]:
    def check() -> None:
        found = list(inspect.signature(function).parameters)
        assert found == expected, f"{function.__qualname__}{found}, was {expected}"

    return check


SELECTOR_DATAGRAM = asyncio.selector_events._SelectorDatagramTransport
SELECTOR_LOOP = asyncio.selector_events.BaseSelectorEventLoop

REACHES = [
    # aiortc ---------------------------------------------------------------------------------
    Reach(
        "aiortc",
        "RTCRtpReceiver._handle_rtp_packet",
        "of_aiortc.wrap_rtp_handler: every received RTP packet, as it arrives (rtp_tap)",
        all_of(
            parameters(RTCRtpReceiver._handle_rtp_packet, ["self", "packet", "arrival_time_ms"]),
            contains(
                RTCDtlsTransport,
                "receiver._handle_rtp_packet(packet, arrival_time_ms=arrival_time_ms)",
            ),
        ),
    ),
    Reach(
        "aiortc",
        "RTCRtpReceiver.__remote_streams",
        "of_aiortc.receiver_loss_statistics: forward mode keeps the loss its reports send",
        all_of(
            contains(RTCRtpReceiver, "self.__remote_streams[packet.ssrc].add(packet)"),
            contains(RTCRtpReceiver, "fraction_lost=stream.fraction_lost"),
        ),
    ),
    Reach(
        "aiortc",
        "RTCRtpTransceiver._codecs",
        "of_aiortc.route_payload_type: RED packets routed to the receiver (rtp_tap)",
        all_of(
            contains(aiortc.rtcpeerconnection, "codecs=transceiver._codecs"),
            contains(
                RTCDtlsTransport, "payload_types=[codec.payloadType for codec in parameters.codecs]"
            ),
        ),
    ),
    Reach(
        "aiortc",
        "RTCRtpSender._ssrc",
        "of_aiortc.sender_ssrc: the fast path's packets and reports carry the sender's SSRC",
        contains(RTCRtpSender, "self._ssrc = random32()", "ssrc=self._ssrc"),
    ),
    Reach(
        "aiortc",
        "RTCRtpSender.__cname and __rtp_header_extensions_map",
        "of_aiortc.sender_cname, header_extensions: the fast path's header (MID) and reports",
        contains(
            RTCRtpSender,
            "self.__cname = parameters.rtcp.cname",
            "self.__rtp_header_extensions_map.configure(parameters)",
            "packet.serialize(self.__rtp_header_extensions_map)",
        ),
    ),
    Reach(
        "aiortc",
        "RTCRtpSender._run_rtcp, __rtcp_started, __rtcp_exited",
        "of_aiortc.take_over_sender_reports: the fast path sends the reports, aiortc's loop waits",
        contains(
            RTCRtpSender,
            "asyncio.ensure_future(self._run_rtcp())",
            "self.__rtcp_started.set()",
            "self.__rtcp_started.wait()",
            "self.__rtcp_exited.wait()",
        ),
    ),
    Reach(
        "aiortc",
        "RTCRtpSender.__lsr, __lsr_time, __packet_count, __octet_count",
        "of_aiortc.note_sender_report: aiortc's round trip and getStats read our reports",
        contains(
            RTCRtpSender,
            "if self.__lsr == report.lsr and report.dlsr:",
            "rtt = time.time() - self.__lsr_time",
            "packetsSent=self.__packet_count",
            "bytesSent=self.__octet_count",
        ),
    ),
    Reach(
        "aiortc",
        "RTCRtpSender.__stats (remote-inbound-rtp_<id>)",
        "of_aiortc.remote_inbound_stats: each listener's reported loss sets its RED distance",
        contains(
            RTCRtpSender,
            "self.__stats = RTCStatsReport()",
            'id="remote-inbound-rtp_" + str(id(self))',
            "fractionLost=report.fraction_lost",
        ),
    ),
    Reach(
        "aiortc",
        "RTCIceTransport._connection",
        "of_aiortc.ice_connection: aioice's Connection (pairs, sockets, consent task)",
        all_of(
            contains(RTCIceGatherer, "self._connection = Connection("),
            contains(RTCIceTransport, "self._connection = gatherer._connection"),
        ),
    ),
    Reach(
        "aiortc",
        "RTCDtlsTransport._tx_srtp, statechange",
        "of_aiortc.outbound_srtp: the fast path protects with the listener's own SRTP session",
        all_of(
            contains(RTCDtlsTransport, "self._tx_srtp = Session(tx_policy)"),
            contains(RTCDtlsTransport._set_state, 'self.emit("statechange")'),
        ),
    ),
    Reach(
        "aiortc",
        "rtcpeerconnection.RTCCertificate, RTCCertificate._create_ssl_context",
        "of_aiortc.SharedCertificate, replace_certificate_class: one certificate and context",
        all_of(
            contains(aiortc.rtcpeerconnection, "RTCCertificate.generateCertificate()"),
            holds(
                lambda: aiortc.rtcpeerconnection.RTCCertificate is RTCCertificate,
                "aiortc.rtcpeerconnection no longer looks up RTCCertificate",
            ),
            parameters(RTCCertificate._create_ssl_context, ["self", "srtp_profiles"]),
        ),
    ),
    # aioice ---------------------------------------------------------------------------------
    Reach(
        "aioice",
        "Connection._nominated",
        "of_aioice.nominated_pairs: the fast path sends on the nominated pair's socket",
        contains(
            aioice.ice.Connection,
            "self._nominated: dict[int, CandidatePair] = {}",
            "self._nominated[pair.component] = pair",
            "active_pair = self._nominated.get(component)",
        ),
    ),
    Reach(
        "aioice",
        "Connection._protocols",
        "of_aioice.socket_protocols, replace_host_gathering: the connection's sockets",
        contains(
            aioice.ice.Connection,
            "self._protocols: list[StunProtocol] = []",
            "for protocol in self._protocols:",
        ),
    ),
    Reach(
        "aioice",
        "Connection._check_list, CandidatePair.remote_addr",
        "of_aioice.paired_addresses: batched reads sort a flooded socket by the peer's addresses",
        all_of(
            contains(aioice.ice.Connection, "self._check_list: list[CandidatePair] = []"),
            holds(
                lambda: isinstance(aioice.ice.CandidatePair.remote_addr, property),
                "CandidatePair.remote_addr is no longer a property",
            ),
        ),
    ),
    Reach(
        "aioice",
        "Connection._query_consent_task",
        "of_aioice.cancel_consent_check: a connect() that ends after close() leaks it",
        contains(
            aioice.ice.Connection,
            "self._query_consent_task: asyncio.Task[None] | None = None",
            "self._query_consent_task = asyncio.create_task(self.query_consent())",
        ),
    ),
    Reach(
        "aioice",
        "ice.CONSENT_INTERVAL, ice.CONSENT_FAILURES",
        "of_aioice.set_consent_timeout: webrtc.consent_timeout",
        all_of(
            holds(
                lambda: aioice.ice.CONSENT_FAILURES == 6,
                "aioice no longer gives up after 6 unanswered consent checks",
            ),
            contains(
                aioice.ice.Connection.query_consent,
                "await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))",
                "if failures >= CONSENT_FAILURES:",
            ),
        ),
    ),
    Reach(
        "aioice",
        "ice.get_host_addresses, Connection.get_component_candidates",
        "of_aioice.replace_host_addresses, replace_host_gathering: webrtc.ice_addresses, ports",
        all_of(
            contains(
                aioice.ice.Connection.gather_candidates,
                "addresses = get_host_addresses(",
                "self.get_component_candidates(component=component, addresses=addresses)",
            ),
            parameters(
                aioice.ice.Connection.get_component_candidates,
                ["self", "component", "addresses", "timeout"],
            ),
        ),
    ),
    Reach(
        "aioice",
        "StunProtocol's transport; Connection.request_received answering only what it checked",
        "of_aioice.replace_host_gathering with webrtc/udp_mux.py: a share of the one UDP port "
        "is a StunProtocol on a transport of ours, and the mux learns a peer's address from "
        "aioice's success answer",
        all_of(
            contains(aioice.ice.StunProtocol.close, "self.transport.close()"),
            contains(
                aioice.ice.StunProtocol.send_stun, "self.transport.sendto(bytes(message), addr)"
            ),
            contains(aioice.ice.StunProtocol.send_data, "self.transport.sendto(data, addr)"),
            contains(
                aioice.ice.Connection.request_received,
                'message.check_message_integrity(self.local_password.encode("utf8"))',
                '(401, "Unauthenticated")',
                "message_class=stun.Class.RESPONSE",
            ),
        ),
    ),
    # pylibsrtp ------------------------------------------------------------------------------
    Reach(
        "pylibsrtp",
        "Session._srtp, _cdata, _buffer, _binding.lib.srtp_protect",
        "of_pylibsrtp.InPlaceSrtp: the fast path protects in the session's own buffer",
        contains(
            pylibsrtp.Session,
            'self._cdata = ffi.new("char[]", 1500)',
            "self._buffer = ffi.buffer(self._cdata)",
            "self._srtp = ffi.gc(srtp",
            "self.__process(packet, lib.srtp_protect, SRTP_MAX_TRAILER_LEN)",
            "self._srtp[0], self._cdata, len_p",
        ),
    ),
    # asyncio (the selector loop) ------------------------------------------------------------
    Reach(
        "Python",
        "_SelectorDatagramTransport._sock (sendto)",
        "of_asyncio.datagram_sendto: one direct socket call per fast-path copy",
        contains(SELECTOR_DATAGRAM.sendto, "self._sock.sendto(data, addr)"),
    ),
    Reach(
        "Python",
        "_SelectorDatagramTransport._sock_fd, _read_ready, _sock.recvfrom",
        "of_asyncio.selector_fd, resume_reading, datagram_receiver: batched reads",
        all_of(
            contains(SELECTOR_DATAGRAM, "self._sock_fd, self._read_ready"),
            contains(
                SELECTOR_DATAGRAM._read_ready,
                "self._sock.recvfrom(self.max_size)",
                "self._protocol.datagram_received(data, addr)",
            ),
        ),
    ),
    Reach(
        "Python",
        "BaseSelectorEventLoop._add_reader, _remove_reader",
        "of_asyncio.stop_reading, resume_reading, read_with: batched reads (un)register",
        all_of(
            parameters(SELECTOR_LOOP._add_reader, ["self", "fd", "callback", "args"]),
            parameters(SELECTOR_LOOP._remove_reader, ["self", "fd"]),
        ),
    ),
    # Quart ----------------------------------------------------------------------------------
    Reach(
        "Quart",
        "ASGIWebsocketConnection.queue",
        "of_quart.bounded_websocket_connection: a WebSocket's incoming frames, bounded",
        all_of(
            contains(
                ASGIWebsocketConnection.__init__, "self.queue: asyncio.Queue = asyncio.Queue()"
            ),
            contains(ASGIWebsocketConnection.handle_messages, "await self.queue.put(message)"),
            contains(ASGIWebsocketConnection._create_websocket_from_scope, "self.queue.get,"),
        ),
    ),
    Reach(
        "Quart",
        "quart.websocket._get_current_object (Werkzeug's LocalProxy)",
        "of_quart.current_websocket: the session keeps the route's WebSocket object",
        holds(
            lambda: (
                isinstance(quart.websocket, werkzeug.local.LocalProxy)
                and hasattr(werkzeug.local.LocalProxy, "_get_current_object")
            ),
            "quart.websocket is no longer a Werkzeug LocalProxy with _get_current_object",
        ),
    ),
    # Hypercorn ------------------------------------------------------------------------------
    Reach(
        "Hypercorn",
        "WSStream._handle_events, _send_wsproto_event, buffer, app_put",
        "of_hypercorn.BoundedWSStream: nothing taken in after the server's goodbye",
        contains(
            hypercorn_ws_stream.WSStream._handle_events,
            "self.buffer.extend(event)",
            "except FrameTooLargeError",
            "CloseReason.MESSAGE_TOO_BIG",
            "await self.app_put(self.buffer.to_message())",
            "await self._send_wsproto_event(event.response())",
        ),
    ),
    Reach(
        "Hypercorn",
        "h11.WSStream, h2.WSStream, TaskGroup.spawn_app's app_put",
        "of_hypercorn.bound_websocket_streams: where Hypercorn looks its WebSocket stream up",
        all_of(
            contains(hypercorn_h11.H11Protocol, "self.stream = WSStream("),
            contains(hypercorn_h2.H2Protocol, "WSStream("),
            contains(hypercorn_task_group.TaskGroup.spawn_app, "return app_queue.put"),
        ),
    ),
    Reach(
        "Hypercorn",
        "ws_stream.PerMessageDeflate",
        "of_hypercorn.decline_permessage_deflate: no zlib context per WebSocket",
        contains(hypercorn_ws_stream, "extensions: list[Extension] = [PerMessageDeflate()]"),
    ),
    Reach(
        "Hypercorn",
        "H11Protocol._handle_events, can_read; protocol.H11Protocol; TCPServer.reader",
        "of_hypercorn.WatchfulH11Protocol: HTTP/1.1 read on during a response (hang-ups seen)",
        all_of(
            contains(
                hypercorn_h11.H11Protocol._handle_events,
                "if self.connection.they_are_waiting_for_100_continue:",
                "event = self.connection.next_event()",
                "await self._send_error_response(error.error_status_hint)",
                "await self._check_protocol(event)",
                "await self._create_stream(event)",
                "elif event is h11.PAUSED:\n"
                "                    await self.can_read.clear()\n"
                "                    await self.can_read.wait()",
                "await self.stream.handle(Body(stream_id=STREAM_ID, data=event.data))",
                "await self.stream.handle(EndBody(stream_id=STREAM_ID))",
            ),
            contains(hypercorn_h11.H11Protocol._maybe_recycle, "await self.can_read.set()"),
            contains(hypercorn_protocol.ProtocolWrapper, "self.protocol = H11Protocol("),
            contains(
                TCPServer,
                "self.reader = reader",
                "self.protocol_send,",
                "while not self.reader.at_eof():",
                "await self.protocol.handle(Closed())",
            ),
            holds(
                lambda: hypercorn_tcp_server.MAX_RECV == of_hypercorn.MAX_RECV,
                "Hypercorn reads another amount at a time",
            ),
        ),
    ),
    Reach(
        "Hypercorn",
        "HTTPStream.send -> H11Protocol/H2Protocol.send -> TCPServer.writer",
        "of_hypercorn.connection_transport: an Ogg listener's connection reset (server/connection)",
        all_of(
            contains(HTTPStream.__init__, "self.send = send"),
            contains(hypercorn_h11.H11Protocol.__init__, "self.send = send"),
            contains(hypercorn_h2.H2Protocol.__init__, "self.send = send"),
            contains(hypercorn_h11.H11Protocol, "self.stream_send,"),
            contains(TCPServer, "self.writer = writer", "self.protocol_send,"),
        ),
    ),
]


def installed(library: str) -> str:
    if library == "Python":
        import platform

        return platform.python_version()
    return importlib.metadata.version(library)


@pytest.mark.parametrize("reach", REACHES, ids=[reach.name for reach in REACHES])
def test_each_reach_is_where_the_room_finds_it(reach: Reach) -> None:
    try:
        reach.check()
    except (AssertionError, AttributeError, OSError, TypeError) as error:
        pytest.fail(
            f"{reach.library} {installed(reach.library)}: `{reach.name}` moved ({error}); "
            f"used by {reach.used_by}. Re-check relay_app/internals/ before upgrading.",
            pytrace=False,
        )


def _pins(requirements: list[str]) -> dict[str, str]:
    found = {}
    for line in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*==\s*([^\s;]+)\s*(;.*)?", line)
        if match:
            found[match[1].lower().replace("_", "-")] = match[2]
    return found


PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
CONSTRAINTS = _pins((REPO / "constraints.txt").read_text().splitlines())


@pytest.mark.parametrize("library", sorted(WRITTEN_FOR))
def test_the_room_was_written_for_the_installed_and_pinned_version(library: str) -> None:
    wanted, key = WRITTEN_FOR[library], library.lower()
    assert installed(library) == wanted, (
        f"{library} {installed(library)} is installed; relay_app/internals/ was written for "
        f"{wanted}: re-check its rows here, then WRITTEN_FOR and both pins"
    )
    assert _pins(PYPROJECT["dependencies"]).get(key) == wanted, f"pyproject.toml: {library}"
    assert CONSTRAINTS.get(key) == wanted, f"constraints.txt: {library}"


def test_uvloop_is_an_extra_pinned_as_constraints_pin_it_and_installed_for_tests() -> None:
    extras = PYPROJECT["optional-dependencies"]
    assert _pins(extras["uvloop"]) == {"uvloop": CONSTRAINTS["uvloop"]}
    assert "relay_app[uvloop]" in extras["dev"]  # (make install: `.[dev]`)
    assert installed("uvloop") == CONSTRAINTS["uvloop"]


# The room's functions on real peers --------------------------------------------------------
async def connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, list[int]]:
    """A speaker sending a tone to a relay whose receiver is tapped (the sequence numbers)."""
    speaker, relay = RTCPeerConnection(), RTCPeerConnection()
    heard: list[int] = []

    def on_track(track: Any) -> None:
        receiver = audio_receiver(relay, track)

        def wrap(original: of_aiortc.RtpHandler) -> of_aiortc.RtpHandler:
            async def tapped(packet: Any, arrival_time_ms: int) -> None:
                heard.append(packet.sequence_number)
                await original(packet, arrival_time_ms)

            return tapped

        of_aiortc.wrap_rtp_handler(receiver, wrap)

    relay.on("track", on_track)
    speaker.addTrack(ToneTrack(440))
    await speaker.setLocalDescription(await speaker.createOffer())
    await relay.setRemoteDescription(speaker.localDescription)
    await relay.setLocalDescription(await relay.createAnswer())
    await speaker.setRemoteDescription(relay.localDescription)
    with anyio.fail_after(10):
        while len(heard) < 3:
            await anyio.sleep(0.02)
    return speaker, relay, heard


async def send_one(
    speaker: RTCPeerConnection,
    sendto: of_asyncio.SendTo,
    srtp: InPlaceSrtp,
    ssrc: int,
    address: Any,
    heard: list[int],
) -> int:
    """Send one Opus packet of the speaker's stream from outside aiortc (as the fast path
    does): its number a little ahead of the speaker's own. Returns that number."""
    sequence = (heard[-1] + 25) & 0xFFFF
    opus = negotiated_opus_payload_type(speaker)
    header = bytearray(
        [0x80, opus, *sequence.to_bytes(2, "big"), *bytes(4), *ssrc.to_bytes(4, "big")]
    )
    sendto(srtp.protect(header, b"\xfc\xff\xfe"), address)
    return sequence


async def test_the_rooms_functions_on_a_real_connection_on_asyncios_loop() -> None:
    assert of_asyncio.batched_reads_unavailable(asyncio.get_running_loop()) is None
    speaker, relay, heard = await connected_pair()
    try:
        (sender,) = speaker.getSenders()
        dtls = sender.transport
        connection = of_aiortc.ice_connection(dtls)
        pair = of_aioice.nominated_pairs(connection)[1]
        assert pair.remote_addr in of_aioice.paired_addresses(connection)
        (protocol,) = of_aioice.socket_protocols(connection)
        assert protocol is pair.protocol and of_asyncio.selector_fd(protocol.transport)
        # The fast path's send per copy: the socket's own sendto, one direct call.
        sendto = of_asyncio.datagram_sendto(protocol.transport)
        assert isinstance(getattr(sendto, "__self__", None), socket.socket), sendto
        # A packet protected in place and sent from the speaker's own socket reaches the
        # relay's tap like the speaker's own (its numbers, its SSRC, its header extensions).
        srtp = InPlaceSrtp(of_aiortc.outbound_srtp(dtls))
        ssrc = of_aiortc.sender_ssrc(sender)
        assert of_aiortc.header_extensions(sender) is not None
        assert of_aiortc.sender_cname(sender)
        sequence = await send_one(speaker, sendto, srtp, ssrc, pair.remote_addr, heard)
        with anyio.fail_after(5):
            while sequence not in heard:
                await anyio.sleep(0.01)
        assert of_aiortc.receiver_loss_statistics(relay.getReceivers()[0])
        assert of_aiortc.remote_inbound_stats(sender) is None or hasattr(
            of_aiortc.remote_inbound_stats(sender), "fractionLost"
        )
    finally:
        await speaker.close()
        await relay.close()
    of_aioice.cancel_consent_check(connection)  # (closed: nothing left to cancel)


@pytest.mark.parametrize("anyio_backend", [("asyncio", {"use_uvloop": True})])
async def test_on_uvloop_batched_reads_are_off_and_the_fast_path_sends_through_the_transport(
    anyio_backend: Any,
) -> None:
    loop = asyncio.get_running_loop()
    assert type(loop).__module__.startswith("uvloop")
    reason = of_asyncio.batched_reads_unavailable(loop)
    assert reason is not None and "uvloop" in reason, reason
    speaker, relay, heard = await connected_pair()
    try:
        (sender,) = speaker.getSenders()
        dtls = sender.transport
        pair = of_aioice.nominated_pairs(of_aiortc.ice_connection(dtls))[1]
        assert of_asyncio.selector_fd(pair.protocol.transport) is None
        sendto = of_asyncio.datagram_sendto(pair.protocol.transport)
        srtp = InPlaceSrtp(of_aiortc.outbound_srtp(dtls))
        ssrc = of_aiortc.sender_ssrc(sender)
        sequence = await send_one(speaker, sendto, srtp, ssrc, pair.remote_addr, heard)
        with anyio.fail_after(5):
            while sequence not in heard:
                await anyio.sleep(0.01)
        transport = pair.protocol.transport
    finally:
        await speaker.close()
        await relay.close()
    assert transport.is_closing()
    sendto(b"late", pair.remote_addr)  # (uvloop drops it: no error, nothing sent)


def test_a_system_without_epoll_has_no_batched_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """macOS has no epoll: batched reads stay off even on asyncio's selector loop."""
    monkeypatch.delattr(select, "epoll")
    loop = asyncio.new_event_loop()
    try:
        assert of_asyncio.batched_reads_unavailable(loop) == "this system has no epoll"
    finally:
        loop.close()


def test_the_websocket_plumbing_is_in_place_where_hypercorn_looks_it_up() -> None:
    from relay_app.server.websocket import decline_websocket_compression

    decline_websocket_compression()  # (what building an app calls)
    assert of_hypercorn.websocket_streams_bounded()
    assert hypercorn_ws_stream.PerMessageDeflate is not None
    assert hypercorn_ws_stream.PerMessageDeflate().accept("permessage-deflate") is None


@pytest.mark.parametrize(
    "anyio_backend", [("asyncio", {}), ("asyncio", {"use_uvloop": True})], ids=["asyncio", "uvloop"]
)
async def test_a_silent_response_learns_its_client_hung_up_after_sending_more_on_both_loops(
    anyio_backend: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Hypercorn in this process, with the room's HTTP/1.1 protocol: a client that sent its
    next request ahead, then hangs up while its response sends nothing, is seen at once; one
    that stays gets that next answer once the response ends, in order."""
    monkeypatch.setattr(hypercorn_protocol, "H11Protocol", hypercorn_protocol.H11Protocol)
    of_hypercorn.watch_http11_hangups()  # (undone after the test)
    assert of_hypercorn.http11_hangups_watched()
    disconnected, finish = anyio.Event(), anyio.Event()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        if scope["path"] == "/silent":  # sends nothing more until it is told the client left
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()
        elif scope["path"] == "/until-finished":
            await finish.wait()
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    port, stop = free_port(), anyio.Event()
    config = HypercornConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = config.errorlog = None
    ahead = b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
    async with anyio.create_task_group() as group:
        group.start_soon(lambda: hypercorn_serve(app, config, shutdown_trigger=stop.wait))
        try:
            with anyio.fail_after(5):
                while True:
                    try:
                        client = await anyio.connect_tcp("127.0.0.1", port)
                        break
                    except OSError:
                        await anyio.sleep(0.05)
            await client.send(b"GET /silent HTTP/1.1\r\nHost: x\r\n\r\n" + ahead)
            assert b"first" in await client.receive()
            await client.aclose()
            with anyio.fail_after(2):
                await disconnected.wait()
            stayer = await anyio.connect_tcp("127.0.0.1", port)
            await stayer.send(b"GET /until-finished HTTP/1.1\r\nHost: x\r\n\r\n" + ahead)
            answer = await stayer.receive()
            await anyio.sleep(0.2)
            finish.set()
            with anyio.fail_after(2):
                while answer.count(b"HTTP/1.1 200") < 2 or not answer.endswith(b"0\r\n\r\n"):
                    answer += await stayer.receive()
            await stayer.aclose()
        finally:
            stop.set()


def test_srtp_in_place_is_what_the_receiver_unprotects_and_long_packets_are_refused() -> None:
    key = bytes(range(30))
    tx = pylibsrtp.Session(pylibsrtp.Policy(key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND))
    rx = pylibsrtp.Session(pylibsrtp.Policy(key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND))
    protect = InPlaceSrtp(tx)
    for sequence in range(3):
        header = bytearray(b"\x80\x6f" + sequence.to_bytes(2, "big") + bytes(8))
        payload = bytes([sequence]) * (100 + sequence)
        assert rx.unprotect(bytes(protect.protect(header, payload))) == header + payload
    with pytest.raises(ValueError, match="too long"):
        protect.protect(bytearray(b"\x80\x6f\x00\x03" + bytes(8)), bytes(1500))
