"""people.py: names fit to print, and a device in an operator's words."""

from __future__ import annotations

import pytest

from relay_app.core.people import clean_name, given_name, short_device

ANDROID = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Mobile Safari/537.36"
)
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)


@pytest.mark.parametrize(
    ("user_agent", "device"),
    [
        (ANDROID, "Chrome on Android"),
        (IPHONE, "Safari on iPhone"),
        (
            "Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",
            "Firefox on Linux",
        ),
        (ANDROID.replace("Mobile Safari", "EdgA/124.0 Mobile Safari"), "Edge on Android"),
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) HeadlessChrome/124.0 Safari/537.36",
            "Chrome on Windows",
        ),
        ("Python/3.11 websockets/12.0", "Python client"),  # RelayClient
        ("python-httpx/0.27.0", "Python client"),  # the WHIP client
        ("VLC/3.0.20 LibVLC/3.0.20", "VLC"),
        ("Lavf/60.16.100", "FFmpeg"),
        ("Mozilla/5.0 (Windows NT 10.0) OBS-Studio/30.1", "OBS"),
        ("booth-laptop", "booth-laptop"),
        ("\x1b[31mred\x1b[0m/1.0", "[31mred[0m"),
        ("", ""),
    ],
)
def test_a_user_agent_becomes_a_short_device(user_agent: str, device: str) -> None:
    assert short_device(user_agent) == device


def test_a_name_loses_what_could_disguise_it() -> None:
    assert clean_name("  Marie \t Curie\n") == "Marie Curie"
    assert clean_name("Ma\u202erie\u200b") == "Marie"  # no bidi override, no zero-width
    assert clean_name("\x00\x07") == ""
    assert clean_name("Zoë Ōtsuka 李") == "Zoë Ōtsuka 李"


def test_a_name_a_client_gives_itself_cannot_pass_for_the_servers_words_or_be_blank() -> None:
    assert given_name("  Jean   Paul ") == "Jean Paul"
    assert given_name("ab\u3164") == "ab"  # a Hangul filler: no invisible tail
    for taken in ("Listener 3", "speaker", "Speaker 12", "The operator", "someone"):
        assert given_name(taken) is None, taken
    for blank in ("\u3164\u3164", "\u2800", "   ", "\u200b", "--"):
        assert given_name(blank) is None, blank
    assert given_name("Operatorin") == "Operatorin"  # (a word, not the operator)
