"""kill -9 of the server during a conversion: after a restart the conversion completes exactly once.

The server is the real ``flip-imaging serve`` in a subprocess on the test's database and data directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
from containers_helpers import ADMIN_AUTH, archive_scan, wait_for, write_ct
from sqlalchemy import select

from flip_imaging.archive.models import File, Resource
from flip_imaging.archive.store import resource_dir
from flip_imaging.containers import registry, service
from flip_imaging.containers.models import Container, ContainerHistory

FLIP = Path(sys.executable).parent / "flip-imaging"


def _serve(settings) -> subprocess.Popen:
    env = dict(
        os.environ,
        FLIP_IMAGING_DATABASE_URL=settings.effective_database_url,
        FLIP_IMAGING_ADMIN_PASSWORD=ADMIN_AUTH[1],
        FLIP_IMAGING_DICOM_PORT="0",
        FLIP_IMAGING_CONTAINER_WORKERS="1",
    )
    proc = subprocess.Popen(
        [
            str(FLIP),
            "serve",
            "--data-dir",
            str(settings.data_dir),
            "--port",
            str(settings.port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    return proc


def _status(ctx, cid: int) -> str:
    with ctx.session() as db:
        return db.get(Container, cid).status


def test_kill_9_during_conversion_then_restart(world, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "big", n=300, size=512)
    exp_id, scan_id = archive_scan(world, "P1", files, publish=False)
    with world.session() as db:
        wrapper = registry.dcm2niix_wrapper(db)
        registry.set_project_enabled(db, wrapper, "P1", True)
        cid = service.launch(
            db, wrapper, "scan", {"scan": f"/archive/experiments/{exp_id}/scans/{scan_id}"}, user="admin"
        ).id
    first = _serve(world.settings)
    try:
        wait_for(
            lambda: _status(world, cid) == "Running" or first.poll() is not None, timeout=60, interval=0.005
        )
        assert first.poll() is None, first.stderr.read().decode() if first.stderr else ""
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
    assert _status(world, cid) == "Running", "killed mid-conversion: the row still names the dead worker"
    second = _serve(world.settings)
    try:
        wait_for(lambda: _status(world, cid) in ("Complete", "Failed"), timeout=120)
        assert _status(world, cid) == "Complete"
        base = f"http://127.0.0.1:{world.settings.port}"
        detail = wait_for(lambda: _get(f"{base}/xapi/containers/{cid}"), timeout=30)
        statuses = [h["status"] for h in detail["history"]]
        assert statuses.count("Requeued") == 1 and statuses.count("Running") == 2
        assert statuses.count("Complete") == 1 and detail["attempts"] == 2
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(second.pid, signal.SIGKILL)
    with world.session() as db:
        container = db.get(Container, cid)
        resources = list(
            db.scalars(
                select(Resource).where(Resource.scan_pk == container.scan_pk, Resource.label == "NIFTI")
            )
        )
        assert len(resources) == 1
        catalog = sorted(f.path for f in db.scalars(select(File).where(File.resource_pk == resources[0].pk)))
        on_disk = sorted(p.name for p in resource_dir(world.archive_root, resources[0]).iterdir())
        assert catalog == on_disk == ["scan_1.json", "scan_1.nii.gz"]
        assert db.scalar(
            select(ContainerHistory).where(
                ContainerHistory.container_id == cid, ContainerHistory.status == "Requeued"
            )
        ).message


def _get(url: str) -> dict | None:
    try:
        r = httpx.get(url, auth=ADMIN_AUTH, timeout=5)
    except httpx.HTTPError:
        return None
    return r.json() if r.status_code == 200 else None


def test_standalone_worker_process(world, tmp_path: Path) -> None:
    """``python -m flip_imaging.containers.worker`` serves the same queue from another process."""
    exp_id, scan_id = archive_scan(world, "P1", write_ct(tmp_path / "s", n=6), publish=False)
    with world.session() as db:
        wrapper = registry.dcm2niix_wrapper(db)
        registry.set_project_enabled(db, wrapper, "P1", True)
        cid = service.launch(
            db, wrapper, "scan", {"scan": f"/archive/experiments/{exp_id}/scans/{scan_id}"}, user="admin"
        ).id
    env = dict(os.environ, FLIP_IMAGING_DATABASE_URL=world.settings.effective_database_url)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flip_imaging.containers.worker",
            "--data-dir",
            str(world.settings.data_dir),
            "--workers",
            "1",
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: _status(world, cid) in ("Complete", "Failed") or proc.poll() is not None, timeout=60)
        assert _status(world, cid) == "Complete", (
            proc.stderr.read().decode() if proc.poll() is not None else ""
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
