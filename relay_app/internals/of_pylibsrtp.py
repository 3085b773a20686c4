"""pylibsrtp 1.0.0: SRTP protection written into the session's own C buffer.

pylibsrtp's `Session.protect` takes one bytes object and, per call, allocates a length,
copies the packet in and copies the result out: ~0.6 us of a fast-path copy's ~13. The fast
path (webrtc/fast_path.py) protects each receiver's copy in place instead, through libsrtp's
own `srtp_protect` on the session's `_srtp` handle and `_cdata` buffer.
"""

from __future__ import annotations

import pylibsrtp
from pylibsrtp._binding import ffi as _ffi  # type: ignore[import-not-found]
from pylibsrtp._binding import lib as _lib

_SRTP_MAX_TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN


class InPlaceSrtp:
    """SRTP protection written into the session's own C buffer, sent from there.

    The header and the payload are written straight into the buffer libsrtp protects in
    place, and the socket sends a view of it (sendto reads it before anything else can write
    there: one thread).
    """

    def __init__(self, session: pylibsrtp.Session) -> None:
        self._srtp = session._srtp[0]
        self._cdata = session._cdata
        buffer = session._buffer
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._room = len(buffer) - _SRTP_MAX_TRAILER
        self._length = _ffi.new("int *")

    def protect(self, header: bytearray, payload: bytes) -> memoryview:
        """The protected packet of `header` + `payload`: a view valid until the next call."""
        start = len(header)
        size = start + len(payload)
        if size > self._room:
            raise ValueError(f"packet is too long for SRTP ({size} bytes)")
        buffer, length = self._buffer, self._length
        buffer[0:start] = header
        buffer[start:size] = payload
        length[0] = size
        if code := _lib.srtp_protect(self._srtp, self._cdata, length):
            raise pylibsrtp.Error(f"srtp_protect failed ({code})")
        return self._view[: length[0]]
