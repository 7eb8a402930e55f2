"""The process that runs every DICOM receiver of this server, writing into the spool.

The receivers run in a child process of their own, so that network decoding and the spool's fsyncs
never compete for the interpreter lock with de-identification and archiving.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from pathlib import Path
from typing import Any

from flip_imaging.dicom.scp import DicomSCP, ReceiverSpec
from flip_imaging.intake.spool import Spool

log = logging.getLogger(__name__)


class ScpHost:
    """The receivers run in a child process of their own, so that network decoding and the spool's
    fsyncs never compete for the interpreter lock with de-identification and archiving. The spool is
    the only interface; ``wakeup`` (a process-shared event) tells the worker that files arrived."""

    def __init__(self, spool_root: Path) -> None:
        mp = multiprocessing.get_context("spawn")  # a fresh interpreter: no inherited threads or locks
        self.wakeup = mp.Event()
        self._conn, child = mp.Pipe()
        self._lock = threading.Lock()
        self.proc = mp.Process(
            target=_host_main,
            args=(str(spool_root), child, self.wakeup, os.getpid()),
            name="flip-dicom-scp",
            daemon=True,
        )
        self.proc.start()
        child.close()

    def apply(self, specs: list[ReceiverSpec], timeout: float = 60) -> dict[int, str]:
        """Run exactly ``specs`` (restarting changed ones); returns errors by receiver pk."""
        with self._lock:
            self._conn.send(("apply", specs))
            if not self._conn.poll(timeout):
                raise TimeoutError("the DICOM receiver process did not answer")
            return dict(self._conn.recv())

    def stop(self) -> None:
        with self._lock:
            try:
                self._conn.send(("stop", None))
                self._conn.poll(20)
            except (OSError, EOFError):
                pass
        self.proc.join(timeout=20)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()


def _host_main(spool_root: str, conn: Any, wakeup: Any, parent_pid: int) -> None:
    """Child process: keep the requested receivers running until told to stop or the parent is gone."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spool = Spool(Path(spool_root))
    spool.wakeup = wakeup
    running: dict[int, DicomSCP] = {}
    try:
        while True:
            if conn.poll(0.5):
                try:
                    command, payload = conn.recv()
                except EOFError:
                    return
                if command == "stop":
                    conn.send({})
                    return
                errors: dict[int, str] = {}
                wanted = {s.pk: s for s in payload}
                for pk in list(running):
                    if pk not in wanted or wanted[pk] != running[pk].spec:
                        running.pop(pk).stop()
                for pk, spec in wanted.items():
                    if pk in running:
                        continue
                    scp = DicomSCP(spec, spool)
                    try:
                        scp.start()
                    except OSError as exc:
                        errors[pk] = f"cannot listen on port {spec.port}: {exc.strerror}"
                        log.error("DICOM receiver %s: %s", spec.ae_title, errors[pk])
                        continue
                    running[pk] = scp
                conn.send(errors)
            if os.getppid() != parent_pid:  # the server died (e.g. kill -9): do not keep the ports
                return
    finally:
        for scp in running.values():
            scp.stop()
