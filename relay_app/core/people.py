"""People as the console shows them: a name fit to print, and a short device.

Pure functions, no I/O. A name comes from a token's `name` claim or from the client (the
`name` field of start_sending / start_receiving); a device from the User-Agent header, in
the words an operator uses ("Chrome on Android", "Python client", "VLC").
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME = 40  # characters of a person's name, after cleaning

_SPACES = re.compile(r"\s+")


def clean_name(text: str) -> str:
    """`text` fit to print in a row or a sentence: control and format characters removed
    (a name cannot move the cursor, break a line or turn text around), blank look-alikes
    made spaces, runs of spaces made one, trimmed. May be empty; the caller checks the
    length (MAX_NAME)."""
    kept = "".join(" " if _blank(ch) else ch for ch in text if not _hidden(ch))
    return _SPACES.sub(" ", kept).strip()


# Letters that print as nothing (Hangul fillers, the blank Braille pattern): a name of them
# would read as empty, or as someone else's name with an invisible tail.
_FILLERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")
# What the server itself calls people: a client may not give itself these names.
_RESERVED = re.compile(r"^(?:(?:listener|speaker)(?: \d+)?|.*\boperator\b.*|someone)$", re.I)


def _blank(ch: str) -> bool:
    return ch.isspace() or ch in _FILLERS


def _hidden(ch: str) -> bool:
    # Cc: control characters; Cf: format (bidi overrides, zero-width); Cs/Co/Cn: surrogates,
    # private use, unassigned. Spaces and tabs are whitespace, kept as one space.
    return not _blank(ch) and unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn")


def given_name(text: str) -> str | None:
    """A name a client gives itself, or None: cleaned, at least one letter or digit, and
    none the server uses for people ("Listener 7", "Speaker 2", "The operator"), so nobody
    reads a made-up name as the server's word."""
    name = clean_name(text)[:MAX_NAME].strip()
    if not any(ch.isalnum() for ch in name) or _RESERVED.match(name):
        return None
    return name


# Programs first (their User-Agent may mention a browser engine), then browsers by what
# sets them apart (Edge and Samsung Internet say "Chrome" too; Chrome says "Safari").
_PROGRAMS = (
    ("websockets/", "Python client"),  # RelayClient and `python -m relay_app.client`
    ("relay_app", "Python client"),
    ("python-httpx", "Python client"),
    ("aiohttp", "Python client"),
    ("python-requests", "Python client"),
    ("obs-studio", "OBS"),
    ("obs/", "OBS"),
    ("vlc", "VLC"),
    ("lavf", "FFmpeg"),
    ("ffmpeg", "FFmpeg"),
    ("gstreamer", "GStreamer"),
    ("mpv", "mpv"),
    ("curl/", "curl"),
)
_BROWSERS = (
    ("edg/", "Edge"),
    ("edga/", "Edge"),
    ("edgios/", "Edge"),
    ("samsungbrowser", "Samsung Internet"),
    ("opr/", "Opera"),
    ("firefox/", "Firefox"),
    ("fxios", "Firefox"),
    ("crios", "Chrome"),
    ("chrome/", "Chrome"),
    ("chromium/", "Chrome"),
    ("safari/", "Safari"),
)
_SYSTEMS = (
    ("android", "Android"),
    ("iphone", "iPhone"),
    ("ipad", "iPad"),
    ("cros", "ChromeOS"),
    ("windows", "Windows"),
    ("macintosh", "Mac"),
    ("mac os x", "Mac"),
    ("linux", "Linux"),
)
MAX_DEVICE = 40


def short_device(user_agent: str) -> str:
    """A few words for a User-Agent: "Chrome on Android", "Safari on iPhone", "Python
    client", "VLC"; an unknown one's first word (cut to fit); "" for none."""
    lower = user_agent.lower()
    if not lower.strip():
        return ""
    for marker, program in _PROGRAMS:
        if marker in lower:
            return program
    browser = next((name for marker, name in _BROWSERS if marker in lower), None)
    system = next((name for marker, name in _SYSTEMS if marker in lower), None)
    if browser is not None:
        return f"{browser} on {system}" if system else browser
    first = clean_name(user_agent.split(" ", 1)[0].split("/", 1)[0])
    return first[:MAX_DEVICE] or "Unknown device"
