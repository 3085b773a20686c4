"""Reading back the QR codes `python -m relay_app qr|invite` draw in a terminal, with Debian's
zbar (`zbarimg`, a decoder we did not write): the drawing becomes an image, zbar reads it."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..helpers import need

DARK = "█"
PIXELS_PER_MODULE = 6


def code_rows(text: str) -> list[str]:
    """The lines of the drawing (two characters per module; dark modules are full blocks
    when stdout is not a terminal)."""
    return [line for line in text.splitlines() if line and set(line) <= {DARK, " "}]


def read_terminal_qr(text: str) -> str:
    """The text of the one code drawn in `text`."""
    zbarimg = need("zbarimg", "zbar-tools")
    rows = code_rows(text)
    assert rows, f"no QR code in the output: {text[:200]!r}"
    width = max(len(row) for row in rows)
    modules = np.array([[row.ljust(width)[i] == DARK for i in range(0, width, 2)] for row in rows])
    image = np.where(modules, 0, 255).astype(np.uint8)
    image = image.repeat(PIXELS_PER_MODULE, axis=0).repeat(PIXELS_PER_MODULE, axis=1)
    height, pixels = image.shape
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "code.pgm"
        path.write_bytes(f"P5\n{pixels} {height}\n255\n".encode() + image.tobytes())
        result = subprocess.run(
            # QR codes only: zbar also finds a stray EAN-8 in a code's modules now and then
            [zbarimg, "--raw", "--quiet", "--nodbus", "-Sdisable", "-Sqrcode.enable", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, f"zbar found no code: {result.stderr}"
    found = result.stdout.splitlines()
    assert len(found) == 1, found
    return found[0]
