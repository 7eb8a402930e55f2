"""The Container Service without HTTP: launches, container records, conversion state, FLIP's switch.

Routes, the event action provider and the FLIP agent call these with a SQLAlchemy session; the caller
commits. A launch only inserts a ``Queued`` container row (the durable job); workers
(:mod:`flip_imaging.containers.worker`) run it. ``dicom_to_nifti`` is one project subscription
("DICOM-NIfTI Conversion") whose action launches the ``dcm2niix-scan`` wrapper on every archived scan.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event as sa_event
from sqlalchemy import select
from sqlalchemy.orm import Session

from flip_imaging.archive.models import Experiment, File, Project, Resource, Scan, utcnow
from flip_imaging.containers.models import Command, Container, ContainerHistory, Wrapper
from flip_imaging.containers.registry import (
    NotFound,
    dcm2niix_wrapper,
    get_command,
    get_wrapper,
    project_enabled,
    set_project_enabled,
)
from flip_imaging.containers.runner import (
    LaunchError,
    files_fingerprint,
    plan_launch,
    resources_of,
    scan_uri,
)

log = logging.getLogger(__name__)

PROVIDER_NAME = "org.nrg.containers.services.CommandActionProvider"
SUBSCRIPTION_NAME = "DICOM-NIfTI Conversion"
ACTIVE_STATUSES = ("Queued", "Running", "Finalizing")
FINAL_STATUSES = ("Complete", "Failed", "Killed")

#: set after a transaction that queued a container commits, so in-process workers start at once
jobs_available = threading.Event()


def _transaction_end(session: Session, transaction: Any) -> None:
    # savepoints end too (the dispatcher runs actions in one): only the outermost transaction counts
    if transaction.parent is None and session.info.pop("flip_containers_wake", False):
        jobs_available.set()


def wake_after_commit(db: Session) -> None:
    """Wake in-process workers when ``db``'s outermost transaction ends (other processes poll)."""
    db.info["flip_containers_wake"] = True
    if not db.info.get("flip_containers_listener"):
        db.info["flip_containers_listener"] = True
        sa_event.listen(db, "after_transaction_end", _transaction_end)


def action_key(wrapper_id: int) -> str:
    return f"{PROVIDER_NAME}:{wrapper_id}"


def add_history(
    db: Session, container: Container, status: str, message: str | None = None, exit_code: int | None = None
) -> None:
    db.add(
        ContainerHistory(
            container_id=container.id,
            status=status,
            message=message,
            exit_code=exit_code,
            time_recorded=utcnow(),
        )
    )


def set_scan_conversion(
    scan: Scan,
    status: str,
    container_id: int | None,
    message: str | None = None,
    warnings: list[str] | None = None,
    dicom_files: int | None = None,
) -> None:
    """Record the scan's conversion state in ``scan.extra["conversion"]`` (shown with the scan).

    ``dicom_files``: how many DICOM files the conversion converted (a later change of the DICOM
    resource makes the conversion stale, see :func:`conversion_status`).
    """
    info: dict[str, Any] = {
        "status": status,
        "container-id": container_id,
        "updated": utcnow().isoformat(timespec="seconds"),
    }
    if message:
        info["message"] = message
    if warnings:
        info["warnings"] = warnings
    if dicom_files is not None:
        info["dicom-files"] = dicom_files
    scan.extra = {**(scan.extra or {}), "conversion": info}


# -- launching ---------------------------------------------------------------------------------------

Authorize = Callable[[Project], None]


def launch(
    db: Session,
    wrapper: Wrapper,
    root: str,
    params: dict[str, Any],
    *,
    user: str,
    project_id: str | None = None,
    delivery_id: int | None = None,
    authorize: Authorize | None = None,
    reason: str | None = None,
    scan: Scan | None = None,
) -> Container:
    """Queue a container for ``wrapper`` on the object named by ``params[root]``.

    ``authorize`` is called with the target's project before anything is queued (routes pass a
    permission check). ``reason`` is added to the "Created" history entry; ``scan``: the scan
    ``params[root]`` names, if the caller has it loaded. Raises :class:`LaunchError` (``status`` = HTTP
    status) with the reason.
    """
    command = db.get(Command, wrapper.command_id)
    if command is None:
        raise LaunchError(f"Wrapper {wrapper.id} belongs to no command", 404)
    params = {k: v for k, v in params.items() if v is not None}
    plan, scan = plan_launch(db, command, wrapper, root, params, project_id, scan)
    project = scan.experiment.project
    if authorize is not None:
        authorize(project)
    if not wrapper.enabled:
        raise LaunchError(f"Wrapper '{wrapper.name}' (id {wrapper.id}) is disabled on this site")
    if not project_enabled(db, wrapper, project.id):
        raise LaunchError(
            f"Wrapper '{wrapper.name}' (id {wrapper.id}) is not enabled in project {project.id}"
        )
    now = utcnow()
    container = Container(
        command_id=command.id,
        wrapper_id=wrapper.id,
        command_name=command.name,
        wrapper_name=wrapper.name,
        project_id=project.id,
        user=user,
        status="Queued",
        status_time=now,
        root_input=root,
        root_uri=scan_uri(scan),
        scan_pk=scan.pk,
        conversion=plan.conversion,
        plan=plan.to_json(),
        outputs=[],
        delivery_id=delivery_id,
        attempts=0,
        created_at=now,
    )
    db.add(container)
    db.flush()
    add_history(
        db,
        container,
        "Created",
        f"Launched by {user}"
        + (f" (event delivery {delivery_id})" if delivery_id else "")
        + (f": {reason}" if reason else ""),
    )
    running = conversion_running(db, scan.pk) if plan.conversion else None
    add_history(
        db,
        container,
        "Queued",
        f"Waiting for container {running} (converting this scan) to finish"
        if running is not None
        else "Waiting for a worker",
    )
    if plan.conversion:
        set_scan_conversion(scan, "pending", container.id)
    db.flush()
    wake_after_commit(db)
    return container


def launch_by_id(db: Session, wrapper_id: int, root: str, params: dict[str, Any], **kw: Any) -> Container:
    try:
        wrapper = get_wrapper(db, wrapper_id)
    except NotFound as exc:
        raise LaunchError(str(exc), 404) from exc
    return launch(db, wrapper, root, params, **kw)


# -- container records -------------------------------------------------------------------------------


def _millis(value: datetime | None) -> int | None:
    if value is None:
        return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def get_container(db: Session, container_id: int) -> Container:
    c = db.get(Container, container_id)
    if c is None:
        raise NotFound(f"No container with id {container_id}")
    return c


def history_of(db: Session, container: Container) -> list[ContainerHistory]:
    return list(
        db.scalars(
            select(ContainerHistory)
            .where(ContainerHistory.container_id == container.id)
            .order_by(ContainerHistory.pk)
        )
    )


def container_json(db: Session, c: Container) -> dict[str, Any]:
    """XNAT's container JSON (the fields clients read)."""
    plan = c.plan or {}
    inputs = [
        {
            "type": "wrapper-external" if k == c.root_input else "command",
            "name": k,
            "value": "" if v is None else str(v),
            "sensitive": False,
        }
        for k, v in (plan.get("inputs") or {}).items()
    ]
    return {
        "id": c.id,
        "container-id": f"flip-{c.id}",
        "command-id": c.command_id,
        "wrapper-id": c.wrapper_id,
        "command-name": c.command_name,
        "wrapper-name": c.wrapper_name,
        "status": c.status,
        "status-time": _millis(c.status_time),
        "project": c.project_id,
        "user-id": c.user,
        "workflow-id": str(c.id),
        "docker-image": None,
        "backend": "process",
        "command-line": plan.get("command-line"),
        "root-input": c.root_input,
        "root-uri": c.root_uri,
        "inputs": inputs,
        "outputs": c.outputs or [],
        "exit-code": None if c.exit_code is None else str(c.exit_code),
        "attempts": c.attempts,
        "created": _millis(c.created_at),
        "mounts": [
            {"name": m["name"], "container-path": m["path"], "writable": m["writable"]}
            for m in plan.get("mounts") or []
        ],
        "history": [
            {
                "status": h.status,
                "time-recorded": _millis(h.time_recorded),
                "message": h.message,
                "exitCode": None if h.exit_code is None else str(h.exit_code),
                "entity-type": "system",
            }
            for h in history_of(db, c)
        ],
    }


def list_containers(db: Session, *, project_ids: list[str] | None = None) -> list[Container]:
    """All containers, or those of the given projects (``None`` = no project restriction)."""
    q = select(Container).order_by(Container.id)
    if project_ids is not None:
        q = q.where(Container.project_id.in_(project_ids))
    return list(db.scalars(q))


def request_kill(db: Session, c: Container, user: str) -> Container:
    """Kill a container: a queued one at once; a running one is killed by its worker within seconds."""
    if c.status in FINAL_STATUSES:
        return c
    if c.status == "Queued":
        c.status, c.status_time, c.lease_owner = "Killed", utcnow(), None
        add_history(db, c, "Killed", f"Killed by {user} before it started")
        _finish_side_effects(db, c, success=False, message=f"Container {c.id} killed by {user}")
    else:
        c.kill_requested = True
        add_history(db, c, "Kill requested", f"Kill requested by {user}")
    db.flush()
    return c


def _finish_side_effects(
    db: Session, c: Container, *, success: bool, message: str, warnings: list[str] | None = None
) -> None:
    """Scan conversion state and the event delivery, in the transaction that ends the container."""
    if c.conversion and c.scan_pk is not None:
        scan = db.get(Scan, c.scan_pk)
        if scan is not None:
            dicom = _dicom_snapshot(c)
            set_scan_conversion(
                scan,
                "done" if success else "failed",
                c.id,
                None if success else message,
                warnings,
                dicom_files=dicom.get("files") if success and dicom else None,
            )
    if c.delivery_id is not None:
        try:
            from flip_imaging.events.actions import complete_delivery

            complete_delivery(db, c.delivery_id, success, message)
        except ImportError:  # the event service is optional for hand launches
            log.warning("cannot complete event delivery %s: event service unavailable", c.delivery_id)


# -- conversion state --------------------------------------------------------------------------------

DICOM = "DICOM"


def conversion_running(db: Session, scan_pk: int) -> int | None:
    """The id of a conversion of the scan that a worker is running now, if any."""
    return db.scalar(
        select(Container.id)
        .where(
            Container.scan_pk == scan_pk,
            Container.conversion.is_(True),
            Container.status.in_(("Running", "Finalizing")),
        )
        .limit(1)
    )


def lock_scan(db: Session, scan_pk: int) -> None:
    """Serialise decisions about one scan's conversions (a row lock on PostgreSQL; SQLite has one writer)."""
    db.execute(select(Scan.pk).where(Scan.pk == scan_pk).with_for_update())


@dataclass
class DicomNow:
    """A scan's DICOM resource as catalogued now: what a current conversion must have converted."""

    resource_pk: int
    files: int
    fingerprint: str
    newest: datetime | None


@dataclass
class ScanFiles:
    """File counts per resource label of some scans, and their DICOM resources' fingerprints."""

    counts: dict[tuple[int, str], int] = field(default_factory=dict)
    dicom: dict[int, DicomNow] = field(default_factory=dict)


def scan_files(db: Session, scan_pks: list[int]) -> ScanFiles:
    """One look at the catalog for :func:`conversion_status` and :func:`convert_missing`."""
    out = ScanFiles()
    pairs: dict[int, list[tuple[str, str]]] = {}
    newest: dict[int, datetime] = {}
    for i in range(0, len(scan_pks), 500):
        rows = db.execute(
            select(Resource.scan_pk, Resource.pk, Resource.label, File.path, File.sha256, File.created_at)
            .outerjoin(File, File.resource_pk == Resource.pk)
            .where(Resource.scan_pk.in_(scan_pks[i : i + 500]))
            .order_by(Resource.pk)
        ).all()
        for scan_pk, res_pk, label, path, sha, created in rows:
            key = (scan_pk, label)
            out.counts[key] = out.counts.get(key, 0) + (1 if path is not None else 0)
            if label != DICOM:
                continue
            pairs.setdefault(res_pk, [])
            if path is not None:
                pairs[res_pk].append((path, sha))
                if created is not None and (res_pk not in newest or _aware(created) > newest[res_pk]):
                    newest[res_pk] = _aware(created)
            out.dicom.setdefault(scan_pk, DicomNow(res_pk, 0, "", None))
    for now in out.dicom.values():
        files = pairs.get(now.resource_pk, [])
        now.files, now.fingerprint = len(files), files_fingerprint(files)
        now.newest = newest.get(now.resource_pk)
    return out


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _dicom_snapshot(c: Container) -> dict[str, Any] | None:
    """What a conversion recorded of the DICOM resource it converted (None before it ran, or if old)."""
    for entry in (c.input_snapshot or {}).values():
        if isinstance(entry, dict) and entry.get("label") == DICOM:
            return entry
    return None


def is_stale(c: Container, now: DicomNow | None) -> bool:
    """Whether the scan's DICOM changed since conversion ``c`` linked its input.

    Exact for conversions that recorded a snapshot (the DICOM resource and the fingerprint of its
    catalogued files); for older ones, any DICOM file catalogued after the container was created counts
    as a change, which errs on the side of converting again.
    """
    if now is None:
        return False
    snap = _dicom_snapshot(c)
    if snap is not None:
        return snap.get("resource-pk") != now.resource_pk or snap.get("fingerprint") != now.fingerprint
    return now.newest is not None and now.newest > _aware(c.created_at)


def latest_conversions(db: Session, scan_pks: list[int]) -> dict[int, Container]:
    """Each scan's newest conversion container (by id)."""
    latest: dict[int, Container] = {}
    for i in range(0, len(scan_pks), 500):
        for c in db.scalars(
            select(Container)
            .where(Container.scan_pk.in_(scan_pks[i : i + 500]), Container.conversion.is_(True))
            .order_by(Container.id)
        ):
            latest[c.scan_pk] = c  # type: ignore[index]
    return latest


def conversion_expected(db: Session, project_id: str) -> bool:
    """Whether the project converts automatically (its dicom_to_nifti subscription is active)."""
    sub = _find_subscription(db, project_id)
    return bool(sub is not None and sub.active)


SUMMARY_ORDER = ("failed", "stale", "running", "pending", "not-requested", "done")


def conversion_status(db: Session, experiment: Experiment, *, expected: bool | None = None) -> dict[str, Any]:
    """Per-scan NIfTI conversion state of an experiment and an overall verdict.

    A scan with DICOM is ``done`` (a NIFTI resource with files, converted from exactly the DICOM files
    the scan has now, and no newer conversion under way), ``pending`` (queued, or not yet picked up while
    the project converts automatically, including a re-conversion after its DICOM changed), ``running``,
    ``failed`` (the latest conversion failed or was killed; its message is given), ``stale`` (its DICOM
    changed after the conversion, automatic conversion is off and no re-conversion is queued) or
    ``not-requested`` (automatic conversion is off and nobody launched one). Scans without DICOM are
    ``not-applicable``. The experiment's ``status`` is the worst of its scans, and ``complete`` is true
    only when every scan with DICOM is done: training must wait for that.
    """
    if expected is None:
        expected = conversion_expected(db, experiment.project.id)
    scans = list(db.scalars(select(Scan).where(Scan.experiment_pk == experiment.pk).order_by(Scan.pk)))
    found = scan_files(db, [s.pk for s in scans])
    latest = latest_conversions(db, [s.pk for s in scans])
    rows = []
    for scan in scans:
        now = found.dicom.get(scan.pk)
        has_dicom = now is not None and now.files > 0
        nifti_files = found.counts.get((scan.pk, "NIFTI"), 0)
        c = latest.get(scan.pk)
        message = None
        if c is not None and c.status in ("Running", "Finalizing"):
            status = "running"
        elif c is not None and c.status == "Queued":
            status = "pending"
        elif nifti_files > 0 and (c is None or c.status == "Complete"):
            status = "done"
            if c is not None and has_dicom and is_stale(c, now):
                status = "pending" if expected else "stale"
                converted = (_dicom_snapshot(c) or {}).get("files")
                counts = f" ({converted} file(s) converted, {now.files} now)" if converted is not None else ""
                then = "it will be converted again" if expected else "convert it again (convert-missing)"
                message = f"The DICOM changed after conversion {c.id}{counts}; {then}"
        elif c is not None and c.status in ("Failed", "Killed"):
            status = "failed"
            message = next((h.message for h in reversed(history_of(db, c)) if h.status == c.status), None)
        elif not has_dicom:
            status = "not-applicable"
        elif expected:
            status = "pending"
        else:
            status = "not-requested"
        row: dict[str, Any] = {
            "scan": scan.scan_id,
            "xsiType": scan.xsi_type,
            "status": status,
            "dicom": has_dicom,
            "dicom-files": now.files if now is not None else 0,
            "nifti-files": nifti_files,
            "container-id": c.id if c is not None else None,
        }
        converted_files = (_dicom_snapshot(c) or {}).get("files") if c is not None else None
        if converted_files is not None:
            row["converted-dicom-files"] = converted_files
        if message:
            row["message"] = message
        warnings = ((scan.extra or {}).get("conversion") or {}).get("warnings")
        if warnings:
            row["warnings"] = warnings
        rows.append(row)
    states = {r["status"] for r in rows if r["status"] != "not-applicable"}
    overall = next((s for s in SUMMARY_ORDER if s in states), "done")
    return {
        "experiment": experiment.id,
        "label": experiment.label,
        "project": experiment.project.id,
        "status": overall,
        "complete": overall == "done",
        "scans": rows,
    }


def project_conversion_status(db: Session, project: Project) -> dict[str, Any]:
    expected = conversion_expected(db, project.id)
    exps = list(
        db.scalars(select(Experiment).where(Experiment.project_pk == project.pk).order_by(Experiment.pk))
    )
    results = [conversion_status(db, e, expected=expected) for e in exps]
    totals: dict[str, int] = {}
    for r in results:
        for s in r["scans"]:
            totals[s["status"]] = totals.get(s["status"], 0) + 1
    return {
        "project": project.id,
        "dicom_to_nifti": expected,
        "complete": all(r["complete"] for r in results),
        "scans": totals,
        "experiments": results,
    }


# -- FLIP's dicom_to_nifti switch --------------------------------------------------------------------


def _find_subscription(db: Session, project_id: str) -> Any | None:
    try:
        from flip_imaging.events.service import list_subscriptions
    except ImportError:
        return None
    try:
        wrapper = dcm2niix_wrapper(db)
    except NotFound:
        return None
    key = action_key(wrapper.id)
    for sub in list_subscriptions(db, project_id):
        if sub.name == SUBSCRIPTION_NAME and sub.action_key == key and sub.project_ids == [project_id]:
            return sub
    return None


def subscription_model(project_id: str, wrapper_id: int, active: bool) -> dict[str, Any]:
    return {
        "name": SUBSCRIPTION_NAME,
        "active": active,
        "action-key": action_key(wrapper_id),
        "attributes": {},
        "event-filter": {
            "event-type": "org.nrg.xnat.eventservice.events.ScanEvent",
            "project-ids": [project_id],
            "status": "CREATED",
        },
        "act-as-event-user": False,
    }


def set_dicom_to_nifti(db: Session, project_id: str, enabled: bool, owner: str) -> Any:
    """Turn a project's automatic DICOM→NIfTI conversion on or off; returns the subscription.

    Enables the ``dcm2niix-scan`` wrapper in the project (it stays enabled when conversion is turned off,
    so it can still be launched by hand) and creates the "DICOM-NIfTI Conversion" subscription or
    (de)activates the existing one. Scans archived while it was off are converted by
    :func:`convert_missing`, not by turning it on.
    """
    import flip_imaging.containers.provider  # noqa: F401  (the subscription's action must be known)
    from flip_imaging.events.service import create_subscription, set_active

    project = db.scalar(select(Project).where(Project.id == project_id))
    if project is None:
        raise NotFound(f"Project {project_id} not found")
    wrapper = dcm2niix_wrapper(db)
    set_project_enabled(db, wrapper, project.id, True)
    sub = _find_subscription(db, project.id)
    if sub is None:
        sub = create_subscription(
            db, subscription_model(project.id, wrapper.id, enabled), project_id=project.id, owner=owner
        )
    elif sub.active != enabled:
        sub = set_active(db, sub.id, enabled)
    return sub


def convert_missing(db: Session, project: Project, user: str) -> list[Container]:
    """Queue dcm2niix for every scan of the project with DICOM files and no current NIfTI.

    That is: no NIfTI files, or NIfTI converted from DICOM that has changed since (``stale``). Scans
    whose conversion is already queued or running are left alone; failed ones are tried again.
    """
    wrapper = dcm2niix_wrapper(db)
    scans = list(
        db.scalars(
            select(Scan)
            .join(Experiment, Experiment.pk == Scan.experiment_pk)
            .where(Experiment.project_pk == project.pk)
            .order_by(Scan.pk)
        )
    )
    found = scan_files(db, [s.pk for s in scans])
    latest = latest_conversions(db, [s.pk for s in scans])
    queued = []
    for scan in scans:
        now = found.dicom.get(scan.pk)
        if now is None or now.files == 0:
            continue
        c = latest.get(scan.pk)
        if c is not None and c.status in ACTIVE_STATUSES:
            continue
        has_nifti = found.counts.get((scan.pk, "NIFTI"), 0) > 0
        stale = c is not None and c.status == "Complete" and is_stale(c, now)
        if has_nifti and not stale:
            continue
        reason = "its DICOM changed after the last conversion" if has_nifti else None
        params = {"scan": scan_uri(scan)}
        queued.append(
            launch(db, wrapper, "scan", params, user=user, project_id=project.id, reason=reason, scan=scan)
        )
    return queued


# -- re-conversion when a scan's DICOM changes -------------------------------------------------------


@dataclass
class Reconversion:
    """What :func:`queue_reconversion` did: ``container`` is the one that will convert the new files."""

    container: Container | None
    queued: bool  # a new container was queued (False: an already queued one will do, or nothing)
    message: str


def _relaunch(
    db: Session, scan: Scan, previous: Container | None, sub: Any
) -> tuple[Wrapper, str, dict[str, Any]]:
    """Wrapper, root input and parameters to convert ``scan`` again: as last time (same options), else
    as the project's subscription does."""
    wrapper = None
    if previous is not None and previous.wrapper_id is not None:
        wrapper = db.get(Wrapper, previous.wrapper_id)
    if wrapper is not None and previous is not None:
        command = db.get(Command, wrapper.command_id)
        names = {i["name"] for i in (command.definition.get("inputs") or [])} if command else set()
        names |= {e["name"] for e in wrapper.definition.get("external-inputs") or []}
        root = previous.root_input
        given = (previous.plan or {}).get("inputs") or {}
        params = {k: v for k, v in given.items() if k in names and k != root and v is not None}
        params[root] = scan_uri(scan)
        return wrapper, root, params
    if sub is not None:
        wrapper = wrapper_for_action(db, sub.action_key.partition(":")[2])
        params = dict(sub.attributes or {})
    else:
        wrapper, params = dcm2niix_wrapper(db), {}
    externals = wrapper.definition.get("external-inputs") or []
    root = next((e["name"] for e in externals if e.get("type") == "Scan"), "scan")
    params[root] = scan_uri(scan)
    return wrapper, root, params


def queue_reconversion(
    db: Session, scan: Scan, *, reason: str, delivery_id: int | None = None, automatic: bool | None = None
) -> Reconversion:
    """After ``scan``'s DICOM changed, make sure a conversion will convert the new files.

    Only for scans that are converted: the project converts automatically (``automatic``; looked up when
    None) or the scan has been converted (or tried) before. At most one conversion waits per scan: if
    one is queued and not started, it links the files when it starts and so converts the new ones too;
    nothing is added. If one is running, a new one is queued; workers start it when the running one has
    ended (see ``worker.claim_next``). Runs in the caller's transaction (the event dispatcher's), so the
    queued container is as durable as the event that caused it. Raises :class:`LaunchError`.
    """
    lock_scan(db, scan.pk)
    conversions = list(
        db.scalars(
            select(Container)
            .where(Container.scan_pk == scan.pk, Container.conversion.is_(True))
            .order_by(Container.id)
        )
    )
    waiting = next((c for c in reversed(conversions) if c.status == "Queued"), None)
    if waiting is not None:
        add_history(db, waiting, "Input updated", f"{reason}; this queued conversion will convert them")
        message = f"Conversion already queued as container {waiting.id}; it will convert the new files"
        return Reconversion(waiting, False, message)
    project_id = scan.experiment.project.id
    sub = _find_subscription(db, project_id)
    if automatic is None:
        automatic = bool(sub is not None and sub.active)
    previous = conversions[-1] if conversions else None
    if previous is None and not automatic:
        return Reconversion(None, False, "The scan has never been converted and conversion is off")
    wrapper, root, params = _relaunch(db, scan, previous, sub if automatic else None)
    user = sub.owner if automatic and sub is not None else previous.user if previous is not None else "admin"
    container = launch(
        db,
        wrapper,
        root,
        params,
        user=user,
        project_id=project_id,
        delivery_id=delivery_id,
        reason=reason,
        scan=scan,
    )
    return Reconversion(container, True, f"Re-conversion queued as container {container.id}")


def wrapper_for_action(db: Session, suffix: str) -> Wrapper:
    try:
        wrapper_id = int(suffix)
    except ValueError as exc:
        raise NotFound(f"'{suffix}' is not a wrapper id") from exc
    return get_wrapper(db, wrapper_id)


__all__ = ["LaunchError", "NotFound", "get_command", "resources_of"]
