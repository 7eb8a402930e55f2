"""Archive REST API throughput: listing a big project, and streaming a 1 GB resource zip.

Setup (not timed): a catalog of 1,000 experiments x 100 files (100,000 File rows, inserted in bulk; those
files need not exist), plus one experiment whose DICOM resource holds 1 GiB of real files on disk. The
real server (``flip-imaging serve``) runs in its own process.

Measured, each several rounds (median reported):
* ``GET /data/projects/BENCH/experiments?format=json`` (1,001 rows): absolute time and time per row; the
  peer is the same rows read straight from the database with SQLAlchemy in this process.
* ``GET .../experiments/BIG/scans/ALL/resources/DICOM/files?format=zip`` streamed to nowhere; the peer is
  ``cat <the same files> > /dev/null`` (page cache warm for both; curl downloads the zip). The server's
  peak RSS is sampled from /proc every 20 ms during the zip, and compared with its RSS before.

usage: python bench/archive/run.py [--database-url URL] [--zip-gib 1.0] [--rounds 3] [--keep DIR]
       (--database-url postgresql+psycopg://postgres@127.0.0.1:5432/ creates and drops a scratch database)
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import requests
from sqlalchemy import insert, select

from flip_imaging.archive.models import Experiment, File, IdCounter, Project, Resource, Scan, Subject
from flip_imaging.config import Settings
from flip_imaging.context import create_context
from flip_imaging.netutil import free_port

PASSWORD = "bench-Admin-Password-1"
N_EXPERIMENTS = 1000
FILES_PER_EXPERIMENT = 100




def populate(settings: Settings, zip_bytes: int) -> list[Path]:
    """Bulk-insert the catalog; write the big resource's files. Returns the big files' paths."""
    ctx = create_context(settings)
    now = datetime.now(UTC)
    with ctx.session() as db:
        project = Project(id="BENCH", name="Benchmark project", secondary_id="BENCH", extra={})
        db.add(project)
        db.flush()
        subjects = [
            {
                "id": f"XNAT_S{i:05d}",
                "project_pk": project.pk,
                "label": f"SUBJ{i:04d}",
                "extra": {},
                "created_at": now,
            }
            for i in range(1, 101)
        ]
        db.execute(insert(Subject), subjects)
        subject_pks = list(db.scalars(select(Subject.pk).order_by(Subject.pk)))
        exps = [
            {
                "id": f"XNAT_E{i:05d}",
                "project_pk": project.pk,
                "subject_pk": subject_pks[i % 100],
                "label": f"ACC{i:06d}",
                "xsi_type": "xnat:ctSessionData",
                "modality": "CT",
                "extra": {},
                "created_at": now,
            }
            for i in range(1, N_EXPERIMENTS + 1)
        ]
        exps.append(
            {
                "id": "XNAT_E99999",
                "project_pk": project.pk,
                "subject_pk": subject_pks[0],
                "label": "BIG",
                "xsi_type": "xnat:ctSessionData",
                "modality": "CT",
                "extra": {},
                "created_at": now,
            }
        )
        db.execute(insert(Experiment), exps)
        exp_rows = list(db.execute(select(Experiment.pk, Experiment.label).order_by(Experiment.pk)))
        db.execute(
            insert(Scan),
            [
                {
                    "experiment_pk": pk,
                    "scan_id": "1",
                    "xsi_type": "xnat:ctScanData",
                    "type": "AXIAL",
                    "modality": "CT",
                    "extra": {},
                    "created_at": now,
                }
                for pk, _label in exp_rows
            ],
        )
        scan_pks = {a: b for a, b in db.execute(select(Scan.experiment_pk, Scan.pk))}
        db.execute(
            insert(Resource),
            [
                {
                    "xnat_id": i + 1,
                    "label": "DICOM",
                    "format": "DICOM",
                    "owner_kind": "scan",
                    "project_pk": project.pk,
                    "scan_pk": scan_pks[pk],
                    "path": f"BENCH/arc001/{label}/SCANS/1/DICOM",
                    "created_at": now,
                }
                for i, (pk, label) in enumerate(exp_rows)
            ],
        )
        for name, value in (("resource", len(exp_rows)), ("XNAT_S", 100), ("XNAT_E", 99999)):
            db.merge(IdCounter(name=name, value=value))
        res = {a: b for a, b in db.execute(select(Resource.scan_pk, Resource.pk))}
        batch: list[dict] = []
        for pk, label in exp_rows:
            if label == "BIG":
                continue
            for j in range(FILES_PER_EXPERIMENT):
                batch.append(
                    {
                        "resource_pk": res[scan_pks[pk]],
                        "path": f"{j:05d}.dcm",
                        "size": 524288,
                        "sha256": "0" * 64,
                        "created_at": now,
                    }
                )
            if len(batch) >= 20000:
                db.execute(insert(File), batch)
                batch.clear()
        if batch:
            db.execute(insert(File), batch)
        # the 1 GiB resource: real files, 8 MiB each
        big_pk = next(pk for pk, label in exp_rows if label == "BIG")
        big_dir = settings.archive_root / "BENCH/arc001/BIG/SCANS/1/DICOM"
        big_dir.mkdir(parents=True, exist_ok=True)
        block = os.urandom(1024 * 1024)
        per_file = 8 * 1024 * 1024
        paths: list[Path] = []
        rows = []
        for j in range(max(1, zip_bytes // per_file)):
            p = big_dir / f"{j:05d}.dcm"
            with open(p, "wb") as fh:
                for _ in range(per_file // len(block)):
                    fh.write(block)
            paths.append(p)
            rows.append(
                {
                    "resource_pk": res[scan_pks[big_pk]],
                    "path": p.name,
                    "size": per_file,
                    "sha256": "0" * 64,
                    "created_at": now,
                }
            )
        db.execute(insert(File), rows)
    ctx.close()
    return paths


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.running = pid, 0, True

    def rss(self) -> int:
        with open(f"/proc/{self.pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        return 0

    def run(self) -> None:
        while self.running:
            self.peak = max(self.peak, self.rss())
            time.sleep(0.02)


def serve() -> None:
    """Child process: the app on the configured port, without background services."""
    import uvicorn

    from flip_imaging.app import create_app
    from flip_imaging.auth.bootstrap import ensure_admin

    settings = Settings.load()
    ctx = create_context(settings, run_migrations=False)
    ensure_admin(ctx)
    uvicorn.run(
        create_app(ctx, start_services=False), host="127.0.0.1", port=settings.port, log_level="warning"
    )


def main() -> None:
    if sys.argv[1:] == ["--serve"]:
        serve()
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", default="")
    ap.add_argument("--zip-gib", type=float, default=1.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--keep", type=Path)
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="flip-bench-archive-"))
    port = free_port()
    database_url = args.database_url
    pg_db = None
    if database_url.startswith("postgresql") and database_url.endswith("/"):
        # a throw-away database on the given server (dropped at the end)
        import psycopg

        pg_db = f"flip_bench_{uuid.uuid4().hex[:8]}"
        admin_dsn = database_url.replace("postgresql+psycopg://", "postgresql://") + "postgres"
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{pg_db}"')
        database_url += pg_db
    settings = Settings(
        data_dir=work / "data", database_url=database_url, admin_password=PASSWORD, port=port, dicom_port=0
    )
    print(f"populating {work} ...", flush=True)
    t0 = time.perf_counter()
    big_files = populate(settings, int(args.zip_gib * 1024**3))
    print(f"  done in {time.perf_counter() - t0:.1f} s", flush=True)

    env = dict(
        os.environ,
        FLIP_IMAGING_DATA_DIR=str(settings.data_dir),
        FLIP_IMAGING_PORT=str(port),
        FLIP_IMAGING_ADMIN_PASSWORD=PASSWORD,
        FLIP_IMAGING_DICOM_PORT="0",
        FLIP_IMAGING_DATABASE_URL=settings.database_url,
    )
    # the web app alone in its own process (background services such as DICOM receivers are not needed)
    server = subprocess.Popen([sys.executable, __file__, "--serve"], env=env, stdout=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/data/version", timeout=1).ok:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not start")
            time.sleep(0.2)
        http = requests.Session()
        sid = http.put(f"{base}/data/services/auth", data={"username": "admin", "password": PASSWORD}).text
        http.cookies.set("JSESSIONID", sid)

        # -- listing -------------------------------------------------------------------------------------
        list_url = f"{base}/data/projects/BENCH/experiments"
        n_rows = len(http.get(list_url, params={"format": "json"}).json()["ResultSet"]["Result"])
        api_times, db_times = [], []
        ctx = create_context(settings, run_migrations=False)
        for _ in range(args.rounds):
            t = time.perf_counter()
            r = http.get(list_url, params={"format": "json"})
            r.raise_for_status()
            r.json()
            api_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            with ctx.sessions() as db:
                rows = [
                    (e.id, e.label, e.xsi_type, e.project.id, e.subject.id)
                    for e in db.scalars(select(Experiment).order_by(Experiment.label))
                ]
            db_times.append(time.perf_counter() - t)
            assert len(rows) == n_rows
        ctx.close()

        # -- zip -----------------------------------------------------------------------------------------
        zip_url = f"{base}/data/projects/BENCH/experiments/BIG/scans/ALL/resources/DICOM/files"
        total_bytes = sum(p.stat().st_size for p in big_files)
        cat_times, zip_times = [], []
        sampler = RssSampler(server.pid)
        rss_before = sampler.rss()
        sampler.start()
        zip_size = 0
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run(["cat", *map(str, big_files)], stdout=subprocess.DEVNULL, check=True)
            cat_times.append(time.perf_counter() - t)
            # curl as the client, so that the figure is the server's, not a Python client's
            t = time.perf_counter()
            out = subprocess.run(
                [
                    "curl",
                    "-sS",
                    "-f",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{size_download}",
                    "-b",
                    f"JSESSIONID={sid}",
                    f"{zip_url}?format=zip",
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            zip_size = int(out.stdout.strip())
            zip_times.append(time.perf_counter() - t)
        sampler.running = False
        sampler.join()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        if pg_db is not None:
            import psycopg

            with psycopg.connect(admin_dsn, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_db}" WITH (FORCE)')

    api, dbt = statistics.median(api_times), statistics.median(db_times)
    zt, ct = statistics.median(zip_times), statistics.median(cat_times)
    mib = 1024 * 1024
    print()
    print(
        f"catalog: {N_EXPERIMENTS + 1} experiments,"
        f" {N_EXPERIMENTS * FILES_PER_EXPERIMENT + len(big_files)} files;"
        f" database {'PostgreSQL' if settings.database_url.startswith('postgres') else 'SQLite'};"
        f" median of {args.rounds} rounds"
    )
    print(f"{'measure':<46}{'ours':>12}{'peer':>12}{'ratio':>8}")
    print(
        f"{'list project experiments, json (' + str(n_rows) + ' rows)':<46}{api * 1000:>10.1f}ms"
        f"{dbt * 1000:>10.1f}ms{api / dbt:>8.2f}"
    )
    print(f"{'  per row':<46}{api / n_rows * 1e6:>10.1f}us{dbt / n_rows * 1e6:>10.1f}us")
    print(
        f"{'stream resource zip vs cat (' + f'{total_bytes / 1024**3:.2f} GiB' + ')':<46}{zt:>11.2f}s"
        f"{ct:>11.2f}s{zt / ct:>8.2f}"
    )
    print(f"{'  throughput':<46}{total_bytes / zt / mib:>8.0f}MiB/s{total_bytes / ct / mib:>8.0f}MiB/s")
    print(f"{'  zip size / payload':<46}{zip_size / total_bytes:>12.5f}")
    print(
        f"{'server RSS before zip / peak during zip':<46}{rss_before / mib:>10.0f}MB"
        f"{sampler.peak / mib:>10.0f}MB"
    )


if __name__ == "__main__":
    main()
