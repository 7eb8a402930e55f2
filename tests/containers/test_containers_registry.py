"""Command registry, wrapper enablement and launch refusals over REST (both backends)."""

from __future__ import annotations

import copy

import pytest
from containers_helpers import ADMIN_AUTH, PASSWORD, archive_scan, write_ct

from flip_imaging.containers.registry import builtin_command_json, validate_command


def _dcm2niix(client) -> dict:
    commands = client.get("/xapi/commands", params={"name": "dcm2niix"}, auth=ADMIN_AUTH).json()
    assert len(commands) == 1
    return commands[0]


def test_fresh_installation_has_dcm2niix_enabled(world, client) -> None:
    cmd = _dcm2niix(client)
    assert cmd["command-line"] == "dcm2niix [BIDS] [OTHER_OPTIONS] -o /output /input"
    bids = next(i for i in cmd["inputs"] if i["name"] == "bids")
    assert (bids["type"], bids["command-line-flag"], bids["true-value"], bids["false-value"]) == (
        "boolean",
        "-b",
        "y",
        "n",
    )
    assert any(i["name"] == "other-options" for i in cmd["inputs"])
    (wrapper,) = cmd["xnat"]
    assert wrapper["name"] == "dcm2niix-scan" and wrapper["contexts"] == ["xnat:imageScanData"]
    assert wrapper["external-inputs"][0]["name"] == "scan"
    assert wrapper["derived-inputs"][0]["provides-files-for-command-mount"] == "dicom-in"
    assert wrapper["output-handlers"][0]["label"] == "NIFTI"
    assert client.get(f"/xapi/wrappers/{wrapper['id']}/enabled", auth=ADMIN_AUTH).json() is True
    assert (
        client.get(f"/xapi/commands/{cmd['id']}/wrappers/dcm2niix-scan/enabled", auth=ADMIN_AUTH).json()
        is True
    )
    r = client.get(
        f"/xapi/projects/P1/commands/{cmd['id']}/wrappers/dcm2niix-scan/enabled", auth=("collab", PASSWORD)
    )
    assert r.json()["enabled-for-site"] is True and r.json()["enabled-for-project"] is False
    assert r.json()["project"] == "P1"
    assert client.get("/xapi/commands", auth=("collab", PASSWORD)).status_code == 200
    assert client.get("/xapi/commands").status_code == 401


def _command() -> dict:
    data = builtin_command_json("dcm2niix.json")
    data["name"], data["version"] = "dcm2niix-custom", "2"
    return data


BAD = [
    (lambda d: d.pop("name"), "'name' is required"),
    (lambda d: d.pop("command-line"), "'command-line' is required"),
    (lambda d: d.update({"command-line": "dcm2niix #NOPE# /input"}), "#NOPE#"),
    (lambda d: d["inputs"][0].update({"type": "tensor"}), "unknown type 'tensor'"),
    (lambda d: d["outputs"][0].update({"mount": "nowhere"}), "'mount' must name one of the mounts"),
    (lambda d: d["xnat"][0].update({"contexts": ["xnat:fooData"]}), "unknown context 'xnat:fooData'"),
    (lambda d: d["xnat"][0]["external-inputs"][0].update({"matcher": "'DICOM' in in @"}), "invalid matcher"),
    (
        lambda d: d["xnat"][0]["derived-inputs"][0].update({"derived-from-wrapper-input": "ghost"}),
        "'derived-from-wrapper-input'",
    ),
    (
        lambda d: d["xnat"][0]["output-handlers"][0].update({"accepts-command-output": "x"}),
        "'accepts-command-output'",
    ),
    (lambda d: d["inputs"].append(copy.deepcopy(d["inputs"][0])), "two entries named 'bids'"),
]


@pytest.mark.parametrize("mutate,reason", BAD, ids=[b[1] for b in BAD])
def test_invalid_commands_are_refused_with_reasons(world, client, mutate, reason) -> None:
    data = _command()
    mutate(data)
    assert validate_command(data)
    r = client.post("/xapi/commands", auth=ADMIN_AUTH, json=data)
    assert r.status_code == 400
    assert any(reason in x for x in r.json()["reasons"]), r.json()


def test_command_lifecycle(world, client) -> None:
    assert client.post("/xapi/commands", auth=ADMIN_AUTH, content=b"{nope").status_code == 400
    assert client.post("/xapi/commands", auth=ADMIN_AUTH, json=[1]).status_code == 400
    assert client.post("/xapi/commands", auth=("owner", PASSWORD), json=_command()).status_code == 403
    r = client.post("/xapi/commands", auth=ADMIN_AUTH, json=_command())
    assert r.status_code == 201 and isinstance(r.json(), int)
    cid = r.json()
    again = client.post("/xapi/commands", auth=ADMIN_AUTH, json=_command())
    assert again.status_code == 400 and "already exists" in again.text
    cmd = client.get(f"/xapi/commands/{cid}", auth=ADMIN_AUTH).json()
    wid = cmd["xnat"][0]["id"]
    assert client.get(f"/xapi/wrappers/{wid}/enabled", auth=ADMIN_AUTH).json() is False
    assert client.put(f"/xapi/wrappers/{wid}/enabled", auth=("owner", PASSWORD)).status_code == 403
    assert client.put(f"/xapi/wrappers/{wid}/enabled", auth=ADMIN_AUTH).status_code == 200
    assert client.get(f"/xapi/wrappers/{wid}/enabled", auth=ADMIN_AUTH).json() is True
    assert (
        client.put(f"/xapi/commands/{cid}/wrappers/dcm2niix-scan/disabled", auth=ADMIN_AUTH).status_code
        == 200
    )
    assert client.get(f"/xapi/wrappers/{wid}/enabled", auth=ADMIN_AUTH).json() is False
    # project enablement: owners only
    assert (
        client.put(f"/xapi/projects/P1/wrappers/{wid}/enabled", auth=("member", PASSWORD)).status_code == 403
    )
    assert (
        client.put(f"/xapi/projects/P1/wrappers/{wid}/enabled", auth=("other", PASSWORD)).status_code == 404
    )
    assert (
        client.put(f"/xapi/projects/P1/wrappers/{wid}/enabled", auth=("owner", PASSWORD)).status_code == 200
    )
    state = client.get(f"/xapi/projects/P1/wrappers/{wid}/enabled", auth=("owner", PASSWORD)).json()
    assert state == {
        "enabled-for-site": False,
        "enabled-for-project": True,
        "project": "P1",
        "command-id": cid,
        "wrapper-id": wid,
        "wrapper-name": "dcm2niix-scan",
    }
    # update keeps the wrapper id, then delete
    cmd["description"] = "changed"
    assert client.post(f"/xapi/commands/{cid}", auth=ADMIN_AUTH, json=cmd).status_code == 200
    updated = client.get(f"/xapi/commands/{cid}", auth=ADMIN_AUTH).json()
    assert updated["description"] == "changed" and updated["xnat"][0]["id"] == wid
    bad = dict(cmd, **{"command-line": "x #MISSING#"})
    assert client.post(f"/xapi/commands/{cid}", auth=ADMIN_AUTH, json=bad).status_code == 400
    assert client.delete(f"/xapi/commands/{cid}", auth=("owner", PASSWORD)).status_code == 403
    assert client.delete(f"/xapi/commands/{cid}", auth=ADMIN_AUTH).status_code == 204
    assert client.get(f"/xapi/commands/{cid}", auth=ADMIN_AUTH).status_code == 404
    assert client.get(f"/xapi/wrappers/{wid}/enabled", auth=ADMIN_AUTH).status_code == 404
    assert client.get("/xapi/commands/abc", auth=ADMIN_AUTH).status_code == 404


def _session_command(client) -> int:
    data = {
        "name": "session-thing",
        "image": "x/y:1",
        "command-line": "echo hi",
        "xnat": [
            {
                "name": "on-session",
                "contexts": ["xnat:imageSessionData"],
                "external-inputs": [{"name": "session", "type": "Session", "required": True}],
            },
            {
                "name": "on-mr-scans",
                "contexts": ["xnat:mrScanData"],
                "external-inputs": [{"name": "scan", "type": "Scan", "required": True}],
            },
        ],
    }
    r = client.post("/xapi/commands", auth=ADMIN_AUTH, json=data)
    assert r.status_code == 201, r.text
    return r.json()


def test_bad_launches_are_refused_with_reasons(world, client, tmp_path) -> None:
    exp_id, scan_id = archive_scan(world, "P1", write_ct(tmp_path / "s", n=3), publish=False)
    uri = f"/archive/experiments/{exp_id}/scans/{scan_id}"
    cmd = _dcm2niix(client)
    wid = cmd["xnat"][0]["id"]
    member = ("member", PASSWORD)

    def launch(path: str, body: dict, auth=member):
        r = client.post(path, auth=auth, json=body)
        if r.headers.get("content-type", "").startswith("application/json") and r.status_code != 200:
            assert r.json()["status"] == "failure" and r.json()["message"]
        return r

    # unknown wrapper ids and names
    assert launch("/xapi/wrappers/99999/root/scan/launch", {"scan": uri}).status_code == 404
    assert launch("/xapi/wrappers/abc/root/scan/launch", {"scan": uri}).status_code == 404
    assert (
        launch(f"/xapi/commands/{cmd['id']}/wrappers/nope/root/scan/launch", {"scan": uri}).status_code == 404
    )
    # not enabled in the project yet
    r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": uri})
    assert r.status_code == 400 and "not enabled in project P1" in r.json()["message"]
    client.put(f"/xapi/projects/P1/wrappers/{wid}/enabled", auth=ADMIN_AUTH)
    # bad roots and values
    r = launch(f"/xapi/wrappers/{wid}/root/session/launch", {"session": uri})
    assert r.status_code == 400 and "no external input named 'session'" in r.json()["message"]
    assert launch(f"/xapi/wrappers/{wid}/root/scan/launch", {}).status_code == 400
    assert launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": "/etc/passwd"}).status_code == 400
    r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": f"/archive/experiments/{exp_id}/scans/77"})
    assert r.status_code == 404
    r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": f"/archive/experiments/{exp_id}"})
    assert r.status_code == 400 and "must be a scan URI" in r.json()["message"]
    r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": uri, "bids": "maybe"})
    assert r.status_code == 200  # booleans are lenient as in XNAT: anything but true/yes/y/1 is false
    for escape in ("-o /tmp/elsewhere", "-o ../..", "-f ~/x"):
        r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": uri, "other-options": escape})
        assert r.status_code == 400 and "may not contain paths" in r.json()["message"]
    r = client.post(
        f"/xapi/wrappers/{wid}/root/scan/launch",
        auth=member,
        content=b"[1,2]",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    # wrappers for other contexts on a scan
    sid = _session_command(client)
    other = client.get(f"/xapi/commands/{sid}", auth=ADMIN_AUTH).json()["xnat"]
    for w in other:
        client.put(f"/xapi/wrappers/{w['id']}/enabled", auth=ADMIN_AUTH)
        client.put(f"/xapi/projects/P1/wrappers/{w['id']}/enabled", auth=ADMIN_AUTH)
    on_session = next(w for w in other if w["name"] == "on-session")
    r = launch(f"/xapi/wrappers/{on_session['id']}/root/session/launch", {"session": uri})
    assert r.status_code == 400 and "scans only" in r.json()["message"]
    on_mr = next(w for w in other if w["name"] == "on-mr-scans")
    r = launch(f"/xapi/wrappers/{on_mr['id']}/root/scan/launch", {"scan": uri})
    assert r.status_code == 400 and "xnat:ctScanData" in r.json()["message"]
    # permissions: collaborators and outsiders may not launch
    assert (
        launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": uri}, ("collab", PASSWORD)).status_code
        == 403
    )
    assert (
        launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": uri}, ("other", PASSWORD)).status_code
        == 404
    )
    assert client.post(f"/xapi/wrappers/{wid}/root/scan/launch", json={"scan": uri}).status_code == 401
    r = launch(f"/xapi/projects/P2/wrappers/{wid}/root/scan/launch", {"scan": uri}, ("other", PASSWORD))
    assert r.status_code == 400 and "not in project P2" in r.json()["message"]
    # a scan without DICOM does not match the wrapper
    e2, s2 = archive_scan(
        world, "P1", write_ct(tmp_path / "t", n=2), label="ACC9", resource="SECONDARY", publish=False
    )
    r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": f"/archive/experiments/{e2}/scans/{s2}"})
    assert r.status_code == 400 and "does not match" in r.json()["message"]
    # site-disabled wrapper
    client.put(f"/xapi/wrappers/{wid}/disabled", auth=ADMIN_AUTH)
    r = launch(f"/xapi/wrappers/{wid}/root/scan/launch", {"scan": uri})
    assert r.status_code == 400 and "disabled on this site" in r.json()["message"]
