"""Orthanc (Debian's /usr/sbin/Orthanc) as the sending PACS: C-STORE pushed by Orthanc, and C-MOVE
requested with DCMTK's movescu with our receiver as the move destination, routed by a pre-registered
relabel entry (as the FLIP agent does before a C-MOVE). Heavy: PostgreSQL backend only."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pydicom
import pytest
from intake_helpers import add_project, archived_files, wait_for, write_study
from orthanc_helpers import Orthanc
from sqlalchemy import select

from flip_imaging.archive.models import Experiment, Subject
from flip_imaging.synthetic import PlantedPHI, SeriesSpec, find_leaks

MOVESCU = "/usr/bin/movescu"


@pytest.fixture
def only_postgres(database_url: str) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("Orthanc end-to-end runs on the PostgreSQL backend only (SQLite covered by DCMTK tests)")


@pytest.fixture
def orthanc(tmp_path: Path, receiver, only_postgres):  # type: ignore[no-untyped-def]
    o = Orthanc(
        tmp_path / "orthanc",
        modalities={"flip": ("FLIP", "127.0.0.1", receiver.port), "movescu": ("MOVESCU", "127.0.0.1", 1)},
    )
    o.start()
    yield o
    o.stop()


def _upload(orthanc: Orthanc, paths: list[Path]) -> str:
    study = None
    for p in paths:
        study = orthanc.upload(p)["ParentStudy"]
    assert study is not None
    return study


def _check_deidentified(ctx, project: str, phi: PlantedPHI, n: int) -> list[Path]:  # type: ignore[no-untyped-def]
    files = wait_for(lambda: (f := archived_files(ctx, project)) and len(f) == n and f, timeout=120)
    tokens = phi.search_tokens()
    for f in files:  # type: ignore[union-attr]
        assert not find_leaks(f.read_bytes(), tokens), f"planted PHI left in {f.name}"
        ds = pydicom.dcmread(f)
        assert ds.pixel_array.size > 0
    return files  # type: ignore[return-value]


def test_orthanc_pushes_study_by_c_store(ctx, orthanc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    phi = PlantedPHI("QL")
    paths = write_study(
        tmp_path / "in",
        phi,
        [SeriesSpec("CT", 8, 64, 64, 1, "CT CHEST"), SeriesSpec("MR", 4, 48, 48, 2, None)],
        route=("P1", "S1", "E1"),
    )
    study = _upload(orthanc, paths)
    r = httpx.post(
        f"{orthanc.url}/modalities/flip/store", json={"Resources": [study], "Synchronous": True}, timeout=120
    )
    assert r.status_code == 200, r.text
    _check_deidentified(ctx, "P1", phi, len(paths))
    with ctx.session() as db:
        exp = db.scalar(select(Experiment).where(Experiment.label == "E1"))
        assert exp is not None and exp.xsi_type == "xnat:mrSessionData"


def test_c_move_from_orthanc_with_relabel_map(ctx, orthanc, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "FLIPPROJ")
    phi = PlantedPHI("QM")
    paths = write_study(tmp_path / "in", phi, [SeriesSpec("CT", 10, 64, 64, 3, "CT ABDOMEN")])
    accession = phi.get("accession_number")
    study_uid = pydicom.dcmread(paths[0]).StudyInstanceUID
    _upload(orthanc, paths)
    # the FLIP agent's step before the C-MOVE: subject = random label, session = accession number
    r = receiver.http.post(
        "/xapi/dicomscp/relabel",
        json={
            "accessionNumber": accession,
            "project": "FLIPPROJ",
            "subject": "RNDSUBJ42",
            "session": accession,
        },
    )
    assert r.status_code == 201, r.text
    move = subprocess.run(
        [
            MOVESCU,
            "-v",
            "-aet",
            "MOVESCU",
            "-aec",
            orthanc.aet,
            "-aem",
            "FLIP",
            "-S",
            "-k",
            "QueryRetrieveLevel=STUDY",
            "-k",
            f"StudyInstanceUID={study_uid}",
            "127.0.0.1",
            str(orthanc.dicom_port),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert move.returncode == 0, move.stderr
    _check_deidentified(ctx, "FLIPPROJ", phi, len(paths))
    with ctx.session() as db:
        exp = db.scalar(select(Experiment).where(Experiment.label == accession))
        assert exp is not None and exp.accession_number == accession
        assert db.get(Subject, exp.subject_pk).label == "RNDSUBJ42"
    used = receiver.http.get("/xapi/dicomscp/relabel").json()
    assert used[0]["used"] is not None
