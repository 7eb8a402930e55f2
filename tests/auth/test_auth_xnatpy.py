"""xnatpy's own login code (xnat 0.8.1) against the real server: log in, check, keep alive, log out.

``xnat.connect`` also needs ``/data/version`` and ``/xapi/schemas`` (the archive's); here the login
handshake functions it calls are exercised one by one with a real ``requests`` session, plus pyxnat's
``/data/JSESSION`` entry-point probe.
"""

from __future__ import annotations

import logging
import re

import pytest
import requests
import xnat
from auth_helpers import PASSWORD, add_user
from xnat import exceptions
from xnat.utils import JSessionAuth

log = logging.getLogger("test-xnatpy")


def test_xnatpy_password_login_check_and_logout(live_server, ctx) -> None:
    add_user(ctx, "alice")
    session = requests.Session()
    token = xnat._create_jsession(session, server=live_server, user="alice", password=PASSWORD, provider=None,
                                  debug=False, logger=log, timeout=10)
    assert re.fullmatch(r"[0-9A-F]{32}", token)
    assert session.cookies.get("JSESSIONID") == token
    # xnatpy's own parser of the expiration cookie (keep-alive interval)
    expiration = session.cookies.get("SESSION_EXPIRATION_TIME")
    assert re.match(r'^"(?P<timestamp>\d+),(?P<interval>\d+)"$', expiration)
    session.auth = JSessionAuth(token)  # what xnat.connect installs after login
    assert xnat.check_auth(session, server=live_server, user="alice", jsession=None, logger=log,
                           timeout=10) == "alice"
    # heartbeat
    assert session.get(f"{live_server}/data/JSESSION").text == token
    xnat._wipe_jsession(session, server=live_server, timeout=10)
    fresh = requests.Session()
    fresh.cookies.set("JSESSIONID", token)
    with pytest.raises(exceptions.XNATLoginFailedError):
        xnat.check_auth(fresh, server=live_server, user="alice", jsession=token, logger=log, timeout=10)


def test_xnatpy_bad_password(live_server, ctx) -> None:
    add_user(ctx, "alice")
    with pytest.raises(exceptions.XNATLoginFailedError):
        xnat._create_jsession(requests.Session(), server=live_server, user="alice", password="wrong-one",
                              provider=None, debug=False, logger=log, timeout=10)


def test_xnatpy_alias_token_login(live_server, ctx) -> None:
    """A UUID user makes xnatpy log in with basic auth; if no cookie comes back it stays on basic auth."""
    add_user(ctx, "alice")
    token = requests.get(f"{live_server}/data/services/tokens/issue", auth=("alice", PASSWORD)).json()
    session = requests.Session()
    xnat._create_jsession(session, server=live_server, user=token["alias"], password=token["secret"],
                          provider=None, debug=False, logger=log, timeout=10)
    session.auth = (token["alias"], token["secret"])
    assert xnat.check_auth(session, server=live_server, user=token["alias"], jsession=None, logger=log,
                           timeout=10) == "alice"


def test_pyxnat_style_jsession_with_basic_auth(live_server, ctx) -> None:
    add_user(ctx, "alice")
    session = requests.Session()
    session.auth = ("alice", PASSWORD)
    r = session.get(f"{live_server}/data/JSESSION")
    assert r.status_code == 200 and len(r.text) == 32
    r = session.delete(f"{live_server}/data/JSESSION")
    assert r.status_code == 200


def test_full_xnat_connect_with_password_and_token(live_server, ctx) -> None:
    """The whole of ``xnat.connect`` (also needs the archive's /data/version and /xapi/schemas)."""
    add_user(ctx, "alice")
    with xnat.connect(live_server, user="alice", password=PASSWORD) as session:
        assert session.logged_in_user == "alice"
        # the keep-alive period comes from our SESSION_EXPIRATION_TIME cookie: timeout / 2 - 20 s
        assert session._keepalive_interval == 15 * 60 / 2 - 20
        token = session.services.issue_token()
        jsession = session.jsession
    # disconnecting ended the session
    assert requests.get(f"{live_server}/data/auth", cookies={"JSESSIONID": jsession}).status_code == 401
    with xnat.connect(live_server, user=token.alias, password=token.secret) as session:
        assert session.logged_in_user == "alice"
    with pytest.raises(exceptions.XNATLoginFailedError):
        xnat.connect(live_server, user="alice", password="not-the-password")
