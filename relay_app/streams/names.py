"""Numbers for people without a name: "Listener 7", "Speaker 7" on the console.

A connection gets the next number when it is admitted; a device that holds a personal pass
(core/auth.personal_pass: one per device that opened an invite) keeps its number across its
connections (a reload, its plain-audio stream beside its WebRTC one), so the operator sees
one person, not a new one per connection. Sync, never awaits.
"""

from __future__ import annotations

from ..core.auth import Grant

MAX_REMEMBERED = 10_000  # passes whose number is remembered (least recently seen go first)


class Names:
    def __init__(self, limit: int = MAX_REMEMBERED) -> None:
        self.limit = limit
        self._next = 0
        self._by_pass: dict[str, int] = {}  # a pass's token id -> its number, oldest first

    def number(self, grant: Grant | None) -> int:
        """The number of a new connection holding `grant`."""
        key = _pass_key(grant)
        if key is not None and key in self._by_pass:
            return self.adopt(grant, 0)
        self._next += 1
        return self.adopt(grant, self._next)

    def adopt(self, grant: Grant | None, number: int) -> int:
        """The number of a connection numbered `number` that now holds `grant` (its token
        came in its first message; its pass was just made): a pass's own number, else
        `number`, kept for the pass's next connections."""
        key = _pass_key(grant)
        if key is None:
            return number
        known = self._by_pass.pop(key, None)
        self._by_pass[key] = number = known if known is not None else number
        while len(self._by_pass) > self.limit:
            del self._by_pass[next(iter(self._by_pass))]
        return number


def _pass_key(grant: Grant | None) -> str | None:
    return grant.token_id if grant is not None and grant.parent is not None else None
