"""Who a stream feeds: one `Output` per listener (and per consumer of the stream's own), held in
one collection on the stream (`Outputs`).

Each kind of output takes one *feed*, a view of the stream's audio that the packet path
(path.py) builds once per packet, and only while some output takes it:

    red      the fast path's WebRTC listeners: the packet with its redundancy (RED) built once,
             sent in the same call by each listener's DirectSender (webrtc/fast_path.py)
    packet   aiortc tracks in forward mode: an av.Packet on the channel's timeline, queued
    frame    decoded audio: aiortc tracks in transcode mode, and the level meter, queued
    payload  the Opus payload and its place on the timeline: the Ogg pages, the recording

Which kind a listener gets is chosen once, when its output is made (factory.py), never per
packet. A new kind of output is a class here (or a module of its own) and its line in the
factory. The collection's per-feed tuples are rebuilt when an output comes or goes (sync, on
the loop: the path never sees one half added), so a copy costs what it did when the fast
path's senders sat in a dict of their own: one call per listener from a tuple.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, ClassVar, Literal

from ..audio.http_audio import HttpAudio
from ..audio.recording import Recording
from ..core.metrics import Metrics
from ..core.protocol import ServerMessage
from ..webrtc.fanout import ChannelTrack, RelayTrack
from ..webrtc.fast_path import DirectSender, Placeholder

SendOrDrop = Callable[[str], None]
"""A session's `send_or_drop`: queues an encoded message without blocking, or drops it."""
Tell = Callable[[ServerMessage], None]
"""A session's `send`: queues a message for its client without blocking."""
Feed = Literal["red", "packet", "frame", "payload"]


class Output:
    """One consumer of a stream's audio, as the plane feeds it.

    `deliver` takes the output's feed (see the module's docstring); `close` says the stream
    ended (nothing more comes). A WebRTC listener (`receiver`) also says who it is to the
    stream: `tell` for the notices every listener gets (speaker_lost, speaker_back), `levels`
    when it asked for level messages, `link` when it is another node's upstream (counted as
    a listener on that node, not here)."""

    feed: Feed
    receiver: ClassVar[bool] = False  # a WebRTC listener (streams.max_receivers counts them)
    subscription: ClassVar[bool] = False  # counted as a relay subscription while attached
    deliver: Callable[..., Any]

    def __init__(self, key: str) -> None:
        self.key = key
        self.link = False
        self.levels: SendOrDrop | None = None
        self.tell: Tell | None = None

    def close(self) -> None:
        """The stream ended, or the output left it: nothing more is delivered."""


class FastPathOutput(Output):
    """A WebRTC listener on the fast path: its DirectSender sends each packet (RED inside,
    as far as the listener negotiated it) in the path's own call."""

    feed: Feed = "red"
    receiver = True
    subscription = True

    def __init__(self, key: str, sender: DirectSender) -> None:
        super().__init__(key)
        self.sender = self.deliver = sender


class TrackOutput(Output):
    """A queue an aiortc track reads (`RelayTrack`: a WebRTC listener's RTCRtpSender off the
    fast path, or the level meter): packets in forward mode, decoded frames in transcode."""

    receiver = True
    subscription = True

    def __init__(self, key: str, track: RelayTrack, feed: Feed) -> None:
        super().__init__(key)
        self.track, self.feed = track, feed
        self.deliver = track.push

    def close(self) -> None:
        self.track.end()
        self.track.stop()


class MeterOutput(TrackOutput):
    """The stream's level meter (media/sender.visualize reads the queue): decoded frames, of
    which it measures one in `every` (forward mode's are already one in N: path.py)."""

    receiver = False

    def __init__(self, track: RelayTrack, every: int) -> None:
        super().__init__("meter", track, "frame")
        self.every = every


class OggOutput(Output):
    """The stream's plain-HTTP listeners: one Ogg muxer whose pages they share (HttpAudio).
    Fed with every packet, listeners or not, so its granules always count."""

    feed: Feed = "payload"

    def __init__(self, http: HttpAudio) -> None:
        super().__init__("ogg")
        self.http = http
        self.deliver = http.feed

    def close(self) -> None:
        self.http.close()


class RecordingOutput(Output):
    """The stream written to disk (recording.py): its channel's recording, which its next
    speaker goes on with; `release` gives it back when the stream ends (audio/recorder.py)."""

    feed: Feed = "payload"

    def __init__(self, recording: Recording, release: Callable[[], None]) -> None:
        super().__init__("recording")
        self.recording = recording
        self._release: Callable[[], None] | None = release

    def deliver(self, payload: bytes, pts: int, arrival: float) -> None:
        self.recording.feed(payload, pts)

    def close(self) -> None:
        if self._release is not None:
            release, self._release = self._release, None
            release()


class Outputs:
    """A stream's one collection of outputs, by key (a listener's connection id, or the
    stream's own: "ogg", "recording", "meter"), and what the packet path reads of them."""

    def __init__(self, metrics: Metrics) -> None:
        self._live = metrics.live
        self._all: dict[str, Output] = {}
        self.closed = False
        self._derive()

    def add(self, output: Output) -> None:
        """Feed `output` from the next packet on (the caller checked `closed`)."""
        if (old := self._all.get(output.key)) is not None:
            self.remove(old)
        self._all[output.key] = output
        if output.subscription:
            self._live.relay_subscriptions += 1
        self._derive()

    def remove(self, output: Output) -> None:
        """Feed it no more, and close it; idempotent."""
        if self._all.get(output.key) is output:
            del self._all[output.key]
            if output.subscription:
                self._live.relay_subscriptions -= 1
            self._derive()
        output.close()

    def close(self) -> None:
        """The stream ended: every output is closed (they stay counted until they leave)."""
        self.closed = True
        for output in list(self._all.values()):
            output.close()

    def _derive(self) -> None:
        """The per-feed views (what the path calls per packet) and the listeners."""
        outputs = self._all.values()
        self.red: tuple[DirectSender, ...] = tuple(
            o.sender for o in outputs if isinstance(o, FastPathOutput)
        )
        self.packet = tuple(o.deliver for o in outputs if o.feed == "packet")
        self.frame = tuple(o.deliver for o in outputs if o.feed == "frame")
        self.payload = tuple(o.deliver for o in outputs if o.feed == "payload")
        self.receivers = tuple(o for o in outputs if o.receiver)

    def __iter__(self) -> Iterator[Output]:
        return iter(list(self._all.values()))

    def __contains__(self, key: str) -> bool:
        return key in self._all

    @property
    def listeners(self) -> int:
        """Its WebRTC listeners here, without other nodes' upstreams (those count there)."""
        return sum(1 for o in self.receivers if not o.link)

    @property
    def http(self) -> HttpAudio | None:
        ogg = self._all.get("ogg")
        return ogg.http if isinstance(ogg, OggOutput) else None

    @property
    def http_listeners(self) -> int:
        http = self.http
        return len(http.listeners) if http is not None else 0

    @property
    def recording(self) -> Recording | None:
        output = self._all.get("recording")
        return output.recording if isinstance(output, RecordingOutput) else None

    def told(self) -> list[Tell]:
        """Every WebRTC listener's `tell` (the notices all of them get)."""
        return [o.tell for o in self.receivers if o.tell is not None]

    def levels(self) -> list[SendOrDrop]:
        """The listeners that asked for level messages."""
        return [o.levels for o in self.receivers if o.levels is not None]

    def heard(self) -> bool:
        """Someone listens the moment packets arrive: a WebRTC or a plain-HTTP listener."""
        return bool(self.receivers) or self.http_listeners > 0

    def listener_loss(self, key: str | None = None) -> float:
        """The share of packets a fast-path listener last reported lost (RTCP), 0-1: `key`'s,
        or the worst of them."""
        if key is not None:
            output = self._all.get(key)
            if isinstance(output, FastPathOutput):
                return output.sender.reported_loss / 256
            return 0.0
        return max((sender.reported_loss for sender in self.red), default=0) / 256


class Sending:
    """What one WebRTC listener's peer connection sends, across a channel's senders: the
    track its transceiver carries, and on the fast path the DirectSender the path calls.

    `output` makes its output for the stream it plays now; on a channel's handover the next
    stream's output is made the same way, and that is the whole of the re-pointing: the
    fast path's sender numbers on from its last packet (`follow`), the aiortc track reads the
    next stream's queue. Timestamps need nothing: they are on the channel's one timeline."""

    def __init__(
        self,
        track: Placeholder | ChannelTrack,
        direct: DirectSender | None,
        make_queue: Callable[[], RelayTrack],
        feed: Feed,
    ) -> None:
        self.track, self.direct = track, direct
        self._make_queue, self._feed = make_queue, feed

    def added(self) -> None:
        """The track is on the peer connection, which has not started: the fast path's
        sender reports come from the DirectSender from the start."""
        if self.direct is not None:
            self.direct.take_reports()

    def output(self, key: str) -> Output:
        """Its output for the stream it plays from now on."""
        if self.direct is not None:
            self.direct.follow()
            return FastPathOutput(key, self.direct)
        assert isinstance(self.track, ChannelTrack)
        queue = self._make_queue()
        self.track.follow(queue)
        return TrackOutput(key, queue, self._feed)

    def stop(self) -> None:
        self.track.stop()
