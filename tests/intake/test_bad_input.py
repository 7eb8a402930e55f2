"""Bad input at the receiver: the right DIMSE status or a quarantine entry with a reason, and the
receiver keeps serving. Peers: pynetdicom as SCU (it can send raw, undecoded bytes, which DCMTK refuses
to do with broken files) and DCMTK's storescu."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import pydicom
from intake_helpers import add_project, archived_files, routed, storescu, wait_for
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, _config
from pynetdicom.sop_class import CTImageStorage, MRImageStorage  # type: ignore[attr-defined]

from flip_imaging.intake.scriptstore import flip_script_text
from flip_imaging.synthetic import PlantedPHI, SeriesSpec, make_series

_send_lock = threading.Lock()


def send_raw(port: int, path: Path, contexts: list[tuple[str, str]]) -> int:
    """C-STORE the file's bytes as they are (no decoding, no conversion); returns the DIMSE status."""
    ae = AE(ae_title="RAWSCU")
    for sop, ts in contexts:
        ae.add_requested_context(sop, ts)
    with _send_lock:  # the chunked-send switch is process-wide
        old = _config.STORE_SEND_CHUNKED_DATASET
        _config.STORE_SEND_CHUNKED_DATASET = True
        try:
            assoc = ae.associate("127.0.0.1", port, ae_title="FLIP")
            assert assoc.is_established
            try:
                status = assoc.send_c_store(path)
            finally:
                assoc.release()
        finally:
            _config.STORE_SEND_CHUNKED_DATASET = old
    return int(status.Status)


def one_file(
    tmp_path: Path,
    name: str,
    route: tuple[str, str, str] = ("P1", "S1", "E1"),
    marker: str = "QC",
    description: str = "CT CHEST",
) -> Path:
    ds = next(make_series(SeriesSpec("CT", 1, 32, 32, 1, description), PlantedPHI(marker)))
    routed(ds, *route)
    path = tmp_path / name
    ds.save_as(path, enforce_file_format=True)
    return path


def quarantine(http) -> list[dict]:  # type: ignore[no-untyped-def]
    r = http.get("/xapi/dicomscp/quarantine")
    assert r.status_code == 200, r.text
    return r.json()


def test_broken_datasets_get_failure_statuses(ctx, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    good = one_file(tmp_path, "good.dcm")
    data = good.read_bytes()
    # truncated in the middle of the pixel data
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(data[: len(data) - 700])
    assert send_raw(receiver.port, truncated, [(CTImageStorage, ExplicitVRLittleEndian)]) == 0xC000
    # non-DICOM bytes after a valid file meta
    meta_end = 144 + int.from_bytes(data[140:144], "little")  # after (0002,0000) group length
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(data[:meta_end] + b"this is not a DICOM data set at all" * 50)
    assert send_raw(receiver.port, junk, [(CTImageStorage, ExplicitVRLittleEndian)]) == 0xC000
    # SOP class of the data set (CT) differs from the negotiated context (MR)
    wrong_class = tmp_path / "wrong_class.dcm"
    meta = data[:meta_end].replace(CTImageStorage.encode(), MRImageStorage.encode())  # same length
    wrong_class.write_bytes(meta + data[meta_end:])
    assert send_raw(receiver.port, wrong_class, [(MRImageStorage, ExplicitVRLittleEndian)]) == 0xA900
    # implicit-VR bytes announced as explicit VR little endian
    ds = pydicom.dcmread(good)
    ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    implicit = io.BytesIO()
    ds.save_as(implicit, enforce_file_format=True)
    raw = implicit.getvalue()
    body = raw[144 + int.from_bytes(raw[140:144], "little") :]
    mislabelled = tmp_path / "mislabelled.dcm"
    mislabelled.write_bytes(data[:meta_end] + body)
    assert send_raw(receiver.port, mislabelled, [(CTImageStorage, ExplicitVRLittleEndian)]) == 0xC000
    # nothing of that was spooled, and the receiver still works
    assert not any((ctx.settings.spool_dir / "incoming").iterdir())
    assert send_raw(receiver.port, good, [(CTImageStorage, ExplicitVRLittleEndian)]) == 0
    wait_for(lambda: len(archived_files(ctx, "P1")) == 1)


def test_rejected_file_is_quarantined_and_can_be_retried(ctx, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    add_project(ctx, "P1")
    http = receiver.http
    script = flip_script_text()
    first, rest = script.split("\n", 1)
    rejecting = f'{first}\n(0008,103E) = "REJECT ME" ? reject[]\n{rest}'
    assert (
        http.put(
            "/xapi/anonymize/site", content=rejecting, headers={"content-type": "text/plain"}
        ).status_code
        == 200
    )
    bad = one_file(tmp_path, "reject.dcm", ("P1", "S2", "E2"), "QD", "REJECT ME")
    ok = one_file(tmp_path, "ok.dcm", ("P1", "S3", "E3"), "QE")
    run = storescu(receiver.port, [bad, ok])
    assert run.returncode == 0  # both were received and spooled: rejection happens in processing
    wait_for(lambda: len(archived_files(ctx, "P1")) == 1)
    entries = wait_for(lambda: quarantine(http))
    assert (
        len(entries) == 1
        and entries[0]["reason"] == "rejected by script"
        and entries[0]["kind"] == "instance"
    )
    # the administrator fixes the script and retries: the instance is archived
    assert http.put("/xapi/anonymize/site", content=script).status_code == 200
    assert http.post(f"/xapi/dicomscp/quarantine/{entries[0]['id']}/retry").status_code == 200
    wait_for(lambda: len(archived_files(ctx, "P1")) == 2)
    assert quarantine(http) == []


def test_quarantine_delete_and_unknown_project_goes_to_unassigned(ctx, receiver, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    http = receiver.http
    nowhere = one_file(tmp_path, "nowhere.dcm", ("NOSUCHPROJECT", "S9", "E9"), "QF")
    assert storescu(receiver.port, [nowhere]).returncode == 0

    def unassigned() -> list[dict]:
        rows = http.get("/data/prearchive/projects/Unassigned", params={"format": "json"}).json()
        return [r for r in rows["ResultSet"]["Result"] if r["status"] == "READY"]

    rows = wait_for(unassigned, timeout=30)
    assert rows[0]["reason"] == "project NOSUCHPROJECT does not exist"
    assert rows[0]["subject"] == "S9" and rows[0]["name"] == "E9"
    # an administrator creates the project and archives the session from the prearchive
    add_project(ctx, "NOSUCHPROJECT")
    r = http.post("/data/services/archive", params={"src": rows[0]["url"], "project": "NOSUCHPROJECT"})
    assert r.status_code == 200, r.text
    assert r.text == "/data/archive/projects/NOSUCHPROJECT/subjects/S9/experiments/E9"
    files = archived_files(ctx, "NOSUCHPROJECT")
    assert len(files) == 1
    ds = pydicom.dcmread(files[0])
    assert str(ds.PatientName) == "S9"  # re-derived with the final labels
    assert unassigned() == []
    # a rejected instance deleted by the administrator is gone from the spool
    script = flip_script_text()
    first, rest = script.split("\n", 1)
    http.put("/xapi/anonymize/site", content=f"{first}\nreject[]\n{rest}")
    assert storescu(receiver.port, [one_file(tmp_path, "x.dcm", marker="QG")]).returncode == 0
    entry = wait_for(lambda: quarantine(http))[0]
    assert (ctx.settings.spool_dir / "quarantine" / entry["file"]).exists()
    assert http.delete(f"/xapi/dicomscp/quarantine/{entry['id']}").status_code == 200
    assert not (ctx.settings.spool_dir / "quarantine" / entry["file"]).exists()
    assert quarantine(http) == []


def test_invalid_site_script_is_refused_and_old_one_kept(ctx, receiver) -> None:  # type: ignore[no-untyped-def]
    http = receiver.http
    before = http.get("/xapi/anonymize/site").text
    assert before == flip_script_text()
    assert http.get("/xapi/anonymize/site/enabled").json() is True
    r = http.put("/xapi/anonymize/site", content='version "6.1"\n(0010,0010 := "x"\n')
    assert r.status_code == 400 and "line 2" in r.text
    assert http.get("/xapi/anonymize/site").text == before
    assert 'version "6.1"' in http.get("/xapi/anonymize/default").text
    assert http.put("/xapi/anonymize/site/enabled", params={"enable": "false"}).status_code == 200
    assert http.get("/xapi/anonymize/site/enabled").json() is False
