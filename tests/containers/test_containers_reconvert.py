"""A scan whose DICOM grows after its conversion was launched is converted again, never reported done early.

The receiver may archive a series in pieces (``directArchive``), and a late or re-sent series is merged into
the scan: the first piece's ScanEvent converts what had arrived, later pieces come as ResourceEvent UPDATED.
Pieces are archived here with the real ArchiveWriter and the receiver's event payloads; events are dispatched
and containers claimed and run by the real dispatcher and workers, step by step, so every state in between
can be checked. The last test drives the real receiver with storescu.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import httpx
import nibabel as nib
import pytest
from containers_helpers import ADMIN_AUTH, PASSWORD, scan_resource_files, wait_for, write_ct
from sqlalchemy import select

from flip_imaging.archive.models import Experiment, File, Resource, Scan
from flip_imaging.archive.store import ArchiveWriter, resource_dir
from flip_imaging.containers import registry, service
from flip_imaging.containers.models import Container, ContainerHistory
from flip_imaging.containers.worker import _LIVE_WORKERS, ContainerWorkers, claim_next
from flip_imaging.context import AppContext
from flip_imaging.events.delivery.models import Delivery
from flip_imaging.events.dispatcher import dispatch_pending
from flip_imaging.netutil import free_port


def archive_piece(ctx: AppContext, files: list[Path], *, label: str = "ACC1", scan_id: str = "1") -> str:
    """Archive ``files`` into scan ``scan_id`` of session ``label`` of P1 as the receiver does; the exp id.

    A new scan gets ResourceEvent CREATED and ScanEvent CREATED; files merged into an existing scan's
    DICOM resource get ResourceEvent UPDATED (``dicom/assembly.py``'s payloads).
    """
    with ArchiveWriter(ctx) as w:
        project = w.project("P1")
        subj, _ = w.ensure_subject(project, "SUBJ1")
        exp, _ = w.ensure_experiment(project, subj, label, xsi_type="xnat:ctSessionData", modality="CT")
        scan, scan_created = w.ensure_scan(
            exp, scan_id, xsi_type="xnat:ctScanData", type="AXIAL", modality="CT", series_description="AXIAL"
        )
        res, res_created = w.ensure_resource(scan, "DICOM", format="DICOM", content="RAW")
        for f in files:
            w.add_file(res, f.name, f)
        scan_uri = f"/archive/experiments/{exp.id}/scans/{scan.scan_id}"
        res_uri = f"{scan_uri}/resources/DICOM"
        w.publish(
            "ResourceEvent",
            "CREATED" if res_created else "UPDATED",
            {
                "id": str(res.xnat_id),
                "integer-id": res.xnat_id,
                "label": "DICOM",
                "xsiType": "xnat:resourceCatalog",
                "format": "DICOM",
                "content": "RAW",
                "uri": res_uri,
                "parent-uri": scan_uri,
                "project-id": "P1",
            },
            project_id="P1",
            object_uri=res_uri,
        )
        if scan_created:
            w.publish(
                "ScanEvent",
                "CREATED",
                {
                    "id": scan.scan_id,
                    "label": scan.scan_id,
                    "xsiType": scan.xsi_type,
                    "uri": scan_uri,
                    "integer-id": scan.pk,
                    "project-id": "P1",
                    "session-id": exp.id,
                    "session-label": exp.label,
                    "modality": "CT",
                },
                project_id="P1",
                object_uri=scan_uri,
            )
        return exp.id


@pytest.fixture
def pool(world: AppContext):  # type: ignore[no-untyped-def]
    """A worker pool whose jobs the test claims and runs itself (no threads), one step at a time."""
    p = ContainerWorkers(world, workers=1, lease_seconds=60)
    p.scratch.mkdir(parents=True, exist_ok=True)
    _LIVE_WORKERS.add(p.worker_id)
    yield p
    _LIVE_WORKERS.discard(p.worker_id)


def _auto(ctx: AppContext) -> None:
    with ctx.session() as db:
        service.set_dicom_to_nifti(db, "P1", True, "owner")


def _state(ctx: AppContext, exp_id: str) -> dict:
    with ctx.session() as db:
        exp = db.scalar(select(Experiment).where(Experiment.id == exp_id))
        return service.conversion_status(db, exp)


def _conversions(ctx: AppContext, exp_id: str) -> list[Container]:
    with ctx.session() as db:
        exp = db.scalar(select(Experiment).where(Experiment.id == exp_id))
        scans = select(Scan.pk).where(Scan.experiment_pk == exp.pk)
        return list(db.scalars(select(Container).where(Container.scan_pk.in_(scans)).order_by(Container.id)))


def _claim(ctx: AppContext, pool: ContainerWorkers) -> int | None:
    with ctx.session() as db:
        return claim_next(db, pool.worker_id, pool.lease_seconds)


def _history(ctx: AppContext, cid: int) -> list[tuple[str, str | None]]:
    with ctx.session() as db:
        rows = db.scalars(
            select(ContainerHistory).where(ContainerHistory.container_id == cid).order_by(ContainerHistory.pk)
        )
        return [(h.status, h.message) for h in rows]


def _slices(ctx: AppContext, exp_id: str, scan_id: str = "1") -> int:
    main = [p for p in scan_resource_files(ctx, exp_id, scan_id, "NIFTI") if p.name.endswith(".nii.gz")]
    assert len(main) == 1, main
    return int(nib.load(main[0]).shape[2])


def _nifti_catalog_matches_disk(ctx: AppContext, exp_id: str) -> list[str]:
    """The NIFTI resource's catalogued files, checked to be exactly the files in its folder."""
    with ctx.session() as db:
        res = db.scalar(
            select(Resource)
            .join(Scan, Scan.pk == Resource.scan_pk)
            .join(Experiment, Experiment.pk == Scan.experiment_pk)
            .where(Experiment.id == exp_id, Resource.label == "NIFTI")
        )
        catalog = sorted(f.path for f in db.scalars(select(File).where(File.resource_pk == res.pk)))
        folder = resource_dir(ctx.archive_root, res)
    assert sorted(p.name for p in folder.iterdir()) == catalog
    return catalog


def test_scan_archived_in_two_pieces_ends_with_every_slice(world, pool, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "ct", n=24, size=64)
    _auto(world)
    exp_id = archive_piece(world, files[:10])
    dispatch_pending(world)
    (first,) = _conversions(world, exp_id)
    assert _state(world, exp_id)["scans"][0]["status"] == "pending"
    cid = _claim(world, pool)
    assert cid == first.id
    pool.run(cid)
    state = _state(world, exp_id)
    assert state["complete"] is True and state["scans"][0]["converted-dicom-files"] == 10
    assert _slices(world, exp_id) == 10
    with world.session() as db:
        res = db.scalar(select(Resource).where(Resource.label == "NIFTI"))
        first_folder, nifti_id = resource_dir(world.archive_root, res), res.xnat_id

    # the rest of the series arrives: the scan is not done from the commit on, before any event is handled
    archive_piece(world, files[10:])
    state = _state(world, exp_id)
    (row,) = state["scans"]
    assert state["complete"] is False and row["status"] == "pending"
    assert row["dicom-files"] == 24 and row["converted-dicom-files"] == 10
    assert "10 file(s) converted, 24 now" in row["message"]
    dispatch_pending(world)
    first_done, second = _conversions(world, exp_id)
    assert first_done.id == first.id and second.status == "Queued"
    assert "DICOM of scan 1 changed" in _history(world, second.id)[0][1]
    assert _state(world, exp_id)["complete"] is False

    # readers of the NIFTI resource see the old conversion or the new one, never a mix
    mixes: list[str] = []
    stop = threading.Event()

    def read_nifti() -> None:
        while not stop.is_set():
            with world.sessions() as db:
                res = db.scalar(select(Resource).where(Resource.label == "NIFTI"))
                rows = db.execute(select(File.path, File.sha256).where(File.resource_pk == res.pk)).all()
                folder = resource_dir(world.archive_root, res)
            for path, sha in rows:
                try:
                    data = (folder / path).read_bytes()
                except FileNotFoundError:
                    continue  # deleted after the switch: the reader must look again, it is not misled
                if hashlib.sha256(data).hexdigest() != sha:
                    mixes.append(path)

    reader = threading.Thread(target=read_nifti)
    reader.start()
    try:
        assert _claim(world, pool) == second.id
        pool.run(second.id)
    finally:
        stop.set()
        reader.join()
    assert mixes == []
    state = _state(world, exp_id)
    assert state["complete"] is True and state["scans"][0]["status"] == "done"
    assert state["scans"][0]["converted-dicom-files"] == 24
    assert _slices(world, exp_id) == 24  # one slice per DICOM instance, all of them
    assert _nifti_catalog_matches_disk(world, exp_id) == ["scan_1.json", "scan_1.nii.gz"]
    with world.session() as db:
        res = db.scalar(select(Resource).where(Resource.label == "NIFTI"))
        assert res.xnat_id == nifti_id  # the same resource, its files replaced
        assert resource_dir(world.archive_root, res) != first_folder
        scan = db.scalar(select(Scan))
        assert scan.extra["conversion"]["status"] == "done" and scan.extra["conversion"]["dicom-files"] == 24
    assert not first_folder.exists(), "the first conversion's files are gone"


def test_piece_arriving_while_converting_waits_for_that_conversion(world, pool, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "ct", n=20, size=64)
    _auto(world)
    exp_id = archive_piece(world, files[:8])
    dispatch_pending(world)
    first = _claim(world, pool)
    assert first is not None and _state(world, exp_id)["scans"][0]["status"] == "running"
    archive_piece(world, files[8:])  # while the first conversion runs (it has not linked its input yet)
    dispatch_pending(world)
    _, second = _conversions(world, exp_id)
    assert second.status == "Queued"
    assert _history(world, second.id)[-1] == (
        "Queued",
        f"Waiting for container {first} (converting this scan) to finish",
    )
    # another worker may not start it while the first runs: the older one could otherwise attach last
    other = ContainerWorkers(world, workers=1)
    with world.session() as db:
        assert claim_next(db, other.worker_id, 30) is None
    pool.run(first)  # it converts what it links now: all 20 files were archived before it started
    assert _slices(world, exp_id) == 20
    state = _state(world, exp_id)
    assert state["complete"] is False and state["scans"][0]["status"] == "pending"
    assert _claim(world, pool) == second.id
    pool.run(second.id)
    assert _state(world, exp_id)["complete"] is True and _slices(world, exp_id) == 20


def test_quick_updates_queue_one_reconversion_at_a_time(world, pool, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "ct", n=30, size=32)
    _auto(world)
    exp_id = archive_piece(world, files[:6])
    dispatch_pending(world)
    pool.run(_claim(world, pool))
    for i in range(6, 18, 3):  # four more pieces before the dispatcher gets to them
        archive_piece(world, files[i : i + 3])
    dispatch_pending(world)
    conversions = _conversions(world, exp_id)
    assert [c.status for c in conversions] == ["Complete", "Queued"]
    queued = conversions[1]
    assert [s for s, _ in _history(world, queued.id)].count("Input updated") == 3
    # while that one runs, more pieces: again exactly one waits
    assert _claim(world, pool) == queued.id
    for i in range(18, 30, 4):
        archive_piece(world, files[i : i + 4])
    dispatch_pending(world)
    assert [c.status for c in _conversions(world, exp_id)] == ["Complete", "Running", "Queued"]
    pool.run(queued.id)
    assert _state(world, exp_id)["complete"] is False
    last = _conversions(world, exp_id)[-1]
    pool.run(_claim(world, pool))
    assert _claim(world, pool) is None
    assert _state(world, exp_id)["complete"] is True and _slices(world, exp_id) == 30
    # every update is in the subscription's delivery history, ended by the container it fed
    with world.session() as db:
        sub = service._find_subscription(db, "P1")
        trails = [
            (d.event_type.rsplit(".", 1)[-1], d.last_status, d.statuses[-1].message)
            for d in db.scalars(
                select(Delivery).where(Delivery.subscription_id == sub.id).order_by(Delivery.id)
            )
        ]
    assert trails[0] == ("ScanEvent", "ACTION_COMPLETE", f"Container {conversions[0].id} complete")
    updates = trails[1:]
    assert len(updates) == 7 and all(kind == "ResourceEvent" for kind, _, _ in updates)
    assert all(status == "ACTION_COMPLETE" for _, status, _ in updates)
    assert sum(message == f"Container {queued.id} complete" for _, _, message in updates) == 1
    assert sum(message == f"Container {last.id} complete" for _, _, message in updates) == 1
    assert sum("already queued" in message for _, _, message in updates) == 5


def test_reconversion_without_automatic_conversion(world, pool, client, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "ct", n=16, size=32)
    exp_id = archive_piece(world, files[:9])
    archive_piece(world, files[:9], label="ACC2")  # a scan nobody converts
    dispatch_pending(world)
    assert _conversions(world, exp_id) == []
    with world.session() as db:
        wrapper = registry.dcm2niix_wrapper(db)
        registry.set_project_enabled(db, wrapper, "P1", True)
        uri = f"/archive/experiments/{exp_id}/scans/1"
        service.launch(db, wrapper, "scan", {"scan": uri, "bids": "false"}, user="member")
    pool.run(_claim(world, pool))
    assert _nifti_catalog_matches_disk(world, exp_id) == ["scan_1.nii.gz"]
    archive_piece(world, files[9:])
    (row,) = _state(world, exp_id)["scans"]
    assert row["status"] == "stale" and "convert it again" in row["message"]
    r = client.get(f"/xapi/projects/P1/experiments/{exp_id}/conversion", auth=("collab", PASSWORD))
    assert r.json()["status"] == "stale" and r.json()["complete"] is False
    dispatch_pending(world)
    converted, again = _conversions(world, exp_id)
    assert again.status == "Queued" and again.user == "member" and again.delivery_id is None
    assert again.plan["inputs"]["bids"] == "false"  # converted again the way it was converted
    assert _state(world, exp_id)["scans"][0]["status"] == "pending"
    pool.run(_claim(world, pool))
    assert _state(world, exp_id)["complete"] is True and _slices(world, exp_id) == 16
    assert _nifti_catalog_matches_disk(world, exp_id) == ["scan_1.nii.gz"]
    with world.session() as db:
        acc2 = db.scalar(select(Experiment).where(Experiment.label == "ACC2"))
    archive_piece(world, files[9:], label="ACC2")
    dispatch_pending(world)
    assert _conversions(world, acc2.id) == []  # never converted, conversion off: left alone
    assert _state(world, acc2.id)["scans"][0]["status"] == "not-requested"

    # a DICOM change without an event (a file deleted by hand) is caught too; convert-missing fixes it
    with ArchiveWriter(world) as w:
        last_file = w.db.scalar(
            select(File)
            .join(Resource, Resource.pk == File.resource_pk)
            .where(Resource.scan_pk == converted.scan_pk, Resource.label == "DICOM")
            .order_by(File.path.desc())
        )
        w.delete_file(last_file)
    (row,) = _state(world, exp_id)["scans"]
    assert row["status"] == "stale" and row["dicom-files"] == 15
    with world.session() as db:
        project = db.scalar(select(Experiment).where(Experiment.id == exp_id)).project
        queued = service.convert_missing(db, project, "member")
    with world.session() as db:
        acc2_scan = db.scalar(select(Scan.pk).where(Scan.experiment_pk == acc2.pk))
    assert [c.scan_pk for c in queued] == [converted.scan_pk, acc2_scan]
    for _ in queued:
        pool.run(_claim(world, pool))
    assert _state(world, exp_id)["complete"] is True and _slices(world, exp_id) == 15
    assert _state(world, acc2.id)["complete"] is True


def test_rerun_with_other_outputs_leaves_no_old_files(world, pool, tmp_path: Path) -> None:
    exp_id = archive_piece(world, write_ct(tmp_path / "ct", n=6, size=32))
    with world.session() as db:
        wrapper = registry.dcm2niix_wrapper(db)
        registry.set_project_enabled(db, wrapper, "P1", True)
        uri = f"/archive/experiments/{exp_id}/scans/1"
        service.launch(db, wrapper, "scan", {"scan": uri, "other-options": "-z y -f first_%s"}, user="member")
    pool.run(_claim(world, pool))
    assert _nifti_catalog_matches_disk(world, exp_id) == ["first_1.json", "first_1.nii.gz"]
    with world.session() as db:
        wrapper = registry.dcm2niix_wrapper(db)
        service.launch(
            db, wrapper, "scan", {"scan": uri, "other-options": "-z n -f second_%s"}, user="member"
        )
    pool.run(_claim(world, pool))
    assert _nifti_catalog_matches_disk(world, exp_id) == ["second_1.json", "second_1.nii"]
    scan_dir = resource_dir(world.archive_root, _dicom_resource(world)).parent
    assert sorted(p.name for p in scan_dir.iterdir()) == ["DICOM", f"NIFTI.{_nifti_suffix(world)}"]


def _dicom_resource(ctx: AppContext) -> Resource:
    with ctx.session() as db:
        return db.scalar(select(Resource).where(Resource.label == "DICOM"))


def _nifti_suffix(ctx: AppContext) -> str:
    with ctx.session() as db:
        return db.scalar(select(Resource.path).where(Resource.label == "NIFTI")).rsplit(".", 1)[1]


def test_receiver_direct_archive_two_sends_of_one_series(world, live_server, tmp_path: Path) -> None:
    """The real receiver (directArchive) gets a series in two storescu sends: the NIfTI ends with all."""
    from flip_imaging.synthetic import PlantedPHI, SeriesSpec, make_series, write_series

    admin = httpx.Client(base_url=live_server, auth=ADMIN_AUTH, timeout=60)
    owner = httpx.Client(base_url=live_server, auth=("owner", PASSWORD), timeout=60)
    assert owner.put("/xapi/projects/P1/dicom_to_nifti", params={"enabled": "true"}).status_code == 200
    port = free_port()
    r = admin.post("/xapi/dicomscp", json={"aeTitle": "FLIP", "port": port, "directArchive": True})
    assert r.status_code == 200, r.text
    series = list(make_series(SeriesSpec("CT", 30, 64, 64, 1, "CT AXIAL"), PlantedPHI("QR")))
    for ds in series:
        ds.PatientComments = "Project: P1 Subject: SUBJ9 Session: ACC9"
    paths = write_series(tmp_path / "in", series)
    import subprocess

    def send(part: list[Path]) -> None:
        run = subprocess.run(
            ["/usr/bin/storescu", "-aet", "SCU", "-aec", "FLIP", "127.0.0.1", str(port), *map(str, part)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr

    def conversion() -> dict | None:
        exps = owner.get("/data/projects/P1/experiments", params={"format": "json"}).json()["ResultSet"][
            "Result"
        ]
        if not exps:
            return None
        r = owner.get(f"/xapi/projects/P1/experiments/{exps[0]['ID']}/conversion")
        return r.json() if r.status_code == 200 else None

    def converted(total: int) -> dict | None:
        # whenever a scan reads as done, its NIfTI was converted from every DICOM file it has
        s = conversion()
        if s is None:
            return None
        (row,) = s["scans"]
        if row["status"] == "done":
            assert row["converted-dicom-files"] == row["dicom-files"], s
        assert s["complete"] == (row["status"] == "done")
        return s if s["complete"] and row["dicom-files"] == total else None

    send(paths[:15])
    exp_id = wait_for(lambda: converted(15), timeout=120)["experiment"]
    assert _slices(world, exp_id) == 15
    send(paths[15:])
    wait_for(lambda: converted(30), timeout=120)
    assert _slices(world, exp_id) == 30
    _nifti_catalog_matches_disk(world, exp_id)
    with world.session() as db:
        updated = db.scalars(select(Delivery).where(Delivery.event_type.like("%ResourceEvent")))
        assert all(d.last_status == "ACTION_COMPLETE" for d in updated)
