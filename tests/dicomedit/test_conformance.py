"""XNAT DicomEdit 6.6 conformance sample (shared/dicomedit-conformance), run through its own checker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SUITE = Path(os.environ.get("FLIP_IMAGING_SHARED", REPO_ROOT.parent / "shared")) / "dicomedit-conformance"

pytestmark = pytest.mark.skipif(not (SUITE / "check.py").is_file(),
                                reason=f"conformance suite not at {SUITE}")


def _run(*args: str) -> tuple[int, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "check.py", *args], cwd=SUITE, env=env, capture_output=True,
                          text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def _summary(out: str) -> tuple[int, int]:
    last = [line for line in out.strip().splitlines() if line.strip()][-1]
    m = re.fullmatch(r"(\d+) passed, (\d+) failed", last.strip())
    assert m, f"unexpected checker output:\n{out[-2000:]}"
    return int(m.group(1)), int(m.group(2))


def _expected_files() -> list[str]:
    if not (SUITE / "expected").is_dir():
        return []
    return sorted(p.name for p in (SUITE / "expected").glob("*.json"))


def test_every_conformance_case_passes() -> None:
    code, out = _run("-v")
    passed, failed = _summary(out)
    assert failed == 0, out
    assert passed == len(_expected_files()) > 0
    assert code == 0


@pytest.mark.parametrize("name", [f.removesuffix(".json") for f in _expected_files()])
def test_conformance_case(name: str) -> None:
    # per case, so a regression names the construct that broke
    exp = json.loads((SUITE / "expected" / f"{name}.json").read_text(encoding="utf-8"))
    assert exp["case"] in name
    code, out = _run("--only", f"{name}.json", "-v")
    assert _summary(out) == (1, 0), out
