"""Conversion end to end: hand launches, subscriptions, failures, kills and time limits (both backends).

Workers are the real pool (threads claiming rows from the real database) running the real dcm2niix binary;
results are compared voxel by voxel with dcm2niix run directly on the same archived files.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
from containers_helpers import (
    ADMIN_AUTH,
    PASSWORD,
    archive_scan,
    reference_conversion,
    scan_resource_files,
    wait_for,
    write_ct,
)
from sqlalchemy import select

from flip_imaging.archive.models import Experiment, Scan
from flip_imaging.containers.models import Container


def _container(client, cid: int, auth=ADMIN_AUTH) -> dict:
    r = client.get(f"/xapi/containers/{cid}", auth=auth)
    assert r.status_code == 200, r.text
    return r.json()


def _finished(client, cid: int) -> dict | None:
    c = _container(client, cid)
    return c if c["status"] in ("Complete", "Failed", "Killed") else None


def _nifti_volumes(paths: list[Path]) -> dict[str, np.ndarray]:
    return {p.name: np.asarray(nib.load(p).dataobj) for p in paths if p.name.endswith(".nii.gz")}


def _enable(client, project: str = "P1") -> int:
    cmd = client.get("/xapi/commands?name=dcm2niix", auth=ADMIN_AUTH).json()[0]
    wid = cmd["xnat"][0]["id"]
    r = client.put(f"/xapi/projects/{project}/wrappers/{wid}/enabled", auth=ADMIN_AUTH)
    assert r.status_code == 200, r.text
    return wid


def test_hand_launch_converts_like_dcm2niix(world, workers, client, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "dicom", n=14, size=64)
    exp_id, scan_id = archive_scan(world, "P1", files, publish=False)
    wid = _enable(client)
    r = client.post(
        f"/xapi/wrappers/{wid}/root/scan/launch",
        auth=("member", PASSWORD),
        json={"scan": f"/archive/experiments/{exp_id}/scans/{scan_id}"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["wrapper-id"] == wid and body["command-id"]
    done = wait_for(lambda: _finished(client, body["id"]))
    assert done["status"] == "Complete", done
    assert [h["status"] for h in done["history"]][:3] == ["Created", "Queued", "Running"]
    assert done["history"][-1]["status"] == "Complete" and done["project"] == "P1"
    # reference: dcm2niix directly on the archived (de-identified) files, same options
    dicom = scan_resource_files(world, exp_id, scan_id, "DICOM")
    ref_in = tmp_path / "ref-in"
    ref_in.mkdir()
    for p in dicom:
        (ref_in / p.name).symlink_to(p)
    reference_conversion(ref_in, tmp_path / "ref-out")
    ours = scan_resource_files(world, exp_id, scan_id, "NIFTI")
    assert sorted(p.name for p in ours) == sorted(p.name for p in (tmp_path / "ref-out").iterdir())
    assert any(p.name.endswith(".json") for p in ours), "JSON sidecar kept beside the NIfTI"
    mine, ref = _nifti_volumes(ours), _nifti_volumes(sorted((tmp_path / "ref-out").iterdir()))
    assert mine.keys() == ref.keys() and mine
    for name in mine:
        assert mine[name].shape == ref[name].shape
        assert mine[name].shape[2] == 14  # one slice per instance
        assert np.array_equal(mine[name], ref[name])
        a = nib.load(next(p for p in ours if p.name == name))
        b = nib.load(tmp_path / "ref-out" / name)
        assert np.allclose(a.affine, b.affine) and a.header.get_zooms() == b.header.get_zooms()
    # conversion state and the scan's record
    r = client.get(f"/xapi/projects/P1/experiments/{exp_id}/conversion", auth=("collab", PASSWORD))
    assert r.status_code == 200 and r.json()["complete"] is True
    assert r.json()["scans"][0]["status"] == "done"
    with world.session() as db:
        scan = db.scalar(select(Scan).join(Experiment).where(Experiment.id == exp_id))
        assert scan.extra["conversion"]["status"] == "done"
    assert (
        "Conversion required"
        in client.get(f"/xapi/containers/{body['id']}/logs/stdout", auth=ADMIN_AUTH).text
    )


def _wait_dispatched(ctx) -> None:
    from flip_imaging.events.models import Event

    def done() -> bool:
        with ctx.session() as db:
            return not list(db.scalars(select(Event.pk).where(Event.dispatched.is_(False))))

    wait_for(done, timeout=30)


def _conversion(http: httpx.Client, exp_id: str) -> dict:
    r = http.get(f"/xapi/projects/P1/experiments/{exp_id}/conversion")
    assert r.status_code == 200, r.text
    return r.json()


def test_subscription_converts_archived_scans_and_can_be_switched(world, live_server, tmp_path: Path) -> None:
    owner = httpx.Client(base_url=live_server, auth=("owner", PASSWORD), timeout=30)
    r = owner.put("/xapi/projects/P1/dicom_to_nifti", params={"enabled": "true"})
    assert r.status_code == 200, r.text
    assert r.json()["enabled"] is True
    sub_id = r.json()["subscription-id"]
    subs = owner.get("/xapi/projects/P1/events/subscriptions").json()
    sub = next(s for s in subs if s["id"] == sub_id)
    assert sub["name"] == "DICOM-NIfTI Conversion" and sub["active"] is True
    assert sub["action-key"].startswith("org.nrg.containers.services.CommandActionProvider:")
    assert sub["event-filter"]["project-ids"] == ["P1"] and sub["event-filter"]["status"] == "CREATED"

    # 1. active: an archived scan is converted without anyone asking
    exp1, _ = archive_scan(world, "P1", write_ct(tmp_path / "a", n=10), label="ACC1", scan_id="1")
    state = wait_for(lambda: (s := _conversion(owner, exp1))["complete"] and s, timeout=60)
    assert state["scans"][0]["status"] == "done" and state["scans"][0]["nifti-files"] >= 2
    assert len(scan_resource_files(world, exp1, "1", "NIFTI")) >= 2

    # 2. deactivated through the Event Service API: nothing runs, the scan says so
    r = owner.post(f"/xapi/projects/P1/events/subscription/{sub_id}/deactivate")
    assert r.status_code in (200, 204), r.text
    assert owner.get("/xapi/projects/P1/dicom_to_nifti").json()["enabled"] is False
    exp2, _ = archive_scan(world, "P1", write_ct(tmp_path / "b", n=8, marker="QB"), label="ACC2", scan_id="3")
    _wait_dispatched(world)
    state = _conversion(owner, exp2)
    assert state["scans"][0]["status"] == "not-requested" and state["complete"] is False
    with world.session() as db:
        assert not list(db.scalars(select(Container).where(Container.root_uri.like(f"%{exp2}%"))))

    # 3. convert what is missing: exactly the unconverted scan is queued
    r = owner.post("/xapi/projects/P1/commands/dcm2niix/convert-missing")
    assert r.status_code == 200, r.text
    assert r.json()["queued"] == 1
    wait_for(lambda: _conversion(owner, exp2)["complete"], timeout=60)
    assert owner.post("/xapi/projects/P1/commands/dcm2niix/convert-missing").json()["queued"] == 0

    # 4. re-activated: new scans convert again
    r = owner.post(f"/xapi/projects/P1/events/subscription/{sub_id}/activate")
    assert r.status_code in (200, 204), r.text
    exp3, _ = archive_scan(world, "P1", write_ct(tmp_path / "c", n=9, marker="QC"), label="ACC3", scan_id="2")
    wait_for(lambda: _conversion(owner, exp3)["complete"], timeout=60)
    project = owner.get("/xapi/projects/P1/conversion").json()
    assert project["complete"] is True and project["dicom_to_nifti"] is True
    assert project["scans"] == {"done": 3}
    # the same switch through our endpoint
    r = owner.put("/xapi/projects/P1/dicom_to_nifti", params={"enabled": "false"})
    assert r.json() == {"project": "P1", "enabled": False, "subscription-id": sub_id}
    assert owner.put("/xapi/projects/P1/dicom_to_nifti", params={"enabled": "true"}).json()["enabled"] is True
    member = httpx.Client(base_url=live_server, auth=("member", PASSWORD), timeout=30)
    assert member.put("/xapi/projects/P1/dicom_to_nifti", params={"enabled": "false"}).status_code == 403
    # the Event Service's delivery trails end when the containers end (two scans arrived while active)
    from flip_imaging.events.delivery.models import Delivery

    with world.session() as db:
        trails = [
            d.last_status for d in db.scalars(select(Delivery).where(Delivery.subscription_id == sub_id))
        ]
    assert trails == ["ACTION_COMPLETE", "ACTION_COMPLETE"]


def test_unconvertible_series_fails_with_log_and_scan_says_so(world, workers, client, tmp_path: Path) -> None:
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.dcm").write_bytes(b"this is not DICOM at all\n" * 40)
    (junk / "report.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x00\x00garbage")
    exp_id, scan_id = archive_scan(world, "P1", sorted(junk.iterdir()), publish=False)
    wid = _enable(client)
    r = client.post(
        f"/xapi/projects/P1/wrappers/{wid}/root/scan/launch",
        auth=("member", PASSWORD),
        data={"scan": f"/archive/experiments/{exp_id}/scans/{scan_id}"},
    )
    assert r.status_code == 200, r.text
    done = wait_for(lambda: _finished(client, r.json()["id"]))
    assert done["status"] == "Failed"
    assert done["history"][-1]["status"] == "Failed" and done["history"][-1]["message"]
    log = client.get(f"/xapi/containers/{done['id']}/logs/stdout", auth=ADMIN_AUTH).text
    log += client.get(f"/xapi/containers/{done['id']}/logs/stderr", auth=ADMIN_AUTH).text
    assert log.strip(), "the converter's output is kept"
    assert scan_resource_files(world, exp_id, scan_id, "NIFTI") == []
    state = client.get(f"/xapi/projects/P1/experiments/{exp_id}/conversion", auth=ADMIN_AUTH).json()
    assert state["scans"][0]["status"] == "failed" and state["scans"][0]["message"]
    assert state["complete"] is False and state["status"] == "failed"
    with world.session() as db:
        scan = db.scalar(select(Scan).join(Experiment).where(Experiment.id == exp_id))
        assert scan.extra["conversion"]["status"] == "failed"


def _sleep_command(client) -> int:
    command = {
        "name": "sleeper",
        "image": "local/sleeper:1",
        "version": "1",
        "type": "docker",
        "command-line": "sleep #seconds#",
        "inputs": [{"name": "seconds", "type": "number", "default-value": "30"}],
        "xnat": [
            {
                "name": "sleep-scan",
                "contexts": ["xnat:imageScanData"],
                "external-inputs": [{"name": "scan", "type": "Scan", "required": True}],
            }
        ],
    }
    r = client.post("/xapi/commands", auth=ADMIN_AUTH, json=command)
    assert r.status_code == 201, r.text
    cid = r.json()
    assert isinstance(cid, int)
    assert client.put(f"/xapi/commands/{cid}/wrappers/sleep-scan/enabled", auth=ADMIN_AUTH).status_code == 200
    assert (
        client.put(
            f"/xapi/projects/P1/commands/{cid}/wrappers/sleep-scan/enabled", auth=("owner", PASSWORD)
        ).status_code
        == 200
    )
    return cid


def test_kill_and_time_limit(world, workers, client, tmp_path: Path) -> None:
    exp_id, scan_id = archive_scan(world, "P1", write_ct(tmp_path / "d", n=3), publish=False)
    cid = _sleep_command(client)
    uri = f"/archive/experiments/{exp_id}/scans/{scan_id}"
    r = client.post(
        f"/xapi/commands/{cid}/wrappers/sleep-scan/root/scan/launch",
        auth=("member", PASSWORD),
        json={"scan": uri},
    )
    assert r.status_code == 200, r.text
    running = r.json()["id"]
    wait_for(lambda: _container(client, running)["status"] == "Running")
    assert client.post(f"/xapi/containers/{running}/kill", auth=("collab", PASSWORD)).status_code == 403
    assert client.post(f"/xapi/containers/{running}/kill", auth=("member", PASSWORD)).status_code == 200
    killed = wait_for(lambda: _finished(client, running), timeout=20)
    assert killed["status"] == "Killed"
    # the time limit applies to every container
    world.settings.container_time_limit_seconds = 1
    r = client.post(
        f"/xapi/commands/{cid}/wrappers/sleep-scan/root/scan/launch",
        auth=("member", PASSWORD),
        json={"scan": uri, "seconds": "20"},
    )
    slow = wait_for(lambda: _finished(client, r.json()["id"]), timeout=20)
    assert slow["status"] == "Failed" and "Time limit" in slow["history"][-1]["message"]
    listed = client.get("/xapi/projects/P1/containers", auth=("collab", PASSWORD)).json()
    assert {c["id"] for c in listed} >= {running, slow["id"]}
    assert client.get("/xapi/containers", auth=("other", PASSWORD)).json() == []
    assert client.get(f"/xapi/containers/{running}", auth=("other", PASSWORD)).status_code == 404
    assert json.loads(client.get("/xapi/containers", auth=ADMIN_AUTH).text)


def test_dcm2niix_warnings_reach_the_log_and_the_scan(world, workers, client, tmp_path: Path) -> None:
    files = write_ct(tmp_path / "gap", n=12, size=64)
    del files[5]  # a missing slice: dcm2niix converts with warnings
    exp_id, scan_id = archive_scan(world, "P1", files, publish=False)
    wid = _enable(client)
    r = client.post(
        f"/xapi/wrappers/{wid}/root/scan/launch",
        auth=("member", PASSWORD),
        json={"scan": f"/archive/experiments/{exp_id}/scans/{scan_id}"},
    )
    done = wait_for(lambda: _finished(client, r.json()["id"]))
    assert done["status"] == "Complete", done
    assert "warning" in done["history"][-1]["message"]
    log = client.get(f"/xapi/containers/{done['id']}/logs/stdout", auth=ADMIN_AUTH).text
    assert "Warning: Missing images?" in log
    state = client.get(f"/xapi/projects/P1/experiments/{exp_id}/conversion", auth=ADMIN_AUTH).json()
    (row,) = state["scans"]
    assert row["status"] == "done" and any("Missing images" in w for w in row["warnings"])
    with world.session() as db:
        scan = db.scalar(select(Scan).join(Experiment).where(Experiment.id == exp_id))
        assert any("Missing images" in w for w in scan.extra["conversion"]["warnings"])
    main = [p for p in scan_resource_files(world, exp_id, scan_id, "NIFTI") if p.name == "scan_1.nii.gz"]
    assert nib.load(main[0]).shape[2] == 11


def test_two_worker_pools_share_one_queue(world, client, tmp_path: Path) -> None:
    """Two pools (as two machines would) claim from one table: every container runs exactly once."""
    from flip_imaging.containers.models import ContainerHistory
    from flip_imaging.containers.worker import ContainerWorkers

    exp_id, scan_id = archive_scan(world, "P1", write_ct(tmp_path / "q", n=2), publish=False)
    cid = _sleep_command(client)
    uri = f"/archive/experiments/{exp_id}/scans/{scan_id}"
    ids = []
    for _ in range(8):
        r = client.post(
            f"/xapi/commands/{cid}/wrappers/sleep-scan/root/scan/launch",
            auth=("member", PASSWORD),
            json={"scan": uri, "seconds": "0.2"},
        )
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    pools = [ContainerWorkers(world, workers=2, lease_seconds=6, poll_seconds=0.05) for _ in range(2)]
    for pool in pools:
        pool.start()
    try:
        wait_for(lambda: all(_container(client, i)["status"] == "Complete" for i in ids), timeout=60)
    finally:
        for pool in pools:
            pool.stop()
    with world.session() as db:
        owners = set()
        for i in ids:
            running = list(
                db.scalars(
                    select(ContainerHistory).where(
                        ContainerHistory.container_id == i, ContainerHistory.status == "Running"
                    )
                )
            )
            assert len(running) == 1
            owners.add(running[0].message.split("worker ")[1].split(" ")[0])
        assert len(owners) >= 2  # both pools took work
