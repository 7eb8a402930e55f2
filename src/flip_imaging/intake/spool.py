"""The private spool: raw received bytes, durable before a C-STORE is acknowledged.

Layout under ``settings.spool_dir`` (folders 0700, files 0600, never served):

* ``tmp/``        files being written (a crash leaves only these; they are deleted at start-up);
* ``incoming/``   complete, fsynced files waiting for the worker (the acknowledged state);
* ``work/``       files claimed by the worker (moved back to ``incoming/`` at start-up);
* ``held/``       raw files of instances de-identified but not yet archived (deleted once archived);
* ``quarantine/`` raw files that could not be processed (see the quarantine API);
* ``uploads/``    request bodies of ``/data/services/import`` while they are unpacked;
* ``scripts/``    anonymization script texts by SHA-256, read by the de-identification processes.

A file name carries its source: ``r<receiver pk>_...`` (DICOM receiver) or ``i<import pk>_...``. The
rename ``tmp → incoming`` is the commit point; the directory fsync after it is group-committed so
concurrent associations share one fsync while each acknowledgement still waits for its own.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

from flip_imaging.fsutil import fsync_path

DIRS = ("tmp", "incoming", "work", "held", "quarantine", "uploads", "scripts")
_FILE_MODE = 0o600
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


class _GroupSync:
    """fsync of one directory shared by concurrent callers: each returns only after a sync that
    started after its own rename."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cond = threading.Condition()
        self.issued = 0
        self.done = 0
        self.running = False

    def sync(self) -> None:
        with self.cond:
            self.issued += 1
            ticket = self.issued
            while self.done < ticket:
                if self.running:
                    self.cond.wait()
                    continue
                self.running = True
                target = self.issued
                self.cond.release()
                try:
                    fsync_path(self.path)
                finally:
                    self.cond.acquire()
                    self.running = False
                    self.cond.notify_all()
                self.done = max(self.done, target)


class Spool:
    """Durable hand-over between the network (or an upload) and the processing worker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        os.chmod(root, 0o700)
        for name in DIRS:
            d = root / name
            d.mkdir(exist_ok=True)
            os.chmod(d, 0o700)
        self.tmp = root / "tmp"
        self.incoming = root / "incoming"
        self.work = root / "work"
        self.held = root / "held"
        self.quarantine = root / "quarantine"
        self.uploads = root / "uploads"
        self.scripts = root / "scripts"
        self._incoming_sync = _GroupSync(self.incoming)
        self.wakeup = threading.Event()

    @staticmethod
    def new_name(source: str) -> str:
        """``<source>_<ns clock>_<random>.dcm``: sorts by arrival, unique, carries the source."""
        return f"{source}_{time.time_ns():020d}_{uuid.uuid4().hex[:12]}.dcm"

    @staticmethod
    def source_of(name: str) -> str:
        return name.split("_", 1)[0]

    def write(self, source: str, parts: Iterable[bytes | memoryview]) -> str:
        """Write ``parts`` as one new spool file, fsync it, publish it in ``incoming/``; returns its name.

        Returns only when the file and its directory entry are on disk: the caller may then acknowledge.
        """
        name = self.new_name(source)
        tmp = self.tmp / name
        fd = os.open(tmp, _OPEN_FLAGS, _FILE_MODE)
        try:
            for part in parts:
                view = memoryview(part)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.rename(tmp, self.incoming / name)
        self._incoming_sync.sync()
        self.wakeup.set()
        return name

    def write_file(self, source: str, src: Path | object, chunk: int = 1 << 20) -> str:
        """Stream a file-like object (or path) into the spool without holding it in memory."""
        if isinstance(src, Path):
            with open(src, "rb") as fh:
                return self.write(source, iter(lambda: fh.read(chunk), b""))
        return self.write(source, iter(lambda: src.read(chunk), b""))  # type: ignore[attr-defined]

    def pending(self, limit: int | None = None) -> list[str]:
        """Names waiting in ``incoming/``, oldest first."""
        names = sorted(os.listdir(self.incoming))
        return names[:limit] if limit else names

    def claim(self, name: str) -> Path | None:
        """Move a file from ``incoming/`` to ``work/``; None if another worker took it first."""
        try:
            os.rename(self.incoming / name, self.work / name)
        except FileNotFoundError:
            return None
        return self.work / name

    def recover(self) -> int:
        """Start-up: forget half-written files, give claimed-but-unfinished files back to the worker."""
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)
        n = 0
        for claimed in self.work.iterdir():
            os.rename(claimed, self.incoming / claimed.name)
            n += 1
        for upload in self.uploads.iterdir():
            upload.unlink(missing_ok=True)
        if n:
            fsync_path(self.incoming)
        return n
