"""Settings: every configuration key, its default and unit, in one typed model.

This is the only module that reads `config.json` and the environment. Everything else receives a
`Settings` through its constructor. Precedence, highest first: environment variables
(`RELAY_<SECTION>__<KEY>`, e.g. `RELAY_SERVER__PORT=9000`; lists and objects as JSON), the JSON file
(`--config PATH` or `RELAY_CONFIG`), built-in defaults. An invalid value or an unknown key stops the
process at startup with a message naming the key.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

CONFIG_ENV = "RELAY_CONFIG"
CHANNEL_NAME = r"[A-Za-z0-9_-]{1,32}"  # as protocol.CHANNEL_PATTERN
IDLE_GRACE_FACTOR = 1.5  # see WebRTCSettings.idle_close_after


class ConfigError(Exception):
    """The configuration cannot be used; the message names each bad key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class ServerSettings(_Section):
    host: str = Field("0.0.0.0", description="Address both HTTP ports listen on.")
    port: int = Field(
        8080, ge=0, le=65535, description="WebSocket `/ws`, `/health`, `/metrics`, web client."
    )
    audio_port: int = Field(
        8081, ge=0, le=65535, description="Audio/status server `/stream/status`."
    )
    max_connections: int = Field(
        50,
        ge=1,
        description="WebSocket sessions at once (the guide's default); the next one is refused "
        "with close 1013. Keep it at least streams.max_receivers + streams.max_streams (the "
        "server warns at startup otherwise); raise them together for bigger audiences.",
    )
    max_message_bytes: int = Field(
        65536, ge=1024, description="Largest WebSocket text frame accepted from a client (bytes)."
    )
    certfile: str | None = Field(
        None, description="TLS certificate (PEM); with keyfile enables HTTPS."
    )
    keyfile: str | None = Field(None, description="TLS private key (PEM).")
    graceful_timeout: float = Field(
        1.0, ge=0, description="Seconds Hypercorn waits for sessions to end on SIGTERM."
    )
    dead_peer_timeout: float = Field(
        30.0,
        ge=0,
        description="Seconds a client may leave the server's data unacknowledged or refuse to "
        "take more (TCP_USER_TIMEOUT) before the kernel closes its connection: a player that "
        "stopped reading, a phone that vanished. 0 = the kernel's default (about 15 min). Set "
        "on the sockets `python -m relay_app` opens (not under the plain hypercorn command).",
    )
    max_messages_per_second: float = Field(
        20.0, gt=0, description="WebSocket messages a client may send per second (burst: 2x)."
    )
    send_timeout: float = Field(
        5.0,
        gt=0,
        description="Seconds one write to a client may take; a client that does not read for "
        "this long (or lets 64 messages queue up) is closed with 1008.",
    )
    allowed_hosts: list[str] | None = Field(
        None,
        description="`Host` header names accepted on every HTTP and WebSocket request (stops "
        "DNS rebinding); null = localhost, this machine's names and interface addresses and "
        '`server.host`; `["*"]` = any (e.g. behind a proxy that checks it).',
    )
    max_connections_per_address: int = Field(
        10,
        ge=1,
        description="Connections from one client address through any door (WebSocket sessions "
        "open or authenticating, WHIP/WHEP resources, Ogg listeners, admin calls); the next is "
        "refused (close 1013, HTTP 503). `trusted_addresses` are exempt.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        description="Reverse proxies (their own addresses) whose `X-Forwarded-For` names the "
        "client: that address is then used for per-address caps, logs and the admin API. A "
        "request from anywhere else has its forwarded headers ignored.",
    )
    trusted_addresses: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Client addresses exempt from the per-address cap: this host (tests, a "
        "reverse proxy such as nginx, whose clients all arrive from it).",
    )
    page_requests_per_second: float = Field(
        10.0,
        ge=0,
        description="Page requests (the pages, their static files, `/qr.svg`) one client "
        "address may make per second, after a burst of `page_request_burst`; more are "
        "answered 429 and counted (`page_rate` in /metrics `errors`). A page load is 5-20 "
        "requests. `trusted_addresses` are exempt; 0 = no limit. Behind NAT (a whole hall on "
        "one address) raise both.",
    )
    page_request_burst: int = Field(
        100,
        ge=1,
        description="Page requests one client address may make at once before "
        "`page_requests_per_second` applies (a few page loads and reloads).",
    )
    max_pending_connections: int = Field(
        16,
        ge=1,
        description="With auth.secret: connections still waiting for their token, at once; "
        "more are refused with 1013.",
    )
    allowed_origins: list[str] | None = Field(
        None,
        description="Browser origins allowed to open /ws (e.g. `https://intercom.lan:8080`); "
        'null = only the server\'s own origin; `["*"]` = any. Clients without Origin pass.',
    )

    @model_validator(mode="after")
    def _tls_pair(self) -> ServerSettings:
        if (self.certfile is None) != (self.keyfile is None):
            raise ValueError("certfile and keyfile must be set together")
        if self.port != 0 and self.port == self.audio_port:
            raise ValueError("port and audio_port must differ")
        return self


class AudioConstraints(_Section):
    """Sent to clients in `welcome`; browsers pass them to getUserMedia."""

    sample_rate: int = Field(16000, ge=8000, le=48000, description="Hz requested from the mic.")
    channels: int = Field(1, ge=1, le=2, description="Mic channels.")
    latency: float = Field(0, ge=0, description="Requested capture latency (seconds).")
    echo_cancellation: bool = Field(True, description="Browser echo cancellation on the mic.")
    noise_suppression: bool = Field(True, description="Browser noise suppression on the mic.")
    auto_gain_control: bool = Field(True, description="Browser automatic gain control.")


class WebRTCSettings(_Section):
    ice_servers: list[dict[str, Any]] = Field(
        default_factory=list, description="STUN/TURN servers; keep empty on a LAN."
    )
    connection_timeout: float = Field(
        30.0,
        gt=0,
        description="The keepalive interval: a client that sends a message (e.g. `ping`) at "
        "least this often is never closed as idle. A session is closed once it has been silent "
        "for 1.5x this (one interval plus half an interval of grace; `idle_close_after` in "
        "`welcome`): no WebSocket message and no media heard from its peer.",
    )
    ice_addresses: list[str] | None = Field(
        None,
        description="Local IPs to gather host candidates on; null = every non-loopback interface. "
        '`["127.0.0.1"]` keeps media on loopback.',
    )
    announced_address: str | None = Field(
        None,
        description="The IP put in the server's media candidates instead of the address its "
        "sockets are bound to, for a server behind a 1:1 NAT such as Docker's bridge with "
        "`-p` port mapping (mediasoup's announcedAddress, Janus' nat_1_1_mapping): the host's "
        "LAN IP. Bound sockets stay where they are; use with udp_port (or udp_port_range) "
        "and the same port(s) published. null = announce the bound addresses.",
    )
    udp_port_range: tuple[int, int] | None = Field(
        None,
        description="[low, high]: the only UDP ports media uses (one per peer connection), for "
        "firewalls and `docker run -p`; null = any port.",
    )
    udp_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="One UDP port for every peer connection's media (one socket per address "
        "of ice_addresses): a firewall or `docker run -p` opens just this port "
        "(`-p 3478:3478/udp`); null = a port per peer connection (udp_port_range, or any). "
        "Not with udp_port_range (choose one) nor ice_servers.",
    )
    consent_timeout: float = Field(
        30.0,
        ge=6,
        le=300,
        description="ICE consent freshness (RFC 7675): a peer connection whose consent checks "
        "go unanswered about this long (plus ~3 s: each of the six checks waits 0.5 s for its "
        "answer) is closed; a check goes out every sixth of it (5 s at the default 30 s). "
        "Shorter finds a listener whose network vanished sooner, at up to one more STUN check "
        "a second per peer.",
    )
    negotiation_timeout: float = Field(
        10.0, gt=0, description="Seconds a receiver has to answer the server's offer."
    )
    max_sdp_bytes: int = Field(
        16384, ge=1024, description="Largest SDP offer or answer accepted (bytes)."
    )
    max_remote_candidates: int = Field(
        16,
        ge=1,
        description="ICE candidates kept from a client's offer or answer; candidates the "
        "server could never use (not UDP, unspecified, multicast, another address family) "
        "are dropped first.",
    )
    audio_constraints: AudioConstraints = Field(default_factory=AudioConstraints)

    @property
    def idle_close_after(self) -> float:
        """Silence after which a session is closed. The grace above connection_timeout is why a
        client pinging exactly every connection_timeout seconds, as the old guide told users
        to, is never dropped: its pings arrive a little late, never half an interval late."""
        return self.connection_timeout * IDLE_GRACE_FACTOR

    @model_validator(mode="after")
    def _port_range(self) -> WebRTCSettings:
        if self.udp_port_range is not None:
            low, high = self.udp_port_range
            if not 1 <= low <= high <= 65535:
                raise ValueError(
                    "udp_port_range must be [low, high] with 1 <= low <= high <= 65535"
                )
            if self.ice_servers:
                raise ValueError("udp_port_range cannot be combined with ice_servers (STUN/TURN)")
        if self.udp_port is not None:
            if self.udp_port_range is not None:
                raise ValueError(
                    "udp_port and udp_port_range cannot both be set: choose one (udp_port: "
                    "one port for every peer; udp_port_range: a port per peer connection)"
                )
            if self.ice_servers:
                raise ValueError("udp_port cannot be combined with ice_servers (STUN/TURN)")
        return self

    @field_validator("ice_addresses")
    @classmethod
    def _ips(cls, value: list[str] | None) -> list[str] | None:
        for address in value or []:
            ipaddress.ip_address(address)
        return value

    @field_validator("announced_address")
    @classmethod
    def _ip(cls, value: str | None) -> str | None:
        if value is not None and ipaddress.ip_address(value).is_unspecified:
            raise ValueError("must be the address clients reach the server on, not 0.0.0.0")
        return value


class VisualizationSettings(_Section):
    enabled: bool = Field(True, description="Send `visualization` level messages.")
    downsample: int = Field(
        5, ge=1, description="Measure every Nth audio frame (20 ms each): 5 = 10 messages/s."
    )


class StreamSettings(_Section):
    cleanup_interval: float = Field(10.0, gt=0, description="Seconds between stale-stream sweeps.")
    stale_after: float = Field(
        15.0, gt=0, description="A stream with no audio for this many seconds is stale."
    )
    speaker_lost_after: float = Field(
        5.0,
        gt=0,
        description="Seconds without a packet from a speaker who was sending (a laptop that "
        "froze or left the Wi-Fi, a WHIP publisher that vanished) before its stream ends and "
        "the channel is free for the next speaker; its listeners are told after 1 s "
        "(`speaker_lost`) and stay on the channel. Watched per stream, from its first packet "
        "(before that, stale_after applies).",
    )
    max_streams: int = Field(20, ge=1, description="Senders streaming at once.")
    max_receivers: int = Field(
        30,
        ge=1,
        description="Receivers of one stream at once; with max_streams this fills "
        "server.max_connections (50). One process carries 200+ (docs/performance.md): raise "
        "all three together.",
    )
    channel_wait_timeout: float = Field(
        300.0,
        gt=0,
        description="Seconds a channel's listeners (WebSocket receivers, WHEP players) stay on "
        "their connection while the channel has no sender; the next sender plays on it without "
        "renegotiating. Past this they are told `stream_ended` (not waiting) and let go.",
    )
    allow_unlisted_channels: bool = Field(
        True,
        description="Senders may open channels that `channels` does not list; false = only "
        "configured channels (and unnamed `stream_<id>` streams).",
    )
    max_http_listeners: int = Field(
        200,
        ge=0,
        description="Plain-HTTP listeners of one stream at once (`GET :8081/stream/<id>.ogg`); "
        "the next gets HTTP 503. 0 = no HTTP listening.",
    )


class ChannelSettings(_Section):
    """A named stream listeners pick by label (`channels` in config.json)."""

    label: str = Field(min_length=1, max_length=100, description="Shown to listeners.")
    description: str = Field("", max_length=500, description="Optional, shown under the label.")
    record: bool | None = Field(
        None,
        description="With recording.enabled: true records this channel even when "
        'recording.streams is "marked"; false never records it; null follows recording.streams.',
    )


class RecordingSettings(_Section):
    """Streams written to disk as Ogg/Opus, from the packets the sender sends (no re-encode)."""

    enabled: bool = Field(False, description="Record streams (nothing is recorded without it).")
    directory: str = Field(
        "recordings",
        description="Where recordings go, one file per channel run (its speakers one after "
        "another, see `continue_within`) or unnamed stream: "
        "`<channel or stream_id>-<UTC start>.ogg`. Created if missing.",
    )
    streams: Literal["all", "marked"] = Field(
        "all",
        description='"all": every stream except channels with `record: false`; "marked": only '
        "channels with `record: true`.",
    )
    max_bytes_per_second: int = Field(
        64000,
        ge=1000,
        description="Opus payload bytes a second one recording accepts (Opus tops out at "
        "510 kbit/s, 63,750 B/s); a sender above it is not speech: its recording stops "
        "(`recording_stopped`), its audio goes on.",
    )
    max_total_bytes: int = Field(
        10 * 1024**3,
        ge=0,
        description="Recordings kept in `directory`, in bytes; the oldest are deleted first "
        "(`recording_deleted`) when a recording starts or ends. 0 = no limit.",
    )
    keep_days: float = Field(
        0,
        ge=0,
        description="Recordings older than this many days are deleted (checked when a "
        "recording starts or ends). 0 = keep them.",
    )
    continue_within: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="Seconds a channel's recording waits for the channel's next speaker after "
        "its speaker stops: one who starts (or takes over) within them continues the same file, "
        "the pause kept as silence; past them the file is closed (`recording_ended`). 0 = a "
        "file per speaker.",
    )

    def records(self, channel: ChannelSettings | None) -> bool:
        """Whether a stream on this channel (None: unnamed or unlisted) is recorded."""
        if not self.enabled:
            return False
        marked = channel.record if channel is not None else None
        return marked if marked is not None else self.streams == "all"


class RelaySettings(_Section):
    mode: Literal["forward", "transcode"] = Field(
        "forward",
        description="`forward`: receivers get the sender's Opus packets as they arrive (no "
        "per-receiver encode); `transcode`: decode once, re-encode per receiver.",
    )
    queue_frames: int = Field(
        10,
        ge=1,
        description="Frames (20 ms each) buffered per receiver; a slow receiver drops its oldest.",
    )
    teardown_timeout: float = Field(
        3.0, gt=0, description="Seconds a session's shielded cleanup may take before giving up."
    )
    fast_path: bool = Field(
        True,
        description="Forward mode: send each packet to every receiver in one pass from the "
        "sender's packet handler (RTP header, SRTP, sendto) instead of one aiortc sender task "
        "and queue per receiver (about half the CPU per receiver). false = the aiortc path.",
    )
    red: bool = Field(
        True,
        description="Redundant audio (RFC 2198 RED) against packet loss: accepted from "
        "speakers that offer it (lost packets are rebuilt at the relay from the next one), and, "
        "with fast_path, sent to listeners that accept it, carrying the one or two packets "
        "before each (two while listeners report more than ~5 % loss). false = plain Opus only.",
    )
    memory_trim_interval: float = Field(
        60.0,
        ge=0,
        description="Hand the heap that ended sessions freed back to the OS (glibc "
        "malloc_trim): with no stream live, a second after sessions stop ending; while audio "
        "flows, at most this many seconds apart (a trim briefly stalls every thread). 0 = off.",
    )


class AuthSettings(_Section):
    secret: SecretStr | None = Field(
        None,
        description="Signs access tokens (HS256); set it (32+ characters) to require a token "
        "on /ws. null = open (a trusted LAN).",
    )
    protect_metrics: bool = Field(
        True,
        description="With a secret: `/metrics` needs `Authorization: Bearer <metrics token>` and "
        "`/stream/status` (both ports) a metrics or receive token; false leaves both open.",
    )
    timeout: float = Field(
        5.0, gt=0, description="Seconds a new connection has to present its token."
    )

    @field_validator("secret")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("must be at least 32 characters (e.g. `openssl rand -hex 32`)")
        return value


class ClusterSettings(_Section):
    """Several relay nodes acting as one, coordinated through Redis (docs/cluster.md)."""

    redis_url: str | None = Field(
        None,
        description="`redis://host:port/db` of the cluster's Redis. null = a single node "
        "(the default; no Redis needed).",
    )
    node_id: str | None = Field(
        None,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="This node's name in the cluster. null = `<hostname>-<random>`, made at "
        "startup (stable for the process).",
    )
    advertise_url: str | None = Field(
        None,
        description="The `ws://` or `wss://` URL of this node's `/ws` that other nodes open "
        "upstreams to (required with `redis_url`), e.g. `ws://10.0.0.5:8080/ws`.",
    )
    heartbeat_interval: float = Field(
        1.0, gt=0, le=3, description="Seconds between this node's refreshes of its Redis records."
    )
    node_ttl: float = Field(
        5.0,
        gt=0,
        le=10,
        description="Seconds a node's and its streams' records outlive its last heartbeat: how "
        "fast a node that died without a word disappears from every listing.",
    )
    upstream_linger: float = Field(
        3.0,
        ge=0,
        description="Seconds an upstream (this node relaying another node's stream) stays open "
        "after its last local receiver left, so a quick rejoin reuses it.",
    )

    @field_validator("advertise_url")
    @classmethod
    def _websocket_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ws://", "wss://")):
            raise ValueError("must be a ws:// or wss:// URL of this node's /ws")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ClusterSettings:
        if self.redis_url is not None:
            if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError("redis_url must be a redis://, rediss:// or unix:// URL")
            if self.advertise_url is None:
                raise ValueError(
                    "advertise_url is required with redis_url: the ws:// URL other nodes "
                    "reach this node's /ws at"
                )
        if self.node_ttl <= self.heartbeat_interval:
            raise ValueError("node_ttl must be longer than heartbeat_interval")
        return self


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="DEBUG, INFO, WARNING or ERROR (any case)."
    )
    format: Literal["json", "console"] = Field(
        "json", description="`json`: one JSON object per line; `console`: for people."
    )
    access_log: bool = Field(
        True, description="Log each HTTP request and WebSocket handshake (`http_access`)."
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


# Keys the old service's guide documents in another place: (old path, new path). They are
# accepted where the guide puts them, moved, and reported (`Settings.moved_keys`, logged as
# `config_key_moved` at startup); a key in neither place is still refused.
LEGACY_KEYS: tuple[tuple[tuple[str, ...], tuple[str, ...]], ...] = (
    (("audio_constraints",), ("webrtc", "audio_constraints")),
)


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except OSError as error:
        raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
    except json.JSONDecodeError as error:
        hint = ""
        if "//" in text.splitlines()[error.lineno - 1]:
            hint = " (JSON has no comments: remove the `// ...` notes copied from the guide)"
        raise ConfigError(f"config file {path} is not valid JSON: {error}{hint}") from error
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


def move_legacy_keys(data: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """A copy of `data` with the guide's old key places moved to the new ones, and the moves.

    Where both places are set, the new place wins (its keys override the old ones)."""
    data = json.loads(json.dumps(data))
    moved: list[tuple[str, str]] = []
    for old, new in LEGACY_KEYS:
        parent = data
        for part in old[:-1]:
            child = parent.get(part)
            parent = child if isinstance(child, dict) else {}
        if old[-1] not in parent:
            continue
        value = parent.pop(old[-1])
        target = data
        for part in new[:-1]:
            target = target.setdefault(part, {})
        current = target.get(new[-1])
        if isinstance(value, dict) and isinstance(current, dict):
            value = {**value, **current}
        elif current is not None:
            value = current
        target[new[-1]] = value
        moved.append((".".join(old), ".".join(new)))
    return data, moved


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    server: ServerSettings = Field(default_factory=ServerSettings)
    webrtc: WebRTCSettings = Field(default_factory=WebRTCSettings)
    visualization: VisualizationSettings = Field(default_factory=VisualizationSettings)
    streams: StreamSettings = Field(default_factory=StreamSettings)
    relay: RelaySettings = Field(default_factory=RelaySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    recording: RecordingSettings = Field(default_factory=RecordingSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    channels: dict[str, ChannelSettings] = Field(
        default_factory=dict,
        description="Known channels by name (letters, digits, `-`, `_`, up to 32): "
        '`{"english": {"label": "English interpretation"}}`. Listed to listeners even when '
        "no sender is live. Each has `label` (required), `description` and `record` "
        "(true/false/null: see recording.streams).",
    )

    @field_validator("channels")
    @classmethod
    def _channel_names(cls, value: dict[str, ChannelSettings]) -> dict[str, ChannelSettings]:
        for name in value:
            if not re.fullmatch(CHANNEL_NAME, name) or name.startswith("stream_"):
                raise ValueError(
                    f"{name!r}: use letters, digits, - and _ (at most 32), not starting with "
                    "stream_ (unnamed streams' ids)"
                )
        return value

    # (old key, new key) for each key of the config file found where the old guide put it.
    _moved_keys: list[tuple[str, str]] = PrivateAttr(default_factory=list)

    @property
    def moved_keys(self) -> list[tuple[str, str]]:
        return self._moved_keys

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The config file's content arrives as init arguments; the environment overrides it.
        return (env_settings, init_settings)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Build Settings from defaults, the JSON file and the environment; raise ConfigError."""
    if path is None:
        path = os.environ.get(CONFIG_ENV) or None
    data = _read_config_file(Path(path)) if path is not None else {}
    data, moved = move_legacy_keys(data)
    try:
        settings = Settings(**data)
    except ValidationError as error:
        notes = "".join(f"\n  ({old} in the file is read as {new})" for old, new in moved)
        raise ConfigError(describe_validation_error(error) + notes) from None
    settings._moved_keys = moved
    return settings


def unreachable_limits(settings: Settings) -> list[str]:
    """Limits another limit makes unreachable (logged as warnings at startup)."""
    server, streams = settings.server, settings.streams
    problems = []
    if streams.max_receivers + streams.max_streams > server.max_connections:
        problems.append(
            f"streams.max_receivers={streams.max_receivers} cannot be reached with every "
            f"sender live: server.max_connections={server.max_connections} < max_receivers + "
            f"streams.max_streams={streams.max_streams}"
        )
    if streams.max_streams > server.max_connections:
        problems.append(
            f"streams.max_streams={streams.max_streams} cannot be reached: "
            f"server.max_connections={server.max_connections}"
        )
    if (ports := settings.webrtc.udp_port_range) is not None:
        count = ports[1] - ports[0] + 1
        if count < streams.max_receivers + 1:
            problems.append(
                f"streams.max_receivers={streams.max_receivers} cannot be reached: "
                f"webrtc.udp_port_range has {count} ports, one per peer connection"
            )
    return problems


def _is_secret(location: tuple[int | str, ...]) -> bool:
    """Keys whose values must never be echoed (an error message ends up in logs)."""
    return any(
        isinstance(part, str) and any(w in part.lower() for w in ("secret", "token", "password"))
        for part in location
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad key, dotted the way config.json nests it."""
    lines = ["invalid configuration:"]
    for problem in error.errors():
        key = ".".join(str(part) for part in problem["loc"]) or "(root)"
        message = "unknown key" if problem["type"] == "extra_forbidden" else problem["msg"]
        shown = "<hidden>" if _is_secret(problem["loc"]) else repr(problem.get("input"))
        lines.append(f"  {key}: {message} (got {shown})")
    return "\n".join(lines)
