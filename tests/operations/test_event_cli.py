"""Setting up an event from the shell: `relay_app token|invite|qr` print only what the running
server accepts (its own configuration, its answer to /health), and the client CLI takes its
options where a user types them, takes a channel over, and sums up on Ctrl-C.

Real servers (one with auth on, one open), real CLI processes, QR codes read back by zbar.
"""

from __future__ import annotations

import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import httpx
import jwt
import pytest

from relay_app.client import RelayClient, ToneTrack, dominant_frequency
from relay_app.server.tls import make_self_signed
from relay_app.tools.testing import REPO, ServerProcess, free_port

from ..helpers import SECRET, assert_no_leaks, finish_server, serving, token
from .qr_reader import read_terminal_qr

CHANNELS = {"english": {"label": "English"}, "francais": {"label": "Français"}}
LOOPBACK = ("--ice-address", "127.0.0.1")
EIGHT_HOURS = 8 * 3600


@pytest.fixture(scope="module")
def relay_mode() -> str:
    """Commands and tokens, which the relay mode does not touch: forward mode only."""
    return "forward"


@pytest.fixture(scope="module")
def hall_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """An event's server: auth on, two channels and no others, on ports its config file names
    (so that `--config <its file>` says where it is, as on a real machine)."""
    config = {
        "server": {"port": free_port(), "audio_port": free_port()},
        "auth": {"secret": SECRET},
        "channels": CHANNELS,
        "streams": {"allow_unlisted_channels": False},
    }
    metrics = {"Authorization": f"Bearer {token('metrics')}"}
    yield from serving(tmp_path_factory.mktemp("hall"), config, metrics)


@pytest.fixture
def hall(hall_server: ServerProcess) -> Iterator[ServerProcess]:
    yield hall_server
    assert_no_leaks(hall_server)


def shell(server: ServerProcess, secret: str | None = None) -> dict[str, str]:
    """The environment of a shell that exported the server's address (and a secret)."""
    env = {"RELAY_SERVER__HOST": "127.0.0.1", "RELAY_SERVER__PORT": str(server.port)}
    return env | ({"RELAY_AUTH__SECRET": secret} if secret else {})


def relay_app(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m relay_app ...` in a shell that has only `env` of the RELAY_ variables."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    return subprocess.run(
        [sys.executable, "-m", "relay_app", *args],
        cwd=REPO,
        env=clean | (env or {}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def refused(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one sentence a refusal prints (nothing on stdout, no traceback)."""
    assert result.returncode == code, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("relay_app: "), result.stderr
    return lines[0]


def claims(link: str) -> dict[str, Any]:
    invite = parse_qs(urlsplit(link).query)["token"][0]
    return dict(jwt.decode(invite, SECRET, ["HS256"], audience="relay_app"))


def needs_secret(server: ServerProcess) -> str:
    return (
        f"relay_app: the server at http://127.0.0.1:{server.port} requires tokens but this "
        "shell has no auth.secret: run with --config <the server's config> or export "
        "RELAY_AUTH__SECRET"
    )


def test_health_says_whether_the_server_requires_tokens(
    hall: ServerProcess, server: ServerProcess
) -> None:
    assert hall.get("/health").json()["auth_required"] is True
    assert server.get("/health").json()["auth_required"] is False


@pytest.mark.anyio
async def test_an_invite_from_the_servers_config_plays_its_channel(hall: ServerProcess) -> None:
    """`invite --config <the server's file>`: the link (read from its QR code) has the
    server's port, carries an 8-hour receive token for that channel only, and plays."""
    result = await anyio.to_thread.run_sync(
        lambda: relay_app("--config", str(hall.config_path), "invite", "--channel", "english")
    )
    assert result.returncode == 0 and result.stderr == "", result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Invite to English, works until "), lines[0]
    link = lines[-1]
    assert link.startswith(f"http://127.0.0.1:{hall.port}/listen/english?token="), link
    assert read_terminal_qr(result.stdout) == link
    grant = claims(link)
    assert (grant["role"], grant["stream"]) == ("receive", "english")
    assert grant["exp"] - grant["iat"] == EIGHT_HOURS
    page = httpx.get(link, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    invite = parse_qs(urlsplit(link).query)["token"][0]
    async with RelayClient.connect(hall.ws_url, token=token("send", stream="english")) as speaker:
        await speaker.start_sending(ToneTrack(440), channel="english")
        async with RelayClient.connect(hall.ws_url, token=invite) as phone:
            await phone.start_receiving("english")
            await phone.wait_audio(1.0)
            heard = dominant_frequency(phone.recorder.audio(1.0), phone.recorder.sample_rate)
            assert abs(heard - 440) <= 10, heard


def test_qr_with_a_secret_mints_an_invite_for_its_channel(hall: ServerProcess) -> None:
    env = shell(hall, SECRET)
    result = relay_app("qr", "--channel", "francais", "--ttl", "90m", env=env)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.startswith("Invite to Français, works until ")
    link = read_terminal_qr(result.stdout)
    assert link == result.stdout.splitlines()[-1]
    assert link.startswith(f"http://127.0.0.1:{hall.port}/listen/francais?token=")
    grant = claims(link)
    assert (grant["role"], grant["stream"], grant["exp"] - grant["iat"]) == (
        "receive",
        "francais",
        90 * 60,
    )
    # The server takes it, for that channel only.
    reply = hall.get("/stream/status", headers={"Authorization": f"Bearer {link_token(link)}"})
    assert reply.status_code == 200
    assert [c["channel"] for c in reply.json()["channels"]] == ["francais"]
    # --config after the command, as well as before it; the default lifetime is the event's.
    later = relay_app("qr", "--config", str(hall.config_path), "--channel", "english")
    assert later.returncode == 0, later.stderr
    grant = claims(read_terminal_qr(later.stdout))
    assert (grant["stream"], grant["exp"] - grant["iat"]) == ("english", EIGHT_HOURS)
    # With a secret every code carries an invite, and an invite is for one channel.
    sentence = refused(relay_app("qr", env=env), code=2)
    assert "add --channel" in sentence
    assert "English (--channel english), Français (--channel francais)" in sentence


def link_token(link: str) -> str:
    return parse_qs(urlsplit(link).query)["token"][0]


def test_nothing_is_printed_that_the_server_would_refuse(hall: ServerProcess) -> None:
    """A shell with the server's address but not its secret, or with another secret."""
    no_secret = shell(hall)
    for command in (
        ("invite", "--channel", "english"),
        ("qr", "--channel", "english"),
        ("qr",),
        ("token", "--role", "receive"),
    ):
        assert refused(relay_app(*command, env=no_secret)) == needs_secret(hall), command
    other = shell(hall, "another-secret-0123456789abcdef0123456789")
    for command in (("invite", "--channel", "english"), ("token", "--role", "send")):
        sentence = refused(relay_app(*command, env=other))
        assert sentence.startswith(
            f"relay_app: the server at http://127.0.0.1:{hall.port} refuses tokens signed "
            "with this shell's auth.secret (access token has a wrong signature)"
        ), sentence
    # A channel this server does not open: by name, with the ones it has, by label. (A shell
    # with only its address and secret does not know that it opens no others: a warning.)
    config = ("--config", str(hall.config_path))
    sentence = refused(relay_app(*config, "invite", "--channel", "german"))
    assert "has no channel 'german' and opens no others" in sentence
    assert "English (--channel english), Français (--channel francais)" in sentence
    maybe = relay_app("invite", "--channel", "german", env=shell(hall, SECRET))
    assert maybe.returncode == 0 and "has no channel 'german' now" in maybe.stderr
    bad = refused(relay_app("invite", "--channel", "no spaces", env=shell(hall, SECRET)), 2)
    assert "is not a channel name" in bad
    late = relay_app("invite", "--channel", "english", "--ttl", "soon", env=shell(hall, SECRET))
    assert "--ttl: bad duration 'soon'" in refused(late, 2)


def test_an_https_servers_invite_is_checked_with_its_own_certificate(tmp_path: Path) -> None:
    """Phones need HTTPS: the server's certificate is made for its LAN address, and the
    command asks it on loopback, trusting that certificate (and no other)."""
    cert, key = make_self_signed(["192.0.2.50"], tmp_path)
    config = {
        "server": {"port": free_port(), "certfile": str(cert), "keyfile": str(key)},
        "auth": {"secret": SECRET},
        "channels": CHANNELS,
    }
    secure = ServerProcess(tmp_path, config)
    # (The harness, too, reaches it on loopback with a certificate for another address.)
    secure.verify = ssl.create_default_context(cafile=str(cert))
    secure.verify.check_hostname = False
    secure.headers = {"Authorization": f"Bearer {token('metrics')}"}
    try:
        secure.start().take_baseline()
        result = relay_app("--config", str(secure.config_path), "invite", "--channel", "english")
        assert result.returncode == 0 and result.stderr == "", result.stderr
        link = result.stdout.splitlines()[-1]
        assert link.startswith(f"https://127.0.0.1:{secure.port}/listen/english?token="), link
        assert result.stdout.startswith("Invite to English")
        other, _ = make_self_signed(["127.0.0.1"], tmp_path / "other")
        env = shell(secure, SECRET) | {
            "RELAY_SERVER__CERTFILE": str(other),
            "RELAY_SERVER__KEYFILE": str(key),
        }
        doubt = relay_app("invite", "--channel", "english", env=env)
        assert doubt.returncode == 0, doubt.stderr
        assert doubt.stderr.startswith(
            f"relay_app: warning: the server at https://127.0.0.1:{secure.port} has a "
            "certificate this shell does not trust ([SSL: CERTIFICATE_VERIFY_FAILED]"
        ), doubt.stderr
        secure.wait_idle()
        finish_server(secure)
    finally:
        secure.stop()


def test_tokens_from_the_servers_config_open_its_doors(hall: ServerProcess) -> None:
    receive = relay_app("--config", str(hall.config_path), "token", "--role", "receive")
    assert receive.returncode == 0 and receive.stderr == "", receive.stderr
    bearer = {"Authorization": f"Bearer {receive.stdout.strip()}"}
    assert hall.get("/stream/status", headers=bearer).status_code == 200
    metrics = relay_app("token", "--role", "metrics", "--config", str(hall.config_path))
    assert metrics.returncode == 0, metrics.stderr
    bearer = {"Authorization": f"Bearer {metrics.stdout.strip()}"}
    assert hall.get("/metrics", headers=bearer).status_code == 200


def test_a_server_that_does_not_answer_is_named_in_a_warning(hall: ServerProcess) -> None:
    """The shell's port is not the server's (nothing listens there): the invite is printed,
    since the server may not be started yet, and the last thing it says is where it asked."""
    port = free_port()
    env = {"RELAY_SERVER__PORT": str(port), "RELAY_AUTH__SECRET": SECRET}
    result = relay_app("invite", "--channel", "english", env=env)
    assert result.returncode == 0
    assert f":{port}/listen/english?token=" in result.stdout.splitlines()[-1]
    warning = result.stderr.splitlines()[-1]
    assert warning.startswith(
        f"relay_app: warning: no server answers at http://127.0.0.1:{port} (connection refused)"
    ), warning
    assert "RELAY_SERVER__PORT" in warning
    token_result = relay_app("token", "--role", "receive", env=env)
    assert token_result.returncode == 0 and token_result.stdout.count(".") == 2
    assert "no server answers" in token_result.stderr
    # No secret and nobody to ask: no token, and why.
    alone = refused(relay_app("token", "--role", "receive", env={"RELAY_SERVER__PORT": str(port)}))
    assert "this shell has no auth.secret" in alone and f"127.0.0.1:{port}" in alone


def test_an_open_server_needs_no_token_and_its_codes_carry_none(server: ServerProcess) -> None:
    sentence = refused(relay_app("token", "--role", "receive", env=shell(server)))
    assert sentence == (
        f"relay_app: tokens are not needed: the server at http://127.0.0.1:{server.port} does "
        "not require them (it runs without auth.secret); to require them, restart it with "
        "auth.secret set"
    )
    with_secret = relay_app("token", "--role", "receive", env=shell(server, SECRET))
    assert with_secret.returncode == 0
    assert "does not require tokens" in with_secret.stderr
    for extra, path in [([], "/listen"), (["--channel", "english"], "/listen/english")]:
        result = relay_app("qr", *extra, env=shell(server))
        assert result.returncode == 0, result.stderr
        assert read_terminal_qr(result.stdout) == f"http://127.0.0.1:{server.port}{path}"
        assert result.stderr == "" or "has no channel 'english' now" in result.stderr
    invite = relay_app("invite", "--channel", "english", env=shell(server))
    assert invite.returncode == 0
    assert "(no token needed: the server is open)" in invite.stdout.splitlines()[0]
    assert "?token=" not in invite.stdout


# The client ------------------------------------------------------------------------------------


def client(server: ServerProcess, *args: str) -> subprocess.Popen[str]:
    """`python -m relay_app.client <args>`: the caller places --url, --token and the rest."""
    return subprocess.Popen(
        [sys.executable, "-m", "relay_app.client", *args],
        cwd=REPO,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_line(proc: subprocess.Popen[str], event: str, timeout: float = 30) -> dict[str, Any]:
    """The client's next JSON line of `event` (the others are skipped)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            line = proc.stdout.readline()
            if not line:
                break
            message = json.loads(line)
            if message["event"] == event:
                return dict(message)
    proc.kill()
    raise AssertionError(f"no {event} from the client: {proc.communicate()}")


def test_listen_sums_up_on_ctrl_c_with_its_options_after_the_command(
    hall: ServerProcess,
) -> None:
    speaker = client(
        hall,
        "send",
        *("--url", hall.ws_url, "--token", token("send", stream="english"), *LOOPBACK),
        *("--tone", "440", "--channel", "english", "--duration", "60"),
    )
    listener = client(
        hall,
        "--url",
        hall.ws_url,
        "listen",
        *("--token", token("receive", stream="english"), *LOOPBACK, "--stream-id", "english"),
    )
    try:
        assert wait_line(speaker, "sending")["stream_id"] == "english"
        assert wait_line(listener, "receiving")["stream_id"] == "english"
        time.sleep(3)  # some audio
        listener.send_signal(signal.SIGINT)
        out, err = listener.communicate(timeout=30)
        assert listener.returncode == 0, err
        summary = json.loads(out.splitlines()[-1])
        assert summary["event"] == "heard" and summary["ended_by"] == "SIGINT", summary
        assert summary["seconds"] > 1 and abs(summary["dominant_hz"] - 440) <= 10, summary
        assert "Traceback" not in err
        speaker.send_signal(signal.SIGINT)  # the sender's Ctrl-C: its normal end
        _, err = speaker.communicate(timeout=30)
        assert speaker.returncode == 0, err
    finally:
        speaker.kill()
        listener.kill()


def test_send_takeover_replaces_the_speaker_or_says_why_not(hall: ServerProcess) -> None:
    english = token("send", stream="english")
    first = client(
        hall,
        *("--url", hall.ws_url, *LOOPBACK, "send", "--token", english, "--tone", "440"),
        *("--channel", "english", "--duration", "60"),
    )
    try:
        wait_line(first, "sending")
        base = ("--url", hall.ws_url, *LOOPBACK, "send", "--tone", "660", "--channel", "english")
        busy = client(hall, *base, "--token", english, "--duration", "3")
        _, err = busy.communicate(timeout=60)
        assert busy.returncode == 1
        assert err.startswith("relay_app.client: could not send on english: "), err
        assert "Traceback" not in err and '"takeover"' not in err, err
        anyone = client(hall, *base, "--token", token("send"), "--takeover", "--duration", "3")
        _, err = anyone.communicate(timeout=60)
        assert anyone.returncode == 1
        assert err.startswith("relay_app.client: could not take over english: "), err
        assert "scoped to the channel" in err and "Traceback" not in err
        second = client(hall, *base, "--token", english, "--takeover", "--duration", "3")
        out, err = second.communicate(timeout=60)
        assert second.returncode == 0, err
        assert json.loads(out.splitlines()[0])["event"] == "sending"
        _, err = first.communicate(timeout=30)
        assert first.returncode == 1
        assert err.startswith("sending ended by the server: "), err
    finally:
        first.kill()
    usage = client(hall, "send", "--tone", "440", "--takeover")
    _, err = usage.communicate(timeout=30)
    assert usage.returncode == 2 and "--takeover needs --channel" in err
