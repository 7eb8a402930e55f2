"""pyxnat 1.6.4, unchanged, against the live server (it speaks CSV listings and XML documents)."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from pyxnat import Interface


def test_pyxnat_round_trip(live_server, admin_auth, tmp_path: Path) -> None:
    user, password = admin_auth
    central = Interface(server=live_server, user=user, password=password)
    try:
        project = central.select.project("PYX1")
        assert not project.exists()
        project.create()
        assert project.exists()
        assert "PYX1" in central.select.projects().get()
        # project extras pyxnat exposes
        project.set_prearchive_code("4")
        assert project.prearchive_code() == 4
        assert project.quarantine_code() == 0
        assert project.current_arc() == b"arc001"
        project.set_accessibility("protected")
        assert project.accessibility() == b"protected"
        central._exec("/data/projects/PYX1?xnat:projectData/aliases/alias=PYALIAS", "PUT")
        assert project.aliases() == ["PYALIAS"]

        subject = project.subject("SUBJ01")
        subject.create()
        assert subject.exists()
        assert subject.id().startswith("XNAT_S")
        experiment = subject.experiment("ACC0001")
        experiment.create(experiments="xnat:ctSessionData")
        assert experiment.datatype() == "xnat:ctSessionData"
        scan = experiment.scan("3")
        scan.create(scans="xnat:ctScanData")
        assert scan.exists()

        data = os.urandom(100_000)
        src = tmp_path / "img1.dcm"
        src.write_bytes(data)
        resource = scan.resource("DICOM")
        resource.create()
        resource.file("img1.dcm").put(str(src))
        resource.file("img2.dcm").put(b"second")
        assert sorted(resource.files().get()) == ["img1.dcm", "img2.dcm"]
        # creating a resource implicitly through a file upload
        scan.resource("NIFTI").file("vol.nii.gz").put(b"nifti")

        # navigation by ID and by label, XML documents
        by_id = central.select.project("PYX1").subject(subject.id()).experiment(experiment.id())
        assert by_id.label() == "ACC0001"
        assert b"xnat:CTSession" in by_id.get() or b"CTSession" in by_id.get()
        assert experiment.attrs.get("xnat:ctSessionData/label") == "ACC0001"
        assert central.select(f"/projects/PYX1/experiments/{experiment.id()}").exists()

        # downloads: one file, a resource zip, the pattern select across scans
        out = tmp_path / "out.dcm"
        resource.file("img1.dcm").get(str(out))
        assert out.read_bytes() == data
        (tmp_path / "zipdir").mkdir()
        (tmp_path / "zipkeep").mkdir()
        got = resource.get(str(tmp_path / "zipdir"), extract=True)
        assert sorted(Path(p).name for p in got) == ["img1.dcm", "img2.dcm"]
        names = central.select(
            "/projects/PYX1/subjects/SUBJ01/experiments/ACC0001/scans/*/resources/*/files"
        ).get()
        assert sorted(names) == ["img1.dcm", "img2.dcm", "vol.nii.gz"]
        zipped = resource.get(str(tmp_path / "zipkeep"), extract=False)
        with zipfile.ZipFile(zipped) as zf:
            assert len(zf.namelist()) == 2

        # all scans of the experiment in one zip (pyxnat asks for .../scans/ALL/files?format=zip)
        (tmp_path / "allscans").mkdir()
        extracted = experiment.scans().download(str(tmp_path / "allscans"), type="ALL", extract=True)
        assert sorted(Path(p).name for p in extracted if Path(p).is_file()) == [
            "img1.dcm",
            "img2.dcm",
            "vol.nii.gz",
        ]

        # delete a file, the subject, the project
        resource.file("img2.dcm").delete()
        assert resource.files().get() == ["img1.dcm"]
        subject.delete()
        assert not subject.exists()
        assert not experiment.exists()
        project.delete()
        assert not central.select.project("PYX1").exists()
    finally:
        central.disconnect()
