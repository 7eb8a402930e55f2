"""Automatic conversion overhead: scan archived → NIFTI visible over REST, vs dcm2niix run directly.

One synthetic 300-instance 512x512 CT series is generated once. The real server (uvicorn, the events
dispatcher and the container workers, all in this process as ``flip-imaging serve`` runs them) serves a
project whose ``dicom_to_nifti`` subscription is on. Each round archives the series as a new session with
the real ArchiveWriter, then publishes the scan's ScanEvent (the receiver's payload) in an archive
transaction of its own. The clock starts when that has committed and stops when
``GET /data/experiments/{id}/scans/{scan}/resources/NIFTI/files`` lists the NIfTI files; a cheap catalog
look every 20 ms decides when to ask, so the measuring client does not steal the converter's CPU.

Each round also runs the same dcm2niix binary with the same options directly on the same archived files,
alternately before and after ours so neither side always gets the warmer machine; medians are compared.
Round 0 warms up and is not counted.

usage: python bench/convert/run.py [--n 300] [--size 512] [--rounds 9] [--database-url URL] [--keep DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dcm2niix
import httpx
import uvicorn
from sqlalchemy import select

from flip_imaging.app import create_app
from flip_imaging.archive.models import Experiment, File, Project, Resource, Scan
from flip_imaging.archive.store import ArchiveWriter, resource_dir
from flip_imaging.auth.bootstrap import ensure_admin
from flip_imaging.config import Settings
from flip_imaging.containers.models import Container, ContainerHistory
from flip_imaging.containers.service import set_dicom_to_nifti
from flip_imaging.context import create_context
from flip_imaging.netutil import free_port
from flip_imaging.synthetic import PlantedPHI, make_ct_series, write_series

PASSWORD = "bench-Admin-Password-1"
#: how often the catalog is looked at (a REST request follows only once the NIfTI is catalogued)
POLL_SECONDS = 0.02
OPTIONS = ["-b", "y", "-z", "y", "-f", "scan_%s"]  # what the builtin command runs with its defaults


def _ts(value) -> float:
    from datetime import UTC

    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()




def _archive(ctx, files: list[Path], label: str) -> tuple[str, dict, Path]:
    """Archive the series as session ``label`` (as the receiver does); (exp id, ScanEvent payload, folder)."""
    with ArchiveWriter(ctx) as w:
        project = w.project("BENCH")
        subj, _ = w.ensure_subject(project, f"S-{label}")
        exp, _ = w.ensure_experiment(project, subj, label, xsi_type="xnat:ctSessionData", modality="CT")
        scan, _ = w.ensure_scan(exp, "1", xsi_type="xnat:ctScanData", type="AXIAL", modality="CT")
        res, _ = w.ensure_resource(scan, "DICOM", format="DICOM", content="RAW")
        for f in files:
            w.add_file(res, f.name, f)
        uri = f"/archive/experiments/{exp.id}/scans/1"
        payload = {
            "id": "1",
            "label": "1",
            "xsiType": scan.xsi_type,
            "uri": uri,
            "integer-id": scan.pk,
            "project-id": "BENCH",
            "session-id": exp.id,
            "modality": "CT",
        }
        exp_id = exp.id
    return exp_id, payload, resource_dir(ctx.archive_root, res)


def _publish(ctx, payload: dict) -> tuple[float, float]:
    """Publish the scan's ScanEvent in its own archive transaction; the clock starts at its commit."""
    with ArchiveWriter(ctx) as w:
        w.publish("ScanEvent", "CREATED", payload, project_id="BENCH", object_uri=payload["uri"])
    return time.perf_counter(), time.time()


def _wait_visible(
    ctx, http: httpx.Client, exp_id: str, scan: str, timeout: float = 300
) -> tuple[float, list[str]]:
    """Wait until ``GET .../resources/NIFTI/files`` lists the NIfTI; the moment it does ends the clock.

    Hammering the REST API would steal the converter's CPU (each request costs the server ~8 ms), so a
    cheap in-process look at the catalog (one indexed query) decides when to ask; the REST answer alone
    decides visibility.
    """
    url = f"/data/experiments/{exp_id}/scans/{scan}/resources/NIFTI/files"
    deadline = time.monotonic() + timeout
    query = (
        select(File.pk)
        .join(Resource, Resource.pk == File.resource_pk)
        .join(Scan, Scan.pk == Resource.scan_pk)
        .join(Experiment, Experiment.pk == Scan.experiment_pk)
        .where(Experiment.id == exp_id, Scan.scan_id == scan, Resource.label == "NIFTI")
        .limit(1)
    )
    while time.monotonic() < deadline:
        with ctx.sessions() as db:
            catalogued = db.scalar(query) is not None
        if catalogued:
            r = http.get(url, params={"format": "json"})
            if r.status_code == 200:
                rows = r.json().get("ResultSet", {}).get("Result", [])
                if rows:
                    return time.perf_counter(), [row.get("Name") for row in rows]
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"NIFTI of {exp_id} not visible within {timeout} s")


def _direct(src_dir: Path, out_dir: Path) -> float:
    out_dir.mkdir(parents=True)
    started = time.perf_counter()
    subprocess.run(
        [dcm2niix.bin, *OPTIONS, "-o", str(out_dir), str(src_dir)],
        check=True,
        capture_output=True,
        env={"HOME": str(out_dir), "PATH": "/usr/bin:/bin"},
    )
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    ns = parser.parse_args()
    work = ns.keep or Path(tempfile.mkdtemp(prefix="flip-bench-convert-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        series = work / "series"
        if not series.exists():
            write_series(series, make_ct_series(ns.n, ns.size, ns.size, phi=PlantedPHI("BC")))
        files = sorted(series.iterdir())
        data = work / "data"
        shutil.rmtree(data, ignore_errors=True)
        settings = Settings(
            data_dir=data,
            database_url=ns.database_url,
            admin_password=PASSWORD,
            dicom_port=0,
            port=free_port(),
            container_workers=2,
        )
        ctx = create_context(settings)
        ensure_admin(ctx)
        with ctx.session() as db:
            if db.scalar(select(Project).where(Project.id == "BENCH")) is None:
                db.add(Project(id="BENCH", name="Conversion bench"))
                db.flush()
            set_dicom_to_nifti(db, "BENCH", True, "admin")
        server = uvicorn.Server(
            uvicorn.Config(create_app(ctx), host="127.0.0.1", port=settings.port, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        while not server.started:
            time.sleep(0.05)
        http = httpx.Client(base_url=f"http://127.0.0.1:{settings.port}", timeout=30)
        # one login, then the session cookie: polling must not pay a password hash per request
        login = http.get("/data/JSESSION", auth=("admin", PASSWORD))
        if login.status_code != 200:
            raise RuntimeError(f"login failed: {login.status_code} {login.text}")
        pipeline, direct, queued_lat, queue_lat, run_lat, process = [], [], [], [], [], []
        print(
            f"series: {ns.n} instances of {ns.size}x{ns.size} CT, "
            f"{sum(f.stat().st_size for f in files) / 1e6:.0f} MB; {ns.rounds} rounds; "
            f"database {settings.effective_database_url.split(':')[0]}"
        )
        for i in range(ns.rounds + 1):  # round 0 warms caches and is not counted
            exp_id, payload, folder = _archive(ctx, files, f"BENCH{i:03d}")
            ref_in = work / f"ref-in-{i}"
            ref_in.mkdir()
            for p in folder.iterdir():
                (ref_in / p.name).hardlink_to(p)
            direct_first = i % 2 == 1  # alternate the order so neither side always gets the warmer machine
            if direct_first:
                d = _direct(ref_in, work / f"ref-out-{i}")
            t0, wall0 = _publish(ctx, payload)
            t1, names = _wait_visible(ctx, http, exp_id, "1")
            if not direct_first:
                d = _direct(ref_in, work / f"ref-out-{i}")
            ref_names = sorted(p.name for p in (work / f"ref-out-{i}").iterdir())
            if sorted(names) != ref_names:
                raise RuntimeError(f"outputs differ: {sorted(names)} vs {ref_names}")
            shutil.rmtree(ref_in)
            shutil.rmtree(work / f"ref-out-{i}")
            with ctx.session() as db:
                c = db.scalar(select(Container).where(Container.root_uri == payload["uri"]))
                rows = db.scalars(select(ContainerHistory).where(ContainerHistory.container_id == c.id))
                hist = {h.status: (h.time_recorded, h.message) for h in rows}
            if i == 0:
                continue
            pipeline.append(t1 - t0)
            direct.append(d)
            queued_lat.append(_ts(hist["Created"][0]) - wall0)
            queue_lat.append((hist["Running"][0] - hist["Created"][0]).total_seconds())
            run_lat.append((hist["Complete"][0] - hist["Running"][0]).total_seconds())
            process.append(float(re.search(r"ran ([0-9.]+) s", hist["Complete"][1]).group(1)))
            print(
                f"round {i}: archived→NIFTI visible {t1 - t0:.3f} s; dcm2niix direct {d:.3f} s"
                f"{' (direct ran first)' if direct_first else ''}"
            )
        server.should_exit = True
        thread.join(timeout=30)
        ctx.close()
        mp, md = statistics.median(pipeline), statistics.median(direct)
        print()
        print(f"median archived→NIFTI visible over REST: {mp:.3f} s (min {min(pipeline):.3f})")
        print(f"median dcm2niix directly:                {md:.3f} s (min {min(direct):.3f})")
        print(
            f"  of which committed→container queued:   {statistics.median(queued_lat):.3f} s (event dispatch)"
        )
        print(f"           queued→container running:     {statistics.median(queue_lat):.3f} s (worker claim)")
        print(f"           running→complete (attached):  {statistics.median(run_lat):.3f} s")
        print(f"             of which the dcm2niix process: {statistics.median(process):.3f} s")
        overhead = mp / md - 1
        print(
            f"overhead: {overhead * 100:+.1f}% (target below +15%) -> {'PASS' if overhead < 0.15 else 'FAIL'}"
        )
        return 0 if overhead < 0.15 else 1
    finally:
        if ns.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
