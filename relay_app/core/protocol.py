"""The WebSocket protocol: one model per message, keyed on `type`. Pure: no I/O.

`parse_client_message` turns a text frame into exactly one model or raises ProtocolError with a
message a person can act on; nothing deeper in the server sees a raw dict. Replies are models too,
encoded by `encode`. The Python client (client.py) uses the same models the other way round:
it encodes client messages and reads replies with `parse_server_message`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from .config import CHANNEL_NAME
from .errors import ProtocolError

NO_STREAM_MESSAGE = "No audio stream available"  # exact text: the guide's clients match on it


class _ClientMessage(BaseModel):
    # Unknown extra fields are ignored so that newer clients keep working with this server.
    model_config = ConfigDict(extra="ignore", frozen=True)


CHANNEL_PATTERN = f"^{CHANNEL_NAME}$"


class StartSending(_ClientMessage):
    type: Literal["start_sending"] = "start_sending"
    sdp: str = Field(min_length=1)
    # A named stream: its stream_id is the channel's name, the same across reconnects.
    channel: str | None = Field(None, pattern=CHANNEL_PATTERN)
    # Replace the channel's live sender (auth on: needs a send token scoped to the channel).
    takeover: bool = False
    # Who speaks, when their token names nobody (cut to 40 characters for people).
    name: str | None = Field(None, max_length=200)


class StartReceiving(_ClientMessage):
    type: Literal["start_receiving"] = "start_receiving"
    stream_id: str | None = Field(None, min_length=1, max_length=200)
    # Level messages for this receiver (off by default: a page can meter what it plays).
    visualization: bool = False
    # Another relay node of the cluster relaying this stream to its own receivers (cluster.py);
    # needs a node token when auth is on, and is served from this node's own streams only.
    upstream: bool = False
    # Who listens, when their token names nobody (the console shows it; cut to 40).
    name: str | None = Field(None, max_length=200)


class Answer(_ClientMessage):
    type: Literal["answer"] = "answer"
    sdp: str = Field(min_length=1)


class Auth(_ClientMessage):
    type: Literal["auth"] = "auth"
    token: str = Field(min_length=1, max_length=4096)


class GetAvailableStreams(_ClientMessage):
    type: Literal["get_available_streams"] = "get_available_streams"


class Ping(_ClientMessage):
    type: Literal["ping"] = "ping"


class Stop(_ClientMessage):
    type: Literal["stop"] = "stop"


class WaitToSpeak(_ClientMessage):
    """A speaker waits for their turn on a channel (an interpreter's booth partner): the
    session's role is "waiting" until `your_turn`, `stop` or a start_sending."""

    type: Literal["wait_to_speak"] = "wait_to_speak"
    channel: str = Field(pattern=CHANNEL_PATTERN)
    name: str | None = Field(None, max_length=200)  # (cut to 40 characters for people)


class HandOver(_ClientMessage):
    """The channel's live speaker hands it to a speaker waiting on it (`to`: their name; by
    default whoever has waited longest): they are told `your_turn` and take it over."""

    type: Literal["hand_over"] = "hand_over"
    to: str | None = Field(None, max_length=200)


ClientMessage = Annotated[
    StartSending
    | StartReceiving
    | Answer
    | GetAvailableStreams
    | Ping
    | Stop
    | Auth
    | WaitToSpeak
    | HandOver,
    Field(discriminator="type"),
]
_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
CLIENT_TYPES = (
    "start_sending",
    "start_receiving",
    "answer",
    "get_available_streams",
    "ping",
    "stop",
    "auth",
    "wait_to_speak",
    "hand_over",
)


def parse_client_message(text: str) -> ClientMessage:
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as error:
        raise ProtocolError(f"invalid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ProtocolError(f"a message must be a JSON object, not {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str):
        raise ProtocolError('a message needs a string "type" field')
    if kind not in CLIENT_TYPES:
        shown = kind if len(kind) <= 40 else kind[:40] + "..."
        raise ProtocolError(
            f"unknown message type {shown!r}; expected one of: {', '.join(CLIENT_TYPES)}"
        )
    try:
        return _client_adapter.validate_python(data)
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'][1:]) or 'message'}: {e['msg']}"
            for e in error.errors()
        )
        raise ProtocolError(f"invalid {kind!r} message: {problems}") from None


class _ServerMessage(BaseModel):
    model_config = ConfigDict(frozen=True)


class Welcome(_ServerMessage):
    type: Literal["welcome"] = "welcome"
    connection_id: str
    config: dict[str, Any]
    # For a page that came with an invite (a link or code many share): a token for this
    # device alone, made from it (same channel, same expiry). Pages use it from then on, so
    # that the operator's Remove withdraws this device, not everyone's invite.
    personal_token: str | None = None


class AnswerOut(_ServerMessage):
    type: Literal["answer"] = "answer"
    sdp: str


class StreamStarted(_ServerMessage):
    type: Literal["stream_started"] = "stream_started"
    stream_id: str
    label: str | None = None  # who is speaking now (a channel's next sender)


class Offer(_ServerMessage):
    type: Literal["offer"] = "offer"
    sdp: str
    stream_id: str


class StreamInfo(_ServerMessage):
    stream_id: str
    started_at: float
    receivers: int
    http_listeners: int = 0  # plain-HTTP listeners (GET :8081/stream/<stream_id>.ogg)
    channel: str | None = None  # set when the stream is a named channel (stream_id == channel)
    node: str | None = None  # cluster mode: the node its sender is on (cluster.node_id)
    # What people call it: the channel's label, or "Speaker 1", "Speaker 2"... for unnamed ones.
    label: str = ""


class ChannelInfo(_ServerMessage):
    channel: str
    label: str
    description: str = ""
    live: bool = False
    listeners: int = 0  # WebRTC receivers and plain-HTTP listeners now (cluster-wide)


class AvailableStreams(_ServerMessage):
    type: Literal["available_streams"] = "available_streams"
    streams: list[StreamInfo]
    # Configured channels (live or not) and live unlisted ones, by name.
    channels: list[ChannelInfo] = []


class Pong(_ServerMessage):
    type: Literal["pong"] = "pong"


class Stopped(_ServerMessage):
    type: Literal["stopped"] = "stopped"


class StreamEnded(_ServerMessage):
    type: Literal["stream_ended"] = "stream_ended"
    stream_id: str
    reason: str
    # To a channel's receivers: the server keeps them on the channel and sends
    # `stream_started` and a fresh `offer` on this socket when its next sender is live.
    waiting: bool = False
    # What happened, for people ("Marie took over English", "The operator stopped your
    # microphone"); pages show it when present. `by`: who did it (a name), if someone did.
    message: str | None = None
    by: str | None = None


class SpeakerLost(_ServerMessage):
    """To a stream's listeners: no packet from its speaker for a second (a frozen laptop, a
    dropped Wi-Fi). `since`: the last packet (Unix time). The channel is freed after
    streams.speaker_lost_after unless `speaker_back` comes first."""

    type: Literal["speaker_lost"] = "speaker_lost"
    stream_id: str
    label: str
    since: float
    message: str


class SpeakerBack(_ServerMessage):
    type: Literal["speaker_back"] = "speaker_back"
    stream_id: str
    label: str


class YourTurn(_ServerMessage):
    """To a speaker waiting on `channel`: take it over now (start_sending with takeover)."""

    type: Literal["your_turn"] = "your_turn"
    channel: str
    label: str
    by: str | None = None  # who handed it over: the live speaker's name, or "the operator"


class Booth(_ServerMessage):
    """To a channel's speaker and the speakers waiting on it, whenever that changes."""

    type: Literal["booth"] = "booth"
    channel: str
    label: str
    speaking: str | None = None  # the live speaker's name
    waiting: list[str] = []  # names, longest waiting first


class Visualization(_ServerMessage):
    type: Literal["visualization"] = "visualization"
    stream_id: str
    rms: float
    peak: float


class Authenticated(_ServerMessage):
    type: Literal["authenticated"] = "authenticated"
    role: str
    stream: str | None = None


class Error(_ServerMessage):
    type: Literal["error"] = "error"
    message: str


class Disconnected(_ServerMessage):
    """The operator ended this connection (the console's Disconnect, or Remove: its token is
    withdrawn too). Sent just before the close (1000, or 1008 when removed); pages show
    `message` and do not reconnect by themselves."""

    type: Literal["disconnected"] = "disconnected"
    reason: Literal["disconnected", "removed"]
    message: str


ServerMessage = (
    Welcome
    | AnswerOut
    | StreamStarted
    | Offer
    | AvailableStreams
    | Pong
    | Stopped
    | StreamEnded
    | Visualization
    | Authenticated
    | Error
    | Disconnected
    | SpeakerLost
    | SpeakerBack
    | YourTurn
    | Booth
)


_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(
    Annotated[ServerMessage, Field(discriminator="type")]
)


def parse_server_message(text: str | bytes) -> ServerMessage:
    """A server's frame as its model (the client's side); ProtocolError if it is none."""
    try:
        return _server_adapter.validate_json(text)
    except ValidationError as error:
        raise ProtocolError(f"not a relay_app server message: {error}") from None


def encode(message: ServerMessage | ClientMessage) -> str:
    return message.model_dump_json()
