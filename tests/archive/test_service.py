"""Catalog queries behind the REST API: lookups by ID or label, scan selectors, statistics (both backends)."""

from __future__ import annotations

import pytest

from flip_imaging.archive import service as svc
from flip_imaging.archive.models import Project
from flip_imaging.archive.store import ArchiveWriter


def _populate(ctx) -> None:  # type: ignore[no-untyped-def]
    with ctx.session() as db:
        db.add(Project(id="P1", name="P1", extra={}))
    with ArchiveWriter(ctx) as w:
        project = w.project("P1")
        subject, _ = w.ensure_subject(project, "S1")
        exp, _ = w.ensure_experiment(project, subject, "ACC1", xsi_type="xnat:ctSessionData")
        for sid, stype in (("10", "AXIAL"), ("2", "AXIAL"), ("3", "LOCALIZER")):
            scan, _ = w.ensure_scan(exp, sid, xsi_type="xnat:ctScanData", type=stype)
            res, _ = w.ensure_resource(scan, "DICOM")
            w.add_file(res, f"{sid}/a.dcm", b"x" * int(sid))


def test_lookups_selectors_and_stats(ctx) -> None:  # type: ignore[no-untyped-def]
    _populate(ctx)
    with ctx.sessions() as db:
        project = svc.project_by_key(db, "P1")
        exp = svc.find_experiment(db, project, "ACC1")
        assert exp is not None and svc.find_experiment(db, project, exp.id).pk == exp.pk
        assert svc.experiment_by_id(db, exp.id).label == "ACC1"
        assert svc.find_experiment(db, project, "nope") is None
        subject = svc.find_subject(db, project, "S1")
        assert svc.find_subject(db, project, subject.id).pk == subject.pk
        assert [s.scan_id for s in svc.list_scans(db, exp)] == ["2", "3", "10"]  # natural order
        assert [s.scan_id for s in svc.select_scans(db, exp, "ALL")] == ["2", "3", "10"]
        assert [s.scan_id for s in svc.select_scans(db, exp, "AXIAL")] == ["2", "10"]
        assert [s.scan_id for s in svc.select_scans(db, exp, "3,10")] == ["3", "10"]
        resources = svc.list_resources(db, svc.list_scans(db, exp))
        stats = svc.resource_stats(db, resources)
        assert sorted(stats.values()) == [(1, 2), (1, 3), (1, 10)]
        res = resources[0]
        assert svc.find_resource(db, svc.find_scan(db, exp, "2"), str(res.xnat_id)).pk == res.pk
        files = svc.list_files(db, resources)
        assert [f.path for _r, f in files] == ["2/a.dcm", "3/a.dcm", "10/a.dcm"]
        assert svc.scan_types(db, [project]) == ["AXIAL", "LOCALIZER"]


@pytest.mark.parametrize(
    "value,expected", [("2024-01-31", "2024-01-31"), ("01/31/2024", "2024-01-31"), ("20240131", "2024-01-31")]
)
def test_dates(value: str, expected: str) -> None:
    assert svc.parse_date(value).isoformat() == expected


def test_bad_dates_and_times() -> None:
    with pytest.raises(ValueError):
        svc.parse_date("31/31/2024")
    with pytest.raises(ValueError):
        svc.parse_time("25:99")
    assert svc.parse_time("13:45").isoformat() == "13:45:00"
    assert svc.canonical_type("XNAT:MRSESSIONDATA", svc.SESSION_TYPES) == "xnat:mrSessionData"
    assert svc.scan_type_for_session("xnat:petSessionData") == "xnat:petScanData"
