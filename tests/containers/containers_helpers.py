"""Helpers for Container Service tests (importable as ``containers_helpers``): users, projects, series, scans.

Series come from :mod:`flip_imaging.synthetic` (real, convertible CT instances); scans are archived with
the real :class:`~flip_imaging.archive.store.ArchiveWriter` and announced with the same ``ScanEvent``
payload the receiver publishes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dcm2niix
from sqlalchemy import select

from flip_imaging.archive.models import File, Project, ProjectMember, Resource, Scan
from flip_imaging.archive.store import ArchiveWriter, resource_dir
from flip_imaging.auth import service as auth_service
from flip_imaging.context import AppContext
from flip_imaging.synthetic.phi import PlantedPHI
from flip_imaging.synthetic.series import make_ct_series, write_series
from flip_imaging.waiting import WaitTimeout, wait_until

PASSWORD = "Correct-Horse-9"
ADMIN_AUTH = ("admin", "admin-test-Password-1")


def add_user(ctx: AppContext, username: str) -> None:
    with ctx.session() as db:
        auth_service.create_user(
            db,
            username,
            PASSWORD,
            first_name=username.title(),
            last_name="Tester",
            email=f"{username}@example.org",
        )


def add_project(ctx: AppContext, project_id: str, members: dict[str, str]) -> None:
    with ctx.session() as db:
        project = Project(id=project_id, name=f"{project_id} name", accessibility="private")
        db.add(project)
        db.flush()
        for username, role in members.items():
            user = auth_service.require_user_named(db, username)
            db.add(ProjectMember(project_pk=project.pk, user_pk=user.pk, role=role))


def write_ct(folder: Path, n: int = 12, size: int = 64, marker: str = "QA", number: int = 1) -> list[Path]:
    """``n`` synthetic CT instances of ``size``x``size`` in ``folder``."""
    return write_series(folder, make_ct_series(n, size, size, phi=PlantedPHI(marker), series_number=number))


def archive_scan(
    ctx: AppContext,
    project_id: str,
    files: list[Path],
    *,
    label: str = "ACC1",
    subject: str = "SUBJ1",
    scan_id: str = "1",
    publish: bool = True,
    resource: str = "DICOM",
) -> tuple[str, str]:
    """Archive ``files`` as scan ``scan_id`` of experiment ``label`` as the receiver would: (exp id, scan)."""
    with ArchiveWriter(ctx) as w:
        project = w.project(project_id)
        subj, _ = w.ensure_subject(project, subject)
        exp, _ = w.ensure_experiment(project, subj, label, xsi_type="xnat:ctSessionData", modality="CT")
        scan, _ = w.ensure_scan(
            exp,
            scan_id,
            xsi_type="xnat:ctScanData",
            type="AXIAL",
            modality="CT",
            series_description="CT AXIAL",
        )
        res, _ = w.ensure_resource(scan, resource, format=resource, content="RAW")
        for f in files:
            w.add_file(res, f.name, f)
        if publish:
            uri = f"/archive/experiments/{exp.id}/scans/{scan.scan_id}"
            payload = {
                "id": scan.scan_id,
                "label": scan.scan_id,
                "xsiType": scan.xsi_type,
                "uri": uri,
                "integer-id": scan.pk,
                "scan-type": scan.type,
                "project-id": project.id,
                "session-id": exp.id,
                "session-label": exp.label,
                "modality": scan.modality,
                "series-description": scan.series_description,
            }
            w.publish("ScanEvent", "CREATED", payload, project_id=project.id, object_uri=uri)
        return exp.id, scan.scan_id


def scan_resource_files(ctx: AppContext, exp_id: str, scan_id: str, label: str) -> list[Path]:
    from flip_imaging.archive.models import Experiment

    with ctx.session() as db:
        scan = db.scalar(
            select(Scan)
            .join(Experiment, Experiment.pk == Scan.experiment_pk)
            .where(Experiment.id == exp_id, Scan.scan_id == scan_id)
        )
        assert scan is not None
        res = db.scalar(select(Resource).where(Resource.scan_pk == scan.pk, Resource.label == label))
        if res is None:
            return []
        folder = resource_dir(ctx.archive_root, res)
        return [folder / f.path for f in db.scalars(select(File).where(File.resource_pk == res.pk))]


def reference_conversion(
    dicom_dir: Path, out_dir: Path, options: tuple[str, ...] = ("-b", "y", "-z", "y", "-f", "scan_%s")
) -> float:
    """Run dcm2niix directly (same binary and options as the builtin command); seconds taken."""
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run(
        [dcm2niix.bin, *options, "-o", str(out_dir), str(dicom_dir)],
        check=True,
        capture_output=True,
        env={"HOME": str(out_dir.parent), "PATH": "/usr/bin:/bin"},
    )
    return time.perf_counter() - started


def wait_for(predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.1) -> Any:
    """Poll ``predicate`` until truthy (returned); AssertionError when ``timeout`` passes."""
    try:
        return wait_until(predicate, timeout, interval)
    except WaitTimeout:
        raise AssertionError(f"condition not met within {timeout} s") from None
