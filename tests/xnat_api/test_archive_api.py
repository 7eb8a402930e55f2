"""The archive REST API through the in-process client: shapes, permissions, bad input (both backends)."""

from __future__ import annotations

import csv
import io
import tarfile
import zipfile

import pytest
from sqlalchemy import func, select

from flip_imaging.archive.models import File, Project, ProjectMember, Resource
from flip_imaging.events.models import Event

PROJECT_XML = """<?xml version="1.0" encoding="UTF-8"?>
<xnat:projectData xmlns:xnat="http://nrg.wustl.edu/xnat" ID="{id}" secondary_ID="hub-{id}">
  <xnat:name>{name}</xnat:name>
  <xnat:description>FLIP project</xnat:description>
</xnat:projectData>"""


def _session(c, project="P1", subject="S1", label="E1", xsi="xnat:ctSessionData") -> str:  # type: ignore[no-untyped-def]
    assert (
        c.put(f"/data/archive/projects/{project}", params={"xsiType": "xnat:projectData"}).status_code == 200
    )
    r = c.put(f"/data/archive/projects/{project}/subjects/{subject}", params={"xsiType": "xnat:subjectData"})
    assert r.status_code == 200, r.text
    r = c.put(
        f"/data/archive/projects/{project}/subjects/{subject}/experiments/{label}",
        params={"xsiType": xsi, "req_format": "qs", f"{xsi}/date": "2024-05-06"},
    )
    assert r.status_code == 200, r.text
    return r.text


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_listings_objects_and_both_prefixes(admin_client, ctx) -> None:
    c = admin_client
    eid = _session(c)
    assert (
        c.put(
            f"/data/experiments/{eid}/scans/5",
            params={
                "xsiType": "xnat:ctScanData",
                "req_format": "qs",
                "xnat:ctScanData/type": "AXIAL",
                "xnat:ctScanData/frames": "12",
            },
        ).text
        == "5"
    )
    for base in ("/data", "/data/archive"):
        rs = c.get(f"{base}/projects/P1/experiments", params={"format": "json"}).json()["ResultSet"]
        assert rs["totalRecords"] == "1"
        row = rs["Result"][0]
        assert (row["ID"], row["label"], row["xsiType"], row["project"]) == (
            eid,
            "E1",
            "xnat:ctSessionData",
            "P1",
        )
        # by label and by ID, with or without the subject
        for path in (
            f"{base}/projects/P1/experiments/E1",
            f"{base}/projects/P1/experiments/{eid}",
            f"{base}/projects/P1/subjects/S1/experiments/E1",
            f"{base}/experiments/{eid}",
        ):
            item = c.get(path, params={"format": "json"}).json()["items"][0]
            assert item["meta"] == {
                "xsi:type": "xnat:ctSessionData",
                "isHistory": False,
                "start_date": item["meta"]["start_date"],
            }
            assert item["data_fields"]["subject_ID"].startswith("XNAT_S")
            assert item["data_fields"]["date"] == "2024-05-06"
            assert item["children"][0]["field"] == "scans/scan"
    rows = c.get("/data/experiments", params={"project": "P1", "format": "json"}).json()["ResultSet"][
        "Result"
    ]
    assert [r["ID"] for r in rows] == [eid]
    assert (
        c.get("/data/experiments", params={"project": "OTHER", "format": "json"}).json()["ResultSet"][
            "Result"
        ]
        == []
    )
    assert (
        c.get("/data/subjects", params={"format": "json"}).json()["ResultSet"]["Result"][0]["label"] == "S1"
    )
    # columns= and CSV (pyxnat)
    r = c.get("/data/projects/P1/experiments/E1/scans", params={"format": "csv", "columns": "ID,type,frames"})
    assert r.headers["content-type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(r.text)))
    assert parsed == [{"ID": "5", "type": "AXIAL", "frames": "12", "URI": f"/data/experiments/{eid}/scans/5"}]
    empty = c.get("/data/projects/P1/experiments/E1/assessors", params={"format": "csv"}).text
    assert empty.splitlines()[0].startswith("ID,label")
    # XML documents in the xnat namespace
    xml = c.get("/data/projects/P1/experiments/E1", params={"format": "xml"}).text
    assert 'xmlns:xnat="http://nrg.wustl.edu/xnat"' in xml and "<xnat:CTSession" in xml
    assert '<xnat:scan ID="5" xsi:type="xnat:ctScanData"' in xml
    # wildcards filter rows as xnatpy asks
    rows = c.get("/data/projects/P1/subjects", params={"format": "json", "label": "S*"}).json()
    assert rows["ResultSet"]["totalRecords"] == "1"
    assert (
        c.get("/data/projects/P1/subjects", params={"format": "json", "label": "X*"}).json()["ResultSet"][
            "totalRecords"
        ]
        == "0"
    )
    # site information
    assert c.get("/data/version").text.startswith("1.8")
    assert c.get("/xapi/siteConfig/buildInfo").json()["version"] == "1.8.10"
    assert c.get("/xapi/schemas").json() == ["xdat", "xnat"]
    assert 'name="imageScanData"' in c.get("/xapi/schemas/xnat").text
    assert c.get("/data/archive/scan_types").json()["ResultSet"]["Result"] == [{"type": "AXIAL"}]


def test_files_upload_listing_download_and_zips(admin_client, ctx) -> None:
    c = admin_client
    eid = _session(c)
    for scan in ("1", "2"):
        c.put(
            f"/data/experiments/{eid}/scans/{scan}",
            params={"xsiType": "xnat:ctScanData", "xnat:ctScanData/type": f"T{scan}"},
        )
    body = bytes(range(256)) * 40
    r = c.put("/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files/x/1.dcm", content=body)
    assert r.status_code == 200, r.text
    r = c.put(
        "/data/projects/P1/experiments/E1/scans/2/resources/DICOM/files/up.zip",
        params={"extract": "true"},
        content=_zip({"a.dcm": b"A", "d/b.dcm": b"BB"}),
    )
    assert r.status_code == 200, r.text
    tgz = io.BytesIO()
    with tarfile.open(fileobj=tgz, mode="w:gz") as tf:
        info = tarfile.TarInfo("n/vol.nii")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"NII"))
    assert (
        c.put(
            "/data/projects/P1/experiments/E1/scans/2/resources/NIFTI/files/u.tar.gz",
            params={"extract": "true"},
            content=tgz.getvalue(),
        ).status_code
        == 200
    )
    rows = c.get(
        "/data/projects/P1/experiments/E1/scans/2/resources/DICOM/files", params={"format": "json"}
    ).json()["ResultSet"]["Result"]
    assert sorted((r["Name"], r["Size"]) for r in rows) == [("a.dcm", "1"), ("b.dcm", "2")]
    assert rows[0]["URI"].startswith(f"/data/experiments/{eid}/scans/2/resources/DICOM/files/")
    res = c.get("/data/projects/P1/experiments/E1/scans/2/resources", params={"format": "json"}).json()
    by_label = {r["label"]: r for r in res["ResultSet"]["Result"]}
    assert by_label["DICOM"]["file_count"] == "2" and by_label["DICOM"]["file_size"] == "3"
    # across scans
    rows = c.get(
        "/data/projects/P1/experiments/E1/scans/ALL/resources/DICOM/files", params={"format": "json"}
    ).json()["ResultSet"]["Result"]
    assert len(rows) == 3
    # one file, streamed; by resource ID as well as label
    assert c.get("/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files/x/1.dcm").content == body
    dicom_id = c.get("/data/projects/P1/experiments/E1/scans/1/resources", params={"format": "json"}).json()[
        "ResultSet"
    ]["Result"][0]["xnat_abstractresource_id"]
    assert c.get(f"/data/experiments/{eid}/scans/1/resources/{dicom_id}/files/x/1.dcm").content == body
    # zips: one resource, a scan selection, all scans
    z = zipfile.ZipFile(
        io.BytesIO(
            c.get(
                "/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files", params={"format": "zip"}
            ).content
        )
    )
    assert z.namelist() == ["E1/scans/1-T1/resources/DICOM/files/x/1.dcm"]
    assert z.read(z.namelist()[0]) == body
    z = zipfile.ZipFile(
        io.BytesIO(
            c.get(
                "/data/projects/P1/experiments/E1/scans/1,2/resources/DICOM/files", params={"format": "zip"}
            ).content
        )
    )
    assert len(z.namelist()) == 3 and z.testzip() is None
    z = zipfile.ZipFile(
        io.BytesIO(c.get(f"/data/experiments/{eid}/scans/ALL/files", params={"format": "zip"}).content)
    )
    assert "E1/scans/2-T2/resources/NIFTI/files/n/vol.nii" in z.namelist() and len(z.namelist()) == 4
    assert (
        c.get(
            "/data/projects/P1/experiments/E1/scans/ALL/resources/SEG/files", params={"format": "zip"}
        ).status_code
        == 404
    )
    # a catalogued file missing on disk is reported before any byte of the zip is sent
    victim = next((ctx.archive_root).rglob("vol.nii"))
    saved = victim.read_bytes()
    victim.unlink()
    r = c.get(f"/data/experiments/{eid}/scans/ALL/files", params={"format": "zip"})
    assert r.status_code == 500 and "missing" in r.text
    victim.write_bytes(saved)
    # duplicates and overwrite
    url = "/data/projects/P1/experiments/E1/scans/1/resources/DICOM/files/x/1.dcm"
    r = c.put(url, content=b"other")
    assert r.status_code == 409 and "overwrite" in r.text
    assert c.get(url).content == body
    assert c.put(url, params={"overwrite": "true"}, content=b"other").status_code == 200
    assert c.get(url).content == b"other"
    # delete a file and a resource
    assert c.delete(url).status_code == 200
    assert c.get(url).status_code == 404
    assert c.delete("/data/projects/P1/experiments/E1/scans/2/resources/NIFTI").status_code == 200
    assert (
        c.get("/data/projects/P1/experiments/E1/scans/2/resources/NIFTI/files/n/vol.nii").status_code == 404
    )
    with ctx.sessions() as db:
        assert db.scalar(select(func.count()).select_from(Resource).where(Resource.label == "NIFTI")) == 0
    # events published for the changes (transactional outbox)
    with ctx.sessions() as db:
        kinds = {e.event_type.rsplit(".", 1)[-1] for e in db.scalars(select(Event))}
    assert {"ProjectEvent", "SubjectEvent", "SessionEvent", "ScanEvent", "ResourceEvent"} <= kinds


def test_project_creation_xml_extras_and_ownership(client, ctx, make_user) -> None:
    alice = make_user("alice")
    client.auth = alice
    r = client.post(
        "/data/projects",
        content=PROJECT_XML.format(id="FL1", name="Trial:hub-FL-Project"),
        headers={"Content-Type": "text/xml"},
    )
    assert r.status_code == 200, r.text
    with ctx.sessions() as db:
        project = db.scalar(select(Project).where(Project.id == "FL1"))
        assert project.secondary_id == "hub-FL1" and project.description == "FLIP project"
        role = db.scalar(select(ProjectMember.role).where(ProjectMember.project_pk == project.pk))
        assert role == "owner"
    assert client.put("/data/projects/FL1/prearchive_code/4").status_code == 200
    assert client.get("/data/projects/FL1/prearchive_code").text == "4"
    assert client.put("/data/projects/FL1/prearchive_code/7").status_code == 400
    assert client.put("/data/projects/FL1/quarantine_code/1").status_code == 200
    assert client.get("/data/projects/FL1/current_arc").text == "arc001"
    assert client.put("/data/projects/FL1/accessibility/protected").status_code == 200
    assert client.get("/data/projects/FL1/accessibility").text == "protected"
    # duplicates: same ID, same name
    r = client.post(
        "/data/projects", content=PROJECT_XML.format(id="FL1", name="x"), headers={"Content-Type": "text/xml"}
    )
    assert r.status_code == 409
    r = client.post(
        "/data/projects",
        content=PROJECT_XML.format(id="FL2", name="Trial:hub-FL-Project"),
        headers={"Content-Type": "text/xml"},
    )
    assert r.status_code == 409 and "name" in r.text
    # malformed documents
    for bad in (
        "<xnat:projectData",
        "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x/>",
        "<Subject/>",
        PROJECT_XML.format(id="../x", name="y"),
    ):
        r = client.post("/data/projects", content=bad, headers={"Content-Type": "text/xml"})
        assert r.status_code == 400, (bad, r.text)
        assert not r.text.lstrip().startswith("<")
    # anonymous callers cannot create or list
    client.auth = None
    assert (
        client.post(
            "/data/projects",
            content=PROJECT_XML.format(id="FL3", name="z"),
            headers={"Content-Type": "text/xml"},
        ).status_code
        == 401
    )
    assert client.get("/data/projects", params={"format": "json"}).status_code == 401


def test_permissions_by_role(client, ctx, admin_auth, make_user, add_member) -> None:
    client.auth = admin_auth
    eid = _session(client)
    _session(client, project="P2", subject="T1", label="F1")
    users = {name: make_user(name) for name in ("owner1", "member1", "collab1", "outsider")}
    add_member("P1", "owner1", "owner")
    add_member("P1", "member1", "member")
    add_member("P1", "collab1", "collaborator")
    exp = "/data/projects/P1/subjects/S1/experiments/E1"

    client.auth = users["outsider"]
    assert client.get(exp, params={"format": "json"}).status_code == 404
    assert client.get(f"/data/experiments/{eid}", params={"format": "json"}).status_code == 404
    assert client.get("/data/projects", params={"format": "json"}).json()["ResultSet"]["Result"] == []
    assert client.get("/data/experiments", params={"format": "json"}).json()["ResultSet"]["Result"] == []

    client.auth = users["collab1"]
    projects = client.get("/data/projects", params={"format": "json"}).json()["ResultSet"]["Result"]
    assert [p["ID"] for p in projects] == ["P1"]
    assert client.get(exp, params={"format": "json"}).status_code == 200
    assert client.put(f"{exp}/scans/9", params={"xsiType": "xnat:ctScanData"}).status_code == 403
    assert client.put(f"{exp}/resources/R/files/a.txt", content=b"x").status_code == 403

    client.auth = users["member1"]
    assert client.put(f"{exp}/scans/9", params={"xsiType": "xnat:ctScanData"}).status_code == 200
    assert client.put(f"{exp}/scans/9/resources/R/files/a.txt", content=b"x").status_code == 200
    assert client.delete(f"{exp}/scans/9").status_code == 403
    assert client.delete(f"{exp}/scans/9/resources/R/files/a.txt").status_code == 403
    assert client.put("/data/projects/P1/prearchive_code/0").status_code == 403
    assert client.get("/data/projects/P2/subjects", params={"format": "json"}).status_code == 404

    client.auth = users["owner1"]
    assert client.delete(f"{exp}/scans/9", params={"removeFiles": "true"}).status_code == 200
    assert client.put("/data/projects/P1/prearchive_code/0").status_code == 200
    assert client.delete("/data/projects/P1", params={"removeFiles": "true"}).status_code == 200
    assert not (ctx.archive_root / "P1").exists()

    client.auth = None
    assert client.get("/data/projects/P2", params={"format": "json"}).status_code == 401


def test_bad_input_is_refused_and_nothing_is_written(admin_client, ctx) -> None:
    c = admin_client
    eid = _session(c)
    base = f"/data/experiments/{eid}/scans/1/resources/DICOM/files"
    c.put(f"/data/experiments/{eid}/scans/1", params={"xsiType": "xnat:ctScanData"})
    # zip-slip: one bad member fails the whole upload
    r = c.put(
        f"{base}/evil.zip",
        params={"extract": "true"},
        content=_zip({"good.dcm": b"ok", "../../../escape.txt": b"bad"}),
    )
    assert r.status_code == 400, r.text
    r = c.put(f"{base}/evil.zip", params={"extract": "true"}, content=_zip({"/abs.txt": b"bad"}))
    assert r.status_code == 400
    r = c.put(f"{base}/evil.zip", params={"extract": "true"}, content=b"PK\x03\x04 not really a zip")
    assert r.status_code == 400
    # path traversal in the URL itself
    r = c.put(f"{base}/a/%2E%2E/%2E%2E/escape.txt", content=b"bad")
    assert r.status_code in (400, 404)
    # malformed values and types
    assert (
        c.put(
            "/data/projects/P1/subjects/S1/experiments/E2",
            params={"xsiType": "xnat:ctSessionData", "xnat:ctSessionData/date": "31/31/2024"},
        ).status_code
        == 400
    )
    assert (
        c.put("/data/projects/P1/subjects/S1/experiments/E3", params={"xsiType": "xnat:nopeData"}).status_code
        == 400
    )
    assert c.put("/data/projects/P1/subjects/S1/experiments/E4").status_code == 400
    assert c.put("/data/projects/bad%20id").status_code == 400
    assert (
        c.put(
            f"/data/experiments/{eid}/scans/2",
            params={"xsiType": "xnat:ctScanData", "xnat:ctScanData/frames": "many"},
        ).status_code
        == 400
    )
    assert c.get("/data/projects/P1/nonsense").status_code == 404
    assert c.get("/data/projects/P1/experiments/NOPE", params={"format": "json"}).status_code == 404
    # oversized bodies
    ctx.settings.max_upload_bytes = 1000
    r = c.put(f"{base}/big.dcm", content=b"x" * 2000)
    assert r.status_code == 413
    r = c.put(f"{base}/bomb.zip", params={"extract": "true"}, content=_zip({"z.bin": b"\0" * 5000}))
    assert r.status_code in (413, 400)
    with ctx.sessions() as db:
        assert db.scalar(select(func.count()).select_from(File)) == 0
        assert db.scalar(select(func.count()).select_from(Resource)) == 0
    leftovers = [p for p in ctx.archive_root.rglob("*") if p.is_file()]
    assert leftovers == []
    assert not (ctx.archive_root.parent / "escape.txt").exists()


@pytest.mark.parametrize("prefix", ["/data", "/data/archive"])
def test_subject_relabel_and_project_aliases(admin_client, prefix) -> None:
    c = admin_client
    _session(c)
    assert (
        c.put(f"{prefix}/projects/P1", params={"xnat:projectData/aliases/alias": "ALIAS1"}).status_code == 200
    )
    assert (
        c.get(f"{prefix}/projects/ALIAS1", params={"format": "json"}).json()["items"][0]["data_fields"]["ID"]
        == "P1"
    )
    assert c.put(f"{prefix}/projects/P1/subjects/S1", params={"label": "S1new"}).status_code == 200
    assert c.get(f"{prefix}/projects/P1/subjects/S1new", params={"format": "json"}).status_code == 200
    r = c.put(f"{prefix}/projects/P1/subjects/S2", params={"xsiType": "xnat:subjectData"})
    assert r.status_code == 200
    assert c.put(f"{prefix}/projects/P1/subjects/S2", params={"label": "S1new"}).status_code == 409


def test_resources_at_every_level_and_head(admin_client) -> None:
    c = admin_client
    eid = _session(c)
    c.put(f"/data/experiments/{eid}/scans/1", params={"xsiType": "xnat:ctScanData"})
    c.put(f"/data/experiments/{eid}/assessors/SEG1", params={"xsiType": "xnat:imageAssessorData"})
    owners = {
        "project": "/data/projects/P1",
        "subject": "/data/projects/P1/subjects/S1",
        "experiment": f"/data/experiments/{eid}",
        "scan": f"/data/experiments/{eid}/scans/1",
        "assessor": f"/data/experiments/{eid}/assessors/SEG1/out",
    }
    for level, base in owners.items():
        assert c.put(f"{base}/resources/R_{level}", params={"format": "NIFTI"}).status_code == 200
        assert (
            c.put(f"{base}/resources/R_{level}/files/{level}.txt", content=level.encode()).status_code == 200
        )
        rows = c.get(f"{base}/resources", params={"format": "json"}).json()["ResultSet"]["Result"]
        assert [(r["label"], r["format"], r["file_count"]) for r in rows] == [(f"R_{level}", "NIFTI", "1")]
        files = c.get(f"{base}/resources/R_{level}/files", params={"format": "json"}).json()["ResultSet"][
            "Result"
        ]
        assert [f["Name"] for f in files] == [f"{level}.txt"]
        assert c.get(files[0]["URI"]).content == level.encode()
        head = c.head(files[0]["URI"])
        assert head.status_code == 200 and head.headers["content-length"] == str(len(level))
    assessors = c.get(f"/data/experiments/{eid}/assessors", params={"format": "json"}).json()["ResultSet"]
    assert assessors["Result"][0]["label"] == "SEG1"
    item = c.get(f"/data/experiments/{eid}/assessors/SEG1", params={"format": "json"}).json()["items"][0]
    assert item["data_fields"]["imageSession_ID"] == eid


def test_experiment_under_project_needs_subject_and_admin_only_creation(
    client, ctx, admin_auth, make_user
) -> None:
    from flip_imaging.prefs import set_pref
    from flip_imaging.xnat_api.common import PREF_NON_ADMIN_PROJECTS

    client.auth = admin_auth
    _session(client)
    r = client.put("/data/projects/P1/experiments/E9", params={"xsiType": "xnat:mrSessionData"})
    assert r.status_code == 400 and "subject" in r.text
    r = client.put(
        "/data/projects/P1/experiments/E9",
        params={"xsiType": "xnat:mrSessionData", "xnat:mrSessionData/subject_ID": "S1"},
    )
    assert r.status_code == 200 and r.text.startswith("XNAT_E")
    rows = client.get("/data/projects/P1/subjects/S1/experiments", params={"format": "json"}).json()
    assert sorted(x["label"] for x in rows["ResultSet"]["Result"]) == ["E1", "E9"]
    assert client.put("/data/projects/P1/subjects/S1/experiments/E9/scans/1").text == "1"
    scan = client.get("/data/projects/P1/experiments/E9/scans/1", params={"format": "json"}).json()
    assert scan["items"][0]["meta"]["xsi:type"] == "xnat:mrScanData"

    with ctx.session() as db:
        set_pref(db, PREF_NON_ADMIN_PROJECTS, False)
    client.auth = make_user("bob")
    assert client.put("/data/projects/BOB1").status_code == 403
    client.auth = admin_auth
    assert client.put("/data/projects/BOB1").status_code == 200


def test_relabelled_folder_is_not_reused(admin_client) -> None:
    c = admin_client
    eid = _session(c)
    c.put(f"/data/experiments/{eid}/scans/1", params={"xsiType": "xnat:ctScanData"})
    assert (
        c.put(f"/data/experiments/{eid}/scans/1/resources/DICOM/files/a.dcm", content=b"old").status_code
        == 200
    )
    assert (
        c.put("/data/projects/P1/subjects/S1/experiments/E1", params={"label": "E1-renamed"}).status_code
        == 200
    )
    r = c.put("/data/projects/P1/subjects/S1/experiments/E1", params={"xsiType": "xnat:ctSessionData"})
    assert r.status_code == 409
    assert c.get(f"/data/experiments/{eid}/scans/1/resources/DICOM/files/a.dcm").content == b"old"
