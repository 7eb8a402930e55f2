"""Set-password links by e-mail, through a real SMTP server (aiosmtpd), and spending the link."""

from __future__ import annotations

import email
import re
from email import policy

import pytest
from auth_helpers import PASSWORD, add_user, admin_auth

from flip_imaging.auth import mail, service
from flip_imaging.netutil import free_port


def _link_parts(url: str) -> dict[str, str]:
    fragment = url.split("#", 1)[1]
    return dict(part.split("=", 1) for part in fragment.split("&"))


def test_new_user_gets_link_never_a_password(client, ctx, smtp_server) -> None:
    ctx.settings.smtp_host, ctx.settings.smtp_port = smtp_server.host, smtp_server.port
    add_user(ctx, "newbie", password=None, email="newbie@example.org")
    with ctx.session() as db:
        user = service.require_user_named(db, "newbie")
        mail.send_set_password_link(ctx.settings, db, user, trust_name="Trust A", project_name="Lungs")
    assert smtp_server.arrived.wait(10)
    envelope = smtp_server.messages[0]
    assert envelope.rcpt_tos == ["newbie@example.org"]
    msg = email.message_from_bytes(envelope.content, policy=policy.default)
    body = msg.get_body().get_content()
    assert "Trust A" in body and "Lungs" in body and "newbie" in body and "once" in body
    link = re.search(r"(http\S+/set-password#\S+)", body).group(1)
    parts = _link_parts(link)
    assert parts["username"] == "newbie"
    # the page the link opens exists and carries no credentials itself
    page = client.get(link.split("#")[0].replace(ctx.settings.effective_site_url, ""))
    assert page.status_code == 200 and "set-password" in page.text and parts["secret"] not in page.text

    r = client.post("/xapi/users/newbie/set-password",
                    json={"alias": parts["alias"], "secret": parts["secret"], "password": "Chosen-Pass-1"})
    assert r.status_code == 200, r.text
    assert client.get("/data/auth", auth=("newbie", "Chosen-Pass-1")).status_code == 200
    # the link works once
    r = client.post("/xapi/users/newbie/set-password",
                    json={"alias": parts["alias"], "secret": parts["secret"], "password": "Other-Pass-2"})
    assert r.status_code == 400
    assert client.get("/data/auth", auth=("newbie", "Other-Pass-2")).status_code == 401


def test_link_cannot_set_another_users_password_nor_be_used_to_log_in_twice(client, ctx) -> None:
    add_user(ctx, "victim")
    add_user(ctx, "newbie", password=None)
    with ctx.session() as db:
        alias, secret, _url = service.set_password_link(db, service.require_user_named(db, "newbie"),
                                                        "http://x")
    r = client.post("/xapi/users/victim/set-password",
                    json={"alias": alias, "secret": secret, "password": "Hijack-Pass-1"})
    assert r.status_code == 400
    assert client.get("/data/auth", auth=("victim", PASSWORD)).status_code == 200
    # a plain (reusable) token is not a set-password link
    token = client.get("/data/services/tokens/issue", auth=("victim", PASSWORD)).json()
    r = client.post("/xapi/users/victim/set-password",
                    json={"alias": token["alias"], "secret": token["secret"], "password": "Hijack-Pass-1"})
    assert r.status_code == 400
    # bad input
    assert client.post("/xapi/users/newbie/set-password", json={"alias": alias}).status_code == 400
    assert client.post("/xapi/users/newbie/set-password",
                       json={"alias": alias, "secret": secret, "password": "short"}).status_code == 400
    # form posts work too, and the short-password failure did not spend the link
    r = client.post("/xapi/users/newbie/set-password",
                    data={"alias": alias, "secret": secret, "password": "Form-Pass-12"})
    assert r.status_code == 200
    assert client.get("/data/auth", auth=("newbie", "Form-Pass-12")).status_code == 200


def test_added_to_project_letter(ctx, smtp_server) -> None:
    ctx.settings.smtp_host, ctx.settings.smtp_port = smtp_server.host, smtp_server.port
    letter = mail.added_to_project_letter(to="old@example.org", username="old", trust_name="Trust A",
                                          project_name="Lungs", site_url="http://archive.local")
    message_id = mail.send(ctx.settings, letter)
    assert smtp_server.arrived.wait(10)
    msg = email.message_from_bytes(smtp_server.messages[0].content, policy=policy.default)
    assert msg["Message-ID"] == message_id and "Lungs" in msg["Subject"]
    assert "old" in msg.get_body().get_content()


def test_unreachable_smtp_raises_and_leaves_no_link(client, ctx) -> None:
    ctx.settings.smtp_host, ctx.settings.smtp_port = "127.0.0.1", free_port()  # nothing listens
    add_user(ctx, "newbie", password=None)
    with pytest.raises(mail.MailError):
        with ctx.session() as db:
            mail.send_set_password_link(ctx.settings, db, service.require_user_named(db, "newbie"),
                                        trust_name="Trust A")
    shown = client.get("/data/services/tokens/show/user/newbie", auth=admin_auth(ctx)).json()
    assert shown == []
