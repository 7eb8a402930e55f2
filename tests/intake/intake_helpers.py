"""Helpers for the DICOM intake tests: synthetic studies, DCMTK runs, waiting, catalog queries."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydicom.dataset import Dataset

from flip_imaging.archive.models import Project
from flip_imaging.synthetic import PlantedPHI, SeriesSpec, make_series, write_series
from flip_imaging.waiting import WaitTimeout, wait_until

STORESCU = "/usr/bin/storescu"
ADMIN_AUTH = ("admin", "admin-test-Password-1")  # tests/conftest.py's admin (no tests package to import)
ECHOSCU = "/usr/bin/echoscu"


def wait_for(predicate: Callable[[], object], timeout: float = 60.0, interval: float = 0.1) -> object:
    """Poll ``predicate`` until truthy (returned); AssertionError when ``timeout`` passes."""
    try:
        return wait_until(predicate, timeout, interval)
    except WaitTimeout:
        raise AssertionError(f"condition not met within {timeout}s") from None


def add_project(ctx, project_id: str, prearchive_code: int = 4) -> None:  # type: ignore[no-untyped-def]
    with ctx.session() as db:
        db.add(Project(id=project_id, name=f"{project_id} name", prearchive_code=prearchive_code))


def routed(ds: Dataset, project: str, subject: str, session: str) -> Dataset:
    """Put XNAT routing keys into Patient Comments (read from the original header)."""
    ds.PatientComments = f"Project: {project} Subject: {subject} Session: {session}"
    return ds


def write_study(
    directory: Path, phi: PlantedPHI, specs: list[SeriesSpec], route: tuple[str, str, str] | None = None
) -> list[Path]:
    paths: list[Path] = []
    for spec in specs:
        datasets = make_series(spec, phi)
        if route is not None:
            datasets = (routed(ds, *route) for ds in datasets)
        paths += write_series(directory, datasets)
    return paths


def storescu(
    port: int,
    paths: list[Path] | Path,
    aet: str = "STORESCU",
    aec: str = "FLIP",
    timeout: float = 300,
    extra: list[str] | None = None,
) -> subprocess.CompletedProcess[str]:
    args = [STORESCU, "-v", "-aet", aet, "-aec", aec, *(extra or [])]
    if isinstance(paths, Path) and paths.is_dir():
        args += ["+sd", "+r", "127.0.0.1", str(port), str(paths)]
    else:
        args += ["127.0.0.1", str(port), *[str(p) for p in (paths if isinstance(paths, list) else [paths])]]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout)


@dataclass
class Receiver:
    base: str
    ae: str
    port: int
    id: int
    http: httpx.Client


def archived_files(ctx, project: str) -> list[Path]:  # type: ignore[no-untyped-def]
    """Every archived DICOM file of a project, from the catalog."""
    from sqlalchemy import select

    from flip_imaging.archive.models import File, Resource
    from flip_imaging.archive.store import file_path

    with ctx.session() as db:
        rows = db.execute(
            select(Resource, File)
            .join(File, File.resource_pk == Resource.pk)
            .join(Project, Project.pk == Resource.project_pk)
            .where(Project.id == project)
        ).all()
        return [file_path(ctx.archive_root, res, f) for res, f in rows]
