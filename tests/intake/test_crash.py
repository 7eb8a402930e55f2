"""Crash test: ``kill -9`` of ``flip-imaging serve`` while storescu sends a 500-instance study, restart,
and every instance acknowledged with success is archived exactly once and intact; nothing half-written
is visible. Runs the real server as a subprocess on its default SQLite database (one backend, by design:
the crash semantics under test are the spool's and the archive writer's)."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pydicom
import pytest
from intake_helpers import STORESCU, wait_for, write_study

from flip_imaging.netutil import free_port
from flip_imaging.synthetic import PlantedPHI, SeriesSpec

PASSWORD = "crash-Admin-password-1"
N = 500


def _env(data: Path, http_port: int) -> dict[str, str]:
    return {
        **os.environ,
        "FLIP_IMAGING_DATA_DIR": str(data),
        "FLIP_IMAGING_PORT": str(http_port),
        "FLIP_IMAGING_DICOM_PORT": "0",
        "FLIP_IMAGING_ADMIN_PASSWORD": PASSWORD,
        "FLIP_IMAGING_SESSION_QUIET_SECONDS": "1",
        "FLIP_IMAGING_DATABASE_URL": "",
    }


def _serve(data: Path, http_port: int, log: Path) -> subprocess.Popen[bytes]:
    exe = str(Path(sys.executable).with_name("flip-imaging"))
    proc = subprocess.Popen(
        [exe, "serve", "--log-level", "warning"],
        env=_env(data, http_port),
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if (
                httpx.get(
                    f"http://127.0.0.1:{http_port}/xapi/dicomscp", auth=("admin", PASSWORD), timeout=2
                ).status_code
                == 200
            ):
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError("server did not start")


def _catalog(data: Path) -> list[tuple[Path, int, str]]:
    """(path, size, sha256) of every archived file, read from the catalog of the stopped-or-running server."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{data / 'flip-imaging.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "select r.path, f.path, f.size, f.sha256 from files f "
                "join resources r on r.pk = f.resource_pk"
            )
        ).all()
    engine.dispose()
    return [(data / "archive" / rp / fp, size, sha) for rp, fp, size, sha in rows]


@pytest.mark.slow
def test_kill_9_during_storescu(tmp_path: Path) -> None:
    data = tmp_path / "data"
    exe = str(Path(sys.executable).with_name("flip-imaging"))
    http_port = free_port()
    subprocess.run([exe, "migrate"], env=_env(data, http_port), check=True, capture_output=True)
    _add_project(data)
    phi = PlantedPHI("QN")
    paths = write_study(
        tmp_path / "in", phi, [SeriesSpec("CT", N, 64, 64, 1, "CT CHEST")], route=("CRASH", "S1", "E1")
    )
    originals = {int(pydicom.dcmread(p).InstanceNumber): p for p in paths}
    log = tmp_path / "serve.log"
    proc = _serve(data, http_port, log)
    dicom_port = free_port()
    http = httpx.Client(base_url=f"http://127.0.0.1:{http_port}", auth=("admin", PASSWORD), timeout=30)
    assert http.post("/xapi/dicomscp", json={"aeTitle": "FLIP", "port": dicom_port}).status_code == 200
    http.close()
    time.sleep(0.5)
    study_args = ["-aet", "CRASHSCU", "-aec", "FLIP", "+sd",
                  "127.0.0.1", str(dicom_port), str(tmp_path / "in")]
    sender = subprocess.Popen(
        [STORESCU, "-v", *study_args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    acked: list[int] = []
    current: int | None = None
    killed = False
    assert sender.stdout is not None
    for line in sender.stdout:
        m = re.search(r"Sending file: .*_i(\d+)\.dcm", line)
        if m:
            current = int(m.group(1))
        elif "Received Store Response (Success)" in line and current is not None:
            acked.append(current)
            if len(acked) == N // 3 and not killed:
                os.killpg(proc.pid, signal.SIGKILL)  # the server, its worker processes, everything
                killed = True
    sender.wait(timeout=60)
    proc.wait(timeout=30)
    assert killed and N // 3 <= len(acked) < N, f"{len(acked)} acknowledged"
    # restart: everything acknowledged must end up archived exactly once, without a re-send
    proc = _serve(data, http_port, log)
    try:

        def archived_instance_numbers() -> list[int]:
            return [
                int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p, _, _ in _catalog(data)
            ]

        try:
            wait_for(lambda: set(acked) <= set(archived_instance_numbers()), timeout=120)
        except AssertionError:
            missing = sorted(set(acked) - set(archived_instance_numbers()))
            raise AssertionError(
                f"acknowledged but not archived: {missing[:20]}...; {_problems(data)}"
            ) from None
        _check_intact(data, originals)
        # the sender retries the whole study (acknowledged ones included): still exactly once each
        retry = subprocess.run(
            [STORESCU, *study_args],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert retry.returncode == 0, retry.stderr[-2000:]
        wait_for(lambda: len(archived_instance_numbers()) == N, timeout=180)
        time.sleep(3)  # anything late would show up as an extra copy now
        numbers = archived_instance_numbers()
        assert sorted(numbers) == sorted(originals), "each instance archived exactly once"
        _check_intact(data, originals)
        spool = data / "spool"
        wait_for(
            lambda: not any(any((spool / d).iterdir()) for d in ("incoming", "work", "held", "tmp")),
            timeout=60,
        )
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)


def _check_intact(data: Path, originals: dict[int, Path]) -> None:
    """Every cataloged file exists with its recorded size and hash, has the original pixels, and the
    archive holds no file the catalog does not know."""
    known = set()
    for path, size, sha in _catalog(data):
        blob = path.read_bytes()
        assert len(blob) == size and hashlib.sha256(blob).hexdigest() == sha, (
            f"{path} differs from the catalog"
        )
        ds = pydicom.dcmread(path)
        original = pydicom.dcmread(originals[int(ds.InstanceNumber)])
        assert ds.PixelData == original.PixelData
        known.add(path)
    root = data / "archive"
    on_disk = {p for p in root.rglob("*") if p.is_file() and not p.relative_to(root).parts[0].startswith(".")}
    assert on_disk == known, "files in the archive tree that the catalog does not list"


def _problems(data: Path) -> str:
    """Sessions in error and quarantine reasons, to explain a failure."""
    from sqlalchemy import create_engine, text

    engine = create_engine(f"sqlite:///{data / 'flip-imaging.db'}")
    with engine.connect() as conn:
        sessions = conn.execute(text("select pk, state, reason, n_instances from dicom_sessions")).all()
        quarantine = conn.execute(text("select kind, reason from dicom_quarantine")).all()
    engine.dispose()
    spool = {d: len(list((data / "spool" / d).iterdir())) for d in ("incoming", "work", "held", "quarantine")}
    return f"sessions={sessions} quarantine={quarantine} spool={spool}"


def _add_project(data: Path) -> None:
    from flip_imaging.archive.models import Project
    from flip_imaging.config import Settings
    from flip_imaging.context import create_context

    ctx = create_context(Settings(data_dir=data), run_migrations=False)
    with ctx.session() as db:
        db.add(Project(id="CRASH", name="CRASH"))
    ctx.close()
