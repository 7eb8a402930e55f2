"""`/data/services/import` (DICOM-zip, gradual-DICOM): the receiver's pipeline; reply = session URI."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pydicom
from intake_helpers import ADMIN_AUTH, add_project, archived_files, write_study

from flip_imaging.synthetic import PlantedPHI, SeriesSpec, find_leaks


def _zip(paths: list[Path], extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in paths:
            zf.write(p, f"study/{p.name}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def _add_member(ctx, username: str, project: str, role: str) -> None:  # type: ignore[no-untyped-def]
    from sqlalchemy import select

    from flip_imaging.archive.models import Project, ProjectMember
    from flip_imaging.auth.models import User
    from flip_imaging.auth.passwords import hash_password

    with ctx.session() as db:
        user = User(
            username=username,
            email=f"{username}@example.org",
            password_hash=hash_password("PASSWORD"),
            enabled=True,
            verified=True,
        )
        db.add(user)
        db.flush()
        project_pk = db.scalar(select(Project.pk).where(Project.id == project))
        db.add(ProjectMember(project_pk=project_pk, user_pk=user.pk, role=role))


def test_zip_import_to_archive_with_labels(ctx, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    phi = PlantedPHI("QH")
    paths = write_study(
        tmp_path, phi, [SeriesSpec("CT", 5, 32, 32, 1, "CT A"), SeriesSpec("MR", 3, 32, 32, 2)]
    )
    r = client.post(
        "/data/services/import",
        params={
            "import-handler": "DICOM-zip",
            "dest": "/archive/projects/P1/subjects/SUBJ7/experiments/ACC7",
        },
        content=_zip(paths),
        auth=ADMIN_AUTH,
        headers={"content-type": "application/zip"},
    )
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P1/subjects/SUBJ7/experiments/ACC7"
    files = archived_files(ctx, "P1")
    assert len(files) == 8
    tokens = phi.search_tokens()
    for f in files:
        assert not find_leaks(f.read_bytes(), tokens)
        assert str(pydicom.dcmread(f).PatientName) == "SUBJ7"


def test_gradual_dicom_routed_by_tags_and_prearchive(ctx, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P2")
    paths = write_study(
        tmp_path, PlantedPHI("QI"), [SeriesSpec("CT", 2, 32, 32, 4, "CT B")], route=("P2", "S2", "E2")
    )
    r = client.post(
        "/data/services/import",
        params={"import-handler": "gradual-DICOM"},
        content=paths[0].read_bytes(),
        auth=ADMIN_AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P2/subjects/S2/experiments/E2"
    r = client.post(
        "/data/services/import",
        params={"import-handler": "gradual-DICOM", "dest": "/prearchive/projects/P2"},
        content=paths[1].read_bytes(),
        auth=ADMIN_AUTH,
    )
    assert r.status_code == 200, r.text
    assert r.text.startswith("/prearchive/projects/P2/") and r.text.endswith("/E2")
    listing = client.get("/data/prearchive/projects/P2", params={"format": "json"}, auth=ADMIN_AUTH).json()
    rows = listing["ResultSet"]["Result"]
    assert [row["url"] for row in rows] == [r.text]
    detail = client.get(f"/data{r.text}", params={"format": "json"}, auth=ADMIN_AUTH)
    assert detail.status_code == 200
    assert detail.json()["ResultSet"]["Result"][0]["scans"][0]["files"] == 1
    archived = client.post("/data/services/archive", params={"src": r.text}, auth=ADMIN_AUTH)
    assert archived.status_code == 200, archived.text
    assert archived.text == "/data/archive/projects/P2/subjects/S2/experiments/E2"
    assert len(archived_files(ctx, "P2")) == 2
    assert client.get("/data/prearchive/projects/P2", auth=ADMIN_AUTH).json()["ResultSet"]["Result"] == []


def test_bad_uploads_are_refused_with_reasons(ctx, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    paths = write_study(tmp_path, PlantedPHI("QJ"), [SeriesSpec("CT", 2, 32, 32, 1, "CT")])
    params = {"import-handler": "DICOM-zip", "dest": "/archive/projects/P1"}
    slip = _zip(paths, {"../../evil.dcm": paths[0].read_bytes()})
    r = client.post("/data/services/import", params=params, content=slip, auth=ADMIN_AUTH)
    assert r.status_code == 400 and "unsafe path" in r.text and "../../evil.dcm" in r.text
    r = client.post(
        "/data/services/import", params=params, content=_zip(paths, {"notes.txt": b"hello"}), auth=ADMIN_AUTH
    )
    assert r.status_code == 400 and "notes.txt" in r.text
    r = client.post("/data/services/import", params=params, content=b"not a zip", auth=ADMIN_AUTH)
    assert r.status_code == 400 and "not a zip" in r.text
    r = client.post(
        "/data/services/import", params={**params, "import-handler": "SI"}, content=b"x", auth=ADMIN_AUTH
    )
    assert r.status_code == 400
    r = client.post(
        "/data/services/import",
        params={**params, "dest": "/archive/projects/NOPE"},
        content=_zip(paths),
        auth=ADMIN_AUTH,
    )
    assert r.status_code == 404
    assert archived_files(ctx, "P1") == []
    assert not any((ctx.settings.spool_dir / "incoming").iterdir())


def test_import_permissions(ctx, client, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    _add_member(ctx, "mem", "P1", "member")
    _add_member(ctx, "col", "P1", "collaborator")
    paths = write_study(tmp_path, PlantedPHI("QK"), [SeriesSpec("CT", 1, 32, 32, 1, "CT")])
    params = {"import-handler": "gradual-DICOM", "dest": "/archive/projects/P1/subjects/S/experiments/E"}
    body = paths[0].read_bytes()
    assert client.post("/data/services/import", params=params, content=body).status_code == 401
    assert (
        client.post(
            "/data/services/import", params=params, content=body, auth=("col", "PASSWORD")
        ).status_code
        == 403
    )
    r = client.post("/data/services/import", params=params, content=body, auth=("mem", "PASSWORD"))
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/P1/subjects/S/experiments/E"
    assert len(archived_files(ctx, "P1")) == 1
