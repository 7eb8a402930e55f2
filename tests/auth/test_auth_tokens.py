"""Alias tokens: issue, use as basic-auth credentials, validate, invalidate, single use, expiry."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta

import httpx
from auth_helpers import PASSWORD, add_user, admin_auth
from sqlalchemy import select, update

from flip_imaging.auth import service
from flip_imaging.auth.models import AliasToken
from flip_imaging.auth.passwords import sha256_hex


def _issue(client, auth, path="/data/services/tokens/issue", **params) -> dict:
    r = client.get(path, auth=auth, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_issue_for_self_and_use_as_basic_auth(client, ctx) -> None:
    add_user(ctx, "alice")
    before = service.epoch_ms(service.now())
    token = _issue(client, ("alice", PASSWORD))
    uuid.UUID(token["alias"])  # xnatpy recognises token logins by the UUID alias
    assert token["xdatUserId"] == "alice" and token["singleUse"] is False
    hours = (token["estimatedExpirationTime"] - before) / 3_600_000
    assert 47.9 < hours <= 48.01
    with ctx.session() as db:
        row = db.scalar(select(AliasToken))
        assert row.secret_sha256 == sha256_hex(token["secret"]) and token["secret"] not in row.secret_sha256
    creds = (token["alias"], token["secret"])
    for _ in range(2):  # reusable
        r = client.get("/data/auth", auth=creds)
        assert r.status_code == 200 and r.text == "User 'alice' is logged in"
    assert client.get("/data/auth", auth=(token["alias"], "wrong")).status_code == 401
    # a token also logs in through the session endpoint
    assert client.put("/data/services/auth", data={"username": token["alias"],
                                                   "password": token["secret"]}).status_code == 200


def test_issue_for_other_user_admin_only(client, ctx) -> None:
    add_user(ctx, "alice")
    add_user(ctx, "bob")
    assert client.get("/data/services/tokens/issue/user/bob", auth=("alice", PASSWORD)).status_code == 403
    assert client.get("/data/services/tokens/issue/user/alice", auth=("alice", PASSWORD)).status_code == 200
    assert client.get("/data/services/tokens/issue").status_code == 401
    token = _issue(client, admin_auth(ctx), "/data/services/tokens/issue/user/bob")
    assert token["xdatUserId"] == "bob"
    assert client.get("/data/auth", auth=(token["alias"], token["secret"])).text == "User 'bob' is logged in"
    assert client.get("/data/services/tokens/issue/user/nobody", auth=admin_auth(ctx)).status_code == 404


def test_validate_and_invalidate(client, ctx) -> None:
    add_user(ctx, "alice")
    add_user(ctx, "bob")
    token = _issue(client, ("alice", PASSWORD))
    alias, secret = token["alias"], token["secret"]
    r = client.get(f"/data/services/tokens/validate/{alias}/{secret}", auth=("alice", PASSWORD))
    assert r.status_code == 200 and r.json() == {"valid": "alice"}
    r = client.get(f"/data/services/tokens/validate/{alias}/nope", auth=("alice", PASSWORD))
    assert r.json() == {"valid": None}
    # other users may not probe someone else's token; admins may
    r = client.get(f"/data/services/tokens/validate/{alias}/{secret}", auth=("bob", PASSWORD))
    assert r.status_code == 403
    assert client.get(f"/data/services/tokens/validate/{alias}/{secret}", auth=admin_auth(ctx)).json() == \
        {"valid": "alice"}
    assert client.get(f"/data/services/tokens/validate/{uuid.uuid4()}/x", auth=admin_auth(ctx)).status_code \
        == 404
    assert client.get(f"/data/services/tokens/invalidate/{alias}", auth=("bob", PASSWORD)).status_code == 403
    assert client.get(f"/data/services/tokens/invalidate/{alias}/wrong", auth=("alice", PASSWORD)) \
        .status_code == 400
    r = client.get(f"/data/services/tokens/invalidate/{alias}/{secret}", auth=("alice", PASSWORD))
    assert r.status_code == 200 and r.json() == {"result": "OK"}
    assert client.get("/data/auth", auth=(alias, secret)).status_code == 401
    # the secret-less form, by the owner
    other = _issue(client, ("alice", PASSWORD))
    assert client.get(f"/data/services/tokens/invalidate/{other['alias']}", auth=("alice", PASSWORD)) \
        .status_code == 200
    assert client.get("/data/auth", auth=(other["alias"], other["secret"])).status_code == 401


def test_show_lists_live_tokens_without_secrets(client, ctx) -> None:
    add_user(ctx, "alice")
    token = _issue(client, ("alice", PASSWORD))
    shown = client.get("/data/services/tokens/show", auth=("alice", PASSWORD)).json()
    assert [t["alias"] for t in shown] == [token["alias"]]
    assert "secret" not in shown[0]
    assert client.get("/data/services/tokens/show/user/alice", auth=admin_auth(ctx)).json() == shown


def test_single_use_token_works_once(client, ctx) -> None:
    add_user(ctx, "alice")
    token = _issue(client, ("alice", PASSWORD), singleUse="true")
    assert token["singleUse"] is True
    creds = (token["alias"], token["secret"])
    # validating does not spend it
    assert client.get(f"/data/services/tokens/validate/{creds[0]}/{creds[1]}", auth=("alice", PASSWORD)) \
        .json() == {"valid": "alice"}
    assert client.get("/data/auth", auth=creds).status_code == 200
    assert client.get("/data/auth", auth=creds).status_code == 401


def test_single_use_token_concurrent_requests_only_one_wins(live_server, ctx) -> None:
    add_user(ctx, "alice")
    token = httpx.get(f"{live_server}/data/services/tokens/issue", params={"singleUse": "true"},
                      auth=("alice", PASSWORD)).json()
    creds = (token["alias"], token["secret"])
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        statuses.append(httpx.get(f"{live_server}/data/auth", auth=creds, timeout=30).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [401] * 7


def test_expired_token_and_disabled_owner_refused(client, ctx) -> None:
    add_user(ctx, "alice")
    token = _issue(client, ("alice", PASSWORD))
    creds = (token["alias"], token["secret"])
    with ctx.session() as db:
        db.execute(update(AliasToken).values(expires_at=service.now() - timedelta(seconds=1)))
    assert client.get("/data/auth", auth=creds).status_code == 401
    fresh = _issue(client, ("alice", PASSWORD))
    assert client.put("/xapi/users/alice/enabled/false", auth=admin_auth(ctx)).status_code == 200
    assert client.put("/xapi/users/alice/enabled/true", auth=admin_auth(ctx)).status_code == 200
    # disabling invalidated the token for good, re-enabling does not revive it
    assert client.get("/data/auth", auth=(fresh["alias"], fresh["secret"])).status_code == 401
