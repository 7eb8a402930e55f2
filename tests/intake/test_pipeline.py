"""The pipeline without the network: routing rules, prearchive codes, project scripts, the empty-scan check
(in-process: files are put into the spool as the receiver would; both database backends)."""

from __future__ import annotations

import io
from copy import deepcopy
from pathlib import Path

import pydicom
import pytest
from intake_helpers import ADMIN_AUTH, add_project, archived_files
from sqlalchemy import select

from flip_imaging.intake.assembly import ArchiveFailed, archive_session, finish_prearchive
from flip_imaging.intake.models import DicomQuarantine, DicomReceiver, DicomSession
from flip_imaging.intake.pipeline import Pipeline, due_sessions
from flip_imaging.intake.routing import comment_value, parse_expressions
from flip_imaging.synthetic import PlantedPHI, SeriesSpec, make_series


def spool_series(pipe: Pipeline, spec: SeriesSpec, marker: str, source: str = "r0", **attrs: str) -> int:
    n = 0
    for ds in make_series(spec, PlantedPHI(marker)):
        for k, v in attrs.items():
            setattr(ds, k, v)
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        pipe.spool.write(source, [buf.getvalue()])
        n += 1
    return n


def drain(pipe: Pipeline) -> list[str]:
    while pipe.process_batch().processed:
        pass
    uris = []
    with pipe.ctx.session() as db:
        due = due_sessions(db, 0.0, now=1e12)
        kinds = {pk: db.get(DicomSession, pk).destination for pk in due}
    for pk in due:
        if kinds[pk] == "archive":
            uris.append(archive_session(pipe, pk))
        else:
            finish_prearchive(pipe, pk)
    return uris


def test_comment_and_expression_parsing() -> None:
    text = "scan for study; Project: P_1, subject:ABC-9 session :  X1"
    assert comment_value(text, "Project") == "P_1"
    assert comment_value(text, "Subject") == "ABC-9"
    assert comment_value(text, "Session") == "X1"
    assert comment_value("NoProject:here", "Project") is None
    exprs = parse_expressions("(0008,1030):^RESEARCH (\\w+)\n\n(0010,4000):Proj=(\\w+):1")
    assert [e[0] for e in exprs] == [0x00081030, 0x00104000]
    with pytest.raises(ValueError):
        parse_expressions("not an expression")


def test_routing_expressions_of_the_receiver(ctx) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "STUDYX")
    with ctx.session() as db:
        rec = DicomReceiver(
            ae_title="R",
            port=11112,
            routing_expressions_enabled=True,
            whitelist=[],
            project_routing_expression="(0008,1030):^RESEARCH (\\w+)",
            subject_routing_expression="(0010,0020):(\\d+)",
            session_routing_expression="(0008,103E):(.*)",
        )
        db.add(rec)
        db.flush()
        source = f"r{rec.pk}"
    pipe = Pipeline(ctx)
    spool_series(
        pipe,
        SeriesSpec("CT", 2, 16, 16, 1, "SESSLABEL"),
        "QO",
        source,
        StudyDescription="RESEARCH STUDYX",
        PatientID="ID12345",
    )
    assert drain(pipe) == ["/data/archive/projects/STUDYX/subjects/12345/experiments/SESSLABEL"]


def test_prearchive_code_0_and_5(ctx) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "HOLD", prearchive_code=0)
    add_project(ctx, "OVER", prearchive_code=5)
    pipe = Pipeline(ctx)
    spec = SeriesSpec("CT", 2, 16, 16, 1, "CT")
    spool_series(pipe, spec, "QP", PatientComments="Project: HOLD Subject: S Session: E")
    assert drain(pipe) == []
    with ctx.session() as db:
        held = db.scalar(select(DicomSession).where(DicomSession.project == "HOLD"))
        assert held.state == "READY" and held.destination == "prearchive"
    assert archived_files(ctx, "HOLD") == []
    # code 5: a re-sent instance overwrites the archived file (same name, new content)
    spool_series(pipe, spec, "QQ", PatientComments="Project: OVER Subject: S Session: E")
    drain(pipe)
    first = {f.name: f.stat().st_ino for f in archived_files(ctx, "OVER")}
    spool_series(pipe, spec, "QQ", PatientComments="Project: OVER Subject: S Session: E")
    drain(pipe)
    again = {f.name: f.stat().st_ino for f in archived_files(ctx, "OVER")}
    assert set(again) == set(first) and all(again[n] != first[n] for n in first)


def test_project_script_applied_when_archiving_into_the_project(ctx, client) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "PS")
    script = 'version "6.1"\n(0008,103E) := "PROJECT SCRIPT RAN"\n'
    assert client.get("/xapi/anonymize/projects/PS", auth=ADMIN_AUTH).status_code == 204
    assert client.get("/xapi/anonymize/projects/NOPE", auth=ADMIN_AUTH).status_code == 404
    assert client.put("/xapi/anonymize/projects/PS", content="(0008", auth=ADMIN_AUTH).status_code == 400
    assert client.put("/xapi/anonymize/projects/PS", content=script, auth=ADMIN_AUTH).status_code == 200
    assert client.get("/xapi/anonymize/projects/PS", auth=ADMIN_AUTH).text == script
    assert client.get("/xapi/anonymize/projects/PS/enabled", auth=ADMIN_AUTH).json() is True
    assert client.put("/xapi/anonymize/projects/PS", content=script).status_code == 401
    pipe = Pipeline(ctx)
    spool_series(pipe, SeriesSpec("CT", 1, 16, 16, 1, "CT"), "QR", PatientComments="Project: PS")
    drain(pipe)
    (f,) = archived_files(ctx, "PS")
    ds = pydicom.dcmread(f)
    assert ds.SeriesDescription == "PROJECT SCRIPT RAN"
    xnat = [item for item in ds.DeidentificationMethodCodeSequence if item.CodingSchemeDesignator == "XNAT"]
    assert len(xnat) == 2 and xnat[0].CodeValue != xnat[1].CodeValue  # site script, then project script
    assert (
        client.put(
            "/xapi/anonymize/projects/PS/enabled", params={"enable": "false"}, auth=ADMIN_AUTH
        ).status_code
        == 200
    )
    assert client.get("/xapi/anonymize/projects/PS/enabled", auth=ADMIN_AUTH).json() is False


def test_scan_without_readable_files_fails_the_session(ctx, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    pipe = Pipeline(ctx)
    spool_series(pipe, SeriesSpec("CT", 2, 16, 16, 1, "CT"), "QS", PatientComments="Project: P1")
    while pipe.process_batch().processed:
        pass
    for copy in (pipe.prearchive_root).rglob("*.dcm"):
        copy.write_bytes(b"")  # the de-identified copies became unreadable
    with ctx.session() as db:
        (pk,) = due_sessions(db, 0.0, now=1e12)
    with pytest.raises(ArchiveFailed, match="no readable DICOM file"):
        archive_session(pipe, pk)
    assert archived_files(ctx, "P1") == []
    with ctx.session() as db:
        assert db.get(DicomSession, pk).state == "ERROR"
        entry = db.scalar(select(DicomQuarantine).where(DicomQuarantine.session_pk == pk))
        assert entry.kind == "session" and "no readable DICOM file" in entry.reason


def test_prearchive_move_and_delete(ctx, client) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "DEST")
    pipe = Pipeline(ctx)
    spool_series(pipe, SeriesSpec("CT", 2, 16, 16, 1, "CT"), "QT", PatientComments="Project: NOWHERE")
    spool_series(pipe, SeriesSpec("MR", 1, 16, 16, 2, "MR"), "QU", PatientComments="Project: NOWHERE")
    drain(pipe)
    rows = client.get("/data/prearchive/projects/Unassigned", auth=ADMIN_AUTH).json()["ResultSet"]["Result"]
    assert len(rows) == 2 and all(r["status"] == "READY" for r in rows)
    first, second = rows
    r = client.post(
        "/data/services/prearchive/move", params={"src": first["url"], "newProject": "DEST"}, auth=ADMIN_AUTH
    )
    assert r.status_code == 200, r.text
    moved = client.get("/data/prearchive/projects/DEST", auth=ADMIN_AUTH).json()["ResultSet"]["Result"]
    assert [m["name"] for m in moved] == [first["name"]]
    held = list((ctx.settings.spool_dir / "held").iterdir())
    assert len(held) == 3  # raw copies stay in the spool until archived or deleted
    r = client.post("/data/services/prearchive/delete", params={"src": second["url"]}, auth=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    assert len(list((ctx.settings.spool_dir / "held").iterdir())) == 2
    r = client.post("/data/services/archive", params={"src": moved[0]["url"]}, auth=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    assert len(archived_files(ctx, "DEST")) == 2
    assert not any((ctx.settings.spool_dir / "held").iterdir())
    assert (
        client.post(
            "/data/services/archive", params={"src": "/prearchive/projects/X/1/2"}, auth=ADMIN_AUTH
        ).status_code
        == 404
    )
    bad = client.post("/data/services/archive", params={"src": "nonsense"}, auth=ADMIN_AUTH)
    assert bad.status_code == 400


def test_crash_between_commit_and_renames_is_finished_at_restart(ctx) -> None:  # type: ignore[no-untyped-def]
    """The batch committed, the raw files were still in work/ (the renames to held/ never ran)."""
    add_project(ctx, "P1")
    pipe = Pipeline(ctx)
    n = spool_series(pipe, SeriesSpec("CT", 3, 16, 16, 1, "CT"), "QV", PatientComments="Project: P1")
    assert pipe.process_batch().processed == n
    held = pipe.spool.held
    for raw in list(held.iterdir()):
        raw.rename(pipe.spool.work / raw.name)  # as if the process died right after the commit
    for copy in pipe.prearchive_root.rglob("*.dcm"):
        copy.write_bytes(b"")  # and the unsynced de-identified copies were lost
    restarted = Pipeline(ctx)
    restarted.recover()
    assert len(list(held.iterdir())) == n and not any(pipe.spool.incoming.iterdir())
    assert restarted.process_batch().processed == 0
    assert len(drain(restarted)) == 1
    files = archived_files(ctx, "P1")
    assert len(files) == n and all(pydicom.dcmread(f).pixel_array.shape == (16, 16) for f in files)


def test_dates_shift_with_the_site_secret_not_the_published_placeholder(ctx, client) -> None:  # type: ignore[no-untyped-def]
    """The site script users can read holds a placeholder secret; the server applies its own, so a
    subject's shift cannot be recomputed from the published script and the subject label."""
    from flip_imaging.dicomedit import Script
    from flip_imaging.dicomedit.scripts import PLACEHOLDER_SECRET, flip_site_script, with_site_secret

    secret = "site-secret-for-this-test-0123"
    ctx.settings.date_shift_secret = secret
    add_project(ctx, "DS")
    site_text = client.get("/xapi/anonymize/site", auth=ADMIN_AUTH).text
    assert PLACEHOLDER_SECRET in site_text and secret not in site_text
    pipe = Pipeline(ctx)
    spool_series(pipe, SeriesSpec("CT", 1, 16, 16, 1, "CT"), "QS",
                 PatientComments="Project: DS Subject: SUBJ7 Session: E7", StudyDate="20200115")
    drain(pipe)
    (f,) = archived_files(ctx, "DS")
    archived_date = pydicom.dcmread(f).StudyDate
    original = next(iter(make_series(SeriesSpec("CT", 1, 16, 16, 1, "CT"), PlantedPHI("QT"))))
    original.StudyDate = "20200115"
    variables = {"project": "DS", "subject": "SUBJ7", "session": "E7"}
    expected, placeholder = deepcopy(original), deepcopy(original)
    Script.parse(with_site_secret(flip_site_script(), secret)).apply(expected, variables=variables)
    Script.parse(flip_site_script()).apply(placeholder, variables=variables)
    assert archived_date == expected.StudyDate != "20200115"
    assert archived_date != placeholder.StudyDate
    published = list(pipe.spool.scripts.iterdir())
    assert published and all(secret in p.read_text() for p in published)  # private spool only


def test_generated_site_secret_is_private_and_stable(ctx) -> None:  # type: ignore[no-untyped-def]
    import stat

    from flip_imaging.intake.scriptstore import SECRET_FILE, site_secret

    ctx.settings.date_shift_secret = ""
    first = site_secret(ctx.settings)
    path = ctx.settings.data_dir / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert site_secret(ctx.settings) == first and len(first) >= 32
    path.write_text("short\n")
    with pytest.raises(ValueError, match="date-shift secret"):
        site_secret(ctx.settings)
