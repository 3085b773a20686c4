"""auth.py: a token's id, name and invite; withdrawn tokens; a device's own pass; a
connection's own pass; an invite sent mid-session."""

from __future__ import annotations

import time

import jwt
import pytest

from relay_app.core import protocol as p
from relay_app.core.auth import (
    Revocations,
    connection_pass,
    mint,
    personal_pass,
    reauthenticate,
    verify,
)
from relay_app.core.config import Settings
from relay_app.core.errors import AuthError

SECRET = "unit-test-secret-0123456789abcdef0123456789"


def test_every_token_has_an_id_and_an_older_one_is_known_by_its_hash() -> None:
    one, two = (
        verify(SECRET, mint(SECRET, "receive", 60)),
        verify(SECRET, mint(SECRET, "receive", 60)),
    )
    assert one.token_id and two.token_id and one.token_id != two.token_id
    old = jwt.encode({"aud": "relay_app", "role": "send", "exp": int(time.time()) + 60}, SECRET)
    grant = verify(SECRET, old)
    assert grant.token_id is not None and grant.token_id.startswith("sha256:")
    assert verify(SECRET, old).token_id == grant.token_id  # (the same token, the same id)


def test_a_name_is_cleaned_and_cut_to_40() -> None:
    assert verify(SECRET, mint(SECRET, "send", 60, name=" Marie\u202e ")).name == "Marie"
    long = jwt.encode(
        {"aud": "relay_app", "role": "send", "exp": int(time.time()) + 60, "name": "x" * 99},
        SECRET,
    )
    assert verify(SECRET, long).name == "x" * 40
    assert verify(SECRET, mint(SECRET, "send", 60, name="\x00")).name is None


def test_an_invite_gives_a_pass_with_its_channel_name_and_expiry() -> None:
    invite = verify(
        SECRET, mint(SECRET, "receive", 600, stream="english", name="Press", invite=True)
    )
    made = personal_pass(SECRET, invite)
    assert made is not None
    _, own = made
    assert (own.role, own.stream, own.name, own.expires_at) == (
        "receive",
        "english",
        "Press",
        invite.expires_at,
    )
    assert own.parent == invite.token_id and not own.invite and own.token_id != invite.token_id
    assert own.revocation_ids == (own.token_id, invite.token_id)
    assert personal_pass(SECRET, own) is None  # a pass makes no pass
    assert personal_pass(SECRET, verify(SECRET, mint(SECRET, "send", 60))) is None


def test_a_connection_gets_a_pass_of_its_own_that_no_token_carries() -> None:
    """A WHEP or Ogg player that came with an invite: its pass is withdrawn alone, and with
    the invite; two connections with the same invite never share one."""
    invite = verify(SECRET, mint(SECRET, "receive", 600, stream="english", invite=True))
    one, two = connection_pass(invite), connection_pass(invite)
    assert one.connection_only and not one.invite and one.parent == invite.token_id
    assert (one.role, one.stream, one.expires_at) == ("receive", "english", invite.expires_at)
    assert one.token_id not in (None, invite.token_id, two.token_id)
    revocations = Revocations()
    assert one.token_id is not None and invite.token_id is not None
    revocations.revoke([one.token_id], time.time() + 600)
    assert revocations.withdrawn(one) and not revocations.withdrawn(two)
    revocations.revoke([invite.token_id], time.time() + 600)
    assert revocations.withdrawn(two)
    personal = verify(SECRET, mint(SECRET, "receive", 600))
    assert connection_pass(personal) is personal  # (only an invite is exchanged)


def test_an_invite_sent_mid_session_keeps_the_pass_made_from_it() -> None:
    settings = Settings.model_validate({"auth": {"secret": SECRET}})
    shared = mint(SECRET, "receive", 600, stream="english", invite=True)
    made = personal_pass(SECRET, verify(SECRET, shared))
    assert made is not None
    held = made[1]
    grant, reply = reauthenticate(settings, shared, Revocations(), held)
    assert grant is held and reply == p.Authenticated(role="receive", stream="english")
    # Another invite, or no pass yet: a pass for this connection alone, never the invite.
    other = mint(SECRET, "receive", 600, stream="english", invite=True)
    for before in (held, None, verify(SECRET, mint(SECRET, "both", 60))):
        grant, _ = reauthenticate(settings, other, Revocations(), before)
        assert grant is not None and grant.connection_only and not grant.invite
        assert grant.parent == verify(SECRET, other).token_id
    # A withdrawn invite is refused, pass or not.
    revocations = Revocations()
    invite_id = verify(SECRET, shared).token_id
    assert invite_id is not None
    revocations.revoke([invite_id], time.time() + 600)
    with pytest.raises(AuthError, match="withdrawn"):
        reauthenticate(settings, shared, revocations, held)


def test_a_withdrawn_token_is_refused_in_plain_words_until_it_expires() -> None:
    revocations, heard = Revocations(), []
    revocations.listeners.append(lambda ids, origin: heard.append((set(ids), origin)))
    invite = verify(SECRET, mint(SECRET, "receive", 600, invite=True))
    made = personal_pass(SECRET, invite)
    assert made is not None
    own = made[1]
    assert invite.token_id and own.token_id
    until = time.time() + 600
    assert revocations.revoke([own.token_id], until) == {own.token_id}
    with pytest.raises(AuthError, match=r"^This invitation was withdrawn by the operator\.$"):
        revocations.check(own)
    revocations.check(invite)  # the invite itself still works
    assert revocations.revoke([own.token_id], until) == set()  # (known: nothing new)
    revocations.revoke([invite.token_id], time.time() + 600, origin="cluster")
    assert revocations.withdrawn(invite) and revocations.withdrawn(own)
    assert heard == [({own.token_id}, "local"), ({invite.token_id}, "cluster")]
    # An expired one is forgotten: its token is refused as expired anyway.
    revocations.revoke(["gone"], time.time() - 1)
    assert "gone" not in revocations.items()


def test_the_oldest_to_expire_go_first_past_the_limit() -> None:
    revocations, now = Revocations(limit=3), time.time()
    for i, left in enumerate([50, 10, 40, 30]):
        revocations.revoke([f"t{i}"], now + left)
    assert sorted(revocations.items()) == ["t0", "t2", "t3"]
