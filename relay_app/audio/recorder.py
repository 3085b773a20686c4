"""The recordings' owner: every recording's writer runs in ROOT, so a channel's recording spans
its speakers.

A recording belongs to a channel's run of speakers, not to one speaker: when a speaker takes
the channel over, hands it to a booth partner or comes back after a dropped connection, the
same file goes on (the packets arrive on the channel's one timeline, and the pause between
two speakers is written as silence: recording.py). So its writer cannot live in a speaker's
task group, which ends with that speaker: `Recorder.serve_in(root)` gives it ROOT, where each
`Recording.run` is started when the recording is made, and the server's shutdown closes every
file cleanly. A channel's recording whose speaker stopped waits `recording.continue_within`
seconds for the next one (`release`), then closes; an unnamed stream's closes at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import TaskGroup

from ..core.config import RecordingSettings
from ..core.metrics import Metrics
from .recording import Recording


@dataclass(eq=False)
class _Held:
    """A channel's recording: how many streams feed it (a takeover's two, for a moment), and
    while none does, the scope of its wait for the next."""

    recording: Recording
    streams: int = 0
    waiting: anyio.CancelScope | None = None


class Recorder:
    def __init__(self, settings: RecordingSettings, metrics: Metrics) -> None:
        self._settings = settings
        self._metrics = metrics
        self._group: TaskGroup | None = None  # ROOT, set while the server serves
        self._channels: dict[str, _Held] = {}

    def serve_in(self, group: TaskGroup | None) -> None:
        """The task group (ROOT) the writers run in while the server serves; None after."""
        self._group = group
        if group is None:
            self._channels.clear()

    def recording(self, path: Path, log: Any, channel: str | None) -> Recording | None:
        """The recording a new stream feeds: its channel's while that one is written (its
        speaker still speaks: a takeover; or stopped within recording.continue_within), else a
        new one written to `path`. None while the server does not serve (nothing would
        write it). Every stream given one gives it back with `release`."""
        if self._group is None:
            return None
        held = self._channels.get(channel) if channel is not None else None
        if held is not None and held.recording.writable:
            if held.waiting is not None:
                held.waiting.cancel()
                held.waiting = None
                log.info("recording_continued", path=str(held.recording.path))
            held.streams += 1
            return held.recording
        recording = Recording(path, self._metrics, log, self._settings)
        self._group.start_soon(_run, recording, log)
        if channel is not None:
            self._channels[channel] = _Held(recording, streams=1)
        return recording

    def release(self, recording: Recording, channel: str | None) -> None:
        """A stream that fed it ended: an unnamed stream's recording ends now; a channel's,
        once no stream feeds it, waits recording.continue_within for the channel's next."""
        held = self._channels.get(channel) if channel is not None else None
        if channel is None or held is None or held.recording is not recording:
            recording.close()
            return
        held.streams -= 1
        if held.streams > 0:
            return  # (a takeover: the next speaker feeds it already)
        wait = self._settings.continue_within
        if not wait or self._group is None:
            self._close(channel, held)
            return
        held.waiting = anyio.CancelScope()
        self._group.start_soon(self._wait, channel, held, wait)

    async def _wait(self, channel: str, held: _Held, wait: float) -> None:
        assert held.waiting is not None
        with held.waiting:
            await anyio.sleep(wait)
            self._close(channel, held)

    def _close(self, channel: str, held: _Held) -> None:
        if self._channels.get(channel) is held:
            del self._channels[channel]
        held.recording.close()


async def _run(recording: Recording, log: Any) -> None:
    """A recording's writer, a ROOT child: a bug in one must not stop the server (its disk
    errors are the recording's own: recording_failed)."""
    try:
        await recording.run()
    except Exception:
        log.exception("recording_crashed", path=str(recording.path))
