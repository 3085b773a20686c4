"""Publish a tone with FFmpeg's own WHIP muxer (FFmpeg 8, as bundled in PyAV's wheels).

    python -m tests.tools.ffmpeg_whip URL SECONDS HZ CERT KEY [TOKEN]

A WHIP client we did not write: FFmpeg does the HTTP, ICE, DTLS and SRTP itself. CERT/KEY are
its DTLS identity (`-cert_file`/`-key_file` on the ffmpeg command line): the certificate
FFmpeg 8.0 generates for itself fails the DTLS handshake with aiortc (docs/whip-whep.md).
"""

from __future__ import annotations

import fractions
import sys
import time

import av
import numpy as np


def main(url: str, seconds: float, hz: float, cert: str, key: str, token: str = "") -> None:
    options = {"handshake_timeout": "5000", "cert_file": cert, "key_file": key}
    if token:
        options["authorization"] = token
    out = av.open(url, mode="w", format="whip", options=options)
    stream = out.add_stream("libopus", rate=48000, layout="stereo")
    stream.bit_rate = 64000
    start, sent = time.monotonic(), 0
    while sent < seconds * 48000:
        tone = 0.5 * np.sin(2 * np.pi * hz * np.arange(sent, sent + 960) / 48000)
        pcm = (np.repeat(tone[None, :], 2, axis=0).T.reshape(1, -1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, sent
        frame.time_base = fractions.Fraction(1, 48000)
        sent += 960
        for packet in stream.encode(frame):
            out.mux(packet)
        time.sleep(max(0.0, start + sent / 48000 - time.monotonic()))
    out.close()  # sends DELETE to the resource
    print("published", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:])
