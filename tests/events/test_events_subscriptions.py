"""Subscription CRUD over XNAT's REST paths, permissions, and validation errors."""

from __future__ import annotations

import pytest
from events_helpers import ADMIN_AUTH, RECORDING_KEY, as_user, scan_sub

from flip_imaging.events.actions import LOGGING_ACTION_NAME

SITE = "/xapi/events/subscription"
P1 = "/xapi/projects/P1/events/subscription"
LOGGING_KEY = f"{LOGGING_ACTION_NAME}:{LOGGING_ACTION_NAME}"


def _create(client, url: str, model: dict, auth=ADMIN_AUTH) -> int:
    r = client.post(url, json=model, auth=auth)
    assert r.status_code == 201, r.text
    name, _, sid = r.text.rpartition(":")
    assert name == model["name"]
    return int(sid)


def test_site_subscription_crud(client, world, recorder) -> None:
    sid = _create(client, SITE, scan_sub("site-sub", event_filter={"project-ids": ["P1", "P2"],
                                                                   "payload-filter": "@.modality == 'MR'"}))
    got = client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()
    assert got["id"] == sid and got["name"] == "site-sub" and got["active"] is True
    assert got["action-key"] == RECORDING_KEY and got["attributes"] == {"bids": "y"}
    assert got["event-filter"] == {"event-type": "org.nrg.xnat.eventservice.events.ScanEvent",
                                   "project-ids": ["P1", "P2"], "status": "CREATED",
                                   "payload-filter": "@.modality == 'MR'", "filter-nodes": {}}
    assert got["subscription-owner"] == "admin" and got["valid"] is True
    assert got["act-as-event-user"] is False and isinstance(got["created"], int)
    assert [s["id"] for s in client.get("/xapi/events/subscriptions", auth=ADMIN_AUTH).json()] == [sid]

    r = client.put(f"{SITE}/{sid}", json={"name": "renamed", "event-filter": {"payload-filter": None}},
                   auth=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    got = client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()
    assert got["name"] == "renamed" and got["event-filter"]["payload-filter"] is None
    assert got["event-filter"]["project-ids"] == ["P1", "P2"]

    assert client.post(f"{SITE}/{sid}/deactivate", auth=ADMIN_AUTH).status_code == 200
    assert client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()["active"] is False
    assert client.post(f"{SITE}/{sid}/activate", auth=ADMIN_AUTH).status_code == 200
    assert client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()["active"] is True

    assert client.delete(f"{SITE}/{sid}", auth=ADMIN_AUTH).status_code == 204
    assert client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).status_code == 404
    assert client.delete(f"{SITE}/{sid}", auth=ADMIN_AUTH).status_code == 404
    assert client.get("/xapi/events/subscriptions", auth=ADMIN_AUTH).json() == []


def test_site_forms_are_admin_only(client, world, recorder) -> None:
    assert client.post(SITE, json=scan_sub()).status_code == 401
    assert client.post(SITE, json=scan_sub(), auth=as_user("owner")).status_code == 403
    sid = _create(client, SITE, scan_sub())
    for method, url in (("get", "/xapi/events/subscriptions"), ("get", f"{SITE}/{sid}"),
                        ("delete", f"{SITE}/{sid}"), ("post", f"{SITE}/{sid}/deactivate")):
        assert getattr(client, method)(url, auth=as_user("owner")).status_code == 403, url
    assert client.put(f"{SITE}/{sid}", json={"name": "x"}, auth=as_user("owner")).status_code == 403


def test_project_subscription_by_owner(client, world, recorder) -> None:
    # project form forces project-ids = [P1] and act-as-event-user false, whatever was sent
    model = scan_sub("p1-sub", event_filter={"project-ids": ["P2"]}, **{"act-as-event-user": True})
    sid = _create(client, P1, model, auth=as_user("owner"))
    listed = client.get("/xapi/projects/P1/events/subscriptions", auth=as_user("owner")).json()
    assert [(s["id"], s["editable"]) for s in listed] == [(sid, True)]
    assert listed[0]["event-filter"]["project-ids"] == ["P1"]
    assert listed[0]["act-as-event-user"] is False and listed[0]["subscription-owner"] == "owner"

    # a site-wide subscription shows in the project list, not editable, and the owner may not change it
    site_id = _create(client, SITE, scan_sub("site-wide"))
    listed = {s["id"]: s["editable"] for s in
              client.get("/xapi/projects/P1/events/subscriptions", auth=as_user("owner")).json()}
    assert listed == {sid: True, site_id: False}
    assert client.get(f"{P1}/{site_id}", auth=as_user("owner")).status_code == 200
    assert client.delete(f"{P1}/{site_id}", auth=as_user("owner")).status_code == 403
    assert client.post(f"{P1}/{site_id}/deactivate", auth=as_user("owner")).status_code == 403

    assert client.post(f"{P1}/{sid}/deactivate", auth=as_user("owner")).status_code == 200
    assert client.get(f"{P1}/{sid}", auth=as_user("owner")).json()["active"] is False
    assert client.post(f"{P1}/{sid}/activate", auth=as_user("owner")).status_code == 200
    r = client.put(f"{P1}/{sid}", json={"attributes": {"bids": "n"},
                                        "event-filter": {"project-ids": ["P2"]}}, auth=as_user("owner"))
    assert r.status_code == 200, r.text
    got = client.get(f"{P1}/{sid}", auth=as_user("owner")).json()
    assert got["attributes"] == {"bids": "n"} and got["event-filter"]["project-ids"] == ["P1"]

    # the owner of P2 cannot see P1's, nor reach it through their own project
    assert client.get("/xapi/projects/P1/events/subscriptions", auth=as_user("other")).status_code == 404
    other_url = f"/xapi/projects/P2/events/subscription/{sid}"
    assert client.get(other_url, auth=as_user("other")).status_code == 403
    assert client.delete(f"/xapi/projects/P2/events/subscription/{sid}",
                         auth=as_user("other")).status_code == 403

    assert client.delete(f"{P1}/{sid}", auth=as_user("owner")).status_code == 204
    assert client.get(f"{P1}/{sid}", auth=as_user("owner")).status_code == 404


@pytest.mark.parametrize("who,expected", [("member", 403), ("collab", 403), ("other", 404), (None, 401)])
def test_project_form_needs_owner(client, world, recorder, who, expected) -> None:
    auth = as_user(who) if who else None
    assert client.post(P1, json=scan_sub(), auth=auth).status_code == expected
    sid = _create(client, P1, scan_sub(), auth=as_user("owner"))
    assert client.get("/xapi/projects/P1/events/subscriptions", auth=auth).status_code == expected
    assert client.delete(f"{P1}/{sid}", auth=auth).status_code == expected
    assert client.post(f"{P1}/{sid}/deactivate", auth=auth).status_code == expected
    assert client.put(f"{P1}/{sid}", json={"name": "n"}, auth=auth).status_code == expected
    # the admin may do everything in the project form
    assert client.post(f"{P1}/{sid}/deactivate", auth=ADMIN_AUTH).status_code == 200
    assert client.get(f"{P1}/{sid}", auth=ADMIN_AUTH).json()["active"] is False


INVALID = [
    ({"action-key": RECORDING_KEY, "event-filter": {"event-type": "ScanEvent"}}, "'name' is required"),
    ({"name": "n", "event-filter": {"event-type": "ScanEvent"}}, "'action-key' is required"),
    ({"name": "n", "action-key": RECORDING_KEY}, "'event-filter' is required"),
    (scan_sub(event_filter={"event-type": "org.nrg.xnat.eventservice.events.NoSuchEvent"}),
     "Unknown event type"),
    (scan_sub(event_filter={"status": "DELETED"}), "Unknown status 'DELETED' for ScanEvent"),
    (scan_sub(event_filter={"event-type": "SessionEvent", "status": None}), "Unknown status"),
    (scan_sub(event_filter={"payload-filter": "@.modality == 'MR"}), "Invalid JsonPath payload-filter"),
    (scan_sub(event_filter={"payload-filter": "@.modality =="}), "Invalid JsonPath payload-filter"),
    (scan_sub(action_key="org.example.NoSuchProvider:x"), "No action provider"),
    (scan_sub(action_key="org.flip.test.RecordingAction:forbidden"), "this action is not allowed here"),
    (scan_sub(event_filter={"project-ids": ["NOPE"]}), "Unknown project 'NOPE'"),
    (scan_sub(event_filter={"project-ids": "P1,P2"}), "Unknown project"),
    (scan_sub(attributes=["x"]), "'attributes' must be a JSON object"),
    (scan_sub(active="maybe"), "'active' must be true or false"),
    (["not", "an", "object"], "must be a JSON object"),
]


def test_invalid_subscriptions_are_refused(client, world, recorder) -> None:
    for model, reason in INVALID:
        # the project form ignores project-ids (it forces its own project)
        forms = [(SITE, ADMIN_AUTH)] + ([] if "project" in reason else [(P1, as_user("owner"))])
        for url, auth in forms:
            r = client.post(url, json=model, auth=auth)
            assert r.status_code == 400, (model, r.text)
            assert reason in r.text, (model, r.text)
            assert r.headers["content-type"].startswith("text/plain")
    assert client.get("/xapi/events/subscriptions", auth=ADMIN_AUTH).json() == []


def test_malformed_json_and_bad_update(client, world, recorder) -> None:
    r = client.post(SITE, content=b"{not json", headers={"content-type": "application/json"}, auth=ADMIN_AUTH)
    assert r.status_code == 400 and "Malformed JSON" in r.text
    assert client.post(SITE, content=b"", auth=ADMIN_AUTH).status_code == 400
    sid = _create(client, SITE, scan_sub())
    r = client.put(f"{SITE}/{sid}", json={"event-filter": {"payload-filter": "(@.a"}}, auth=ADMIN_AUTH)
    assert r.status_code == 400 and "payload-filter" in r.text
    # the refused update changed nothing
    assert client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()["event-filter"]["payload-filter"] is None
    assert client.put(f"{SITE}/99999", json={"name": "x"}, auth=ADMIN_AUTH).status_code == 404


def test_short_event_type_names_and_single_status_default(client, world, recorder) -> None:
    sid = _create(client, SITE, {"name": "short", "action-key": LOGGING_KEY,
                                 "event-filter": {"event-type": "ScanEvent"}})
    got = client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()
    assert got["event-filter"]["event-type"] == "org.nrg.xnat.eventservice.events.ScanEvent"
    assert got["event-filter"]["status"] == "CREATED"


def test_filter_validate_endpoint(client, world) -> None:
    url = "/xapi/events/subscription/filter/validate"
    assert client.post(url, content="@.modality == 'MR'", auth=as_user("member")).status_code == 200
    r = client.post(url, content="@.modality = 'MR'", auth=as_user("member"))
    assert r.status_code == 400 and "failed to validate" in r.text


def test_events_actions_and_prefs(client, world, recorder) -> None:
    events = client.get("/xapi/events/events", auth=as_user("member")).json()
    by_id = {e["id"]: e for e in events}
    scan = by_id["org.nrg.xnat.eventservice.events.ScanEvent"]
    assert scan["statuses"] == ["CREATED"] and scan["display-name"]
    assert by_id["org.nrg.xnat.eventservice.events.SessionEvent"]["statuses"] == ["CREATED", "MERGED",
                                                                                   "DELETED"]
    assert len(events) == 8
    assert client.get("/xapi/events/events").status_code == 401

    actions = client.get("/xapi/events/actions", auth=ADMIN_AUTH).json()
    keys = {a["action-key"] for a in actions}
    assert {LOGGING_KEY, RECORDING_KEY} <= keys
    assert client.get("/xapi/events/actions", auth=as_user("owner")).status_code == 403
    assert client.get("/xapi/events/actions?event-type=org.nrg.xnat.eventservice.events.ScanEvent",
                      auth=ADMIN_AUTH).status_code == 200
    assert client.get("/xapi/events/actions?event-type=Bogus", auth=ADMIN_AUTH).status_code == 400
    project_actions = client.get("/xapi/projects/P1/events/actions", auth=as_user("owner")).json()
    assert LOGGING_KEY in {a["action-key"] for a in project_actions}
    assert client.get("/xapi/projects/P1/events/actions", auth=as_user("member")).status_code == 403

    assert client.get("/xapi/events/prefs", auth=as_user("member")).json() == {"enabled": True}
    assert client.put("/xapi/events/prefs", json={"enabled": False}, auth=as_user("owner")).status_code == 403
    assert client.put("/xapi/events/prefs", json={"enabled": "no"}, auth=ADMIN_AUTH).status_code == 400
    assert client.put("/xapi/events/prefs", json={"enabled": False}, auth=ADMIN_AUTH).status_code == 200
    assert client.get("/xapi/events/prefs", auth=ADMIN_AUTH).json() == {"enabled": False}


def test_subscription_without_provider_shows_invalid(client, world, recorder) -> None:
    from flip_imaging.events.actions import register_action_provider, unregister_action_provider

    sid = _create(client, SITE, scan_sub())
    unregister_action_provider(recorder.name)
    try:
        got = client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()
        assert got["valid"] is False and "No action provider" in got["validation-message"]
    finally:
        register_action_provider(recorder)
    got = client.get(f"{SITE}/{sid}", auth=ADMIN_AUTH).json()
    assert got["valid"] is True and got["validation-message"] is None
