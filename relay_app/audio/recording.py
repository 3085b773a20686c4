"""Recording: a channel's run of speakers (or one unnamed stream) written to disk as Ogg/Opus,
from the senders' own packets.

The packet path (plane/path.py) calls `Recording.feed` for every Opus packet, in both
relay modes, next to the HTTP listeners' muxer: no decode, no re-encode. `feed` is sync and
never touches the disk: it builds one-second pages and queues them. `Recording.run`, a task
in ROOT (recorder.py: a channel's recording outlives each of its speakers), opens the file and
writes the pages from a worker thread, so a slow or full disk never stalls the event loop that
relays the audio.

Nothing reaches the disk before the sender's first audio (a stream that carries none leaves no
file), a sender pushing more bytes a second than Opus can carry has its recording stopped
(`recording.max_bytes_per_second`; its audio goes on), and the directory is kept within
`recording.max_total_bytes` and `recording.keep_days`, oldest deleted first, whenever a
recording starts or ends.

The file is closed cleanly whatever ends the run: the stream's end or the server stopping
(the task is cancelled; its `finally` is shielded and bounded) writes the pending packets and
the end-of-stream page first, so every file decodes. A disk that fails (unwritable directory,
disk full, a writer that falls a whole page buffer behind) ends the recording, not the stream:
one `recording_failed` event, counted in `/metrics`, and the audio keeps flowing.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path
from typing import IO, Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..core.config import RecordingSettings
from ..core.limits import Allowance
from ..core.metrics import Metrics
from .ogg import OPUS_RATE, OggOpusMuxer, opus_samples

PACKETS_PER_PAGE = 50  # one page a second of 20 ms packets
PAGE_BUFFER = 30  # pages (seconds) the writer may fall behind before the recording is dropped
CLOSE_TIMEOUT = 5.0  # seconds to write the last pages when the stream or the server ends
# A 20 ms Opus frame of silence (CELT, fullband: what WebRTC stacks send for DTX); the most a
# gap is filled with (recording.continue_within bounds a pause between speakers well below).
SILENCE = bytes([0xF8, 0xFF, 0xFE])
SILENCE_SAMPLES = 960
MAX_SILENCE = 3600  # seconds

RECORDING_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}-\d{8}T\d{6}Z(-\d+)?\.ogg$")
"""What `<channel or stream_id>-<UTC start>.ogg` looks like (a suffix when one already exists):
the only names /admin/recordings serves."""


def recording_path(directory: Path, stream_id: str, started_at: float) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started_at))
    return directory / f"{stream_id}-{stamp}.ogg"


def _open_new(path: Path) -> tuple[Path, IO[bytes]]:
    """Create the directory and a file that did not exist (`-1`, `-2`, ... if it did)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 0
    while True:
        try:
            return candidate, candidate.open("xb")
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")


class Recording:
    def __init__(
        self, path: Path, metrics: Metrics, log: Any, settings: RecordingSettings | None = None
    ) -> None:
        self.path = path
        self._metrics = metrics
        self._log = log
        self._settings = settings or RecordingSettings()
        # Payload bytes a second: what Opus can be, and no more.
        self._budget = Allowance(self._settings.max_bytes_per_second)
        self.stopped = False  # over the byte rate: the file so far is kept
        self._muxer = OggOpusMuxer(random.getrandbits(32), packets_per_page=PACKETS_PER_PAGE)
        self._pages: tuple[MemoryObjectSendStream[bytes], MemoryObjectReceiveStream[bytes]] = (
            anyio.create_memory_object_stream[bytes](PAGE_BUFFER)
        )
        self.failed = False
        self.bytes_written = 0
        self._next_pts: int | None = None  # where the next packet's audio should start
        self.closed = False  # no more pages (`close`)

    @property
    def writable(self) -> bool:
        """Still taking packets (not stopped, failed or closed): a next speaker may go on."""
        return not (self.failed or self.stopped or self.closed)

    def feed(self, packet: bytes, pts: int) -> None:
        """One Opus packet from the sender, at `pts` on the channel's timeline (sync, no I/O).

        The file keeps the timeline: where packets are missing (a loss the repair could not
        rebuild, the pause between two speakers of a channel) it gets silence, so the file
        plays as long as the event lasted and each speaker starts where they did."""
        if self.failed or self.stopped:
            return
        if self._next_pts is not None:
            if pts < self._next_pts - SILENCE_SAMPLES // 2:
                return  # late: its place is written already (silence, or a repair)
            if pts - self._next_pts >= SILENCE_SAMPLES:
                self._fill(min(pts - self._next_pts, MAX_SILENCE * OPUS_RATE) // SILENCE_SAMPLES)
        self._next_pts = max(pts, self._next_pts or 0) + opus_samples(packet)
        if not self._budget.take(len(packet)):
            limit = self._settings.max_bytes_per_second
            self._stop(f"over {limit} bytes/s (recording.max_bytes_per_second): not Opus speech")
            return
        self._add(packet)

    def _fill(self, frames: int) -> None:
        for _ in range(frames):
            self._add(SILENCE)

    def _add(self, packet: bytes) -> None:
        page = self._muxer.add(packet)
        if page is not None:
            try:
                self._pages[0].send_nowait(page)
            except anyio.WouldBlock:
                self._fail(f"the disk fell {PAGE_BUFFER} s behind")
            except anyio.ClosedResourceError:
                pass  # closed: the run is over

    @property
    def seconds(self) -> float:
        return self._muxer.granule / OPUS_RATE

    async def run(self) -> None:
        """Write the pages until cancelled (the stream ended), then close the file cleanly.
        The file is created with the first page (or, for under a second of audio, at the
        end): a stream without audio leaves none."""
        file: IO[bytes] | None = None
        try:
            async for page in self._pages[1]:
                file = file or await self._open()
                if file is None:
                    return
                await self._write(file, page)
        except OSError as error:
            self._fail(f"cannot write {self.path}: {error.strerror or error}")
        finally:
            with anyio.move_on_after(CLOSE_TIMEOUT, shield=True):
                if file is None and self._muxer.granule and not self.failed:
                    file = await self._open()
                if file is not None:
                    await self._finish(file)
                    self._metrics.live.recordings -= 1
                self._pages[1].close()
                await anyio.to_thread.run_sync(self._prune)

    async def _open(self) -> IO[bytes] | None:
        await anyio.to_thread.run_sync(self._prune)
        try:
            self.path, file = await anyio.to_thread.run_sync(_open_new, self.path)
        except OSError as error:
            self._fail(f"cannot create {self.path}: {error.strerror or error}")
            return None
        self._metrics.live.recordings += 1
        self._log.info("recording_started", path=str(self.path))
        await self._write(file, self._muxer.headers())
        return file

    def _prune(self) -> None:
        try:
            deleted = prune_recordings(self.path.parent, self._settings, keep=self.path)
        except OSError as error:  # (best effort: a directory another process changes)
            self._log.warning("recording_prune_failed", error=str(error))
            return
        for path, reason in deleted:
            self._log.info("recording_deleted", path=str(path), reason=reason)

    async def _write(self, file: IO[bytes], data: bytes) -> None:
        await anyio.to_thread.run_sync(file.write, data)
        self.bytes_written += len(data)

    async def _finish(self, file: IO[bytes]) -> None:
        """Queued pages, the pending packets and the end-of-stream page, then close."""
        self.close()
        try:
            if not self.failed:
                tail = b"".join(self._queued()) + self._muxer.end()
                await self._write(file, tail)
            await anyio.to_thread.run_sync(file.close)
        except OSError as error:
            self._fail(f"cannot finish {self.path}: {error.strerror or error}")
        self._pages[1].close()
        if not self.failed:
            self._log.info(
                "recording_ended",
                path=str(self.path),
                seconds=round(self.seconds, 2),
                bytes=self.bytes_written,
            )

    def _queued(self) -> list[bytes]:
        pages = []
        while True:
            try:
                pages.append(self._pages[1].receive_nowait())
            except (anyio.WouldBlock, anyio.EndOfStream, anyio.ClosedResourceError):
                return pages

    def _stop(self, reason: str) -> None:
        """Stop recording this stream (the file so far is kept and closed cleanly)."""
        self.stopped = True
        self._log.warning("recording_stopped", path=str(self.path), reason=reason)
        self._pages[0].close()

    def _fail(self, reason: str) -> None:
        if not self.failed:
            self.failed = True
            self._metrics.recording_failures += 1
            self._log.error("recording_failed", path=str(self.path), error=reason)

    def close(self) -> None:
        """No more pages (idempotent): `run` (started with the recording: recorder.py) writes
        what is queued and ends."""
        self.closed = True
        self._pages[0].close()


def list_recordings(directory: Path, live: set[Path]) -> list[dict[str, Any]]:
    """The recordings on disk, newest first; `recording: true` for those still being written."""
    try:
        files = [p for p in directory.iterdir() if RECORDING_NAME.match(p.name) and p.is_file()]
    except FileNotFoundError:
        return []
    rows = []
    for path in files:
        stat = path.stat()
        rows.append(
            {
                "name": path.name,
                "bytes": stat.st_size,
                "modified": stat.st_mtime,
                "recording": path in live,
            }
        )
    return sorted(rows, key=lambda row: row["modified"], reverse=True)


def prune_recordings(
    directory: Path, settings: RecordingSettings, keep: Path | None = None
) -> list[tuple[Path, str]]:
    """Delete recordings older than keep_days, then the oldest until the directory holds at
    most max_total_bytes; `keep` (the one being written) is never deleted. What was deleted,
    and why. Best effort: a directory that cannot be read is left alone (the recording's own
    open reports it)."""
    try:
        files = [p for p in directory.iterdir() if RECORDING_NAME.match(p.name) and p.is_file()]
    except OSError:
        return []
    stats = sorted(((p.stat(), p) for p in files if p != keep), key=lambda sp: sp[0].st_mtime)
    deleted: list[tuple[Path, str]] = []
    if settings.keep_days:
        cutoff = time.time() - settings.keep_days * 86400
        for _stat, path in [sp for sp in stats if sp[0].st_mtime < cutoff]:
            path.unlink(missing_ok=True)
            deleted.append((path, f"older than {settings.keep_days:g} days"))
        stats = [sp for sp in stats if sp[0].st_mtime >= cutoff]
    if settings.max_total_bytes:
        total = sum(stat.st_size for stat, _ in stats)
        if keep is not None and keep.is_file():
            total += keep.stat().st_size
        for stat, path in stats:
            if total <= settings.max_total_bytes:
                break
            path.unlink(missing_ok=True)
            total -= stat.st_size
            deleted.append((path, f"over {settings.max_total_bytes} bytes in all"))
    return deleted
