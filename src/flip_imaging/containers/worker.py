"""Container workers: claim queued containers from the database, run them as processes, attach outputs.

Any number of worker processes, on any machines sharing the database and the archive, can serve one
queue. A worker claims a ``Queued`` row with a guarded UPDATE (on PostgreSQL the candidate is picked
``FOR NO KEY UPDATE SKIP LOCKED``) and holds a lease it renews while the process runs; a scan's
conversions run one at a time, in the order they were queued. A row whose lease has
expired, or whose owner was a process on this machine that no longer exists, is re-queued (its history
says so) and run again; outputs are attached and the container marked ``Complete`` in one archive
transaction guarded by the lease, so a job is attached at most once even when a presumed-dead worker
wakes up. Run standalone with ``python -m flip_imaging.containers.worker --data-dir DIR``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, text, update
from sqlalchemy.orm import Session, lazyload

from flip_imaging.archive.models import File, Resource, Scan, utcnow
from flip_imaging.containers.models import Container
from flip_imaging.containers.runner import (
    LinkedInput,
    check_nifti_slices,
    count_dicom_frames,
    find_executable,
    link_resource_files,
    map_args,
    output_files,
)
from flip_imaging.containers.service import (
    _finish_side_effects,
    add_history,
    conversion_running,
    jobs_available,
    lock_scan,
    set_scan_conversion,
)
from flip_imaging.context import AppContext, register_service

if TYPE_CHECKING:
    from flip_imaging.archive.store import ArchiveWriter

log = logging.getLogger(__name__)

DEFAULT_LEASE_SECONDS = 30.0
MAX_ATTEMPTS = 3
LOG_LIMIT = 256 * 1024
POLL_SECONDS = 1.0


#: worker ids of the pools running in this process
_LIVE_WORKERS: set[str] = set()


class LeaseLost(RuntimeError):
    """Another worker has taken over this container (our lease expired)."""


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _local_owner_dead(owner: str | None) -> bool:
    """True when ``owner`` (``host:pid:tag``) was a worker on this machine whose process is gone."""
    if not owner:
        return False
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():  # this process (or a predecessor that had the same pid, e.g. in a container)
        return owner not in _LIVE_WORKERS
    return not _pid_alive(pid)


def stale_containers(db: Session) -> list[tuple[int, str | None, int]]:
    """(id, lease owner, attempts) of running containers whose worker is gone (read only)."""
    now = utcnow()
    rows = db.execute(
        select(Container.id, Container.lease_owner, Container.lease_expires, Container.attempts).where(
            Container.status.in_(("Running", "Finalizing"))
        )
    ).all()
    return [
        (cid, owner, attempts)
        for cid, owner, expires, attempts in rows
        if expires is None or _aware(expires) < now or _local_owner_dead(owner)  # type: ignore[operator]
    ]


def has_queued(db: Session) -> bool:
    return db.scalar(select(Container.id).where(Container.status == "Queued").limit(1)) is not None


def requeue_stale(db: Session, *, max_attempts: int = MAX_ATTEMPTS) -> list[int]:
    """Re-queue containers whose worker died (lease expired, or a local owner process is gone).

    A container that has already been tried ``max_attempts`` times fails instead of looping forever.
    """
    now = utcnow()
    requeued = []
    for cid, owner, attempts in stale_containers(db):
        final = attempts >= max_attempts
        new_status = "Failed" if final else "Queued"
        res = db.execute(
            update(Container)
            .where(
                Container.id == cid,
                Container.lease_owner == owner,
                Container.status.in_(("Running", "Finalizing")),
            )
            .values(status=new_status, status_time=now, lease_owner=None, lease_expires=None)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:
            continue
        c = db.get(Container, cid, populate_existing=True)
        assert c is not None
        reason = f"worker {owner} stopped (lease expired or process gone)"
        if final:
            add_history(db, c, "Failed", f"{reason}; giving up after {attempts} attempts")
            _finish_side_effects(db, c, success=False, message=f"Container {cid} failed: {reason}")
        else:
            add_history(db, c, "Requeued", f"{reason}; queued again (attempt {attempts} interrupted)")
            if c.conversion and c.scan_pk is not None and (scan := db.get(Scan, c.scan_pk)) is not None:
                set_scan_conversion(scan, "pending", c.id)
        requeued.append(cid)
    return requeued


#: the oldest queued container that may start now: a scan's conversions run one at a time, in order, so a
#: re-conversion queued while an older one runs waits for it (else the older could attach last)
_CANDIDATE = (
    "SELECT c.id, c.scan_pk, c.conversion FROM containers c WHERE c.status = 'Queued'{exclude}"
    " AND NOT (c.conversion = :t AND EXISTS (SELECT 1 FROM containers r WHERE r.scan_pk = c.scan_pk"
    " AND r.conversion = :t AND r.status IN ('Running', 'Finalizing')))"
    " ORDER BY c.id LIMIT 1{lock}"
)


def claim_next(db: Session, worker_id: str, lease_seconds: float) -> int | None:
    """Take the oldest queued container for ``worker_id`` (in ``db``'s transaction); its id or None.

    A conversion whose scan already has one running is left queued until that one ends.
    """
    pg = db.get_bind().dialect.name == "postgresql"
    # NO KEY UPDATE: a transaction adding history to a queued row (a foreign key check) is not blocked
    lock = " FOR NO KEY UPDATE OF c SKIP LOCKED" if pg else ""
    passed: list[int] = []
    for _ in range(5):
        exclude = f" AND c.id NOT IN ({','.join(str(int(p)) for p in passed)})" if passed else ""
        row = db.execute(text(_CANDIDATE.format(exclude=exclude, lock=lock)), {"t": True}).first()
        if row is None:
            return None
        cid, scan_pk, conversion = row
        if pg and conversion and scan_pk is not None:
            # two workers may each have picked a conversion of the same scan: the scan's lock orders them
            # and the second sees the first running (SQLite runs one writer at a time: nothing to order)
            lock_scan(db, scan_pk)
            if conversion_running(db, scan_pk) is not None:
                passed.append(cid)
                continue
        now = utcnow()
        res = db.execute(
            update(Container)
            .where(Container.id == cid, Container.status == "Queued")
            .values(
                status="Running",
                status_time=now,
                lease_owner=worker_id,
                lease_expires=now + timedelta(seconds=lease_seconds),
                attempts=Container.attempts + 1,
                kill_requested=False,
            )
            .execution_options(synchronize_session=False)
        )
        if res.rowcount == 1:
            # the UPDATE above bypassed the session: load the row as it is now (one query)
            c = db.get(Container, cid, populate_existing=True)
            assert c is not None
            add_history(db, c, "Running", f"Started by worker {worker_id} (attempt {c.attempts})")
            # only the scan's own row is needed (not its eagerly joined session, subject and project)
            plain = [lazyload("*")]
            if c.conversion and c.scan_pk is not None and (scan := db.get(Scan, c.scan_pk, options=plain)):
                set_scan_conversion(scan, "running", c.id)
            return int(cid)
        passed.append(cid)
    return None


def renew_lease(db: Session, cid: int, worker_id: str, lease_seconds: float) -> bool | None:
    """Extend our lease; returns ``kill_requested``, or None when the lease is no longer ours."""
    res = db.execute(
        update(Container)
        .where(
            Container.id == cid,
            Container.lease_owner == worker_id,
            Container.status.in_(("Running", "Finalizing")),
        )
        .values(lease_expires=utcnow() + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:
        return None
    return bool(db.scalar(select(Container.kill_requested).where(Container.id == cid)))


def _tail(path: Path, limit: int = LOG_LIMIT) -> str:
    if not path.exists():
        return ""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        if size > limit:
            fh.seek(size - limit)
        data = fh.read()
    prefix = f"[... {size - limit} bytes cut ...]\n" if size > limit else ""
    return prefix + data.decode("utf-8", "replace")


def _warnings(*logs: str) -> list[str]:
    out = []
    for text_ in logs:
        for line in text_.splitlines():
            if "warning" in line.lower():
                out.append(line.strip()[:500])
    return out[:50]


def _is_nifti(path: Path) -> bool:
    name = path.name
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        return False
    stem = name.removesuffix(".gz").removesuffix(".nii")
    # dcm2niix's extra derived copies (equalised spacing, tilt-corrected) repeat the original's slices
    return not any(stem.endswith(s) or f"{s}_" in stem for s in ("_Eq", "_Tilt"))


@dataclass
class _Outcome:
    status: str  # Complete | Failed | Killed
    message: str
    exit_code: int | None = None
    stdout: str = ""
    stderr: str = ""
    warnings: list[str] = field(default_factory=list)
    files: dict[str, list[tuple[str, Path]]] = field(default_factory=dict)  # label -> [(relpath, path)]
    formats: dict[str, str | None] = field(default_factory=dict)
    outputs: list[dict[str, Any]] = field(default_factory=list)
    #: per input mount, the catalogued files the job ran on (``Container.input_snapshot``)
    inputs: dict[str, Any] = field(default_factory=dict)


class ContainerWorkers:
    """A pool of worker threads in this process (a background service of ``serve``)."""

    name = "container-workers"

    def __init__(
        self,
        ctx: AppContext,
        *,
        workers: int | None = None,
        lease_seconds: float = DEFAULT_LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
    ) -> None:
        self.ctx = ctx
        self.n = max(1, workers if workers is not None else ctx.settings.container_workers)
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._lock = threading.Lock()
        #: held by the one idle thread of this pool that waits for work and claims it
        self._claiming = threading.Lock()
        self._last_reap = 0.0
        self.scratch = ctx.settings.scratch_dir / "containers"

    # -- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self.scratch.mkdir(parents=True, exist_ok=True)
        _LIVE_WORKERS.add(self.worker_id)
        with self.ctx.session() as db:
            requeue_stale(db)
        self._stop.clear()
        for i in range(self.n):
            t = threading.Thread(target=self._loop, name=f"container-worker-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        jobs_available.set()

    def stop(self) -> None:
        self._stop.set()
        jobs_available.set()
        with self._lock:
            procs = list(self._procs.values())
        for p in procs:
            _kill_group(p)
        for t in self._threads:
            t.join(timeout=15)
        self._threads.clear()
        _LIVE_WORKERS.discard(self.worker_id)
        # give our unfinished jobs back at once rather than after the lease expires
        with self.ctx.session() as db:
            for c in db.scalars(
                select(Container).where(
                    Container.lease_owner == self.worker_id, Container.status.in_(("Running", "Finalizing"))
                )
            ):
                c.status, c.status_time, c.lease_owner, c.lease_expires = "Queued", utcnow(), None, None
                add_history(db, c, "Requeued", f"worker {self.worker_id} stopped; queued again")

    def _loop(self) -> None:
        while not self._stop.is_set():
            # one idle thread of the pool at a time waits for work and claims it, so a new job wakes one
            # thread, not all of them racing for it (on SQLite each would take the write lock for nothing)
            if not self._claiming.acquire(timeout=self.poll_seconds):
                continue
            try:
                got = self._wait_and_claim()
            finally:
                self._claiming.release()
            if got is None:
                continue
            cid, claimed = got
            try:
                self.run(cid, claimed)
            except LeaseLost:
                log.warning("container %s: lease lost, another worker owns it now", cid)
            except Exception:
                log.exception("container %s: worker error", cid)
                self._fail_safely(cid, "internal error in the container worker (see the server log)")

    def _wait_and_claim(self) -> tuple[int, tuple[dict[str, Any], int]] | None:
        """Wait for a queued job and claim it: (id, (plan, attempts)); None when the pool stops."""
        while not self._stop.is_set():
            # woken by a commit that queued a job in this process, else polling for other processes'
            jobs_available.wait(self.poll_seconds)
            jobs_available.clear()
            if self._stop.is_set():
                return None
            try:
                # look with a reading session first: on SQLite a writing one takes the database's lock
                if time.monotonic() - self._last_reap > max(1.0, self.lease_seconds / 3):
                    with self.ctx.sessions() as db:
                        stale = bool(stale_containers(db))
                    if stale:
                        with self.ctx.session() as db:
                            requeue_stale(db)
                    self._last_reap = time.monotonic()
                with self.ctx.sessions() as db:
                    waiting = has_queued(db)
                if not waiting:
                    continue
                with self.ctx.session() as db:
                    cid = claim_next(db, self.worker_id, self.lease_seconds)
                    if cid is None:
                        continue
                    c = db.get(Container, cid)  # loaded by the claim: no query
                    assert c is not None
                    claimed = (dict(c.plan), c.attempts)
                    more = has_queued(db)
            except Exception:
                log.exception("container worker could not claim a job")
                self._stop.wait(self.poll_seconds)
                continue
            if more:
                jobs_available.set()  # the next idle thread takes the next one
            return cid, claimed
        return None

    # -- one job ------------------------------------------------------------------------------------
    def run(self, cid: int, claimed: tuple[dict[str, Any], int] | None = None) -> None:
        """Run container ``cid``, claimed by this pool; ``claimed`` = its (plan, attempts) if known."""
        if claimed is None:
            with self.ctx.sessions() as db:
                c = db.get(Container, cid)
                assert c is not None
                claimed = (dict(c.plan), c.attempts)
        plan, attempt = claimed
        job_dir = self.scratch / f"{cid}-{attempt}"
        inputs: dict[str, Any] = {}
        try:
            outcome = self._execute(db_plan=plan, cid=cid, job_dir=job_dir, inputs=inputs)
            outcome.inputs = inputs
            if outcome.status == "Complete":
                try:
                    self._attach(cid, plan, outcome)
                except LeaseLost:
                    raise
                except Exception as exc:
                    log.exception("container %s: attaching outputs failed", cid)
                    outcome.status, outcome.message = "Failed", f"Attaching outputs failed: {exc}"
                    self._end(cid, outcome)
            else:
                self._end(cid, outcome)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    def _execute(
        self, *, db_plan: dict[str, Any], cid: int, job_dir: Path, inputs: dict[str, Any]
    ) -> _Outcome:
        """Link the inputs (recording them in ``inputs``), run the process, collect and check outputs."""
        shutil.rmtree(job_dir, ignore_errors=True)
        job_dir.mkdir(parents=True)
        mount_dirs: dict[str, Path] = {}
        input_dir: Path | None = None
        linked: LinkedInput | None = None
        for m in db_plan.get("mounts") or []:
            local = job_dir / "mounts" / f"m{len(mount_dirs)}"
            local.mkdir(parents=True)
            mount_dirs[m["path"]] = local
            if m.get("resource-pk") is not None:
                with self.ctx.sessions() as db:
                    res = db.get(Resource, m["resource-pk"])
                    if res is None:
                        return _Outcome("Failed", f"Input resource for mount '{m['name']}' no longer exists")
                    linked = link_resource_files(db, self.ctx.archive_root, res, local)
                    inputs[m["name"]] = linked.snapshot(res)
                if not linked.paths:
                    return _Outcome(
                        "Failed", f"Input resource {res.label} for mount '{m['name']}' has no files"
                    )
                input_dir = local
        args = map_args(list(db_plan["args"]), mount_dirs)
        exe = find_executable(args[0])
        if exe is None:
            return _Outcome("Failed", f"Executable '{args[0]}' is not installed on worker {self.worker_id}")
        args[0] = exe
        out_path, err_path = job_dir / "stdout.log", job_dir / "stderr.log"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(job_dir),
            "LANG": "C.UTF-8",
            "TMPDIR": str(job_dir),
        }
        limit = float(self.ctx.settings.container_time_limit_seconds)
        started = time.monotonic()
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            proc = subprocess.Popen(
                args,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                cwd=job_dir,
                env=env,
                start_new_session=True,
            )
            with self._lock:
                self._procs[cid] = proc
            frames: dict[str, Any] = {}
            counter = None
            if db_plan.get("conversion") and input_dir is not None and linked is not None:
                # count the series' frames (headers only) while the converter runs; started only once
                # the process is launched, so this thread's hold on the GIL never delays the launch
                def _count(where: Path, paths: list[str]) -> None:
                    frames["value"] = count_dicom_frames(where, paths)

                counter = threading.Thread(target=_count, args=(input_dir, linked.paths), daemon=True)
                counter.start()
            try:
                ended = self._supervise(cid, proc, started, limit)
            finally:
                with self._lock:
                    self._procs.pop(cid, None)
        stdout, stderr = _tail(out_path), _tail(err_path)
        warnings = _warnings(stdout, stderr)
        code = proc.returncode
        if ended is not None:
            status, message = ended
            return _Outcome(status, message, code, stdout, stderr, warnings)
        if code != 0:
            return _Outcome(
                "Failed", f"{Path(exe).name} exited with code {code}", code, stdout, stderr, warnings
            )
        took = time.monotonic() - started
        outcome = _Outcome(
            "Complete", f"Container completed (process ran {took:.2f} s)", code, stdout, stderr, warnings
        )
        for out_def in db_plan.get("outputs") or []:
            folder = mount_dirs.get(
                next((m["path"] for m in db_plan["mounts"] if m["name"] == out_def["mount"]), "")
            )
            if folder is None:
                return _Outcome(
                    "Failed",
                    f"Output '{out_def['name']}' names an unknown mount",
                    code,
                    stdout,
                    stderr,
                    warnings,
                )
            base = folder / out_def.get("path", "") if out_def.get("path") else folder
            files = output_files(base, out_def.get("glob", ""))
            if not files and out_def.get("required"):
                return _Outcome(
                    "Failed",
                    f"Required output '{out_def['name']}' is empty: the command produced no files",
                    code,
                    stdout,
                    stderr,
                    warnings,
                )
            label = out_def["label"]
            outcome.files.setdefault(label, []).extend((p.relative_to(base).as_posix(), p) for p in files)
            outcome.formats[label] = out_def.get("format")
        if db_plan.get("conversion"):
            if counter is not None:
                counter.join()
            nifti = [p for group in outcome.files.values() for _, p in group if _is_nifti(p)]
            _instances, n_frames, mosaic = frames.get("value", (0, 0, False))
            reason = check_nifti_slices(nifti, n_frames, mosaic)
            if reason is not None:
                return _Outcome("Failed", reason, code, stdout, stderr, warnings)
        return outcome

    def _supervise(
        self, cid: int, proc: subprocess.Popen[bytes], started: float, limit: float
    ) -> tuple[str, str] | None:
        """Wait for the process, renewing the lease; (status, message) if it had to be stopped."""
        exited = threading.Event()

        def _reap() -> None:  # a blocking wait returns the moment the process ends (no polling delay)
            proc.wait()
            exited.set()

        threading.Thread(target=_reap, daemon=True).start()
        beat = max(0.5, self.lease_seconds / 3)
        next_beat = time.monotonic() + beat
        while True:
            if exited.wait(timeout=max(0.01, min(next_beat - time.monotonic(), 0.5))):
                return None
            if self._stop.is_set():
                _kill_group(proc)
                raise LeaseLost("worker stopping")
            if time.monotonic() - started > limit:
                _kill_group(proc)
                return "Failed", f"Time limit of {int(limit)} s exceeded; process killed"
            if time.monotonic() >= next_beat:
                next_beat = time.monotonic() + beat
                with self.ctx.session() as db:
                    kill = renew_lease(db, cid, self.worker_id, self.lease_seconds)
                if kill is None:
                    _kill_group(proc)
                    raise LeaseLost(f"container {cid}")
                if kill:
                    _kill_group(proc)
                    return "Killed", "Killed on request"

    def _attach(self, cid: int, plan: dict[str, Any], outcome: _Outcome) -> None:
        """Move outputs into the archive and mark the container Complete, in one archive transaction."""
        from flip_imaging.archive.store import ArchiveWriter

        same_fs = self.scratch.stat().st_dev == self.ctx.archive_root.stat().st_dev
        with ArchiveWriter(self.ctx) as w:
            db = w.db
            res = db.execute(
                update(Container)
                .where(
                    Container.id == cid,
                    Container.lease_owner == self.worker_id,
                    Container.status == "Running",
                )
                .values(status="Finalizing")
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:
                raise LeaseLost(f"container {cid}")
            # the UPDATE above bypassed the session: load the row as it is now (one query)
            c = db.get(Container, cid, populate_existing=True)
            assert c is not None
            scan = db.get(Scan, plan["scan-pk"])
            if scan is None:
                raise RuntimeError("the scan was deleted while the container ran")
            outputs = []
            for label, files in outcome.files.items():
                resource, created = w.ensure_resource(scan, label, format=outcome.formats.get(label))
                new = {rel for rel, _ in files}
                if not created and db.scalar(select(File.pk).where(File.resource_pk == resource.pk).limit(1)):
                    resource = _replace_resource(w, scan, resource)
                for rel, path in files:
                    w.add_file(resource, rel, path, overwrite=True, move=same_fs)
                outputs.append(
                    {
                        "name": label,
                        "type": "Resource",
                        "label": label,
                        "created": f"{c.root_uri}/resources/{label}",
                        "files": sorted(new),
                    }
                )
            now = utcnow()
            c.status, c.status_time, c.exit_code = "Complete", now, outcome.exit_code
            c.lease_owner, c.lease_expires = None, None
            c.stdout, c.stderr, c.outputs = outcome.stdout, outcome.stderr, outputs
            c.input_snapshot = outcome.inputs or None
            msg = outcome.message + (f" with {len(outcome.warnings)} warning(s)" if outcome.warnings else "")
            add_history(db, c, "Complete", msg, outcome.exit_code)
            _finish_side_effects(
                db, c, success=True, message=f"Container {cid} complete", warnings=outcome.warnings
            )

    def _end(self, cid: int, outcome: _Outcome) -> None:
        with self.ctx.session() as db:
            res = db.execute(
                update(Container)
                .where(
                    Container.id == cid,
                    Container.lease_owner == self.worker_id,
                    Container.status.in_(("Running", "Finalizing")),
                )
                .values(
                    status=outcome.status,
                    status_time=utcnow(),
                    lease_owner=None,
                    lease_expires=None,
                    exit_code=outcome.exit_code,
                    stdout=outcome.stdout,
                    stderr=outcome.stderr,
                    input_snapshot=outcome.inputs or None,
                )
                .execution_options(synchronize_session=False)
            )
            if res.rowcount != 1:
                raise LeaseLost(f"container {cid}")
            # the UPDATE above bypassed the session: load the row as it is now (one query)
            c = db.get(Container, cid, populate_existing=True)
            assert c is not None
            add_history(db, c, outcome.status, outcome.message, outcome.exit_code)
            _finish_side_effects(
                db, c, success=False, message=f"Container {cid}: {outcome.message}", warnings=outcome.warnings
            )

    def _fail_safely(self, cid: int, message: str) -> None:
        try:
            self._end(cid, _Outcome("Failed", message))
        except Exception:
            log.exception("container %s: could not record the failure", cid)


def _replace_resource(w: ArchiveWriter, scan: Scan, old: Resource) -> Resource:
    """An empty resource, with ``old``'s XNAT id and label, that replaces ``old`` when ``w`` commits.

    A re-run's outputs must never mix with the previous run's: overwriting in place would show new bytes
    under old catalog rows until the commit. Instead the old resource row goes (its file rows with it;
    its folder is deleted after the commit) and a new row, in a fresh folder, takes its place in the
    same transaction. A reader that found the old row then finds no files of it, never another run's.
    """
    xnat_id, label, fmt, content = old.xnat_id, old.label, old.format, old.content
    w.delete_resource(old)
    fresh, _ = w.ensure_resource(scan, label, format=fmt, content=content)  # beside the old folder
    fresh.xnat_id = xnat_id  # the resource keeps its XNAT id: clients see the same resource, new files
    w.db.flush()
    return fresh


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def _factory(ctx: AppContext) -> ContainerWorkers | None:
    if ctx.settings.container_workers <= 0:
        return None
    return ContainerWorkers(ctx)


register_service(_factory)


def main(argv: list[str] | None = None) -> int:
    """Run workers without the web app (another machine can share the database and the archive)."""
    import argparse

    from flip_imaging.config import Settings
    from flip_imaging.context import create_context

    parser = argparse.ArgumentParser(prog="python -m flip_imaging.containers.worker")
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--lease-seconds", type=float, default=DEFAULT_LEASE_SECONDS)
    parser.add_argument("--log-level", default="INFO")
    ns = parser.parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # no migrations and no archive recovery here: those belong to ``serve`` at start-up, and running them
    # while a server writes to the same archive could undo its transaction in flight
    settings = Settings.load(data_dir=ns.data_dir)
    ctx = create_context(settings, run_migrations=False, recover=False)
    import flip_imaging.containers.provider  # noqa: F401  (registers the action provider)

    pool = ContainerWorkers(ctx, workers=ns.workers, lease_seconds=ns.lease_seconds)
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    pool.start()
    log.info("container workers %s running (%d threads)", pool.worker_id, pool.n)
    done.wait()
    pool.stop()
    ctx.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
