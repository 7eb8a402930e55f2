"""xnatpy 0.8.1, unchanged, against the live server: the whole round trip a FLIP trust and a researcher do.

The client builds its classes from our ``/xapi/schemas`` documents, so this also proves the XSDs.
"""

from __future__ import annotations

import gc
import hashlib
import io
import os
import zipfile
from pathlib import Path

import pytest
import xnat
from xnat import exceptions


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def test_xnatpy_round_trip(live_server, admin_auth, tmp_path: Path) -> None:
    user, password = admin_auth
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        _create_navigate_download(session, tmp_path)
    _relabel_and_delete(live_server, user, password)


def _create_navigate_download(session, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if True:
        assert session.xnat_version.startswith("1.8")
        # create a project the way xnatpy does (PUT with req_format=qs)
        project = session.classes.ProjectData(parent=session, id_="PX1", name="Project X1")
        session.projects.clearcache()
        assert "PX1" in session.projects
        project = session.projects["PX1"]
        assert project.name == "Project X1"

        subject = session.classes.SubjectData(parent=project, label="SUBJ01")
        experiment = session.classes.MrSessionData(parent=subject, label="ACC0001")
        experiment.date = "2024-03-04"
        scan = session.classes.MrScanData(
            parent=experiment, id="2", type="T1w", series_description="t1 mprage"
        )
        resource = session.classes.ResourceCatalog(parent=scan, label="DICOM", format="DICOM")

        payload = os.urandom(300_000)
        resource.upload(_write(tmp_path / "src" / "1.dcm", payload), "1.dcm")
        resource.upload_data(b"second file", "sub/2.dcm")
        # a directory upload: xnatpy sends a .tar.gz with extract=true
        _write(tmp_path / "dir" / "a.nii", b"nifti-a")
        _write(tmp_path / "dir" / "deep" / "b.json", b"{}")
        nifti = scan.create_resource("NIFTI", format="NIFTI")
        nifti.upload_dir(tmp_path / "dir")

        # navigate fresh, by label and by ID
        session.clearcache()
        project = session.projects["PX1"]
        subject = project.subjects["SUBJ01"]
        exp_by_label = project.experiments["ACC0001"]
        exp_by_id = project.experiments[exp_by_label.id]
        assert exp_by_label.id == exp_by_id.id
        assert exp_by_label.id.startswith("XNAT_E")
        assert subject.experiments["ACC0001"].id == exp_by_label.id
        assert exp_by_label.subject_id == subject.id
        assert str(exp_by_label.date) == "2024-03-04"
        assert exp_by_label.__xsi_type__ == "xnat:mrSessionData"
        scan = exp_by_label.scans["2"]
        assert scan.type == "T1w" and scan.series_description == "t1 mprage"
        assert exp_by_label.scans["T1w"].id == "2"
        assert sorted(r.label for r in scan.resources.values()) == ["DICOM", "NIFTI"]
        dicom = scan.resources["DICOM"]
        assert dicom.file_count == 2 and dicom.file_size == len(payload) + len(b"second file")
        assert sorted(f.path for f in dicom.files.values()) == ["1.dcm", "sub/2.dcm"]
        assert sorted(f.path for f in scan.resources["NIFTI"].files.values()) == ["a.nii", "deep/b.json"]
        assert session.experiments[exp_by_label.id].label == "ACC0001"

        # download one file, a resource zip, and all scans of the experiment
        target = tmp_path / "one.dcm"
        dicom.files["1.dcm"].download(str(target), verbose=False)
        assert target.read_bytes() == payload
        zip_path = tmp_path / "dicom.zip"
        dicom.download(str(zip_path), verbose=False)
        with zipfile.ZipFile(zip_path) as zf:
            names = zf.namelist()
            assert any(n.endswith("/resources/DICOM/files/1.dcm") for n in names)
            one = next(n for n in names if n.endswith("1.dcm"))
            assert hashlib.sha256(zf.read(one)).digest() == hashlib.sha256(payload).digest()
        out_dir = tmp_path / "resource-dir"
        dicom.download_dir(str(out_dir), verbose=False)
        assert len([p for p in out_dir.rglob("*") if p.is_file()]) == 2
        session_dir = tmp_path / "session"
        exp_by_label.download_dir(str(session_dir), verbose=False)
        got = sorted(str(p.relative_to(session_dir)) for p in session_dir.rglob("*") if p.is_file())
        assert got == sorted(
            [
                "ACC0001/scans/2-T1w/resources/DICOM/files/1.dcm",
                "ACC0001/scans/2-T1w/resources/DICOM/files/sub/2.dcm",
                "ACC0001/scans/2-T1w/resources/NIFTI/files/a.nii",
                "ACC0001/scans/2-T1w/resources/NIFTI/files/deep/b.json",
            ]
        )
        buf = io.BytesIO()
        session.download_stream(exp_by_label.fulluri + "/scans/ALL/resources/NIFTI/files", buf, format="zip")
        assert sorted(zipfile.ZipFile(buf).namelist()) == [
            "ACC0001/scans/2-T1w/resources/NIFTI/files/a.nii",
            "ACC0001/scans/2-T1w/resources/NIFTI/files/deep/b.json",
        ]

        # an image assessor with an out resource (FLIP's segmentations)
        # xnatpy 0.8.1's create_assessor sends this PUT and then fails on its own cache (KeyError 'id_',
        # whatever the server): send the same request, then navigate to the new assessor
        session.put(
            f"{exp_by_label.fulluri}/assessors/SEG1",
            query={"xsiType": "xnat:imageAssessorData", "label": "SEG1", "req_format": "qs"},
        )
        exp_by_label.clearcache()
        assessor = exp_by_label.assessors["SEG1"]
        seg = assessor.create_resource("SEG")
        seg.upload_data(b"mask", "mask.nii.gz")
        session.clearcache()
        exp = session.projects["PX1"].experiments["ACC0001"]
        assert [f.path for f in exp.assessors["SEG1"].resources["SEG"].files.values()] == ["mask.nii.gz"]


def _relabel_and_delete(live_server: str, user: str, password: str) -> None:
    # relabel, then delete a file, a scan, the subject and the project. Fresh connections and a garbage
    # collection first: xnatpy re-reads every live listing (of any session) on delete, and listings still
    # alive from above would name objects deleted since.
    gc.collect()
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        session.projects["PX1"].experiments["ACC0001"].label = "ACC0001B"
        session.clearcache()
        assert "ACC0001B" in session.projects["PX1"].experiments
        session.projects["PX1"].experiments["ACC0001B"].scans["2"].resources["DICOM"].files[
            "sub/2.dcm"
        ].delete()
        session.clearcache()
        files = session.projects["PX1"].experiments["ACC0001B"].scans["2"].resources["DICOM"].files
        assert [f.path for f in files.values()] == ["1.dcm"]
        del files
    gc.collect()
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        session.projects["PX1"].experiments["ACC0001B"].scans["2"].delete()
    gc.collect()
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        assert len(session.projects["PX1"].experiments["ACC0001B"].scans) == 0
        session.projects["PX1"].subjects["SUBJ01"].delete()
    gc.collect()
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        assert len(session.projects["PX1"].experiments) == 0
        session.projects["PX1"].delete()
    gc.collect()
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        assert "PX1" not in session.projects


def test_xnatpy_errors_surface(live_server, admin_auth) -> None:
    user, password = admin_auth
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        with pytest.raises(exceptions.XNATResponseError):
            session.get_json("/data/projects/NOPE")
        with pytest.raises(KeyError):
            session.projects["NOPE"]


def test_xnatpy_import_dicom_zip(live_server, admin_auth, tmp_path: Path) -> None:
    """``session.services.import_`` (the DICOM helper's route) hands back an experiment we then serve."""
    from flip_imaging.synthetic import make_ct_series, write_series

    paths = write_series(tmp_path / "dcm", make_ct_series(4, rows=32, cols=32))
    zip_path = tmp_path / "study.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        for p in paths:
            zf.write(p, f"study/{p.name}")
    user, password = admin_auth
    with xnat.connect(live_server, user=user, password=password, loglevel="ERROR") as session:
        session.put("/data/archive/projects/IMP1", query={"xsiType": "xnat:projectData"})
        experiment = session.services.import_(
            zip_path,
            project="IMP1",
            subject="SUBJ7",
            experiment="ACC7",
            import_handler="DICOM-zip",
            content_type="application/zip",
        )
        assert experiment.label == "ACC7"
        assert experiment.__xsi_type__ == "xnat:ctSessionData"
        scans = list(experiment.scans.values())
        assert len(scans) == 1
        assert scans[0].resources["DICOM"].file_count == 4
        out = tmp_path / "download"
        experiment.download_dir(str(out), verbose=False)
        assert len([p for p in out.rglob("*.dcm")]) == 4
