"""De-identification throughput: flip-imaging (DicomEdit flip_site.das) vs dicognito vs dicom-anonymizer.

One synthetic 512x512 CT series with planted PHI is written once; every tool then does the same job on
every file - read it, de-identify with its default profile, write it - in one process pinned to one
core, several rounds interleaved so drift hits everyone alike. Reported: files/s (best round) per tool
and each tool's ratio to the fastest peer. Then ours is run under cProfile and the hot spots printed.

usage: python bench/deid/run.py [--n 300] [--size 512] [--rounds 3] [--profile-files 100] [--keep DIR]
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import pydicom  # noqa: E402

from flip_imaging.dicomedit import Script  # noqa: E402
from flip_imaging.dicomedit.scripts import flip_site_script  # noqa: E402
from flip_imaging.synthetic import PlantedPHI, find_leaks, make_ct_series, write_series  # noqa: E402

VARIABLES = {"project": "BENCHPROJ", "subject": "BENCHSUBJ", "session": "BENCHSESSION"}

Runner = Callable[[list[Path], Path], None]


def run_flip(files: list[Path], out: Path) -> None:
    """Ours: parse once, then per file read (lazy, pixels untouched) + apply + write."""
    script = Script.parse(flip_site_script())
    for path in files:
        ds = pydicom.dcmread(path)
        result = script.apply(ds, variables=VARIABLES)
        if result.rejected:
            raise RuntimeError("script rejected a bench file")
        ds.save_as(out / path.name, enforce_file_format=True)


def run_dicognito(files: list[Path], out: Path) -> None:
    """dicognito's default anonymization; one Anonymizer per series, as its CLI does."""
    from dicognito.anonymizer import Anonymizer

    anonymizer = Anonymizer()
    for path in files:
        ds = pydicom.dcmread(path)
        anonymizer.anonymize(ds)
        ds.save_as(out / path.name, enforce_file_format=True)


def run_dicom_anonymizer(files: list[Path], out: Path) -> None:
    """dicom-anonymizer's default (its anonymize_dicom_file reads, anonymizes and writes)."""
    from dicomanonymizer import anonymize_dicom_file

    for path in files:
        anonymize_dicom_file(str(path), str(out / path.name))


TOOLS: dict[str, Runner] = {
    "flip-imaging (flip_site.das)": run_flip,
    "dicognito": run_dicognito,
    "dicom-anonymizer": run_dicom_anonymizer,
}
OURS = "flip-imaging (flip_site.das)"


def pin_one_core() -> str:
    try:
        cpu = sorted(os.sched_getaffinity(0))[0]
        os.sched_setaffinity(0, {cpu})
        return f"pinned to CPU {cpu}"
    except (AttributeError, OSError):
        return "not pinned (no sched_setaffinity)"


def time_tool(runner: Runner, files: list[Path], out_root: Path, name: str) -> float:
    out = out_root / name.split()[0]
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    start = time.perf_counter()
    runner(files, out)
    return time.perf_counter() - start


def leak_count(out_dir: Path, phi: PlantedPHI, sample: int = 5) -> int:
    """Planted tokens found in a sample of a tool's outputs (context for the speed table)."""
    tokens = phi.search_tokens()
    files = sorted(out_dir.glob("*.dcm"))[:sample]
    return sum(len(find_leaks(f.read_bytes(), tokens)) for f in files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="instances in the series")
    ap.add_argument("--size", type=int, default=512, help="rows = columns")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile-files", type=int, default=100, help="files profiled with cProfile (0: skip)")
    ap.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    args = ap.parse_args()

    pinned = pin_one_core()
    work = args.keep or Path(tempfile.mkdtemp(prefix="flip-deid-bench-"))
    try:
        phi = PlantedPHI("QZ")
        t0 = time.perf_counter()
        files = write_series(work / "in", make_ct_series(args.n, args.size, args.size, phi=phi))
        size_mb = sum(f.stat().st_size for f in files) / 1e6
        print(f"input: {len(files)} CT instances {args.size}x{args.size}, {size_mb:.0f} MB, "
              f"generated in {time.perf_counter() - t0:.1f}s; python {sys.version.split()[0]}, "
              f"pydicom {pydicom.__version__}; {pinned}")

        times: dict[str, list[float]] = {name: [] for name in TOOLS}
        for rnd in range(args.rounds):
            order = list(TOOLS)[rnd % len(TOOLS):] + list(TOOLS)[: rnd % len(TOOLS)]
            for name in order:
                times[name].append(time_tool(TOOLS[name], files, work / "out", name))
        rates = {name: len(files) / min(ts) for name, ts in times.items()}
        spread = {name: (max(ts) - min(ts)) / statistics.mean(ts) for name, ts in times.items()}
        peers = {n: r for n, r in rates.items() if n != OURS}
        fastest_peer = max(peers, key=peers.__getitem__)

        print()
        header = ("tool", "files/s", "vs fastest peer", "round spread", "leaks (5 files)")
        print(f"{header[0]:30} {header[1]:>9} {header[2]:>16} {header[3]:>13} {header[4]:>15}")
        for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
            leaks = leak_count(work / "out" / name.split()[0], phi)
            rel = rate / rates[fastest_peer]
            print(f"{name:30} {rate:9.1f} {rel:15.2f}x {spread[name]:12.0%} {leaks:15d}")
        ratio = rates[OURS] / rates[fastest_peer]
        print(f"\nflip-imaging / fastest peer ({fastest_peer}) = {ratio:.2f}x  (target >= 2x)")

        if args.profile_files:
            subset = files[: args.profile_files]
            out = work / "out" / "profile"
            out.mkdir(parents=True, exist_ok=True)
            prof = cProfile.Profile()
            prof.enable()
            run_flip(subset, out)
            prof.disable()
            buf = io.StringIO()
            stats = pstats.Stats(prof, stream=buf).strip_dirs()
            stats.sort_stats("tottime").print_stats(20)
            stats.sort_stats("cumulative").print_stats(25)
            print(f"\ncProfile of flip-imaging on {len(subset)} files:")
            print(buf.getvalue())
    finally:
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
