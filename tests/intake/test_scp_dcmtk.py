"""The receiver driven by DCMTK's echoscu/storescu against the live server (both database backends)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
from intake_helpers import (
    ECHOSCU,
    add_project,
    archived_files,
    storescu,
    wait_for,
    write_study,
)
from sqlalchemy import select

from flip_imaging.archive.models import Experiment, Scan, Subject
from flip_imaging.events.models import Event
from flip_imaging.netutil import free_port
from flip_imaging.synthetic import PlantedPHI, SeriesSpec, find_leaks


def echo(port: int, aet: str = "ECHOSCU", aec: str = "FLIP") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ECHOSCU, "-v", "-aet", aet, "-aec", aec, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_echo_and_store_deidentified_study(ctx, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    assert echo(receiver.port).returncode == 0
    phi = PlantedPHI("QA")
    specs = [
        SeriesSpec("CT", 6, 64, 64, 1, "CT CHEST AXIAL 5mm"),
        SeriesSpec("MR", 4, 48, 48, 2, None),
        SeriesSpec("CT", 3, 64, 64, 3, None),
    ]
    paths = write_study(tmp_path / "in", phi, specs, route=("P1", "SUBJ01", "ACC0001"))
    run = storescu(receiver.port, paths)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("Received Store Response (Success)") == len(paths)

    def archived() -> bool:
        with ctx.session() as db:
            return (
                len(archived_files(ctx, "P1")) == len(paths)
                and db.scalar(select(Experiment).where(Experiment.label == "ACC0001")) is not None
            )

    wait_for(archived, timeout=60)
    tokens = phi.search_tokens()
    files = archived_files(ctx, "P1")
    for f in files:
        data = f.read_bytes()
        assert not find_leaks(data, tokens), f"PHI left in {f.name}"
        ds = pydicom.dcmread(f)
        items = ds.DeidentificationMethodCodeSequence
        assert items[-1].CodingSchemeDesignator == "XNAT"
        assert items[-1].CodeMeaning == "XNAT DicomEdit 6 Script"
        assert items[-1].CodingSchemeVersion == "1.0"
        assert ds.pixel_array.shape in ((64, 64), (48, 48))
    with ctx.session() as db:
        exp = db.scalar(select(Experiment).where(Experiment.label == "ACC0001"))
        assert exp.xsi_type == "xnat:mrSessionData"
        assert exp.accession_number == phi.get("accession_number")
        subject = db.get(Subject, exp.subject_pk)
        assert subject.label == "SUBJ01"
        scans = {s.scan_id: s for s in db.scalars(select(Scan).where(Scan.experiment_pk == exp.pk))}
        assert set(scans) == {"1", "2", "3"}
        assert scans["1"].xsi_type == "xnat:ctScanData" and scans["2"].xsi_type == "xnat:mrScanData"
        assert scans["1"].type == "CT CHEST AXIAL 5mm"
        events = list(db.scalars(select(Event)))
        kinds = sorted((e.event_type.rsplit(".", 1)[-1], e.status) for e in events)
        assert kinds.count(("ScanEvent", "CREATED")) == 3
        assert ("SessionEvent", "CREATED") in kinds
        assert kinds.count(("ResourceEvent", "CREATED")) == 3
        scan_event = next(e for e in events if e.event_type.endswith("ScanEvent"))
        for key in (
            "id",
            "label",
            "xsiType",
            "uri",
            "integer-id",
            "scan-type",
            "project-id",
            "session-id",
            "modality",
            "series-description",
            "resources",
        ):
            assert key in scan_event.payload
        assert scan_event.payload["project-id"] == "P1"
    # raw bytes are gone from the spool once archived
    spool = ctx.settings.spool_dir
    wait_for(lambda: not any(any((spool / d).iterdir()) for d in ("incoming", "work", "held")), timeout=10)


def test_late_files_merge_and_duplicates_are_not_stored_twice(ctx, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    phi = PlantedPHI("QB")
    paths = write_study(
        tmp_path / "in", phi, [SeriesSpec("CT", 4, 32, 32, 1, "CT HEAD")], route=("P1", "S1", "E1")
    )
    assert storescu(receiver.port, paths[:2]).returncode == 0
    wait_for(lambda: len(archived_files(ctx, "P1")) == 2)
    # the rest, plus a re-send of the first two (duplicates, prearchive code 4: never overwritten)
    assert storescu(receiver.port, paths).returncode == 0
    wait_for(lambda: len(archived_files(ctx, "P1")) == 4)

    def merged() -> bool:
        with ctx.session() as db:
            return any(
                e.status == "MERGED"
                for e in db.scalars(select(Event))
                if e.event_type.endswith("SessionEvent")
            )

    wait_for(merged)
    wait_for(lambda: not any((ctx.settings.spool_dir / "held").iterdir()), timeout=30)
    assert len(archived_files(ctx, "P1")) == 4
    with ctx.session() as db:
        assert len(list(db.scalars(select(Experiment)))) == 1


def test_whitelist_refuses_unknown_calling_ae(ctx, receiver) -> None:  # type: ignore[no-untyped-def]
    r = receiver.http.put(
        f"/xapi/dicomscp/{receiver.id}", json={"whitelistEnabled": True, "whitelist": ["GOODSCU"]}
    )
    assert r.status_code == 200, r.text
    assert echo(receiver.port, aet="GOODSCU").returncode == 0
    bad = echo(receiver.port, aet="BADSCU")
    assert bad.returncode != 0
    assert "Rejected" in bad.stderr or "rejected" in bad.stderr.lower()


def test_whitelist_entries_with_an_address(ctx, receiver) -> None:  # type: ignore[no-untyped-def]
    """``AETITLE@address`` admits that AE title from that address only (the tests call from 127.0.0.1)."""
    url = f"/xapi/dicomscp/{receiver.id}"
    r = receiver.http.put(url, json={"whitelistEnabled": True, "whitelist": ["GOODSCU@127.0.0.1"]})
    assert r.status_code == 200, r.text
    assert echo(receiver.port, aet="GOODSCU").returncode == 0
    assert echo(receiver.port, aet="OTHERSCU").returncode != 0
    r = receiver.http.put(url, json={"whitelist": ["GOODSCU@192.0.2.10", "OTHERSCU"]})
    assert r.status_code == 200, r.text
    assert echo(receiver.port, aet="GOODSCU").returncode != 0  # right AE title, wrong address
    assert echo(receiver.port, aet="OTHERSCU").returncode == 0  # no address: any host
    for bad in (["@127.0.0.1"], ["GOODSCU@"], ["A" * 17]):
        r = receiver.http.put(url, json={"whitelist": bad})
        assert r.status_code == 400, (bad, r.text)
    assert receiver.http.get(url).json()["whitelist"] == ["GOODSCU@192.0.2.10", "OTHERSCU"]


def test_receivers_change_without_restart(ctx, receiver) -> None:  # type: ignore[no-untyped-def]
    http = receiver.http
    assert echo(receiver.port).returncode == 0
    assert http.put(f"/xapi/dicomscp/{receiver.id}/enabled/false").status_code == 200
    assert echo(receiver.port).returncode != 0
    assert http.get(f"/xapi/dicomscp/{receiver.id}/enabled").json() is False
    assert http.put(f"/xapi/dicomscp/{receiver.id}/enabled/true").status_code == 200
    assert echo(receiver.port).returncode == 0
    new_port = free_port()
    r = http.put(f"/xapi/dicomscp/{receiver.id}", json={"port": new_port, "aeTitle": "OTHER"})
    assert r.status_code == 200
    assert echo(new_port, aec="OTHER").returncode == 0
    assert echo(receiver.port).returncode != 0
    second = http.post("/xapi/dicomscp", json={"aeTitle": "SECOND", "port": free_port()})
    assert second.status_code == 200
    body = second.json()
    assert body["enabled"] is True and body["anonymizationEnabled"] is True and body["directArchive"] is False
    assert echo(body["port"], aec="SECOND").returncode == 0
    assert http.get(f"/xapi/dicomscp/title/SECOND/{body['port']}").json()["id"] == body["id"]
    assert len(http.get("/xapi/dicomscp").json()) == 2
    assert http.post("/xapi/dicomscp", json={"aeTitle": "SECOND", "port": body["port"]}).status_code == 409
    assert http.post("/xapi/dicomscp", json={"aeTitle": "", "port": 104}).status_code == 400
    assert http.delete(f"/xapi/dicomscp/{body['id']}").status_code == 200
    assert echo(body["port"], aec="SECOND").returncode != 0
    assert http.get(f"/xapi/dicomscp/{body['id']}").status_code == 404
    assert http.put("/xapi/dicomscp/stop").status_code == 200
    assert echo(new_port, aec="OTHER").returncode != 0
    assert http.put("/xapi/dicomscp/start").status_code == 200
    assert echo(new_port, aec="OTHER").returncode == 0
