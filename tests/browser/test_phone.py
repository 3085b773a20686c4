"""Phones in the hall: a QR code to scan, an installable Listen page, LAN URLs.

(The Listen page's Wake Lock, Media Session and screen-off fallback are browser tests, in
test_browser.py.)
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import zxingcpp

from relay_app.tools.testing import REPO, ServerProcess

from ..helpers import serving


def decode_terminal_qr(text: str) -> str:
    """Read back what `python -m relay_app qr` drew: two characters per module."""
    rows = [line for line in text.splitlines() if set(line) <= {"█", " "} and line]
    modules = np.array([[line[i] == "█" for i in range(0, len(line), 2)] for line in rows])
    image = np.where(modules, 0, 255).astype(np.uint8).repeat(8, axis=0).repeat(8, axis=1)
    found = zxingcpp.read_barcodes(image)
    assert len(found) == 1, f"{len(found)} codes in {modules.shape} modules"
    return str(found[0].text)


def test_the_qr_command_prints_a_code_that_decodes_to_the_listen_url(tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"server": {"host": "192.0.2.7", "port": 8080}}))
    command = [sys.executable, "-m", "relay_app", "--config", str(config), "qr"]
    for extra, url in [
        ([], "http://192.0.2.7:8080/listen"),
        (["--channel", "english"], "http://192.0.2.7:8080/listen/english"),
        (["--url", "https://relay.example/listen"], "https://relay.example/listen"),
    ]:
        out = subprocess.run(
            [*command, *extra], cwd=REPO, capture_output=True, text=True, check=True, timeout=30
        ).stdout
        assert out.splitlines()[-1] == url  # and in words, under the code
        assert decode_terminal_qr(out) == url


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_the_listen_page_is_an_installable_web_app(tmp_path: Path) -> None:
    for server in serving(tmp_path, {}):
        _check_manifest(server)


def _check_manifest(server: ServerProcess) -> None:
    page = server.get("/listen").text
    assert '<link rel="manifest" href="/manifest.webmanifest">' in page
    response = server.get("/manifest.webmanifest")
    assert response.headers["content-type"].startswith("application/manifest+json")
    manifest = response.json()
    assert manifest["name"] and manifest["short_name"]
    assert manifest["display"] in ("standalone", "fullscreen", "minimal-ui")
    assert server.get(manifest["start_url"]).status_code == 200
    sizes = set()
    for icon in manifest["icons"]:
        image = server.get(icon["src"])
        assert image.status_code == 200 and image.headers["content-type"] == icon["type"]
        width, height = _png_size(image.content)
        assert icon["sizes"] == f"{width}x{height}"
        sizes.add(width)
    assert {192, 512} <= sizes  # what browsers ask of an installable app
