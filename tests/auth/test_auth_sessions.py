"""Login sessions as XNAT clients use them: /data/services/auth, /data/JSESSION, /data/auth."""

from __future__ import annotations

import re
from datetime import timedelta

from auth_helpers import PASSWORD, add_user, admin_auth
from sqlalchemy import select, update

from flip_imaging.auth import service
from flip_imaging.auth.models import AliasToken, WebSession
from flip_imaging.auth.passwords import sha256_hex


def test_login_put_form_returns_session_id_and_cookie(client, ctx) -> None:
    add_user(ctx, "alice")
    r = client.put("/data/services/auth", data={"username": "alice", "password": PASSWORD})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    sid = r.text
    assert re.fullmatch(r"[0-9A-F]{32}", sid)
    assert r.cookies.get("JSESSIONID") == sid
    with ctx.session() as db:
        stored = list(db.scalars(select(WebSession.token_sha256)))
    assert stored == [sha256_hex(sid)]  # only the hash is stored
    # the cookie alone authenticates
    client.cookies.clear()
    r = client.get("/data/auth", cookies={"JSESSIONID": sid})
    assert r.status_code == 200 and r.text == "User 'alice' is logged in"


def test_login_post_with_j_username(client, ctx) -> None:
    add_user(ctx, "bob")
    r = client.post("/data/services/auth", data={"j_username": "bob", "j_password": PASSWORD})
    assert r.status_code == 200 and len(r.text) == 32


def test_bad_credentials_are_401_plain_text(client, ctx) -> None:
    add_user(ctx, "carol")
    for user, password in (("carol", "wrong-password"), ("nobody", PASSWORD)):
        r = client.put("/data/services/auth", data={"username": user, "password": password})
        assert r.status_code == 401
        assert r.headers["content-type"].startswith("text/plain")
        assert "<html" not in r.text.lower()
        assert "JSESSIONID" not in r.cookies
    assert client.put("/data/services/auth", data={"password": "x"}).status_code == 400


def test_disabled_user_cannot_log_in(client, ctx) -> None:
    add_user(ctx, "dave", enabled=False)
    r = client.put("/data/services/auth", data={"username": "dave", "password": PASSWORD})
    assert r.status_code == 401
    assert client.get("/data/auth", auth=("dave", PASSWORD)).status_code == 401


def test_account_without_password_cannot_log_in(client, ctx) -> None:
    add_user(ctx, "erin", password=None)
    for guess in ("", "x" * 8, "None"):
        assert client.put("/data/services/auth", data={"username": "erin", "password": guess}).status_code \
            == 401


def test_data_auth_anonymous_and_basic(client, ctx) -> None:
    assert client.get("/data/auth").status_code == 401
    assert client.get("/data/auth", auth=("admin", "bad")).status_code == 401
    r = client.get("/data/auth", auth=admin_auth(ctx))
    assert r.status_code == 200 and r.text == "User 'admin' is logged in"


def test_jsession_creates_session_with_expiration_cookie(client, ctx) -> None:
    r = client.get("/data/JSESSION", auth=admin_auth(ctx))
    assert r.status_code == 200
    sid = r.text
    assert r.cookies.get("JSESSIONID") == sid
    raw = [h for h in r.headers.get_list("set-cookie") if h.startswith("SESSION_EXPIRATION_TIME=")]
    assert len(raw) == 1
    # xnatpy parses the cookie value with this exact pattern (quotes included)
    value = raw[0].split(";", 1)[0].split("=", 1)[1]
    match = re.match(r'^"(?P<timestamp>\d+),(?P<interval>\d+)"$', value)
    assert match is not None
    assert int(match.group("interval")) == int(service.SESSION_TIMEOUT.total_seconds() * 1000)
    assert client.get("/data/JSESSION").status_code == 200  # the cookie (kept by the client) suffices
    assert client.get("/data/JSESSION").text == sid  # heartbeat keeps the same session


def test_jsession_anonymous_is_401(client) -> None:
    assert client.get("/data/JSESSION").status_code == 401


def test_heartbeat_extends_and_expiry_ends_session(client, ctx) -> None:
    sid = client.get("/data/JSESSION", auth=admin_auth(ctx)).text
    with ctx.session() as db:
        db.execute(update(WebSession).values(expires_at=service.now() + timedelta(seconds=30)))
    assert client.get("/data/JSESSION", cookies={"JSESSIONID": sid}).text == sid
    with ctx.session() as db:
        row = db.scalar(select(WebSession))
        assert service.aware(row.expires_at) > service.now() + service.SESSION_TIMEOUT - timedelta(minutes=1)
        db.execute(update(WebSession).values(expires_at=service.now() - timedelta(seconds=1)))
    client.cookies.clear()
    assert client.get("/data/auth", cookies={"JSESSIONID": sid}).status_code == 401


def test_delete_jsession_logs_out(client, ctx) -> None:
    add_user(ctx, "frank")
    sid = client.put("/data/services/auth", data={"username": "frank", "password": PASSWORD}).text
    assert client.get("/data/auth").status_code == 200
    r = client.delete("/data/JSESSION")
    assert r.status_code == 200
    client.cookies.clear()
    assert client.get("/data/auth", cookies={"JSESSIONID": sid}).status_code == 401
    with ctx.session() as db:
        assert db.scalar(select(WebSession)) is None
    assert client.delete("/data/JSESSION").status_code == 200  # idempotent


def test_disabling_user_ends_sessions(client, ctx) -> None:
    add_user(ctx, "gina")
    sid = client.put("/data/services/auth", data={"username": "gina", "password": PASSWORD}).text
    client.cookies.clear()
    assert client.put("/xapi/users/gina/enabled/false", auth=admin_auth(ctx)).status_code == 200
    assert client.get("/data/auth", cookies={"JSESSIONID": sid}).status_code == 401


def test_password_change_ends_other_sessions(client, ctx) -> None:
    add_user(ctx, "hank")
    sid = client.put("/data/services/auth", data={"username": "hank", "password": PASSWORD}).text
    client.cookies.clear()
    r = client.put("/xapi/users/hank", json={"password": "New-Password-1", "currentPassword": PASSWORD},
                   auth=("hank", PASSWORD))
    assert r.status_code == 200
    assert client.get("/data/auth", cookies={"JSESSIONID": sid}).status_code == 401
    assert client.get("/data/auth", auth=("hank", "New-Password-1")).status_code == 200


def test_login_clears_out_dead_sessions_and_tokens(client, ctx) -> None:
    add_user(ctx, "ivan")
    old_sid = client.put("/data/services/auth", data={"username": "ivan", "password": PASSWORD}).text
    token = client.get("/data/services/tokens/issue", auth=("ivan", PASSWORD)).json()
    with ctx.session() as db:
        db.execute(update(WebSession).values(expires_at=service.now() - timedelta(seconds=1)))
        db.execute(update(AliasToken).values(expires_at=service.now() - timedelta(seconds=1)))
    new_sid = client.put("/data/services/auth", data={"username": "ivan", "password": PASSWORD}).text
    with ctx.session() as db:
        assert list(db.scalars(select(WebSession.token_sha256))) == [sha256_hex(new_sid)]
        assert db.scalar(select(AliasToken).where(AliasToken.alias == token["alias"])) is None
    assert old_sid != new_sid
