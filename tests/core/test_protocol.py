"""protocol.py: text in, one model out, or a ProtocolError a person can act on."""

from __future__ import annotations

import pytest

from relay_app.core import protocol as p
from relay_app.core.errors import ProtocolError


def test_each_client_message_parses_to_its_model() -> None:
    assert p.parse_client_message('{"type": "ping"}') == p.Ping(type="ping")
    assert p.parse_client_message('{"type": "start_receiving"}').stream_id is None  # type: ignore[union-attr]
    message = p.parse_client_message('{"type": "start_receiving", "stream_id": "stream_x"}')
    assert message == p.StartReceiving(type="start_receiving", stream_id="stream_x")
    message = p.parse_client_message('{"type": "start_sending", "sdp": "v=0", "extra": 1}')
    assert message == p.StartSending(type="start_sending", sdp="v=0")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{", "invalid JSON"),
        ("null", "must be a JSON object, not NoneType"),
        ('{"type": 5}', 'needs a string "type"'),
        ('{"type": "x"}', "unknown message type 'x'; expected one of: start_sending"),
        ('{"type": "answer"}', "invalid 'answer' message: sdp: Field required"),
        ('{"type": "start_receiving", "stream_id": ""}', "stream_id"),
        ("[" * 100000, "invalid JSON"),
    ],
)
def test_bad_messages_raise_protocol_error(text: str, expected: str) -> None:
    with pytest.raises(ProtocolError) as error:
        p.parse_client_message(text)
    assert expected in error.value.message


def test_server_messages_encode_with_their_type() -> None:
    assert p.encode(p.Pong()) == '{"type":"pong"}'
    assert p.encode(p.Error(message=p.NO_STREAM_MESSAGE)) == (
        '{"type":"error","message":"No audio stream available"}'
    )
