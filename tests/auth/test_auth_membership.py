"""Project membership: /data/projects/{p}/users, /xapi/users/{u}/groups, /xapi/access/projects."""

from __future__ import annotations

import csv
import io

import pytest
from auth_helpers import PASSWORD, add_project, add_user, admin_auth

OWNER, MEMBER, COLLAB, OUTSIDER = (("owner", PASSWORD), ("member", PASSWORD), ("collab", PASSWORD),
                                   ("outsider", PASSWORD))


def _rows(client, auth, project="P1", base="/data/projects"):
    r = client.get(f"{base}/{project}/users", params={"format": "json"}, auth=auth)
    assert r.status_code == 200, r.text
    return {row["login"]: row for row in r.json()["ResultSet"]["Result"]}


def test_listing_rows_and_formats(client, team) -> None:
    rows = _rows(client, COLLAB)
    assert set(rows) == {"owner", "member", "collab"}
    assert rows["owner"]["GROUP_ID"] == "P1_owner" and rows["owner"]["displayname"] == "Owners"
    assert rows["collab"]["displayname"] == "Collaborators" and rows["member"]["displayname"] == "Members"
    assert rows["member"]["email"] == "member@example.org" and rows["member"]["xdat_user_id"].isdigit()
    assert {"firstname", "lastname"} <= set(rows["member"])
    assert _rows(client, admin_auth(team), base="/data/archive/projects") == rows
    text = client.get("/data/projects/P1/users", params={"format": "csv"}, auth=MEMBER).text
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert {r["login"]: r["displayname"] for r in parsed} == {"owner": "Owners", "member": "Members",
                                                              "collab": "Collaborators"}


def test_listing_visibility(client, team) -> None:
    assert client.get("/data/projects/P1/users").status_code == 401
    assert client.get("/data/projects/P1/users", auth=OUTSIDER).status_code == 404
    assert client.get("/data/projects/NOPE/users", auth=admin_auth(team)).status_code == 404
    add_project(team, "PUB", {"owner": "owner"}, accessibility="public")
    assert client.get("/data/projects/PUB/users", auth=OUTSIDER).status_code == 200


@pytest.mark.parametrize("group", ["Members", "member", "members", "P1_member"])
def test_owner_adds_with_any_group_spelling(client, team, group) -> None:
    r = client.put(f"/data/projects/P1/users/{group}/outsider", auth=OWNER)
    assert r.status_code == 200
    assert _rows(client, OWNER)["outsider"]["GROUP_ID"] == "P1_member"
    assert client.get("/data/projects/P1/users", auth=OUTSIDER).status_code == 200


def test_only_owners_and_admins_manage(client, team) -> None:
    for who, expected in ((None, 401), (OUTSIDER, 404), (COLLAB, 403), (MEMBER, 403)):
        assert client.put("/data/projects/P1/users/Members/outsider", auth=who).status_code == expected
        assert client.delete("/data/projects/P1/users/Collaborators/collab", auth=who).status_code == expected
    assert "outsider" not in _rows(client, OWNER)
    assert client.put("/data/archive/projects/P1/users/Collaborators/outsider", auth=admin_auth(team)) \
        .status_code == 200
    assert _rows(client, OWNER)["outsider"]["displayname"] == "Collaborators"


def test_put_moves_between_groups_and_delete_removes(client, team) -> None:
    assert client.put("/data/projects/P1/users/Owners/member", auth=OWNER).status_code == 200
    rows = _rows(client, OWNER)
    assert rows["member"]["GROUP_ID"] == "P1_owner" and len(rows) == 3  # moved, not duplicated
    # wrong group: nothing happens
    assert client.delete("/data/projects/P1/users/Members/collab", auth=OWNER).status_code == 200
    assert "collab" in _rows(client, OWNER)
    assert client.delete("/data/projects/P1/users/Collaborators/collab", auth=OWNER).status_code == 200
    assert "collab" not in _rows(client, OWNER)
    assert client.get("/data/projects/P1/users", auth=COLLAB).status_code == 404


def test_users_by_email_and_id_and_lists(client, team) -> None:
    add_user(team, "extra")
    r = client.put("/data/projects/P1/users/Members/outsider@example.org,extra", auth=OWNER)
    assert r.status_code == 200
    rows = _rows(client, OWNER)
    assert rows["outsider"]["displayname"] == rows["extra"]["displayname"] == "Members"
    uid = rows["extra"]["xdat_user_id"]
    assert client.put(f"/data/projects/P1/users/Collaborators/{uid}", auth=OWNER).status_code == 200
    assert _rows(client, OWNER)["extra"]["displayname"] == "Collaborators"


def test_unknown_user_or_group(client, team) -> None:
    r = client.put("/data/projects/P1/users/Members/ghost,outsider", auth=OWNER)
    assert r.status_code == 404 and "ghost" in r.text
    assert "outsider" not in _rows(client, OWNER)  # all or nothing
    assert client.put("/data/projects/P1/users/Wizards/outsider", auth=OWNER).status_code == 404


def test_last_owner_cannot_leave(client, team) -> None:
    r = client.delete("/data/projects/P1/users/Owners/owner", auth=OWNER)
    assert r.status_code == 409 and "only owner" in r.text
    assert client.put("/data/projects/P1/users/Members/owner", auth=admin_auth(team)).status_code == 409
    assert client.put("/data/projects/P1/users/Owners/member", auth=OWNER).status_code == 200
    assert client.delete("/data/projects/P1/users/Owners/owner", auth=OWNER).status_code == 200
    assert client.put("/data/projects/P1/users/Members/outsider", auth=OWNER).status_code == 404


def test_disabled_members_hidden_unless_asked(client, team) -> None:
    assert client.put("/xapi/users/collab/enabled/false", auth=admin_auth(team)).status_code == 200
    assert "collab" not in _rows(client, OWNER)
    r = client.get("/data/projects/P1/users", params={"format": "json", "DISPLAY_HIDDEN_USERS": "true"},
                   auth=OWNER)
    assert "collab" in {row["login"] for row in r.json()["ResultSet"]["Result"]}


def test_xapi_groups(client, team) -> None:
    assert client.get("/xapi/users/member/groups", auth=MEMBER).json() == ["P1_member"]
    assert client.get("/xapi/users/member/groups", auth=COLLAB).status_code == 403
    assert client.put("/xapi/users/outsider/groups/P1_collaborator", auth=MEMBER).status_code == 403
    assert client.put("/xapi/users/outsider/groups/P1_collaborator", auth=OUTSIDER).status_code == 404
    assert client.put("/xapi/users/outsider/groups/P1_collaborator", auth=OWNER).status_code == 200
    assert client.get("/xapi/users/outsider/groups", auth=admin_auth(team)).json() == ["P1_collaborator"]
    assert client.put("/xapi/users/outsider/groups/NOPE_owner", auth=admin_auth(team)).status_code == 404
    assert client.put("/xapi/users/outsider/groups/P1_wizard", auth=admin_auth(team)).status_code == 404
    assert client.put("/xapi/users/ghost/groups/P1_member", auth=admin_auth(team)).status_code == 404
    # a user may leave a group themself (as XNAT); others need to own the project
    assert client.delete("/xapi/users/member/groups/P1_member", auth=COLLAB).status_code == 403
    assert client.delete("/xapi/users/outsider/groups/P1_collaborator", auth=OUTSIDER).status_code == 200
    assert client.get("/xapi/users/outsider/groups", auth=OUTSIDER).json() == []
    assert client.delete("/xapi/users/member/groups/P1_member", auth=OWNER).status_code == 200
    assert client.delete("/xapi/users/owner/groups/P1_owner", auth=OWNER).status_code == 409


def test_access_projects(client, team) -> None:
    add_project(team, "P2", {"member": "owner"})
    assert client.get("/xapi/access/projects").status_code == 401
    assert client.get("/xapi/access/projects", auth=MEMBER).json() == [{"ID": "P1", "role": "member"},
                                                                       {"ID": "P2", "role": "owner"}]
    assert client.get("/xapi/access/projects", auth=OUTSIDER).json() == []
    assert client.get("/xapi/access/projects", auth=admin_auth(team)).json() == [
        {"ID": "P1", "role": "owner"}, {"ID": "P2", "role": "owner"}]


def test_unsupported_format(client, team) -> None:
    assert client.get("/data/projects/P1/users", params={"format": "html"}, auth=OWNER).status_code == 400
