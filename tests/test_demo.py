"""``flip-imaging demo`` end to end in a subprocess: real server, real C-STORE, real dcm2niix."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

FLIP = Path(sys.executable).parent / "flip-imaging"


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    run = subprocess.run(
        [str(FLIP), "demo", "--data-dir", str(data), "--timeout", "240"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"COLUMNS": "160", "PATH": "/usr/bin:/bin"},
    )
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "demo complete" in out
    assert "no planted PHI byte in any of the" in out
    assert "session ACC0001" in out and "NIFTI: 2 file(s)" in out
    for scan, shape in (("1", "256 x 256 x 40"), ("2", "128 x 128 x 24"), ("3", "256 x 256 x 20")):
        assert f"scan_{scan}.nii.gz" in out and shape in out
        assert (
            data
            / "archive"
            / "FLIPDEMO"
            / "arc001"
            / "ACC0001"
            / "SCANS"
            / scan
            / "NIFTI"
            / f"scan_{scan}.nii.gz"
        ).is_file()
    assert "Log in as admin with the password in" in out and "Browse: http://127.0.0.1:" in out
    assert (data / "admin-password.txt").read_text().strip() not in out  # never printed
    # the table shows the planted name on the left and the subject label on the right
    assert "PHIDM" in out and "DEMO01" in out


def test_demo_refuses_a_used_data_directory(tmp_path: Path) -> None:
    """The reason names the folder on one line, however long its path and narrow the terminal."""
    used = tmp_path / ("a-rather-long-folder-name-" * 6) / "data"
    used.mkdir(parents=True)
    (used / "something").write_text("x")
    env = {**os.environ, "COLUMNS": "40"}
    run = subprocess.run(
        [str(FLIP), "demo", "--data-dir", str(used)], capture_output=True, text=True, timeout=120, env=env
    )
    assert run.returncode == 1
    assert f"{used} is not empty" in run.stdout + run.stderr
