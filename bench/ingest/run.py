"""Ingest benchmark: the same 300-instance 512x512 CT series sent by DCMTK storescu over loopback to
flip-imaging (``flip-imaging serve`` subprocess, FLIP site script on, durable archiving) and to Debian's
Orthanc (TCP_NODELAY=1, default storage), in one run.

Measured from the start of storescu to the last instance visible through each server's REST API
(flip-imaging: the scan's DICOM resource file listing under /data/archive; Orthanc: /statistics).
Also reports flip-imaging's RSS (VmRSS) peak while the first 100 instances arrive vs over all 300.

    .venv/bin/python bench/ingest/run.py [--instances 300] [--size 512] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "dicom"))
from orthanc_helpers import Orthanc  # noqa: E402

from flip_imaging.synthetic import PlantedPHI, make_ct_series, write_series  # noqa: E402

STORESCU = "/usr/bin/storescu"
PASSWORD = "bench-Admin-password-1"
PROJECT, SUBJECT, SESSION = "BENCH", "SUBJ001", "ACC0001"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def generate(directory: Path, n: int, size: int) -> None:
    def routed():  # type: ignore[no-untyped-def]
        for ds in make_ct_series(n, size, size, PlantedPHI("QB")):
            ds.PatientComments = f"Project: {PROJECT} Subject: {SUBJECT} Session: {SESSION}"
            yield ds

    write_series(directory, routed())


def send(port: int, aec: str, directory: Path, done: dict[str, float] | None = None) -> None:
    r = subprocess.run([STORESCU, "-aet", "BENCHSCU", "-aec", aec, "+sd", "127.0.0.1", str(port),
                        str(directory)], capture_output=True, text=True)
    if done is not None:
        done["sent"] = time.perf_counter()
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-2000:]}")


def run_flip(work: Path, series: Path, n: int) -> dict[str, float]:
    data = work / "flip-data"
    http_port = free_port()
    env = {**os.environ, "FLIP_IMAGING_DATA_DIR": str(data), "FLIP_IMAGING_PORT": str(http_port),
           "FLIP_IMAGING_DICOM_PORT": "0", "FLIP_IMAGING_ADMIN_PASSWORD": PASSWORD,
           "FLIP_IMAGING_SESSION_QUIET_SECONDS": "10"}
    exe = str(Path(sys.executable).with_name("flip-imaging"))
    subprocess.run([exe, "migrate"], env=env, check=True, capture_output=True)
    _create_project(data)
    proc = subprocess.Popen([exe, "serve", "--log-level", "warning"], env=env, stdout=open(work / "flip.log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{http_port}"
    try:
        with httpx.Client(base_url=base, auth=("admin", PASSWORD), timeout=30) as http:
            _wait_http(http, proc)
            # log in once (as XNAT clients do): a password check per poll would cost the server CPU
            login = http.put("/data/services/auth", data={"username": "admin", "password": PASSWORD})
            login.raise_for_status()
            http.auth = None  # type: ignore[assignment]
            http.cookies.set("JSESSIONID", login.text.strip())
            dicom_port = free_port()
            r = http.post("/xapi/dicomscp", json={"aeTitle": "FLIP", "port": dicom_port, "directArchive": True})
            r.raise_for_status()
            time.sleep(0.5)
            samples: list[tuple[int, int]] = []  # (visible count, rss)
            state = {"count": 0}
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    samples.append((state["count"], rss_kib(proc.pid)))
                    time.sleep(0.02)

            sampler = threading.Thread(target=sample, daemon=True)
            spy = None
            if os.environ.get("BENCH_PYSPY"):
                spy = subprocess.Popen([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(proc.pid),
                                        "-s", "-r", "200", "--format", "raw", "-o", os.environ["BENCH_PYSPY"]],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(1)
            baseline = rss_kib(proc.pid)
            start = time.perf_counter()
            sampler.start()
            done: dict[str, float] = {}
            sender = threading.Thread(target=send, args=(dicom_port, "FLIP", series, done), daemon=True)
            sender.start()
            while True:
                state["count"] = _flip_visible(http)
                if state["count"] >= n:
                    break
                if time.perf_counter() - start > 900:
                    raise RuntimeError("flip-imaging did not archive everything in time")
                time.sleep(0.1)
            elapsed = time.perf_counter() - start
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            stop.set()
            sender.join()
            sampler.join()
        first = [rss for count, rss in samples if count < n / 3] or [baseline]
        return {"seconds": elapsed, "rate": n / elapsed, "storescu_seconds": done["sent"] - start,
                "rss_baseline_mib": baseline / 1024,
                "rss_peak_first_third_mib": max(first) / 1024,
                "rss_peak_all_mib": max(rss for _, rss in samples) / 1024}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def _create_project(data: Path) -> None:
    from flip_imaging.archive.models import Project
    from flip_imaging.config import Settings
    from flip_imaging.context import create_context

    ctx = create_context(Settings(data_dir=data), run_migrations=False)
    with ctx.session() as db:
        db.add(Project(id=PROJECT, name=PROJECT, prearchive_code=4))
    ctx.close()


def _wait_http(http: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("flip-imaging serve exited")
        try:
            if http.get("/xapi/dicomscp").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError("flip-imaging did not start")


def _flip_visible(http: httpx.Client) -> int:
    """Files of the archived scan, as a REST client sees them."""
    r = http.get(f"/data/archive/projects/{PROJECT}/subjects/{SUBJECT}/experiments/{SESSION}/scans/1/resources/"
                 "DICOM/files", params={"format": "json"})
    if r.status_code != 200:
        return 0
    return len(r.json()["ResultSet"]["Result"])


def run_orthanc(work: Path, series: Path, n: int) -> dict[str, float]:
    with Orthanc(work / "orthanc") as orthanc:
        start = time.perf_counter()
        done: dict[str, float] = {}
        sender = threading.Thread(target=send, args=(orthanc.dicom_port, orthanc.aet, series, done), daemon=True)
        sender.start()
        while orthanc.count_instances() < n:
            if time.perf_counter() - start > 900:
                raise RuntimeError("Orthanc did not store everything in time")
            time.sleep(0.1)
        elapsed = time.perf_counter() - start
        sender.join()
    return {"seconds": elapsed, "rate": n / elapsed, "storescu_seconds": done["sent"] - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: temporary)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="flip-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        series = work / "series"
        if not series.exists():
            generate(series, args.instances, args.size)
        orthanc = run_orthanc(work, series, args.instances)
        flip = run_flip(work, series, args.instances)
        result = {"instances": args.instances, "size": args.size, "flip_imaging": flip, "orthanc": orthanc,
                  "ratio_flip_over_orthanc": flip["rate"] / orthanc["rate"]}
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
