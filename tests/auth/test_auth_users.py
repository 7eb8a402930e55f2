"""/xapi/users and /data/users as XNAT 1.8 serves them."""

from __future__ import annotations

from auth_helpers import PASSWORD, add_user, admin_auth

from flip_imaging.prefs import set_pref


def test_create_user_and_login(client, ctx) -> None:
    body = {"username": "alice", "password": "Alice-Password-1", "firstName": "Alice", "lastName": "Smith",
            "email": "alice@example.org", "enabled": True, "verified": True}
    r = client.post("/xapi/users", json=body, auth=admin_auth(ctx))
    assert r.status_code == 201
    user = r.json()
    assert {k: user[k] for k in ("username", "firstName", "lastName", "email", "enabled", "verified")} == \
        {k: body[k] for k in ("username", "firstName", "lastName", "email", "enabled", "verified")}
    assert isinstance(user["id"], int) and "password" not in user and user["admin"] is False
    assert client.get("/data/auth", auth=("alice", "Alice-Password-1")).status_code == 200
    assert client.post("/xapi/users", json=body, auth=admin_auth(ctx)).status_code == 409


def test_create_user_bad_input(client, ctx) -> None:
    auth = admin_auth(ctx)
    assert client.post("/xapi/users", content=b"{not json", auth=auth,
                       headers={"content-type": "application/json"}).status_code == 400
    assert client.post("/xapi/users", json=["alice"], auth=auth).status_code == 400
    assert client.post("/xapi/users", json={"firstName": "x"}, auth=auth).status_code == 400
    for bad in ("guest", "has space", "<script>", "123e4567-e89b-12d3-a456-426614174000"):
        r = client.post("/xapi/users", json={"username": bad}, auth=auth)
        assert r.status_code == 400, bad
        assert r.headers["content-type"].startswith("text/plain")
    assert client.post("/xapi/users", json={"username": "shorty", "password": "short"}, auth=auth) \
        .status_code == 400
    assert client.post("/xapi/users", json={"username": "e", "email": "not-an-email"}, auth=auth) \
        .status_code == 400
    assert client.post("/xapi/users", json={"username": "e", "enabled": "yes"}, auth=auth).status_code == 400
    # nothing was created by the failures
    assert client.get("/xapi/users", auth=auth).json() == ["admin"]


def test_create_user_without_password_has_no_usable_password(client, ctx) -> None:
    r = client.post("/xapi/users", json={"username": "nopass", "email": "n@example.org"},
                    auth=admin_auth(ctx))
    assert r.status_code == 201
    assert client.put("/data/services/auth", data={"username": "nopass", "password": ""}).status_code == 401


def test_create_user_admin_only(client, ctx) -> None:
    add_user(ctx, "alice")
    assert client.post("/xapi/users", json={"username": "x"}).status_code == 401
    assert client.post("/xapi/users", json={"username": "x"}, auth=("alice", PASSWORD)).status_code == 403


def test_lists_and_profiles(client, ctx) -> None:
    add_user(ctx, "alice")
    add_user(ctx, "bob", enabled=False)
    auth = ("alice", PASSWORD)
    assert client.get("/xapi/users", auth=auth).json() == ["admin", "alice", "bob"]
    profiles = {p["username"]: p for p in client.get("/xapi/users/profiles", auth=auth).json()}
    assert set(profiles) == {"admin", "alice", "bob"}
    assert profiles["bob"]["enabled"] is False and profiles["alice"]["email"] == "alice@example.org"
    assert {"id", "firstName", "lastName", "verified"} <= set(profiles["alice"])
    rows = client.get("/data/users", params={"format": "json"}, auth=auth).json()["ResultSet"]["Result"]
    assert {r["login"] for r in rows} == {"admin", "alice"}  # enabled users only
    alice = next(r for r in rows if r["login"] == "alice")
    assert alice["firstname"] == "Alice" and alice["lastname"] == "Tester" and alice["xdat_user_id"].isdigit()
    csv_text = client.get("/data/users", params={"format": "csv"}, auth=auth).text
    assert csv_text.splitlines()[0] == "login,firstname,lastname,email,xdat_user_id"
    assert client.get("/data/users").status_code == 401
    assert client.get("/xapi/users").status_code == 401


def test_user_list_can_be_restricted_to_admins(client, ctx) -> None:
    add_user(ctx, "alice")
    with ctx.session() as db:
        set_pref(db, "security.restrictUserListAccessToAdmins", True)
    for path in ("/xapi/users", "/xapi/users/profiles", "/data/users"):
        assert client.get(path, auth=("alice", PASSWORD)).status_code == 403
        assert client.get(path, auth=admin_auth(ctx)).status_code == 200
    assert client.get("/xapi/users/alice", auth=("alice", PASSWORD)).status_code == 200


def test_get_user_self_or_admin(client, ctx) -> None:
    add_user(ctx, "alice")
    add_user(ctx, "bob")
    assert client.get("/xapi/users/alice", auth=("alice", PASSWORD)).json()["username"] == "alice"
    assert client.get("/xapi/users/alice", auth=("bob", PASSWORD)).status_code == 403
    assert client.get("/xapi/users/alice", auth=admin_auth(ctx)).status_code == 200
    assert client.get("/xapi/users/nobody", auth=admin_auth(ctx)).status_code == 404


def test_update_user(client, ctx) -> None:
    add_user(ctx, "alice")
    add_user(ctx, "bob")
    auth = ("alice", PASSWORD)
    r = client.put("/xapi/users/alice", json={"firstName": "Alicia", "email": "alicia@example.org"},
                   auth=auth)
    assert r.status_code == 200 and r.json()["firstName"] == "Alicia"
    assert client.put("/xapi/users/alice", json={"firstName": "Alicia"}, auth=auth).status_code == 304
    # self: no password change without the current one, no taking someone else's e-mail
    assert client.put("/xapi/users/alice", json={"password": "Another-Pass-1"}, auth=auth).status_code == 400
    assert client.put("/xapi/users/alice", json={"email": "bob@example.org"}, auth=auth).status_code == 400
    # self cannot enable/verify (ignored, as XNAT) nor touch other users
    assert client.put("/xapi/users/alice", json={"enabled": False}, auth=auth).status_code == 304
    assert client.put("/xapi/users/bob", json={"firstName": "B"}, auth=auth).status_code == 403
    assert client.put("/xapi/users/alice", json={"username": "other"}, auth=auth).status_code == 400
    assert client.put("/xapi/users/alice", content=b"[", auth=auth).status_code == 400
    # admin sets a password without the old one, and can disable
    r = client.put("/xapi/users/alice", json={"password": "Admin-Set-Pass-1", "verified": False},
                   auth=admin_auth(ctx))
    assert r.status_code == 200 and r.json()["verified"] is False
    assert client.get("/data/auth", auth=("alice", "Admin-Set-Pass-1")).status_code == 401  # unverified
    assert client.put("/xapi/users/alice/verified/true", auth=admin_auth(ctx)).status_code == 200
    assert client.get("/data/auth", auth=("alice", "Admin-Set-Pass-1")).status_code == 200
    assert client.put("/xapi/users/nobody", json={"firstName": "x"}, auth=admin_auth(ctx)).status_code == 404


def test_enabled_and_verified_flags(client, ctx) -> None:
    add_user(ctx, "alice")
    auth = admin_auth(ctx)
    assert client.get("/xapi/users/alice/enabled", auth=("alice", PASSWORD)).json() is True
    assert client.put("/xapi/users/alice/enabled/false", auth=("alice", PASSWORD)).status_code == 403
    assert client.put("/xapi/users/alice/enabled/false", auth=auth).status_code == 200
    assert client.get("/xapi/users/alice/enabled", auth=auth).json() is False
    assert client.get("/data/auth", auth=("alice", PASSWORD)).status_code == 401
    assert client.put("/xapi/users/alice/enabled/true", auth=auth).status_code == 200
    assert client.put("/xapi/users/alice/verified/false", auth=auth).status_code == 200
    assert client.get("/xapi/users/alice/verified", auth=auth).json() is False
    assert client.put("/xapi/users/alice/verified/maybe", auth=auth).status_code == 400
    assert client.put("/xapi/users/nobody/enabled/true", auth=auth).status_code == 404
    # the last enabled administrator cannot be disabled
    assert client.put("/xapi/users/admin/enabled/false", auth=auth).status_code == 409


def test_roles(client, ctx) -> None:
    add_user(ctx, "alice")
    auth = admin_auth(ctx)
    assert client.get("/xapi/users/alice/roles", auth=("alice", PASSWORD)).json() == []
    assert client.get("/xapi/users", auth=("alice", PASSWORD)).status_code == 200
    assert client.post("/xapi/users", json={"username": "x"}, auth=("alice", PASSWORD)).status_code == 403
    assert client.put("/xapi/users/alice/roles/Administrator", auth=("alice", PASSWORD)).status_code == 403
    assert client.put("/xapi/users/alice/roles/Administrator", auth=auth).status_code == 200
    assert client.get("/xapi/users/alice/roles", auth=auth).json() == ["Administrator"]
    # now alice is a site admin
    assert client.post("/xapi/users", json={"username": "made-by-alice"}, auth=("alice", PASSWORD)) \
        .status_code == 201
    assert client.put("/xapi/users/alice/roles/Wizard", auth=auth).status_code == 400
    assert client.delete("/xapi/users/alice/roles/Administrator", auth=auth).status_code == 200
    assert client.post("/xapi/users", json={"username": "y"}, auth=("alice", PASSWORD)).status_code == 403
    # the last admin keeps the role
    assert client.delete("/xapi/users/admin/roles/Administrator", auth=auth).status_code == 409
    # list forms: 202 with the roles that failed
    r = client.put("/xapi/users/alice/roles", json=["DataManager", "Wizard"], auth=auth)
    assert r.status_code == 202 and r.json() == ["Wizard"]
    r = client.request("DELETE", "/xapi/users/alice/roles", json=["DataManager"], auth=auth)
    assert r.status_code == 200 and r.json() == []
