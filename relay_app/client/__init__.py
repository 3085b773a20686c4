"""The Python client: what tests, tools and cluster links use to talk to a relay.

python -m relay_app.client send --tone 440
python -m relay_app.client listen --out heard.wav
"""

from .relay_client import RelayClient, ServerError
from .tracks import (
    PacedTrack,
    Recorder,
    ToneTrack,
    WavTrack,
    dominant_frequency,
    record_track,
)

__all__ = [
    "PacedTrack",
    "Recorder",
    "RelayClient",
    "ServerError",
    "ToneTrack",
    "WavTrack",
    "dominant_frequency",
    "record_track",
]
