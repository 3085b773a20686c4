"""QR codes of the Listen URL: for the terminal (`python -m relay_app qr`) and the home page.

A listener in the hall points the phone's camera at the code instead of typing an address.
segno makes the code; the terminal version is drawn with two characters per module so that
it stays square, dark modules as spaces on a light background when the terminal has colours
(phone cameras want dark-on-light), as full blocks otherwise (pipes, logs, tests).
"""

from __future__ import annotations

import io

import segno

QUIET_ZONE = 4  # modules of margin the QR standard asks for


def qr_matrix(text: str) -> list[list[bool]]:
    """Rows of modules (True = dark), with the quiet zone."""
    code = segno.make_qr(text, error="m")
    return [[bool(module) for module in row] for row in code.matrix_iter(border=QUIET_ZONE)]


def terminal_qr(text: str, colour: bool) -> str:
    if colour:  # black on white whatever the terminal's own colours are
        dark, light, end = "\x1b[40m  ", "\x1b[47m  ", "\x1b[0m"
    else:
        dark, light, end = "██", "  ", ""
    rows = qr_matrix(text)
    return "\n".join("".join(dark if m else light for m in row) + end for row in rows) + "\n"


def qr_svg(text: str) -> bytes:
    buffer = io.BytesIO()
    segno.make_qr(text, error="m").save(
        buffer, kind="svg", scale=6, border=QUIET_ZONE, title=text, xmldecl=False
    )
    return buffer.getvalue()
