"""Ingest benchmark: the same 300-instance 512x512 CT series sent by DCMTK storescu over loopback to
flip-imaging (``flip-imaging serve`` subprocess, FLIP site script on, durable archiving) and to Debian's
Orthanc (TCP_NODELAY=1, default storage), in one run.

Measured from the start of storescu to the last instance visible through each server's REST API
(flip-imaging: the scan's DICOM resource file listing under /data/archive; Orthanc: /statistics), polled
every 0.5 s while storescu runs and every 0.05 s after it has finished, for both servers alike. Also
reports CPU time per instance of each server (all its processes).
Also reports flip-imaging's RSS (VmRSS) peak while the first 100 instances arrive vs over all 300.

    .venv/bin/python bench/ingest/run.py [--instances 300] [--size 512] [--repeat 5] [--keep DIR]

Rounds alternate Orthanc and flip-imaging; medians are reported (the machine may be shared). Orthanc's
rate varies several-fold between rounds (see README.md): use at least 5 rounds.

Profiling aids: BENCH_CPU_DETAIL=1 (CPU per process), BENCH_PYSPY=out.raw [BENCH_PYSPY_GIL=1] (py-spy
of the server and its children), BENCH_SERVER_LOG_LEVEL=info (server log in the round's folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
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

from flip_imaging.netutil import free_port  # noqa: E402
from flip_imaging.synthetic import PlantedPHI, make_ct_series, write_series  # noqa: E402

STORESCU = "/usr/bin/storescu"
PASSWORD = "bench-Admin-password-1"
PROJECT, SUBJECT, SESSION = "BENCH", "SUBJ001", "ACC0001"




def rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_cpu_seconds(pgid: int, detail: dict[str, float] | None = None) -> float:
    """User + system CPU of every live process in a process group (the server and its workers)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:  # field 5 (pgrp) is index 2 after the command name
            ticks = int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])
            total += ticks
            if detail is not None:
                name = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")[-60:]
                detail[f"{entry.name} {name}"] = ticks / tick
    return total / tick


def generate(directory: Path, n: int, size: int) -> None:
    def routed():  # type: ignore[no-untyped-def]
        for ds in make_ct_series(n, size, size, PlantedPHI("QB")):
            ds.PatientComments = f"Project: {PROJECT} Subject: {SUBJECT} Session: {SESSION}"
            yield ds

    write_series(directory, routed())


def send(port: int, aec: str, directory: Path, done: dict[str, float] | None = None) -> None:
    r = subprocess.run(
        [STORESCU, "-aet", "BENCHSCU", "-aec", aec, "+sd", "127.0.0.1", str(port), str(directory)],
        capture_output=True,
        text=True,
    )
    if done is not None:
        done["sent"] = time.perf_counter()
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-2000:]}")


def run_flip(work: Path, series: Path, n: int) -> dict[str, float]:
    data = work / "flip-data"
    http_port = free_port()
    env = {
        **os.environ,
        "FLIP_IMAGING_DATA_DIR": str(data),
        "FLIP_IMAGING_PORT": str(http_port),
        "FLIP_IMAGING_DICOM_PORT": "0",
        "FLIP_IMAGING_ADMIN_PASSWORD": PASSWORD,
        "FLIP_IMAGING_SESSION_QUIET_SECONDS": "10",
    }
    exe = str(Path(sys.executable).with_name("flip-imaging"))
    subprocess.run([exe, "migrate"], env=env, check=True, capture_output=True)
    _create_project(data)
    proc = subprocess.Popen(
        [exe, "serve", "--log-level", os.environ.get("BENCH_SERVER_LOG_LEVEL", "warning")],
        env=env,
        stdout=open(work / "flip.log", "wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
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
            r = http.post(
                "/xapi/dicomscp", json={"aeTitle": "FLIP", "port": dicom_port, "directArchive": True}
            )
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
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).with_name("py-spy")),
                        "record",
                        "-p",
                        str(proc.pid),
                        "-s",
                        *(["--gil"] if os.environ.get("BENCH_PYSPY_GIL") else []),
                        "-r",
                        "200",
                        "--format",
                        "raw",
                        "-o",
                        os.environ["BENCH_PYSPY"],
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=open(os.environ["BENCH_PYSPY"] + ".log", "w"),
                )
                time.sleep(1)
            baseline = rss_kib(proc.pid)
            detail0: dict[str, float] = {}
            cpu0 = group_cpu_seconds(proc.pid, detail0)
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
                # the last instance cannot be visible before it was sent: poll gently until storescu is
                # done (a listing costs the server CPU), then closely
                time.sleep(0.05 if "sent" in done else 0.5)
            elapsed = time.perf_counter() - start
            detail1: dict[str, float] = {}
            cpu = group_cpu_seconds(proc.pid, detail1) - cpu0
            if os.environ.get("BENCH_CPU_DETAIL"):
                for key, value in sorted(detail1.items()):
                    print(
                        f"cpu ms/instance {1000 * (value - detail0.get(key, 0)) / n:7.2f}  {key}",
                        file=sys.stderr,
                    )
            if spy is not None:
                spy.send_signal(signal.SIGINT)
                spy.wait(timeout=60)
            stop.set()
            sender.join()
            sampler.join()
        first = [rss for count, rss in samples if count < n / 3] or [baseline]
        return {
            "seconds": elapsed,
            "rate": n / elapsed,
            "storescu_seconds": done["sent"] - start,
            "cpu_ms_per_instance": 1000 * cpu / n,
            "rss_baseline_mib": baseline / 1024,
            "rss_peak_first_third_mib": max(first) / 1024,
            "rss_peak_all_mib": max(rss for _, rss in samples) / 1024,
        }
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
    r = http.get(
        f"/data/archive/projects/{PROJECT}/subjects/{SUBJECT}/experiments/{SESSION}/scans/1/resources/"
        "DICOM/files",
        params={"format": "json"},
    )
    if r.status_code != 200:
        return 0
    return len(r.json()["ResultSet"]["Result"])


def run_orthanc(work: Path, series: Path, n: int) -> dict[str, float]:
    with Orthanc(work / "orthanc") as orthanc:
        assert orthanc.proc is not None
        cpu0 = group_cpu_seconds(orthanc.proc.pid)
        start = time.perf_counter()
        done: dict[str, float] = {}
        sender = threading.Thread(
            target=send, args=(orthanc.dicom_port, orthanc.aet, series, done), daemon=True
        )
        sender.start()
        while orthanc.count_instances() < n:
            if time.perf_counter() - start > 900:
                raise RuntimeError("Orthanc did not store everything in time")
            time.sleep(0.05 if "sent" in done else 0.5)
        elapsed = time.perf_counter() - start
        cpu = group_cpu_seconds(orthanc.proc.pid) - cpu0
        sender.join()
    return {
        "seconds": elapsed,
        "rate": n / elapsed,
        "storescu_seconds": done["sent"] - start,
        "cpu_ms_per_instance": 1000 * cpu / n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--instances", type=int, default=300)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=5, help="alternating rounds; medians are reported")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: temporary)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="flip-bench-ingest-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        series = work / "series"
        if not series.exists():
            generate(series, args.instances, args.size)
        rounds = []
        for i in range(args.repeat):
            round_dir = work / f"round{i}"
            round_dir.mkdir(exist_ok=True)
            orthanc = run_orthanc(round_dir, series, args.instances)
            flip = run_flip(round_dir, series, args.instances)
            rounds.append(
                {
                    "flip_imaging": flip,
                    "orthanc": orthanc,
                    "ratio_flip_over_orthanc": flip["rate"] / orthanc["rate"],
                }
            )
            print(json.dumps(rounds[-1]), file=sys.stderr)
        result = {
            "instances": args.instances,
            "size": args.size,
            "rounds": len(rounds),
            "flip_imaging": _medians([r["flip_imaging"] for r in rounds]),
            "orthanc": _medians([r["orthanc"] for r in rounds]),
            "ratio_flip_over_orthanc": statistics.median(r["ratio_flip_over_orthanc"] for r in rounds),
            "ratio_per_round": [round(r["ratio_flip_over_orthanc"], 2) for r in rounds],
            "rate_per_round": {
                side: [round(r[side]["rate"], 1) for r in rounds] for side in ("flip_imaging", "orthanc")
            },
        }
        print(json.dumps(result, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


def _medians(runs: list[dict[str, float]]) -> dict[str, float]:
    """Per-field median over the rounds (peaks of RSS: the maximum)."""
    out = {}
    for key in runs[0]:
        values = [r[key] for r in runs]
        out[key] = max(values) if key.startswith("rss_peak") else statistics.median(values)
    return out


if __name__ == "__main__":
    main()
