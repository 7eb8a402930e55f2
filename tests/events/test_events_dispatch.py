"""Dispatching outbox events to subscriptions: trails, filters, exactly-once across failures and restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
from events_helpers import ADMIN_AUTH, RECORDING, RECORDING_KEY, as_user, performed, scan_sub
from sqlalchemy import func, select

from flip_imaging.archive.store import ArchiveWriter
from flip_imaging.events import bus, service
from flip_imaging.events.actions import complete_delivery
from flip_imaging.events.delivery.models import Delivery
from flip_imaging.events.dispatcher import EventDispatcher, dispatch_one, dispatch_pending
from flip_imaging.events.models import Event

SCAN_EVENT = "org.nrg.xnat.eventservice.events.ScanEvent"
HERE = Path(__file__).parent


def _subscribe(ctx, model: dict, project_id: str | None = None, owner: str = "admin") -> int:
    with ctx.session() as db:
        return service.create_subscription(db, model, project_id=project_id, owner=owner).id


def _scan_payload(modality: str = "MR", project: str = "P1") -> dict:
    return {"id": "1", "label": "1", "xsiType": "xnat:mrScanData", "integer-id": 7, "scan-type": "T1w",
            "project-id": project, "session-id": "XNAT_E00001", "modality": modality,
            "series-description": "T1w", "uri": "/archive/experiments/XNAT_E00001/scans/1"}


def _publish(ctx, payload: dict | None = None, *, project: str = "P1", user: str | None = None,
             event_type: str = "ScanEvent", status: str = "CREATED") -> int:
    with ctx.session() as db:
        ev = bus.publish(db, event_type, status, payload or _scan_payload(project=project),
                         project_id=project, object_uri="/archive/experiments/XNAT_E00001/scans/1", user=user)
        db.flush()
        pk = ev.pk
    bus.notify()
    return pk


def _trail(ctx, delivery_id: int) -> list[str]:
    with ctx.session() as db:
        return [s.status for s in service.get_delivery(db, delivery_id).statuses]


def _deliveries(ctx) -> list[Delivery]:
    with ctx.session() as db:
        return list(db.scalars(select(Delivery).order_by(Delivery.id)))


def _undispatched(ctx) -> int:
    with ctx.session() as db:
        return db.scalar(select(func.count()).select_from(Event).where(Event.dispatched.is_(False)))


FULL_TRAIL = ["EVENT_TRIGGERED", "EVENT_DETECTED", "SUBSCRIPTION_TRIGGERED", "OBJECT_SERIALIZED",
              "OBJECT_FILTERED", "RESOLVING_ATTRIBUTES", "ACTION_CALLED", "ACTION_COMPLETE"]
#: without a payload filter there is no OBJECT_FILTERED step
NO_FILTER_TRAIL = [s for s in FULL_TRAIL if s != "OBJECT_FILTERED"]


def test_event_delivered_once_with_trail(world, recorder) -> None:
    sid = _subscribe(world, scan_sub(event_filter={"payload-filter": "@.modality == 'MR'"}))
    ev = _publish(world)
    assert dispatch_pending(world) == 1
    assert dispatch_pending(world) == 0
    (d,) = _deliveries(world)
    assert (d.event_pk, d.subscription_id, d.project_id, d.action_user) == (ev, sid, "P1", "admin")
    assert _trail(world, d.id) == FULL_TRAIL
    assert performed(world) == [f"test.performed.{ev}.{d.id}"]
    assert _undispatched(world) == 0


def test_filter_mismatch_halts(world, recorder, client) -> None:
    _subscribe(world, scan_sub(event_filter={"payload-filter": "@.modality == 'CT'"}))
    _publish(world)
    dispatch_pending(world)
    (d,) = _deliveries(world)
    assert _trail(world, d.id)[-1] == "OBJECT_FILTER_MISMATCH_HALT"
    assert "ACTION_CALLED" not in _trail(world, d.id)
    assert performed(world) == []
    # XNAT leaves mismatches out of the history unless asked for
    assert client.post("/xapi/events/delivered", auth=ADMIN_AUTH).json() == []
    rows = client.post("/xapi/events/delivered?include-filter-mismatch=true", auth=ADMIN_AUTH).json()
    assert [r["id"] for r in rows] == [d.id]


def test_inactive_and_non_matching_subscriptions_do_nothing(world, recorder) -> None:
    inactive = _subscribe(world, scan_sub("inactive"))
    with world.session() as db:
        service.set_active(db, inactive, False)
    _subscribe(world, scan_sub("only-p2", event_filter={"project-ids": ["P2"]}))
    _subscribe(world, scan_sub("sessions", event_filter={"event-type": "SessionEvent", "status": "CREATED"}))
    _subscribe(world, {"name": "deleted", "action-key": RECORDING_KEY,
                       "event-filter": {"event-type": "SessionEvent", "status": "DELETED"}})
    _publish(world)  # ScanEvent/CREATED in P1
    _publish(world, event_type="SessionEvent", status="MERGED")
    assert dispatch_pending(world) == 2
    assert _deliveries(world) == [] and performed(world) == []
    assert _undispatched(world) == 0


def test_project_subscription_only_sees_its_project(world, recorder) -> None:
    _subscribe(world, scan_sub("p1"), project_id="P1", owner="owner")
    _publish(world, project="P2")
    _publish(world, project="P1")
    dispatch_pending(world)
    (d,) = _deliveries(world)
    assert d.project_id == "P1" and d.action_user == "owner"


def test_act_as_event_user(world, recorder) -> None:
    _subscribe(world, scan_sub("as-user", **{"act-as-event-user": True}))
    _publish(world, user="member")
    _publish(world)  # no event user: the subscription owner acts
    dispatch_pending(world)
    assert [d.action_user for d in _deliveries(world)] == ["member", "admin"]


def test_raising_provider_fails_only_its_delivery(world, recorder) -> None:
    _subscribe(world, scan_sub("boom", action_key=f"{RECORDING}:raise"))
    _subscribe(world, scan_sub("fine"))
    ev = _publish(world)
    assert dispatch_pending(world) == 1
    boom, fine = _deliveries(world)
    trail = _trail(world, boom.id)
    assert trail[-2:] == ["ACTION_CALLED", "ACTION_FAILED"]
    with world.session() as db:
        assert "provider exploded" in service.get_delivery(db, boom.id).statuses[-1].message
    assert _trail(world, fine.id)[-1] == "ACTION_COMPLETE"
    # the raising provider's own writes were rolled back with its savepoint; nothing is retried
    assert performed(world) == [f"test.performed.{ev}.{fine.id}"]
    assert dispatch_pending(world) == 0


def test_pending_action_completed_later(world, recorder) -> None:
    _subscribe(world, scan_sub("later", action_key=f"{RECORDING}:pending"))
    _publish(world)
    dispatch_pending(world)
    (d,) = _deliveries(world)
    assert _trail(world, d.id)[-2:] == ["ACTION_CALLED", "ACTION_STEP"]
    assert not d.finished
    with world.session() as db:
        complete_delivery(db, d.id, True, "container finished")
    with world.session() as db:
        complete_delivery(db, d.id, False, "a late second report is ignored")
    assert _trail(world, d.id)[-1] == "ACTION_COMPLETE"
    with world.session() as db:
        assert service.get_delivery(db, d.id).finished
        with pytest.raises(LookupError):
            complete_delivery(db, 999999, True, "no such delivery")


def test_disabled_event_service_triggers_nothing(world, recorder, client) -> None:
    _subscribe(world, scan_sub())
    assert client.put("/xapi/events/prefs", json={"enabled": False}, auth=ADMIN_AUTH).status_code == 200
    _publish(world)
    assert dispatch_pending(world) == 1
    assert _deliveries(world) == []
    assert client.put("/xapi/events/prefs", json={"enabled": True}, auth=ADMIN_AUTH).status_code == 200
    assert dispatch_pending(world) == 0  # events seen while disabled are not replayed
    _publish(world)
    dispatch_pending(world)
    assert len(_deliveries(world)) == 1


def test_logging_action_with_real_archive_objects(world) -> None:
    logging_key = ("org.nrg.xnat.eventservice.actions.EventServiceLoggingAction:"
                   "org.nrg.xnat.eventservice.actions.EventServiceLoggingAction")
    ct_axial = "@.modality == 'CT' && @['scan-type'] =~ /ax.*/i"
    _subscribe(world, scan_sub("log", action_key=logging_key, event_filter={"payload-filter": ct_axial}))
    with ArchiveWriter(world) as w:
        project = w.project("P1")
        subj, _ = w.ensure_subject(project, "SUBJ01")
        exp, _ = w.ensure_experiment(project, subj, "ACC001", xsi_type="xnat:ctSessionData", modality="CT")
        scan, _ = w.ensure_scan(exp, scan_id="2", xsi_type="xnat:ctScanData", type="AXIAL",
                                series_description="Axial", modality="CT")
        w.publish("ScanEvent", "CREATED",
                  {"id": "2", "label": "2", "integer-id": scan.pk,
                   "xsiType": "xnat:ctScanData", "scan-type": "AXIAL", "project-id": "P1",
                   "session-id": exp.id, "modality": "CT", "series-description": "Axial",
                   "uri": f"/archive/experiments/{exp.id}/scans/2"},
                  project_id="P1", object_uri=f"/archive/experiments/{exp.id}/scans/2")
    assert dispatch_pending(world) == 1
    (d,) = _deliveries(world)
    assert _trail(world, d.id) == FULL_TRAIL


def test_delivery_history_api(world, recorder, client) -> None:
    sid = _subscribe(world, scan_sub("p1"), project_id="P1", owner="owner")
    _subscribe(world, scan_sub("p2"), project_id="P2", owner="other")
    for _ in range(3):
        _publish(world, project="P1")
    _publish(world, project="P2")
    dispatch_pending(world)

    site = client.post("/xapi/events/delivered", json={"page": 1, "size": 2}, auth=ADMIN_AUTH).json()
    assert len(site) == 2 and site[0]["id"] > site[1]["id"]  # newest first
    page2 = client.post("/xapi/events/delivered", json={"page": 2, "size": 2}, auth=ADMIN_AUTH).json()
    assert len(page2) == 2 and not {r["id"] for r in site} & {r["id"] for r in page2}
    assert len(client.get("/xapi/events/delivered?page=1&size=10", auth=ADMIN_AUTH).json()) == 4
    assert client.get("/xapi/events/delivered/count", auth=ADMIN_AUTH).json() == 4
    asc = client.post("/xapi/events/delivered", json={"sort_col": "id", "sort_dir": "asc"},
                      auth=ADMIN_AUTH).json()
    assert [r["id"] for r in asc] == sorted(r["id"] for r in asc)
    for bad in ({"size": 0}, {"page": 0}, {"page": "x"}, {"sort_col": "nope"}):
        assert client.post("/xapi/events/delivered", json=bad, auth=ADMIN_AUTH).status_code == 400, bad

    p1 = client.post("/xapi/projects/P1/events/delivered", auth=as_user("owner")).json()
    assert len(p1) == 3 and {r["project"] for r in p1} == {"P1"}
    one = p1[0]
    assert one["event-type"] == SCAN_EVENT and one["subscription"]["id"] == sid
    assert [s["status"] for s in one["status"]] == NO_FILTER_TRAIL
    assert all(isinstance(s["timestamp"], int) for s in one["status"])
    assert one["trigger"]["uri"] == "/archive/experiments/XNAT_E00001/scans/1"
    assert one["payload"]["modality"] == "MR"
    assert client.get(f"/xapi/projects/P1/events/delivered/{one['id']}", auth=as_user("owner")).json() == one
    assert client.get(f"/xapi/events/delivered/{one['id']}", auth=ADMIN_AUTH).json() == one
    assert client.get("/xapi/projects/P1/events/delivered/count", auth=as_user("owner")).json() == 3
    assert client.get(f"/xapi/projects/P1/events/delivered?subscription-id={sid}",
                      auth=as_user("owner")).json() == p1

    p2_id = client.get("/xapi/projects/P2/events/delivered", auth=as_user("other")).json()[0]["id"]
    assert client.get(f"/xapi/projects/P1/events/delivered/{p2_id}", auth=as_user("owner")).status_code == 404
    assert client.get("/xapi/projects/P1/events/delivered", auth=as_user("member")).status_code == 403
    assert client.get("/xapi/events/delivered", auth=as_user("owner")).status_code == 403
    assert client.get("/xapi/events/delivered/99999", auth=ADMIN_AUTH).status_code == 404

    # deleting the subscription keeps the history
    r = client.delete(f"/xapi/projects/P1/events/subscription/{sid}", auth=as_user("owner"))
    assert r.status_code == 204
    again = client.post("/xapi/projects/P1/events/delivered", auth=as_user("owner")).json()
    assert len(again) == 3 and again[0]["subscription"]["name"] == "p1"


def test_events_published_while_down_are_delivered_once_after_start(world, recorder) -> None:
    _subscribe(world, scan_sub())
    events = [_publish(world) for _ in range(5)]
    assert _undispatched(world) == 5  # nothing runs a dispatcher yet (the ``ctx`` fixture starts none)
    for _ in range(2):  # start, drain, stop; then a "restart" finds nothing left to do
        dispatcher = EventDispatcher(world, poll_seconds=0.05)
        dispatcher.start()
        deadline = time.monotonic() + 20
        while _undispatched(world) and time.monotonic() < deadline:
            time.sleep(0.05)
        dispatcher.stop()
    assert _undispatched(world) == 0
    assert sorted(d.event_pk for d in _deliveries(world)) == events
    assert len(performed(world)) == 5


@pytest.mark.parametrize("mode", ["kill", "exit"])
def test_crash_mid_delivery_does_not_double_deliver(world, recorder, mode) -> None:
    """A dispatcher process dies inside perform(): nothing of it survives, the next one delivers once."""
    _subscribe(world, scan_sub())
    ev = _publish(world)
    proc = subprocess.Popen(
        [sys.executable, str(HERE / "crash_worker.py"), world.settings.effective_database_url,
         str(world.settings.data_dir), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.strip() == "PERFORMING", proc.stderr.read() if proc.stderr else ""
        if mode == "kill":
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode != 0
    assert _undispatched(world) == 1 and _deliveries(world) == [] and performed(world) == []
    assert dispatch_pending(world) == 1
    (d,) = _deliveries(world)
    assert performed(world) == [f"test.performed.{ev}.{d.id}"]
    assert _trail(world, d.id)[-1] == "ACTION_COMPLETE"
    assert dispatch_pending(world) == 0


def test_concurrent_dispatchers_deliver_each_event_once(world, recorder) -> None:
    _subscribe(world, scan_sub())
    events = [_publish(world) for _ in range(30)]
    errors: list[BaseException] = []

    def drain() -> None:
        try:
            while dispatch_one(world) is not None:
                pass
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    # on SQLite a thread may lose the write lock race and give up; whatever is left is drained here
    dispatch_pending(world)
    assert sorted(d.event_pk for d in _deliveries(world)) == events
    assert len(performed(world)) == 30
    assert not [e for e in errors if "locked" not in str(e)]


def test_dispatcher_processes_share_the_queue(world, recorder) -> None:
    """Three dispatcher processes drain one outbox: every event is delivered by exactly one of them."""
    _subscribe(world, scan_sub())
    events = [_publish(world) for _ in range(40)]
    procs = [subprocess.Popen([sys.executable, str(HERE / "crash_worker.py"),
                               world.settings.effective_database_url, str(world.settings.data_dir), "drain"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    counts = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        counts.append(int(out.split()[-1]))
    assert sum(counts) == 40
    assert sorted(d.event_pk for d in _deliveries(world)) == events
    assert len(performed(world)) == 40 and _undispatched(world) == 0


def test_live_server_dispatches_on_its_own(world, recorder, live_server) -> None:
    with httpx.Client(base_url=live_server, auth=as_user("owner"), timeout=10) as http:
        r = http.post("/xapi/projects/P1/events/subscription", json=scan_sub("live"))
        assert r.status_code == 201, r.text
        ev = _publish(world)
        deadline = time.monotonic() + 15
        rows: list = []
        while time.monotonic() < deadline:
            rows = http.post("/xapi/projects/P1/events/delivered").json()
            if rows and rows[0]["status"][-1]["status"] == "ACTION_COMPLETE":
                break
            time.sleep(0.1)
        assert rows and rows[0]["status"][-1]["status"] == "ACTION_COMPLETE"
    assert [k.split(".")[2] for k in performed(world)] == [str(ev)]


def test_dispatch_error_sets_event_aside_and_retries(world, recorder, monkeypatch) -> None:
    """An unexpected error (a bug, a dropped connection) rolls the claim back; later events still flow
    and the failed one is retried after a back-off."""
    from flip_imaging.events import dispatcher as mod

    _subscribe(world, scan_sub())
    first, second = _publish(world), _publish(world)
    real = mod.deliver
    failures = {"left": 1}

    def flaky(db, event):  # type: ignore[no-untyped-def]
        if event.pk == first and failures["left"]:
            failures["left"] -= 1
            raise RuntimeError("connection lost")
        return real(db, event)

    monkeypatch.setattr(mod, "deliver", flaky)
    d = EventDispatcher(world)
    assert d.run_once() == 0  # the first event failed and was set aside
    assert d.run_once() == 1  # the second goes ahead meanwhile
    assert [x.event_pk for x in _deliveries(world)] == [second]
    time.sleep(0.6)  # past the first back-off
    assert d.run_once() == 1
    assert sorted(x.event_pk for x in _deliveries(world)) == [first, second]
    assert len(performed(world)) == 2


def test_event_hooks_run_in_the_dispatch_transaction(world, recorder) -> None:
    """Hooks see every dispatched event in its transaction; one that raises spoils neither the others nor
    the subscriptions' deliveries; none run while the Event Service is disabled."""
    from flip_imaging.events.actions import register_event_hook, unregister_event_hook
    from flip_imaging.prefs.models import Preference

    def record(db, event) -> None:  # type: ignore[no-untyped-def]
        db.add(Preference(key=f"test.hook.{event.pk}", value={"status": event.status}))

    def explode(db, event) -> None:  # type: ignore[no-untyped-def]
        db.add(Preference(key=f"test.exploded.{event.pk}", value={}))
        db.flush()
        raise RuntimeError("hook exploded")

    register_event_hook("test.explode", explode)
    register_event_hook("test.record", record)
    try:
        _subscribe(world, scan_sub(), project_id="P1")
        first = _publish(world)
        res_uri = "/archive/experiments/X/scans/1/resources/DICOM"
        resource = _publish(world, {"label": "DICOM", "uri": res_uri}, event_type="ResourceEvent",
                            status="UPDATED")
        assert dispatch_pending(world) == 2
        with world.session() as db:
            service.set_enabled(db, False)
        third = _publish(world)
        assert dispatch_pending(world) == 1
        with world.session() as db:
            keys = set(db.scalars(select(Preference.key).where(Preference.key.like("test.%"))))
    finally:
        unregister_event_hook("test.explode")
        unregister_event_hook("test.record")
    assert {f"test.hook.{first}", f"test.hook.{resource}"} <= keys
    assert f"test.hook.{third}" not in keys  # the Event Service was off
    assert not any(k.startswith("test.exploded.") for k in keys)  # its savepoint was rolled back
    assert any(k.startswith(f"test.performed.{first}.") for k in keys)  # the subscription still acted
